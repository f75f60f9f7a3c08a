//! Tests of the HAProxy output parsers over real HAProxy 2.6.12 output (`../testdata/`).

use veza_model::live::ConfigServer;
use veza_model::manifest::Color;

use super::*;

const PROC: &str = include_str!("../testdata/show-proc.txt");
const PROC_OLD: &str = include_str!("../testdata/show-proc-old-workers.txt");
const PROC_FAILED: &str = include_str!("../testdata/show-proc-failed.txt");
const STAT_ALL: &str = include_str!("../testdata/show-stat-all.csv");
const STAT_DRAIN: &str = include_str!("../testdata/show-stat-drain.csv");
const STATE_DRAIN: &str = include_str!("../testdata/show-servers-state-drain.txt");
/// interfaces.md §2.4, verbatim.
const STATE_DOC: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be_app 1 blue 127.0.0.1 2 0 1 1 44 15 3 3 6 0 0 0 - 18101 - 0 0 - - 0
3 be_app 2 green 127.0.0.1 0 5 1 1 44 1 0 0 14 0 0 0 - 18102 - 0 0 - - 0
";

#[test]
fn show_proc_samples() {
    // (sample, master pid, reloads, failed, [(worker pid, reloads, leaving)])
    type Workers = &'static [(u32, u64, bool)];
    let cases: [(&str, u32, u64, u64, Workers); 3] = [
        (PROC, 27792, 0, 0, &[(27795, 0, false)]),
        (PROC_OLD, 30127, 1, 0, &[(30206, 0, false), (30134, 1, true)]),
        (PROC_FAILED, 30393, 1, 1, &[(30403, 1, false)]),
    ];
    for (text, pid, reloads, failed, workers) in cases {
        let p = parse_show_proc(text).unwrap();
        assert_eq!(
            (p.master.pid, p.master.reloads, p.master.failed_reloads),
            (pid, reloads, failed)
        );
        assert_eq!(p.master.version, "2.6.12-1+deb12u4");
        let got: Vec<_> = p.workers.iter().map(|w| (w.pid, w.reloads, w.leaving)).collect();
        assert_eq!(got, workers);
    }
    assert_eq!(parse_show_proc(PROC_OLD).unwrap().current_workers().count(), 1);
    // interfaces.md §2.6 (failed reload, aligned with spaces)
    let doc = "#<PID>          <type>          <reloads>       <uptime>        <version>\n1038            master          15 [failed: 1]  0d00h03m09s     2.6.12-1+deb12u4\n# workers\n6605            worker          1               0d00h00m14s     2.6.12-1+deb12u4\n";
    let p = parse_show_proc(doc).unwrap();
    assert_eq!((p.master.reloads, p.master.failed_reloads, p.workers[0].pid), (15, 1, 6605));
    for bad in ["", "# workers\n1 worker 0 x y\n", "1 master zero [failed: 0] a b\n"] {
        assert!(parse_show_proc(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn servers_state_samples() {
    // (sample, backend, server, op, admin, port, since)
    let cases = [
        (STATE_DOC, "be_app", "blue", OpState::Running, 0, 18101, 44),
        (STATE_DOC, "be_app", "green", OpState::Stopped, 5, 18102, 44),
        (STATE_DRAIN, "be", "blue", OpState::Running, 8, 28101, 0),
        (STATE_DRAIN, "be", "green", OpState::Stopped, 4, 28102, 4),
        (STATE_DRAIN, "be", "red", OpState::Stopped, 0, 28109, 6),
    ];
    for (text, be, srv, op, admin, port, since) in cases {
        let s = parse_servers_state(text).unwrap();
        assert_eq!(s.version, 1);
        let row = s.rows.iter().find(|r| r.backend == be && r.server == srv).unwrap();
        assert_eq!(
            (row.op_state, row.admin, row.port, row.since_last_change, row.fqdn.as_deref()),
            (op, AdminState(admin), Some(port), since, None),
            "{be}/{srv}"
        );
    }
    assert_eq!(AdminState(5).to_string(), "FMAINT|CMAINT");
    assert_eq!(AdminState(8).to_string(), "FDRAIN");
    assert_eq!(AdminState(0).to_string(), "READY");
    assert!(AdminState(5).config_maintenance() && AdminState(5).in_maintenance());
    assert!(AdminState(8).draining() && !AdminState(8).in_maintenance());
    assert!(parse_servers_state("1\n").is_err());
    assert!(parse_servers_state("x\n").is_err());
    let short =
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n3 be 1\n";
    assert!(parse_servers_state(short).unwrap_err().to_string().contains("line 3"));
}

#[test]
fn show_stat_samples() {
    let rows = parse_show_stat(STAT_ALL).unwrap();
    let health = edge_health(&rows, None);
    let names: Vec<&str> = health.iter().map(|b| b.backend.as_str()).collect();
    assert_eq!(names, ["be", "d503"], "frontends are left out");
    let be = &health[0];
    assert_eq!(be.status, "UP");
    // (server, status, check_status, check_code, desc)
    let cases = [
        ("blue", ServerStatus::Up, Some("L7OK"), Some(200), Some("Layer7 check passed")),
        ("green", ServerStatus::Maint { detail: None }, None, None, None),
        ("red", ServerStatus::Down, Some("L4CON"), None, Some("Layer4 connection problem")),
    ];
    for (srv, status, check, code, desc) in cases {
        let s = be.server(srv).unwrap();
        assert_eq!(
            (&s.status, s.check_status.as_deref(), s.check_code, s.check_desc.as_deref()),
            (&status, check, code, desc),
            "{srv}"
        );
    }
    assert_eq!(be.server("blue").unwrap().addr.as_deref(), Some("127.0.0.1:28101"));
    assert_eq!(be.server("blue").unwrap().last_change_secs, Some(3));

    let rows = parse_show_stat(STAT_DRAIN).unwrap();
    let state = parse_servers_state(STATE_DRAIN).unwrap();
    let health = edge_health(&rows, Some(&state));
    let be = &health[0];
    let blue = be.server("blue").unwrap();
    assert_eq!((&blue.status, blue.admin), (&ServerStatus::Drain, Some(AdminState(8))));
    let green = be.server("green").unwrap();
    assert_eq!(green.status, ServerStatus::GoingUp { passed: 1, of: 2 });
    assert_eq!(green.status_text, "DOWN 1/2");
    assert!(!green.status.serving() && !blue.status.serving());
}

#[test]
fn health_carries_the_color_of_each_app_server() {
    let stat = "# pxname,svname,status,type\nprod_web,blue-0bd3e563b2,UP,2\nprod_web,green-e97b91f010,MAINT,2\nprod_web,BACKEND,UP,1\next_forgejo,srv-10.0.20.105-3000,UP,2\nbe,blue,UP,2\n";
    let health = edge_health(&parse_show_stat(stat).unwrap(), None);
    // (backend, server, color)
    let want = [
        ("prod_web", "blue-0bd3e563b2", Some(Color::Blue)),
        ("prod_web", "green-e97b91f010", Some(Color::Green)),
        ("ext_forgejo", "srv-10.0.20.105-3000", None),
        ("be", "blue", None),
    ];
    let got: Vec<(&str, &str, Option<Color>)> = health
        .iter()
        .flat_map(|b| {
            b.servers.iter().map(move |s| (b.backend.as_str(), s.server.as_str(), s.color))
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn status_strings() {
    for (text, want) in [
        ("UP", ServerStatus::Up),
        ("DOWN", ServerStatus::Down),
        ("UP 1/2", ServerStatus::GoingDown { failed: 1, of: 2 }),
        ("DOWN 1/2", ServerStatus::GoingUp { passed: 1, of: 2 }),
        ("MAINT", ServerStatus::Maint { detail: None }),
        ("MAINT (resolution)", ServerStatus::Maint { detail: Some("resolution".into()) }),
        ("MAINT (via be/srv)", ServerStatus::Maint { detail: Some("via be/srv".into()) }),
        ("DRAIN", ServerStatus::Drain),
        ("NOLB", ServerStatus::NoLb),
        ("no check", ServerStatus::NoCheck),
        ("UP x/y", ServerStatus::Other("UP x/y".into())),
        ("weird", ServerStatus::Other("weird".into())),
    ] {
        assert_eq!(ServerStatus::parse(text), want, "{text}");
    }
    assert!(ServerStatus::GoingDown { failed: 1, of: 3 }.serving());
}

#[test]
fn csv_quoting() {
    assert_eq!(csv_fields(r#"a,"b,c","d""e",,f"#), ["a", "b,c", "d\"e", "", "f"]);
    assert!(parse_show_stat("be,blue,UP\n").is_err(), "data before header");
}

#[test]
fn prune_keeps_continuity_and_drops_what_would_be_stale() {
    let exp = |srv: &str, addr: &str, enabled: bool| ConfigServer {
        backend: "be_app".into(),
        server: srv.into(),
        address: addr.into(),
        enabled,
        backup: false,
    };
    // (expected servers, kept server names, dropped (name, reason))
    type Case = (Vec<ConfigServer>, Vec<&'static str>, Vec<(&'static str, DropReason)>);
    let cases: Vec<Case> = vec![
        // same config: everything kept
        (
            vec![exp("blue", "127.0.0.1:18101", true), exp("green", "127.0.0.1:18102", false)],
            vec!["blue", "green"],
            vec![],
        ),
        // switch to green: green's "disabled" state must not survive
        (
            vec![exp("blue", "127.0.0.1:18101", false), exp("green", "127.0.0.1:18102", true)],
            vec!["blue"],
            vec![("green", DropReason::Enabled)],
        ),
        // green moved to another port; blue gone from the config
        (
            vec![exp("green", "127.0.0.1:18103", false)],
            vec![],
            vec![("blue", DropReason::NotInConfig), ("green", DropReason::AddressChanged)],
        ),
        // other address, same port
        (
            vec![exp("blue", "127.0.0.2:18101", true)],
            vec![],
            vec![("blue", DropReason::AddressChanged), ("green", DropReason::NotInConfig)],
        ),
        // a DNS name with the same port (no fqdn recorded) is kept
        (
            vec![exp("blue", "veza-backend-blue.lxd:18101", true)],
            vec!["blue"],
            vec![("green", DropReason::NotInConfig)],
        ),
    ];
    for (expected, kept, dropped) in cases {
        let p = prune_servers_state(STATE_DOC, &expected).unwrap();
        let state = parse_servers_state(&p.text).unwrap();
        let got: Vec<&str> = state.rows.iter().map(|r| r.server.as_str()).collect();
        assert_eq!(got, kept);
        let got: Vec<(&str, DropReason)> =
            p.dropped.iter().map(|d| (d.server.as_str(), d.reason)).collect();
        assert_eq!(got, dropped);
        assert!(p.text.starts_with(EMPTY_STATE_FILE), "version and header are kept");
    }
    let p = prune_servers_state("", &[]).unwrap();
    assert_eq!(p.text, EMPTY_STATE_FILE);
    assert!(parse_servers_state(EMPTY_STATE_FILE).unwrap().rows.is_empty());
}

/// A dump of the edge as the agent renders it: the standby color is `weight 0`
/// (`srv_iweight` 0) and checked. `be_app`: blue serves, green is an UP standby.
/// `be_new`: blue serves but is DOWN, green is a standby started moments ago (DOWN).
const STATE_WEIGHTS: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be_app 1 blue 127.0.0.1 2 0 1 1 44 15 3 3 6 0 0 0 - 18101 - 0 0 - - 0
3 be_app 2 green 127.0.0.1 2 0 0 0 44 15 3 3 6 0 0 0 - 18102 - 0 0 - - 0
4 be_new 1 blue 127.0.0.1 0 0 1 1 9 11 2 0 6 0 0 0 - 18201 - 0 0 - - 0
4 be_new 2 green 127.0.0.1 0 0 0 0 2 11 2 0 6 0 0 0 - 18202 - 0 0 - - 0
";

#[test]
fn a_promoted_standby_keeps_its_state_only_when_haproxy_holds_it_up() {
    let server = |backend: &str, srv: &str, port: u16, enabled: bool| ConfigServer {
        backend: backend.into(),
        server: srv.into(),
        address: format!("127.0.0.1:{port}"),
        enabled,
        backup: false,
    };
    let (blue_app, green_app, blue_new, green_new) = (
        |on| server("be_app", "blue", 18101, on),
        |on| server("be_app", "green", 18102, on),
        |on| server("be_new", "blue", 18201, on),
        |on| server("be_new", "green", 18202, on),
    );
    // (case, the new config's servers, dropped (backend/server))
    type Case = (&'static str, Vec<ConfigServer>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "same config: everything kept, a DOWN active server stays DOWN",
            vec![blue_app(true), green_app(false), blue_new(true), green_new(false)],
            vec![],
        ),
        (
            "promote the UP standby: its state (UP, checks passed) carries over",
            vec![blue_app(false), green_app(true), blue_new(true), green_new(false)],
            vec![],
        ),
        (
            "promote a standby HAProxy has not seen up: it starts from the config",
            vec![blue_app(true), green_app(false), blue_new(false), green_new(true)],
            vec!["be_new/green"],
        ),
    ];
    for (case, servers, dropped) in cases {
        let p = prune_servers_state(STATE_WEIGHTS, &servers).unwrap();
        let got: Vec<String> = p
            .dropped
            .iter()
            .inspect(|d| assert_eq!(d.reason, DropReason::Enabled, "{case}"))
            .map(|d| format!("{}/{}", d.backend, d.server))
            .collect();
        assert_eq!(got, dropped, "{case}");
        let kept = parse_servers_state(&p.text).unwrap().rows.len();
        assert_eq!(kept, 4 - dropped.len(), "{case}");
    }
    let rows = parse_servers_state(STATE_WEIGHTS).unwrap().rows;
    let weights: Vec<Option<u32>> = rows.iter().map(|r| r.config_weight).collect();
    assert_eq!(weights, [Some(1), Some(0), Some(1), Some(0)]);
}
