//! The state directory: a full disk, a corrupted state file, two agents at once.

use std::io::Write;
use std::path::PathBuf;
use std::thread::JoinHandle;

use serde_json::Value;
use veza_testkit::cli::Run;
use veza_testkit::tmpfs::Tmpfs;

use super::*;

#[test]
fn state_dir_disk_full() {
    let (mut case, h) = case_on_host(
        "state dir disk full",
        "state_dir on a 32 MiB tmpfs (it holds the mirror and the artifact cache), filled to the last byte before a sync with a new commit",
    );
    let small = h.dir.join("small-state");
    let fs = Tmpfs::mount(&small, "32m");
    let cfg = config_variant(&h, "small-state", |t| {
        replace_once(
            &t,
            &format!("state_dir: {}", state_dir(&h).display()),
            &format!("state_dir: {}", small.display()),
        )
    });
    let a = h.commit(&h.manifest("blue", Some(0), None), "blue").expect("commit");
    setup_apply(&cfg);
    let state_before = std::fs::read(small.join("state.json")).expect("state written");
    let b = h.commit(&h.manifest("blue", Some(0), Some(1)), "add green").expect("commit");
    // Fill the file system.
    let filler = small.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 1]);
        let _ = f.sync_all();
    }
    let r = agent(&cfg, &["apply"]);
    case.saw(format!(
        "apply exit {}: {} {}",
        r.code,
        r.out.trim(),
        r.err.lines().find(|l| l.contains("error")).unwrap_or("")
    ));
    assert_ne!(r.code, 0, "a full state dir is an error:\n{r}");
    let all = format!("{}{}", r.out, r.err);
    assert!(all.contains("No space left on device"), "the error says the disk is full:\n{r}");
    // No corruption: the last good state is intact and loads; no temp files left behind.
    assert_eq!(std::fs::read(small.join("state.json")).expect("state"), state_before);
    let loaded = veza_state::Reader::new(&small).load().expect("state loads");
    assert_eq!(loaded.applied.map(|x| x.commit).as_deref(), Some(a.as_str()));
    let st = status(&cfg);
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    // The failed sync could not be recorded (no space), but `status` sees the full disk
    // itself and says what to do.
    assert_eq!(st["health"], "attention", "{st:#}");
    let headline = st["headline"].as_str().unwrap_or_default();
    assert!(
        headline.starts_with("NEEDS ATTENTION: disk full: 0 KiB free for the state directory"),
        "{headline}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&small)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // The edge was not left half-done.
    veza_testkit::haproxy::check_config(&h.haproxy.config_path()).expect("valid edge");
    let served = h.served_release().expect("serves");
    assert_eq!(served, h.releases[0].id);
    // Space back: the next sync applies B.
    std::fs::remove_file(&filler).expect("free space");
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("space freed: {}", r.out.trim()));
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.contains(short(&b)), "{r}");
    let st = status(&cfg);
    assert_eq!(st["state"]["applied"]["commit"], b);
    assert_eq!(st["health"], "ok", "{st:#}");
    drop(fs);
}

#[test]
fn corrupted_state_file() {
    let (mut case, h, a) =
        case_at_baseline("corrupted state file", "garbage in state.json and in journal.json");
    let state = state_dir(&h);
    std::fs::write(state.join("state.json"), b"{\"schema_version\": 1, \"applied\": {\x00garbage")
        .expect("corrupt");
    std::fs::write(state.join("journal.json"), b"not json").expect("corrupt journal");
    let r = agent(&h.config_path, &["status", "--json"]);
    case.saw(format!("status exit {}: {}", r.code, r.err.trim()));
    assert_eq!(r.code, 2, "{r}");
    assert!(r.err.contains("corrupt"), "{r}");
    let moved_aside = || -> Vec<PathBuf> {
        std::fs::read_dir(&state)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("state.json.corrupt-"))
            })
            .collect()
    };
    // `status` only reads: the corrupt file stays where it is until a sync holds the lock.
    assert!(moved_aside().is_empty(), "status moved the state file: {:?}", moved_aside());
    assert!(state.join("state.json").exists(), "status removed the state file");
    // The next sync recovers: moves it aside under the lock, then the high-water mark in
    // Incus, the live state, no change to the host.
    let edge_before = edge_bytes(&h);
    let r = apply_ok(&h);
    case.saw(format!("next apply: {}", r.out.trim()));
    let moved = moved_aside();
    assert_eq!(moved.len(), 1, "the corrupt file was moved aside once: {moved:?}");
    assert!(std::fs::read(&moved[0]).expect("kept").ends_with(b"garbage"), "kept for forensics");
    assert!(r.out.contains(short(&a)), "{r}");
    assert_eq!(edge_bytes(&h), edge_before, "the host was not touched");
    let st = status(&h.config_path);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    assert_eq!(st["interrupted"], Value::Null, "{st:#}");
    assert_nothing_lost(&h, &state, &h.releases[0].id);
    // Corrupt again, straight into apply: it reports and recovers in the same run.
    std::fs::write(state.join("state.json"), b"[1, 2").expect("corrupt");
    let r = apply_ok(&h);
    case.saw(format!(
        "corrupt again, apply directly: {} ({})",
        r.out.trim(),
        r.err.lines().find(|l| l.contains("corrupt")).unwrap_or("no log line")
    ));
    assert!(r.err.contains("corrupt"), "the apply reports the corruption:\n{r}");
    assert_eq!(status(&h.config_path)["health"], "ok");
}

#[test]
fn two_agents_at_once() {
    let (mut case, h, _, b) = case_with_green_promoted(
        "two agents at once",
        "two `veza-agent apply` started together on a pending promotion",
    );
    let cfg = h.config_path.clone();
    let runs: Vec<JoinHandle<Run>> = (0..2)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || agent(&cfg, &["apply"]))
        })
        .collect();
    let runs: Vec<Run> = runs.into_iter().map(|t| t.join().expect("apply thread")).collect();
    let winners: Vec<&Run> = runs.iter().filter(|r| r.code == 0).collect();
    let losers: Vec<&Run> = runs.iter().filter(|r| r.code != 0).collect();
    for r in &runs {
        case.saw(format!(
            "exit {}: {}{}",
            r.code,
            r.out.trim(),
            r.err.lines().next().unwrap_or("")
        ));
    }
    assert_eq!(winners.len(), 1, "exactly one applies:\n{}\n{}", runs[0], runs[1]);
    assert_eq!(losers.len(), 1);
    assert!(winners[0].out.starts_with(&format!("applied {}", short(&b))), "{}", winners[0]);
    assert_eq!(losers[0].code, 1, "{}", losers[0]);
    assert!(losers[0].err.contains("another veza-agent is running"), "{}", losers[0]);
    let hist = history(&cfg);
    assert_eq!(hist.iter().filter(|e| e["commit"] == b.as_str()).count(), 1, "{hist:#?}");
    let st = status(&cfg);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], b);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[1].id);
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
}
