//! The lease driver over the fake: two agents with their own clocks take, renew, follow,
//! take over and lose the lease; the fence stops a writer that lost it; a take that loses
//! a race is noticed when it is read back.

use std::time::Duration;

use veza_model::lease::{LEASE_KEY, Record};
use veza_model::live::LiveState;

use super::*;
use crate::clock::FakeClock;
use crate::incus::{FakeIncus, Incus, ProfileSpec};

const TTL: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    crate::incus::runtime().expect("runtime")
}

/// A keeper on the fake that takes no pause before reading a take back.
fn keeper<'a>(
    fake: &'a FakeIncus,
    clock: &'a FakeClock,
    me: &str,
) -> Keeper<&'a FakeIncus, &'a FakeClock> {
    Keeper::new(fake, clock, me, TTL).settle(Duration::ZERO)
}

/// One fake Incus and two agents' own clocks.
struct World {
    fake: FakeIncus,
    clock_a: FakeClock,
    clock_b: FakeClock,
}

type FakeKeeper<'a> = Keeper<&'a FakeIncus, &'a FakeClock>;

impl World {
    fn new() -> World {
        let fake = FakeIncus::new(LiveState::default());
        World { fake, clock_a: FakeClock::new(), clock_b: FakeClock::new() }
    }

    /// Two agents named `a` and `b` on the fake, each on its own clock.
    fn keepers(&self, a: &str, b: &str) -> (FakeKeeper<'_>, FakeKeeper<'_>) {
        (keeper(&self.fake, &self.clock_a, a), keeper(&self.fake, &self.clock_b, b))
    }
}

fn standing(s: &Standing) -> String {
    match s {
        Standing::Leading(l) => format!("lead #{}.{}", l.generation, l.beat),
        Standing::Following { leader, expires_in, lost } => format!(
            "follow {} in {}ms{}",
            leader.as_ref().map_or("?".to_string(), |l| format!("{}#{}", l.holder, l.generation)),
            expires_in.as_millis(),
            if *lost { " lost" } else { "" }
        ),
    }
}

#[test]
fn two_agents_take_renew_follow_and_take_over() {
    let w = World::new();
    let (a, b) = w.keepers("a", "b");
    let (clock_a, clock_b) = (&w.clock_a, &w.clock_b);
    // (who looks, after advancing its own clock by ms, what it finds)
    let script: Vec<(&str, u64, &str)> = vec![
        ("a", 0, "lead #1.0"),
        ("b", 0, "follow a#1 in 30000ms"),
        ("a", 9_000, "lead #1.0"),
        ("a", 1_000, "lead #1.1"),
        // b saw beat 0 first, now beat 1: its wait starts again.
        ("b", 20_000, "follow a#1 in 30000ms"),
        ("b", 29_999, "follow a#1 in 1ms"),
        // a is silent (paused, its member dead): b takes over after a whole TTL.
        ("b", 1, "lead #2.0"),
        ("a", 1_000, "follow b#2 in 30000ms lost"),
        ("b", 10_000, "lead #2.1"),
        ("a", 0, "follow b#2 in 30000ms"),
    ];
    rt().block_on(async {
        for (i, (who, advance, want)) in script.into_iter().enumerate() {
            let (keeper, clock) = if who == "a" { (&a, &clock_a) } else { (&b, &clock_b) };
            clock.advance(Duration::from_millis(advance));
            let got = standing(&keeper.step().await.expect("step"));
            assert_eq!(got, want, "step {i}: {who}");
        }
    });
}

#[test]
fn the_fence_stops_a_writer_that_lost_the_lease() {
    let w = World::new();
    let ((a, _), fake) = (w.keepers("a", "b"), &w.fake);
    let incus = Fenced::new(fake, &a);
    let spec = |name: &str| ProfileSpec {
        name: name.to_string(),
        description: String::new(),
        config: Default::default(),
        devices: Default::default(),
    };
    rt().block_on(async {
        // Never held: nothing is sent.
        let e = incus.create_profile(&spec("c0")).await.expect_err("fenced before any take");
        assert!(e.to_string().contains("does not hold the cluster lease"), "{e}");
        assert!(a.step().await.expect("take").leads());
        incus.create_profile(&spec("c1")).await.expect("the holder writes");
        // Another agent takes the lease over (this one was paused past its TTL).
        let rival = r#"{"holder":"b","generation":2,"beat":0,"since":1,"renewed":1,"ttl_s":30}"#;
        fake.set_shared(LEASE_KEY, Some(rival));
        let e = incus.create_profile(&spec("c2")).await.expect_err("fenced after losing");
        assert!(matches!(e, IncusError::Fenced { .. }), "{e}");
        assert!(e.to_string().contains("now held by `b` (generation 2)"), "{e}");
        // Reads still go through.
        assert!(incus.profile("c1").await.expect("read").is_some());
    });
    let posts: Vec<String> =
        fake.calls().into_iter().filter(|c| c.starts_with("POST /1.0/profiles")).collect();
    assert_eq!(posts.len(), 1, "only c1 was created: {posts:?}");
}

