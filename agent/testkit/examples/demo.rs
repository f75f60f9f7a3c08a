//! The demo: the whole product on this machine in a few minutes, against the real
//! local Incus and HAProxy and a signed manifests repository served over smart HTTP on
//! 127.0.0.1. Run it with `packaging/demo` (which prepares the machine first).
//!
//! Usage: `demo PATH/TO/veza-agent [--keep]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use veza_testkit::demo::DemoHost;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn say(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn show(host: &DemoHost, args: &[&str]) -> Result<i32> {
    let out = host.agent(args)?;
    println!("$ veza-agent {}", args.join(" "));
    print!("{}", out.stdout_str());
    for line in out.stderr_str().lines().filter(|l| !l.contains(" INFO ")) {
        println!("  {line}");
    }
    Ok(out.status.code().unwrap_or(-1))
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let agent = args.get(1).context("usage: demo PATH/TO/veza-agent [--keep]")?;
    let started = Instant::now();
    let host = DemoHost::new(std::path::Path::new(agent), None)?;
    println!(
        "simulated host in {} (environment `{}`, edge on 127.0.0.1:{})",
        host.dir.display(),
        host.env,
        host.edge_port
    );
    let r = |i: usize| host.releases[i].id.clone();

    say("1. first sync: a signed commit declares app `hello`, blue slot on release 0");
    host.commit(&host.manifest("blue", Some(0), None), "hello on blue")?;
    show(&host, &["plan"])?;
    show(&host, &["apply"])?;
    println!("through the edge: release {}", host.served_release()?);

    say("2. a PR deploys release 1 to the green slot (traffic stays on blue)");
    host.commit(&host.manifest("blue", Some(0), Some(1)), "deploy release 1 to green")?;
    show(&host, &["apply"])?;

    say("3. promotion: a one-line PR sets `active: green`, under a request loop");
    host.commit(&host.manifest("green", Some(0), Some(1)), "promote green")?;
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let loop_handle = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let (port, name) = (host.edge_port, host.host_name.clone());
        std::thread::spawn(move || {
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match veza_host::http::get(
                    &format!("127.0.0.1:{port}"),
                    &name,
                    "/",
                    Duration::from_secs(2),
                ) {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let t = Instant::now();
    show(&host, &["apply"])?;
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = loop_handle.join();
    println!(
        "promotion took {} ms; requests during it: {} ok, {} failed; now serving release {}",
        took.as_millis(),
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        host.served_release()?
    );
    if host.served_release()? != r(1) {
        bail!("the edge does not serve release 1 after the promotion");
    }

    say("4. an unsigned commit is pushed: it is rejected and nothing changes");
    host.commit_unsigned(&host.manifest("blue", Some(0), Some(1)), "unsigned change")?;
    show(&host, &["apply"])?;
    println!("through the edge: release {} (unchanged)", host.served_release()?);

    say("5. a signed PR promotes a broken release: the health gate fails, traffic stays");
    host.commit(&host.manifest("blue", Some(2), Some(1)), "promote broken release 2 on blue")?;
    show(&host, &["apply"])?;
    println!("through the edge: release {} (still green)", host.served_release()?);

    say("6. what the operator sees");
    show(&host, &["status"])?;
    show(&host, &["history"])?;

    say("7. a no-change sync");
    host.commit(&host.manifest("green", Some(0), Some(1)), "revert to the last good state")?;
    show(&host, &["apply"])?;
    let t = Instant::now();
    show(&host, &["apply"])?;
    println!(
        "no-change sync: {} ms (whole process, fetch + verify + observe + plan)",
        t.elapsed().as_millis()
    );
    show(&host, &["status"])?;

    println!("\ndemo finished in {:.1} s", started.elapsed().as_secs_f64());
    if args.iter().any(|a| a == "--keep") {
        println!("--keep: leaving {} and the containers in place", host.dir.display());
        std::mem::forget(host);
    }
    Ok(())
}
