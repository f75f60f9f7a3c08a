//! The lease rules as tables: what an agent decides from what it read, what it remembers
//! and the time; and when a holder may still write.

use super::*;

const TTL: u64 = 30_000;

fn rules(me: &str) -> Rules {
    Rules { me: me.to_string(), ttl_ms: TTL }
}

fn lease(holder: &str, generation: u64, beat: u64) -> Lease {
    Lease { holder: holder.to_string(), generation, beat, since: 1000, renewed: 1000, ttl_s: 30 }
}

fn held(generation: u64, sent_ms: u64) -> Option<Held> {
    Some(Held { generation, sent_ms })
}

/// A memory that has seen `record` since `since_ms` and holds `held`.
fn memory(record: &Record, since_ms: u64, held: Option<Held>) -> Memory {
    let value = match record {
        Record::Free => String::new(),
        Record::Held(l) => l.to_value(),
        Record::Unreadable(raw) => raw.clone(),
    };
    Memory { seen: Some((value, since_ms)), held, pending: None, max_generation: 0 }
}

/// The kind of decision and the (holder, generation, beat) it writes, if any.
fn summary(d: &Decision) -> String {
    match d {
        Decision::Take(l) => format!("take {}#{}.{}", l.holder, l.generation, l.beat),
        Decision::Renew(l) => format!("renew {}#{}.{}", l.holder, l.generation, l.beat),
        Decision::Lead => "lead".to_string(),
        Decision::Follow { leader, expires_in_ms, lost } => format!(
            "follow {} in {expires_in_ms}{}",
            leader.as_ref().map_or("?".to_string(), |l| format!("{}#{}", l.holder, l.generation)),
            if *lost { " lost" } else { "" }
        ),
    }
}

/// (case, record, seen since ms, held, now ms, expected decision)
type DecisionCase<'a> = (&'a str, &'a Record, u64, Option<Held>, u64, &'a str);

/// (case, record, held, now ms, the generation or a part of the refusal)
type FenceCase<'a> = (&'a str, &'a Record, Option<Held>, u64, Result<u64, &'a str>);

#[test]
fn decisions() {
    let b3 = Record::Held(lease("b", 3, 7));
    let a3 = Record::Held(lease("a", 3, 7));
    let junk = Record::Unreadable("by hand".to_string());
    let b3_given_up = Record::Held(lease("b", 3, 7).given_up(2000));
    let a3_given_up = Record::Held(lease("a", 3, 7).given_up(2000));
    // (case, record, seen since ms, held, now ms, expected)
    let table: Vec<DecisionCase> = vec![
        ("free: take generation 1", &Record::Free, 0, None, 5, "take a#1.0"),
        (
            "free although a held it: above what it held",
            &Record::Free,
            0,
            held(3, 0),
            5,
            "take a#4.0",
        ),
        (
            "given up by another, just seen: taken at once",
            &b3_given_up,
            1_000,
            None,
            1_000,
            "take a#4.0",
        ),
        (
            "given up by this member: taken again, a new generation",
            &a3_given_up,
            0,
            None,
            0,
            "take a#4.0",
        ),
        ("another holder, just seen", &b3, 1_000, None, 1_000, "follow b#3 in 30000"),
        ("another holder, unchanged 29.999 s", &b3, 1_000, None, 30_999, "follow b#3 in 1"),
        (
            "another holder, unchanged a whole TTL: take over",
            &b3,
            1_000,
            None,
            31_000,
            "take a#4.0",
        ),
        (
            "another holder took ours: lost",
            &b3,
            1_000,
            held(2, 900),
            1_000,
            "follow b#3 in 30000 lost",
        ),
        ("ours, fresh: lead", &a3, 0, held(3, 0), 9_999, "lead"),
        ("ours, a third of the TTL: renew", &a3, 0, held(3, 0), 10_000, "renew a#3.8"),
        ("ours, just under the TTL: renew", &a3, 0, held(3, 0), 29_999, "renew a#3.8"),
        ("ours, past the TTL: a new generation", &a3, 0, held(3, 0), 30_000, "take a#4.0"),
        ("ours from an earlier run: a new generation", &a3, 0, None, 0, "take a#4.0"),
        ("ours at an older generation: above both", &a3, 0, held(4, 0), 0, "take a#5.0"),
        (
            "ours at a newer generation than held: another agent named `a`: followed",
            &a3,
            0,
            held(2, 0),
            0,
            "follow a#3 in 30000 lost",
        ),
        (
            "another agent named `a` fell silent a whole TTL: taken over",
            &a3,
            0,
            held(2, 0),
            30_000,
            "take a#4.0",
        ),
        ("unreadable, just seen", &junk, 500, None, 500, "follow ? in 30000"),
        ("unreadable a whole TTL: take generation 1", &junk, 500, None, 30_500, "take a#1.0"),
    ];
    for (case, record, since, held, now, want) in table {
        let mem = memory(record, since, held);
        let got = summary(&decide(&rules("a"), record, &mem, now, 2000));
        assert_eq!(got, want, "{case}");
    }
}