#[test]
fn the_fence_stops_a_holder_whose_lease_ran_out_on_its_own_clock() {
    let w = World::new();
    let ((a, _), fake, clock) = (w.keepers("a", "b"), &w.fake, &w.clock_a);
    let incus = Fenced::new(fake, &a);
    rt().block_on(async {
        assert!(a.step().await.expect("take").leads());
        clock.advance(TTL);
        // The record still names it, but a standby may be taking over now.
        let e = incus.delete_instance("x").await.expect_err("fenced");
        assert!(e.to_string().contains("past its TTL"), "{e}");
        // Its next look takes a new generation (nobody else wrote).
        assert_eq!(standing(&a.step().await.expect("step")), "lead #2.0");
        incus.delete_instance("x").await.expect("writes again");
    });
}

/// A run pins the generation it planned under: once the lease lapsed and was taken again
/// (even by this agent), that run's writes are refused; the next run's pass.
#[test]
fn a_pinned_fence_refuses_writes_under_a_later_generation() {
    let w = World::new();
    let ((a, _), clock) = (w.keepers("a", "b"), &w.clock_a);
    rt().block_on(async {
        let e = a.check_pinned("delete instance x", 1).await.expect_err("never held");
        assert!(e.to_string().contains("does not hold"), "{e}");
        assert!(a.step().await.expect("take").leads());
        let pinned = a.held_generation().expect("held");
        a.check_pinned("delete instance x", pinned).await.expect("the run's own lease");
        clock.advance(TTL);
        assert_eq!(standing(&a.step().await.expect("step")), "lead #2.0");
        a.check("delete instance x").await.expect("the plain fence passes");
        let e = a.check_pinned("delete instance x", pinned).await.expect_err("stale run");
        assert!(matches!(e, IncusError::Fenced { .. }), "{e}");
        assert!(e.to_string().contains("planned under cluster lease generation 1"), "{e}");
        a.check_pinned("delete instance x", 2).await.expect("a run planned under generation 2");
        // Given up and taken again: the generation goes on rising, so a run pinned to an
        // earlier one never passes again.
        assert!(a.release().await.expect("release"));
        assert_eq!(standing(&a.step().await.expect("step")), "lead #3.0");
        let e = a.check_pinned("delete instance x", 2).await.expect_err("stale run");
        assert!(e.to_string().contains("now holds generation 3"), "{e}");
    });
}

/// Two agents configured with the same member name do not take the lease from each other
/// at every look (both would apply in turn): the one that finds a newer generation under
/// its name than it holds follows, and its writes are fenced.
#[test]
fn two_agents_with_one_member_name_do_not_take_turns() {
    let w = World::new();
    let (a, b) = w.keepers("m", "m");
    let (clock_a, clock_b) = (&w.clock_a, &w.clock_b);
    rt().block_on(async {
        assert_eq!(standing(&a.step().await.expect("a")), "lead #1.0");
        // b starts: a lease under its name it did not write is its own from an earlier
        // run (it cannot tell yet): it takes a new generation.
        assert_eq!(standing(&b.step().await.expect("b")), "lead #2.0");
        // a finds generation 2 under its name while it holds 1: it follows, and keeps
        // following while b renews.
        for (i, advance) in [1_000, 10_000, 10_000, 10_000].into_iter().enumerate() {
            clock_a.advance(Duration::from_millis(advance));
            clock_b.advance(Duration::from_millis(advance));
            let got_a = standing(&a.step().await.expect("a"));
            assert!(got_a.starts_with("follow m#2"), "look {i}: {got_a}");
            assert!(b.step().await.expect("b").leads(), "look {i}");
            let e = a.check("delete instance x").await.expect_err("a is fenced");
            assert!(e.to_string().contains("now held by `m` (generation 2)"), "{e}");
        }
    });
}

#[test]
fn a_take_that_lost_a_race_is_seen_when_read_back() {
    let fake = FakeIncus::new(LiveState::default());
    let clock = FakeClock::new();
    let rival = r#"{"holder":"b","generation":1,"beat":0,"since":1,"renewed":1,"ttl_s":30}"#;
    // A rival's take lands just after this agent's, and both are told "done".
    fake.race_next_swap(LEASE_KEY, rival);
    let a = Keeper::new(&fake, &clock, "a", TTL);
    rt().block_on(async {
        assert_eq!(standing(&a.step().await.expect("step")), "follow b#1 in 30000ms");
        // The pause before the read-back was taken on the agent's clock.
        assert_eq!(clock.elapsed(), Duration::from_millis(500));
        let e = Fenced::new(&fake, &a).delete_instance("x").await.expect_err("fenced");
        assert!(e.to_string().contains("does not hold"), "{e}");
    });
}

