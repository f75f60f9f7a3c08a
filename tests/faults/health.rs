//! Health gates: a green slot whose `/health` is late, never 200, or flaps.

use std::time::{Duration, Instant};

use veza_host::process::Cmd;
use veza_testkit::proc::process_alive;
use veza_testkit::traffic::Traffic;

use super::*;

/// Blue (release 0) and green (release 1) deployed, blue active, through the gated manifest.
fn two_colors(h: &DemoHost) {
    h.commit(&gated_manifest(h, "blue", Some(0), Some(1)), "blue and green").expect("commit");
    setup_apply(&h.config_path);
    assert_eq!(h.served_release().expect("serves"), h.releases[0].id);
}

/// [`two_colors`], green's health flag set when `unhealthy`, then green's promotion
/// committed. Returns green's slot and the commit.
fn promote_green(h: &DemoHost, unhealthy: bool) -> (String, String) {
    two_colors(h);
    let green = h.slots()[1].clone();
    if unhealthy {
        set_unhealthy(&green, true);
    }
    let b =
        h.commit(&gated_manifest(h, "green", Some(0), Some(1)), "promote green").expect("commit");
    (green, b)
}

/// A case whose green slot answers 503 when its promotion starts: [`case_on_host`], then
/// [`promote_green`] with the flag set. Returns the case, the host, green and the commit.
fn case_with_unhealthy_green(name: &str, fault: &str) -> (Case, DemoHost, String, String) {
    let (case, h) = case_on_host(name, fault);
    let (green, b) = promote_green(&h, true);
    (case, h, green, b)
}

#[test]
fn slot_slow_to_become_healthy() {
    let (mut case, h, green, b) = case_with_unhealthy_green(
        "health: slot slow to become healthy",
        "green's /health answers 503 for the first 4 s of the promotion, then 200 (gate limit 15 s)",
    );
    let healer = {
        let green = green.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(4));
            set_unhealthy(&green, false);
        })
    };
    let started = Instant::now();
    let r = apply_ok(&h);
    let took = started.elapsed();
    healer.join().expect("healer");
    case.saw(format!("apply after {:.1} s: {}", took.as_secs_f64(), r.out.trim()));
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    assert!(took >= Duration::from_secs(4), "the gate waited for the slot ({took:?})");
    assert_eq!(h.served_release().expect("serves"), h.releases[1].id);
    assert_eq!(status(&h.config_path)["health"], "ok");
}

#[test]
fn slot_never_healthy_rolls_back_without_moving_traffic() {
    let (mut case, h, green, b) = case_with_unhealthy_green(
        "health: slot never healthy",
        "green's /health answers 503 for the whole promotion (gate limit 15 s) while a client loads the edge",
    );
    let load = Traffic::start(&h, 1, Duration::from_millis(5));
    let r = agent(&h.config_path, &["apply"]);
    let (ok, bad) = load.stop();
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    case.saw(format!("{ok} requests during the attempt, {bad} failed"));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with(&format!("rolled-back {}", short(&b))), "{r}");
    assert!(r.out.contains("traffic was not moved"), "{r}");
    assert_eq!(bad, 0, "no request failed while the gate held");
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    let st = status(&h.config_path);
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "blue", "{st:#}");
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["last_outcome"], "rolled-back");
    set_unhealthy(&green, false);
}

#[test]
fn health_flaps_during_promotion() {
    let (mut case, h) = case_on_host(
        "health: flapping slot",
        "green's /health is 200 for 0.3 s then 503 for 1.7 s, repeating, during the promotion; a client loads the edge during it and for 4 s after",
    );
    let (green, b) = promote_green(&h, false);
    // The flapping runs inside the slot (bounded: 60 cycles, or until the stop file).
    let flapper = Cmd::new("incus")
        .args(["exec", &green, "--", "sh", "-c"])
        .arg(format!(
            "i=0; while [ $i -lt 60 ] && [ ! -e /tmp/veza-flap-stop ]; do \
             rm -f {UNHEALTHY}; usleep 300000; touch {UNHEALTHY}; usleep 1700000; i=$((i+1)); done"
        ))
        .spawn_daemon(None)
        .expect("start the flapper");
    std::thread::sleep(Duration::from_secs(2));
    let load = Traffic::start(&h, 1, Duration::from_millis(5));
    let r = agent(&h.config_path, &["apply"]);
    let (ok_during, bad_during) = load.counts();
    // HAProxy's own checks (inter 1 s, fall 2) judge the slot now serving.
    std::thread::sleep(Duration::from_secs(4));
    let (ok_total, bad_total) = load.stop();
    incus_sh(&green, "touch /tmp/veza-flap-stop").expect("stop the flapper");
    let start = Instant::now();
    while process_alive(flapper) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    set_unhealthy(&green, false);
    std::thread::sleep(Duration::from_secs(3));
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    case.saw(format!(
        "{ok_during} ok / {bad_during} failed requests during the apply; {} ok / {} failed in the 4 s after",
        ok_total - ok_during,
        bad_total - bad_during
    ));
    let st = status(&h.config_path);
    let app = &st["state"]["envs"][&h.env]["apps"]["hello"];
    match r.out.split_whitespace().next() {
        Some("applied") => {
            assert_eq!(r.code, 0, "{r}");
            assert!(r.out.contains(short(&b)), "{r}");
            assert_eq!(app["active"], "green", "{st:#}");
        }
        Some("rolled-back") => {
            assert_eq!(r.code, 1, "{r}");
            assert_eq!(app["active"], "blue", "{st:#}");
        }
        _ => panic!("a flapping slot must end applied or rolled back:\n{r}"),
    }
    // Never traffic on a DOWN slot: no request failed, during the switch or after it.
    assert_eq!(bad_total, 0, "requests failed through the edge:\n{r}");
    // What status says is what the edge serves.
    let color = app["active"].as_str().unwrap_or("");
    let release = app["releases"][color].as_str().unwrap_or("").to_string();
    assert_nothing_lost(&h, &state_dir(&h), &release);
}