/// A take whose answer was lost (it may have landed): finding it under this member's
/// name is this agent's own lease, taken again with a new generation, not another agent
/// of the same name to follow.
#[test]
fn a_take_whose_answer_was_lost_is_not_another_agent_of_the_same_name() {
    let a3 = Record::Held(lease("a", 3, 0));
    let mut mem = memory(&a3, 0, held(2, 0));
    assert_eq!(summary(&decide(&rules("a"), &a3, &mem, 0, 0)), "follow a#3 in 30000 lost");
    mem.pending = Some(3);
    assert_eq!(summary(&decide(&rules("a"), &a3, &mem, 0, 0)), "take a#4.0");
}

/// A key deleted or overwritten by hand does not make generations start again: a take
/// goes above the highest generation this agent saw.
#[test]
fn a_take_goes_above_every_generation_seen() {
    let junk = Record::Unreadable("by hand".to_string());
    let mut mem = memory(&Record::Free, 0, None);
    mem.max_generation = 7;
    assert_eq!(summary(&decide(&rules("a"), &Record::Free, &mem, 0, 0)), "take a#8.0");
    let mut mem = memory(&junk, 0, None);
    mem.max_generation = 7;
    assert_eq!(summary(&decide(&rules("a"), &junk, &mem, TTL, 0)), "take a#8.0");
}

#[test]
fn a_renewal_seen_by_a_standby_restarts_its_wait() {
    let r = rules("a");
    let mut mem = Memory::default();
    let first = lease("b", 3, 7);
    mem.saw(&first.to_value(), 0);
    mem.saw(&first.to_value(), 20_000);
    assert_eq!(
        summary(&decide(&r, &Record::Held(first.clone()), &mem, 20_000, 0)),
        "follow b#3 in 10000"
    );
    let renewed = Lease { beat: 8, ..first };
    mem.saw(&renewed.to_value(), 25_000);
    assert_eq!(summary(&decide(&r, &Record::Held(renewed), &mem, 50_000, 0)), "follow b#3 in 5000");
}

#[test]
fn what_a_take_writes() {
    let d = decide(
        &rules("a"),
        &Record::Held(lease("b", 3, 7)),
        &memory(&Record::Held(lease("b", 3, 7)), 0, None),
        40_000,
        1_765_000_000,
    );
    let Decision::Take(l) = d else { panic!("expected a take, got {d:?}") };
    assert_eq!(
        l,
        Lease {
            holder: "a".into(),
            generation: 4,
            beat: 0,
            since: 1_765_000_000,
            renewed: 1_765_000_000,
            ttl_s: 30
        }
    );
    assert_eq!(Record::parse(Some(&l.to_value())), Record::Held(l));
}

#[test]
fn records() {
    let table: Vec<(Option<&str>, &str)> = vec![
        (None, "free"),
        (Some(""), "free"),
        (Some(" "), "free"),
        (
            Some(r#"{"holder":"m1","generation":2,"beat":0,"since":1,"renewed":1,"ttl_s":30}"#),
            "m1#2",
        ),
        (Some(r#"{"holder":"m1","generation":2}"#), "unreadable"),
        (
            Some(
                r#"{"holder":"m1","generation":2,"beat":0,"since":1,"renewed":1,"ttl_s":30,"x":1}"#,
            ),
            "unreadable",
        ),
        (Some("m1"), "unreadable"),
    ];
    for (value, want) in table {
        let got = match Record::parse(value) {
            Record::Free => "free".to_string(),
            Record::Held(l) => format!("{}#{}", l.holder, l.generation),
            Record::Unreadable(_) => "unreadable".to_string(),
        };
        assert_eq!(got, want, "{value:?}");
    }
}

#[test]
fn the_fence() {
    let a3 = Record::Held(lease("a", 3, 7));
    let a3_given_up = Record::Held(lease("a", 3, 7).given_up(2000));
    let (b4, a4, junk) = (
        Record::Held(lease("b", 4, 0)),
        Record::Held(lease("a", 4, 0)),
        Record::Unreadable("x".into()),
    );
    let table: Vec<FenceCase> = vec![
        ("holder, fresh", &a3, held(3, 0), 29_999, Ok(3)),
        (
            "holder, past its TTL",
            &a3,
            held(3, 0),
            30_000,
            Err("last renewed 30000 ms ago, past its TTL"),
        ),
        ("never held", &a3, None, 0, Err("does not hold")),
        (
            "taken by another",
            &b4,
            held(3, 0),
            1,
            Err("now held by `b` (generation 4), not by `a` (generation 3)"),
        ),
        ("retaken by ourselves elsewhere", &a4, held(3, 0), 1, Err("generation 4")),
        ("released", &Record::Free, held(3, 0), 1, Err("released")),
        (
            "given up (by itself, or by a later holder)",
            &a3_given_up,
            held(3, 0),
            1,
            Err("given up by `a` (generation 3)"),
        ),
        ("overwritten by hand", &junk, held(3, 0), 1, Err("holds `x`")),
    ];
    for (case, record, held, now, want) in table {
        let got = may_write(&rules("a"), record, held, now);
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{case}"),
            (Err(e), Err(w)) => assert!(e.contains(w), "{case}: {e}"),
            (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
        }
    }
}