/// A leader that stands aside (suspended, report mode, stopping) gives the lease up at
/// once (only the holder can), and neither renews nor takes it back until it rejoins;
/// then it follows whoever took it.
#[test]
fn a_leader_standing_aside_gives_the_lease_up_until_it_rejoins() {
    let w = World::new();
    let ((a, b), fake) = (w.keepers("a", "b"), &w.fake);
    let clock_a = &w.clock_a;
    rt().block_on(async {
        assert!(a.step().await.expect("a takes").leads());
        assert!(!b.step().await.expect("b follows").leads());
        assert!(a.stand_aside().await.expect("stand aside"), "a held it");
        let given_up = fake.shared(LEASE_KEY);
        assert!(
            matches!(Record::parse(given_up.as_deref()), Record::Held(l) if l.released() && l.generation == 1),
            "given up at once, its generation kept: {given_up:?}"
        );
        // Its renewal looks write nothing, even on a given-up key and past a whole TTL.
        for _ in 0..2 {
            clock_a.advance(TTL);
            assert_eq!(standing(&a.step().await.expect("a looks")), "follow ? in 0ms");
            assert_eq!(fake.shared(LEASE_KEY), given_up);
        }
        // Only the holder gives it up; the standby takes it at its next look, with the
        // next generation.
        assert!(!b.release().await.expect("b holds nothing"), "b had nothing to release");
        assert_eq!(standing(&b.step().await.expect("b takes")), "lead #2.0");
        assert!(matches!(Record::parse(fake.shared(LEASE_KEY).as_deref()), Record::Held(l) if l.holder == "b" && !l.released()));
        clock_a.advance(TTL);
        assert_eq!(standing(&a.step().await.expect("a looks")), "follow b#2 in 0ms");
        a.rejoin();
        assert_eq!(standing(&a.step().await.expect("a rejoins")), "follow b#2 in 30000ms");
        // The key deleted by hand: generations go on from the highest seen, not from 1.
        fake.set_shared(LEASE_KEY, None);
        assert_eq!(standing(&a.step().await.expect("a takes")), "lead #3.0");
        assert_eq!(standing(&b.step().await.expect("b sees it")), "follow a#3 in 30000ms lost");
        fake.set_shared(LEASE_KEY, None);
        assert_eq!(standing(&b.step().await.expect("b takes")), "lead #4.0");
        assert!(b.release().await.expect("b gives it up"));
        // a still thinks it holds generation 3 (it has not looked since): it reads the
        // lease and finds nothing of its own to give up.
        assert!(!a.stand_aside().await.expect("nothing held"), "a held nothing to give up");
        // A member that stays aside, sync after sync, holds nothing: it asks nothing.
        fake.take_calls();
        assert!(!a.stand_aside().await.expect("nothing held"), "still nothing");
        assert_eq!(fake.take_calls(), Vec::<String>::new(), "no request for a lease not held");
    });
}

/// The leader writes a shared key (the anti-rollback mark) under its lease; once the lease
/// lapsed and another agent took it, the same write is refused and nothing is sent.
#[test]
fn a_shared_key_is_written_only_under_the_pinned_lease() {
    let w = World::new();
    let ((a, b), fake) = (w.keepers("a", "b"), &w.fake);
    let clock_b = &w.clock_b;
    let key = "user.veza-agent.applied.h";
    rt().block_on(async {
        assert!(a.step().await.expect("a takes").leads());
        let pinned = a.held_generation().expect("held");
        a.write_shared(key, Some("c1"), pinned).await.expect("the leader writes");
        assert_eq!(fake.shared(key).as_deref(), Some("c1"));
        // The lease and the key live side by side: the lease is still a's.
        assert!(a.step().await.expect("a renews").leads());
        assert_eq!(fake.shared(key).as_deref(), Some("c1"));
        // a falls silent; b takes over after a whole TTL.
        assert!(!b.step().await.expect("b follows").leads());
        clock_b.advance(TTL);
        assert!(b.step().await.expect("b takes over").leads());
        fake.take_calls();
        let e = a.write_shared(key, Some("c0"), pinned).await.expect_err("fenced");
        assert!(matches!(e, IncusError::Fenced { .. }), "{e}");
        assert_eq!(fake.shared(key).as_deref(), Some("c1"), "nothing written");
        assert_eq!(fake.take_calls(), ["GET /1.0/projects/default"], "only the fence's read");
    });
}
