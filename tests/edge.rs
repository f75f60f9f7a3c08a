//! The HAProxy edge: rendering (snapshots of the shipped manifests, errors, `haproxy -c`
//! on the full prod + staging config) and installing into a real HAProxy 2.6 in
//! master-worker mode on 127.0.0.1 (color switch under load with zero failed requests,
//! invalid config rejected, kill -9 of the master mid-reload, sticky cookies per
//! environment, health observation), on the host and inside a Debian system container.
//!
//! Backends are tiny HTTP servers in this process: `/health` answers 200 or 503, every
//! other path answers the backend's label. Snapshots live in `tests/snapshots/edge/`;
//! `VEZA_UPDATE_SNAPSHOTS=1` rewrites them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use veza_host::haproxy::parse::{
    AdminState, parse_servers_state, parse_show_proc, parse_show_stat,
};
use veza_host::haproxy::{
    EdgeError, EdgePaths, EdgeRuntime, HostRuntime, IncusExec, InstallError, InstallOptions,
    InstallOutcome, InstanceRuntime, ReloadOutcome, ServerStatus, edge_health, install,
};
use veza_host::process::Cmd;
use veza_model::manifest::Color;
use veza_plan::edge::{BackendKind, EdgeEnv, EdgeSettings, RenderError, RenderedEdge, render_edge};
use veza_testkit::incus::{DEBIAN_IMAGE, require_haproxy, require_incus};
use veza_testkit::{Haproxy, HttpReply};

const BLUE: &str = "1111111111111111111111111111111111111111";
const GREEN: &str = "2222222222222222222222222222222222222222";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------ manifests

/// Parses and validates manifests together (as the agent does) and builds their edges.
fn envs_from(files: &[(String, Vec<u8>)], overrides: &[(&str, &str, Color)]) -> Vec<EdgeEnv> {
    let parsed = veza_model::load(files).unwrap_or_else(|problems| {
        panic!("test manifests do not validate: {problems:#?}");
    });
    parsed
        .iter()
        .filter_map(|(_, p)| {
            let env = &p.manifest.metadata.name;
            let o: BTreeMap<String, Color> = overrides
                .iter()
                .filter(|(e, _, _)| e == env)
                .map(|(_, app, color)| (app.to_string(), *color))
                .collect();
            EdgeEnv::from_manifest(&p.manifest, &o).expect("edge of a valid manifest")
        })
        .collect()
}

fn shipped(paths: &[&str]) -> Vec<(String, Vec<u8>)> {
    paths
        .iter()
        .map(|p| {
            (p.to_string(), std::fs::read(repo_root().join(p)).expect("read a shipped manifest"))
        })
        .collect()
}

/// One app of a test environment: name, path prefix (none: default route), blue and
/// green loopback ports.
struct TestApp<'a> {
    name: &'a str,
    prefix: Option<&'a str>,
    ports: (u16, u16),
    active: Color,
}

/// A manifest for environment `env` served under `host`, with both slots filled.
fn test_manifest(env: &str, host: &str, cookie: &str, listen: u16, apps: &[TestApp<'_>]) -> String {
    let mut y = format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: {env}, host: localhost}}\napps:\n"
    );
    for a in apps {
        y.push_str(&format!(
            "  {name}:\n    image: veza-test-busybox\n    port: 8080\n    artifact:\n      url: \"file:///nonexistent/{{release}}.tar.gz\"\n      sha256:\n        {BLUE}: {z}\n        {GREEN}: {z}\n    health: {{path: /health, interval: 1s, timeout: 1s, rise: 1, fall: 2}}\n    upstream:\n      loopback_ports: {{blue: {b}, green: {g}}}\n    slots:\n      blue: {{release: {BLUE}}}\n      green: {{release: {GREEN}}}\n    active: {active}\n",
            name = a.name,
            z = "0".repeat(64),
            b = a.ports.0,
            g = a.ports.1,
            active = a.active,
        ));
    }
    y.push_str(&format!(
        "edge:\n  runs_in: host\n  hosts: [{host}]\n  sticky_cookie: {cookie}\n  listen: {{http: \"127.0.0.1:{listen}\"}}\n  routes:\n"
    ));
    let mut routes: Vec<&TestApp<'_>> = apps.iter().collect();
    routes.sort_by_key(|a| a.prefix.is_none());
    for a in routes {
        match a.prefix {
            Some(p) => y.push_str(&format!("    - {{path_prefix: {p}, app: {}}}\n", a.name)),
            None => y.push_str(&format!("    - {{app: {}}}\n", a.name)),
        }
    }
    y
}

// ------------------------------------------------------------------ snapshots

fn assert_snapshot(name: &str, actual: &str) {
    let path = repo_root().join("tests/snapshots/edge").join(name);
    if std::env::var_os("VEZA_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(repo_root().join("tests/snapshots/edge"))
            .expect("create the snapshot dir");
        std::fs::write(&path, actual).expect("write the snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        return;
    }
    let mut new = path.clone().into_os_string();
    new.push(".new");
    let new = PathBuf::from(new);
    std::fs::write(&new, actual).expect("write the new rendering");
    let diff = Cmd::new("diff")
        .arg("-u")
        .arg(&path)
        .arg(&new)
        .output()
        .map(|o| o.stdout_str())
        .unwrap_or_else(|e| format!("(diff failed: {e})"));
    panic!(
        "the rendered config differs from the snapshot {}:\n{diff}\n\
         The new rendering is in {}. If the change is intended, update the snapshots with\n  \
         VEZA_UPDATE_SNAPSHOTS=1 cargo test --test integration edge::\nand review the diff.",
        path.display(),
        new.display()
    );
}

#[test]
fn snapshot_prod_and_staging() {
    let envs = envs_from(&shipped(&["manifests/prod.yaml", "manifests/staging.yaml"]), &[]);
    let rendered = render_edge(&envs, &EdgeSettings::default()).unwrap();
    assert_snapshot("prod-staging.cfg", &rendered.config);

    // The summary says which server is active in each backend.
    let active: Vec<(String, Option<String>, usize)> = rendered
        .summary
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.active().map(|s| s.name.clone()), b.servers.len()))
        .collect();
    let want: Vec<(&str, Option<&str>, usize)> = vec![
        ("prod_backend", Some("blue-0bd3e563b2"), 2),
        ("prod_stream", Some("blue-5a1c3e7b9d"), 1),
        ("prod_web", Some("green-7c9e1b3d5f"), 1),
        ("staging_backend", Some("green-a4c6e8b0d2"), 2),
        ("staging_stream", Some("blue-5a1c3e7b9d"), 1),
        ("staging_web", Some("blue-7c9e1b3d5f"), 1),
        ("ext_forgejo", None, 1),
        ("ext_talas-vitrine", None, 1),
        ("default_503", None, 0),
    ];
    let got: Vec<(&str, Option<&str>, usize)> =
        active.iter().map(|(n, a, c)| (n.as_str(), a.as_deref(), *c)).collect();
    assert_eq!(got, want);
    let prod_backend = &rendered.summary.backends[0];
    assert_eq!(prod_backend.kind, BackendKind::App { env: "prod".into(), app: "backend".into() });
    assert_eq!(prod_backend.servers[0].address, "veza-backend-blue.lxd:8080");
    assert_eq!(prod_backend.hosts, ["veza.fr", "www.veza.fr"]);
    let json = serde_json::to_value(&rendered.summary).unwrap();
    assert_eq!(json["backends"][0]["kind"], "app");
    assert_eq!(json["backends"][0]["servers"][0]["color"], "blue");
    assert_eq!(json["backends"][0]["servers"][1]["enabled"], false);
}

#[test]
fn snapshot_minimal_example() {
    let envs = envs_from(&shipped(&["manifests/examples/minimal.yaml"]), &[]);
    let rendered = render_edge(&envs, &EdgeSettings::default()).unwrap();
    assert_snapshot("minimal.cfg", &rendered.config);
    assert_eq!(rendered.summary.binds, ["127.0.0.1:18100"]);
}

#[test]
fn rendering_is_deterministic_and_independent_of_input_order() {
    let mut envs = envs_from(&shipped(&["manifests/prod.yaml", "manifests/staging.yaml"]), &[]);
    let a = render_edge(&envs, &EdgeSettings::default()).unwrap();
    envs.reverse();
    let b = render_edge(&envs, &EdgeSettings::default()).unwrap();
    assert_eq!(a, b);
    // An override flips only that backend's enabled server.
    let flipped = envs_from(
        &shipped(&["manifests/prod.yaml", "manifests/staging.yaml"]),
        &[("prod", "backend", Color::Green)],
    );
    let c = render_edge(&flipped, &EdgeSettings::default()).unwrap();
    let diff: Vec<(&str, &str)> =
        a.config.lines().zip(c.config.lines()).filter(|(x, y)| x != y).collect();
    assert_eq!(
        diff,
        [
            (
                "# prod/backend: active blue, routes: /api",
                "# prod/backend: active green, routes: /api"
            ),
            (
                "    server blue-0bd3e563b2 veza-backend-blue.lxd:8080 check cookie blue-0bd3e563b2",
                "    server blue-0bd3e563b2 veza-backend-blue.lxd:8080 check weight 0"
            ),
            (
                "    server green-e97b91f010 veza-backend-green.lxd:8080 check weight 0",
                "    server green-e97b91f010 veza-backend-green.lxd:8080 check cookie green-e97b91f010"
            ),
        ]
    );
}

/// An environment like the first of `envs`, named `name`, on the host `name.localhost`.
fn another_env(envs: &[EdgeEnv], name: &str) -> EdgeEnv {
    EdgeEnv { name: name.into(), hosts: vec![format!("{name}.localhost")], ..envs[0].clone() }
}

#[test]
fn render_errors_name_the_problem() {
    let base = envs_from(&shipped(&["manifests/examples/minimal.yaml"]), &[]);
    type Edit = fn(&mut Vec<EdgeEnv>);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("duplicate env", |e| e.push(e[0].clone()), "environment `demo` is given twice"),
        (
            "active slot empty",
            |e| {
                let app = e[0].apps.get_mut("hello").unwrap();
                app.active = Color::Green;
                app.slots.remove(&Color::Green);
            },
            "`demo/hello`: the active color `green` has an empty slot",
        ),
        (
            "unknown route app",
            |e| e[0].routes[0].app = "nope".into(),
            "points to undefined app `nope`",
        ),
        (
            "newline in a host name",
            |e| e[0].hosts[0] = "demo.localhost\n    bogus".into(),
            "host name `demo.localhost\n    bogus` cannot be written into haproxy.cfg",
        ),
        (
            "space in a health path",
            |e| e[0].apps.get_mut("hello").unwrap().health.path = "/a b".into(),
            "health path `/a b` cannot be written",
        ),
        (
            "listen conflict",
            |e| {
                let mut other = another_env(e, "other");
                other.listen = Some(("127.0.0.1:9".into(), None));
                e.push(other);
            },
            "edge listen addresses differ",
        ),
        (
            "backend name collision",
            |e| {
                let mut other = another_env(e, "ext");
                other.apps = BTreeMap::from([("forgejo".into(), e[0].apps["hello"].clone())]);
                other.routes[0].app = "forgejo".into();
                other.external_backends.insert(
                    "forgejo".into(),
                    veza_plan::edge::EdgeExternal {
                        hosts: vec!["git.localhost".into()],
                        servers: vec!["127.0.0.1:3000".into()],
                        health_path: None,
                    },
                );
                e.push(other);
            },
            "two backends would both be named `ext_forgejo`",
        ),
    ];
    for (what, edit, want) in cases {
        let mut envs = base.clone();
        edit(&mut envs);
        let err = render_edge(&envs, &EdgeSettings::default()).unwrap_err();
        assert!(err.to_string().contains(want), "{what}: {err}");
    }
    // Overrides must name a declared app.
    let files = shipped(&["manifests/examples/minimal.yaml"]);
    let m = &veza_model::load(&files).unwrap()[0].1.manifest;
    let err =
        EdgeEnv::from_manifest(m, &BTreeMap::from([("nope".into(), Color::Blue)])).unwrap_err();
    assert_eq!(err, RenderError::UnknownOverride { env: "demo".into(), app: "nope".into() });
}

#[test]
fn prod_and_staging_config_passes_haproxy_check() {
    require_haproxy().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A self-signed certificate stands in for /etc/haproxy/certs.
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let (key, crt) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
    Cmd::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=veza.fr",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .run()
        .unwrap();
    let pem = [std::fs::read(&crt).unwrap(), std::fs::read(&key).unwrap()].concat();
    std::fs::write(certs.join("veza.fr.pem"), pem).unwrap();
    let mut envs = envs_from(&shipped(&["manifests/prod.yaml", "manifests/staging.yaml"]), &[]);
    for env in &mut envs {
        if let Some(tls) = &mut env.tls {
            tls.cert_dir = certs.display().to_string();
        }
    }
    let mut settings = test_settings(dir.path());
    settings.chroot = Some(dir.path().display().to_string());
    settings.user = Some("nobody".into());
    settings.group = Some("nogroup".into());
    let rendered = render_edge(&envs, &settings).unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, &rendered.config).unwrap();
    let rt = HostRuntime::new(dir.path().join("master.sock"));
    if let Err(e) = rt.check_config(&cfg) {
        panic!("haproxy rejects the prod + staging edge: {e}\n{}", rendered.config);
    }
    // Unresolvable slot names (no Incus DNS here) do not make the config invalid.
    assert!(rendered.config.contains("init-addr libc,none"));
}

// ------------------------------------------------------------------ real haproxy

fn test_settings(dir: &Path) -> EdgeSettings {
    EdgeSettings {
        stats_socket: dir.join("admin.sock").display().to_string(),
        server_state_file: dir.join("server-state").display().to_string(),
        hard_stop_after: Duration::from_secs(5),
        log: "stderr format short local0 info".into(),
        user: None,
        group: None,
        chroot: None,
        timeout_connect: Duration::from_secs(2),
        timeout_client: Duration::from_secs(10),
        timeout_server: Duration::from_secs(10),
        timeout_http_request: Duration::from_secs(5),
        timeout_tunnel: Duration::from_secs(10),
    }
}

/// An HTTP backend in this process: `/health` → 200 or 503, anything else → its label.
struct Backend {
    port: u16,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(label: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend port");
        let port = listener.local_addr().expect("backend address").port();
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, label) = (healthy.clone(), stop.clone(), label.to_string());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, label) = (h.clone(), label.clone());
                std::thread::spawn(move || serve(conn, &label, &h));
            }
        });
        Backend { port, healthy, stop, thread: Some(thread) }
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, label: &str, healthy: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if path.starts_with("/health") {
        if healthy.load(Ordering::SeqCst) {
            ("200 OK", "ok\n".to_string())
        } else {
            ("503 Service Unavailable", "down\n".to_string())
        }
    } else {
        ("200 OK", format!("{label}\n"))
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
}

/// One GET through the edge with a new connection, bounded by `timeout`.
fn get(
    port: u16,
    host: &str,
    path: &str,
    cookie: Option<&str>,
    timeout: Duration,
) -> Result<HttpReply, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    veza_testkit::http_get_as(addr, host, path, cookie, timeout).map_err(|e| format!("{e:#}"))
}

/// A real HAProxy serving a rendered edge, with the installer's view of it.
struct Edge {
    haproxy: Haproxy,
    runtime: HostRuntime,
    paths: EdgePaths,
    settings: EdgeSettings,
}

impl Edge {
    fn start(render: impl Fn(&EdgeSettings) -> RenderedEdge) -> Edge {
        require_haproxy().expect("haproxy is installed (tests/host/setup)");
        let settings = std::cell::RefCell::new(None);
        let haproxy = Haproxy::start_with(|dir| {
            let s = test_settings(dir);
            let cfg = render(&s).config;
            *settings.borrow_mut() = Some(s);
            cfg
        })
        .expect("start haproxy with the rendered edge");
        let settings = settings.into_inner().expect("settings recorded by start_with");
        let runtime = HostRuntime::new(haproxy.master_socket());
        let paths = EdgePaths {
            config: haproxy.config_path(),
            server_state_file: PathBuf::from(&settings.server_state_file),
        };
        Edge { haproxy, runtime, paths, settings }
    }

    fn install(&self, config: &str) -> Result<InstallOutcome, InstallError> {
        install(&self.runtime, &self.paths, config, &InstallOptions::default())
    }

    fn reloads(&self) -> u64 {
        parse_show_proc(&self.runtime.master("show proc").expect("master CLI"))
            .expect("show proc")
            .master
            .reloads
    }

    /// Waits until `backend/server` shows `status` with a completed check.
    fn wait_status(&self, backend: &str, server: &str, want: &ServerStatus, timeout: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            if let Ok(text) = self.runtime.master("@1 show stat") {
                let health = edge_health(&parse_show_stat(&text).expect("show stat"), None);
                if let Some(s) =
                    health.iter().find(|b| b.backend == backend).and_then(|b| b.server(server))
                {
                    if &s.status == want && s.check_status.as_deref() != Some("INI") {
                        return;
                    }
                    last = format!("{} {:?}", s.status_text, s.check_status);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{backend}/{server} not {want:?} within {timeout:?} (last: {last})\n{}",
            self.haproxy.log()
        );
    }
}

/// Kills the master's process group (master and workers, which `spawn_daemon` put in
/// their own group), for tests that kill the master itself.
fn kill_group(master_pid: u32) {
    let _ = Cmd::new("kill").args(["-KILL", "--", &format!("-{master_pid}")]).output();
}

fn demo_env(listen: u16, blue: &Backend, green: &Backend, active: Color) -> Vec<EdgeEnv> {
    let yaml = test_manifest(
        "demo",
        "demo.localhost",
        "VEZA_demo",
        listen,
        &[TestApp { name: "hello", prefix: None, ports: (blue.port, green.port), active }],
    );
    envs_from(&[("demo.yaml".into(), yaml.into_bytes())], &[])
}

/// The demo environment on an edge of its own: both colors' backends running, the edge
/// on `port` serving blue.
struct DemoEdge {
    blue: Backend,
    green: Backend,
    port: u16,
    edge: Edge,
}

impl DemoEdge {
    fn start() -> DemoEdge {
        let (blue, green) = (Backend::start("blue"), Backend::start("green"));
        let port = free_port();
        let edge = Edge::start(|s| {
            render_edge(&demo_env(port, &blue, &green, Color::Blue), s).expect("the demo renders")
        });
        DemoEdge { blue, green, port, edge }
    }
}

fn free_port() -> u16 {
    veza_testkit::free_port().expect("a free port")
}

#[test]
fn color_switch_under_load_drops_no_request() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let port = free_port();
    let render = |active: Color, s: &EdgeSettings| {
        render_edge(&demo_env(port, &blue, &green, active), s).unwrap()
    };
    let edge = Edge::start(|s| render(Color::Blue, s));
    edge.wait_status("demo_hello", "blue-1111111111", &ServerStatus::Up, Duration::from_secs(10));
    assert_eq!(
        get(port, "demo.localhost", "/", None, Duration::from_secs(2)).unwrap().body,
        "blue\n"
    );

    const THREADS: usize = 4;
    const PER_THREAD: usize = 300;
    let running = AtomicBool::new(true);
    let (results, switches) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut failures = Vec::new();
                    let mut colors: BTreeMap<String, usize> = BTreeMap::new();
                    for i in 0..PER_THREAD {
                        match get(port, "demo.localhost", "/", None, Duration::from_secs(2)) {
                            Ok(r) if r.status == 200 => {
                                *colors.entry(r.body.trim().to_string()).or_default() += 1
                            }
                            Ok(r) => failures.push(format!("#{i}: HTTP {} {:?}", r.status, r.body)),
                            Err(e) => failures.push(format!("#{i}: {e}")),
                        }
                        // Keep the loop running until the switches are done.
                        if running.load(Ordering::SeqCst) || i % 4 == 0 {
                            std::thread::sleep(Duration::from_millis(3));
                        }
                    }
                    (failures, colors)
                })
            })
            .collect();
        let mut switches = Vec::new();
        for active in [Color::Green, Color::Blue, Color::Green] {
            std::thread::sleep(Duration::from_millis(150));
            let started = Instant::now();
            let out = edge.install(&render(active, &edge.settings).config).unwrap();
            let InstallOutcome::Installed(report) = out else { panic!("{out:?}") };
            assert!(matches!(report.reload, ReloadOutcome::Reloaded { .. }), "{report:?}");
            switches.push((active, started.elapsed(), report));
        }
        running.store(false, Ordering::SeqCst);
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (results, switches)
    });
    let failures: Vec<&String> = results.iter().flat_map(|(f, _)| f).collect();
    let mut colors: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, c) in &results {
        for (k, v) in c {
            *colors.entry(k.as_str()).or_default() += v;
        }
    }
    eprintln!(
        "edge switch under load: {} requests, {} failed, by color {colors:?}",
        THREADS * PER_THREAD,
        failures.len()
    );
    for (active, took, report) in &switches {
        eprintln!(
            "  switch to {active}: {took:?} (validate {:?}, reload {:?}, state lines dropped {:?})",
            report.validate_time, report.reload_time, report.dropped_state
        );
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:#?}\n{}",
        failures.len(),
        edge.haproxy.log()
    );
    assert_eq!(colors.values().sum::<usize>(), THREADS * PER_THREAD);
    assert!(
        colors.get("blue").copied().unwrap_or(0) > 0
            && colors.get("green").copied().unwrap_or(0) > 0,
        "{colors:?}"
    );
    assert_eq!(
        get(port, "demo.localhost", "/", None, Duration::from_secs(2)).unwrap().body,
        "green\n"
    );
    assert_eq!(edge.reloads(), 3);
    // Both servers keep their state across every switch (only the config's weights change),
    // so the switched-on server is serving at once, its checks already passed, and the
    // switched-off one is still checked.
    assert!(switches.iter().all(|(_, _, r)| r.dropped_state.is_empty()), "{switches:?}");
    let stat = parse_show_stat(&edge.runtime.master("@1 show stat").unwrap()).unwrap();
    let health = edge_health(&stat, None);
    for server in ["blue-1111111111", "green-2222222222"] {
        let h = health[0].server(server).unwrap();
        assert_eq!(
            (&h.status, h.check_status.as_deref()),
            (&ServerStatus::Up, Some("L7OK")),
            "{h:?}"
        );
    }

    // Same config again: nothing written, no reload.
    assert_eq!(
        edge.install(&render(Color::Green, &edge.settings).config).unwrap(),
        InstallOutcome::Unchanged
    );
    assert_eq!(edge.reloads(), 3);
}

#[test]
fn invalid_config_is_rejected_and_the_old_one_keeps_serving() {
    let DemoEdge { blue, green, port, edge } = DemoEdge::start();
    let live_before = std::fs::read(&edge.paths.config).unwrap();
    let good =
        render_edge(&demo_env(port, &blue, &green, Color::Green), &edge.settings).unwrap().config;
    let bad = good.replacen("frontend fe_edge\n", "frontend fe_edge\n    bogus_keyword\n", 1);
    assert_ne!(bad, good);
    let err = edge.install(&bad).unwrap_err();
    match &err {
        InstallError::Invalid { stderr, .. } => {
            assert!(stderr.contains("unknown keyword 'bogus_keyword'"), "{stderr}")
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(std::fs::read(&edge.paths.config).unwrap(), live_before);
    assert!(!edge.paths.candidate().exists(), "the rejected candidate is removed");
    assert_eq!(edge.reloads(), 0, "an invalid config is never reloaded");
    let r = get(port, "demo.localhost", "/", None, Duration::from_secs(2)).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "blue\n"));
}

/// Delegates to the host runtime, killing the master with SIGKILL around `reload`.
struct KillMasterOnReload<'a> {
    inner: &'a HostRuntime,
    master_pid: u32,
    before_sending: bool,
}

impl EdgeRuntime for KillMasterOnReload<'_> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, EdgeError> {
        self.inner.read_file(path)
    }
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), EdgeError> {
        self.inner.write_file(path, bytes)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<(), EdgeError> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> Result<(), EdgeError> {
        self.inner.remove_file(path)
    }
    fn check_config(&self, path: &Path) -> Result<(), EdgeError> {
        self.inner.check_config(path)
    }
    fn master(&self, command: &str) -> Result<String, EdgeError> {
        let kill = || {
            Cmd::new("kill")
                .args(["-KILL", &self.master_pid.to_string()])
                .run()
                .expect("kill -9 the master");
        };
        if command != "reload" {
            return self.inner.master(command);
        }
        if self.before_sending {
            kill();
            std::thread::sleep(Duration::from_millis(50));
        }
        let answer = self.inner.master(command);
        if !self.before_sending {
            kill();
        }
        answer
    }
}

#[test]
fn kill_9_of_the_master_mid_reload_leaves_a_valid_config() {
    for before_sending in [true, false] {
        let DemoEdge { blue, green, port, edge } = DemoEdge::start();
        let master_pid = edge.haproxy.pid();
        let new = render_edge(&demo_env(port, &blue, &green, Color::Green), &edge.settings)
            .unwrap()
            .config;
        let rt = KillMasterOnReload { inner: &edge.runtime, master_pid, before_sending };
        let result = install(
            &rt,
            &edge.paths,
            &new,
            &InstallOptions { reload_timeout: Duration::from_secs(3), ..InstallOptions::default() },
        );
        kill_group(master_pid);
        let err = result.expect_err("the reload cannot be confirmed by a dead master");
        assert!(matches!(err, InstallError::ReloadFailed { .. }), "{err}");
        // Whatever the interleaving, the file on disk is a config haproxy accepts.
        if let Err(e) = edge.runtime.check_config(&edge.paths.config) {
            panic!(
                "before_sending={before_sending}: the live config is invalid after kill -9: {e}"
            );
        }
        assert!(!edge.paths.candidate().exists());
        eprintln!("kill -9 of the master (before_sending={before_sending}): {err}");
    }
}

#[test]
fn sticky_cookies_do_not_leak_across_environments() {
    let backends: BTreeMap<&str, Backend> = ["prod-web", "prod-api", "staging-web", "unused"]
        .into_iter()
        .map(|l| (l, Backend::start(l)))
        .collect();
    let port = free_port();
    let unused = backends["unused"].port;
    let prod = test_manifest(
        "tprod",
        "prod.localhost",
        "VEZA_tprod",
        port,
        &[
            TestApp {
                name: "web",
                prefix: None,
                ports: (backends["prod-web"].port, free_port()),
                active: Color::Blue,
            },
            TestApp {
                name: "api",
                prefix: Some("/api"),
                ports: (backends["prod-api"].port, free_port()),
                active: Color::Blue,
            },
        ],
    );
    let staging = test_manifest(
        "tstaging",
        "staging.localhost",
        "VEZA_tstaging",
        port,
        &[TestApp {
            name: "web",
            prefix: None,
            ports: (backends["staging-web"].port, unused),
            active: Color::Blue,
        }],
    );
    let files = vec![
        ("prod.yaml".to_string(), prod.into_bytes()),
        ("staging.yaml".to_string(), staging.into_bytes()),
    ];
    let _edge = Edge::start(|s| render_edge(&envs_from(&files, &[]), s).unwrap());
    let t = Duration::from_secs(2);
    // Same release in both environments, so both have a server named `blue-1111111111`:
    // only the cookie name keeps a prod session from pinning a staging server.
    let server = "blue-1111111111";
    // (host, path, cookie sent, expected body, expected Set-Cookie prefix or none)
    type Case = (&'static str, &'static str, Option<String>, &'static str, Option<&'static str>);
    let cases: Vec<Case> = vec![
        ("prod.localhost", "/", None, "prod-web", Some("VEZA_tprod=blue-1111111111")),
        ("staging.localhost", "/", None, "staging-web", Some("VEZA_tstaging=blue-1111111111")),
        // A prod cookie sent to staging is not staging's persistence cookie.
        (
            "staging.localhost",
            "/",
            Some(format!("VEZA_tprod={server}")),
            "staging-web",
            Some("VEZA_tstaging="),
        ),
        (
            "prod.localhost",
            "/",
            Some(format!("VEZA_tstaging={server}")),
            "prod-web",
            Some("VEZA_tprod="),
        ),
        // Positive control: the environment's own cookie is recognized (no new cookie).
        ("staging.localhost", "/", Some(format!("VEZA_tstaging={server}")), "staging-web", None),
        ("prod.localhost", "/", Some(format!("VEZA_tprod={server}")), "prod-web", None),
        // Path routes, host matching without port and case.
        ("prod.localhost", "/api", None, "prod-api", Some("VEZA_tprod=")),
        ("prod.localhost", "/api/v1/health", None, "prod-api", Some("VEZA_tprod=")),
        ("prod.localhost", "/apiary", None, "prod-web", Some("VEZA_tprod=")),
        ("PROD.Localhost:8080", "/", None, "prod-web", Some("VEZA_tprod=")),
        ("staging.localhost", "/api", None, "staging-web", Some("VEZA_tstaging=")),
    ];
    for (host, path, cookie, body, set_cookie) in cases {
        let r = get(port, host, path, cookie.as_deref(), t).unwrap();
        let what = format!("{host}{path} cookie={cookie:?}");
        assert_eq!((r.status, r.body.trim()), (200, body), "{what}");
        let sc = r.headers_named("set-cookie");
        match set_cookie {
            Some(prefix) => {
                assert_eq!(sc.len(), 1, "{what}: {sc:?}");
                assert!(sc[0].starts_with(prefix), "{what}: {sc:?}");
            }
            None => assert!(sc.is_empty(), "{what}: {sc:?}"),
        }
    }
    let r = get(port, "nowhere.localhost", "/", None, t).unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("no site is served under this host name"), "{}", r.body);
}

/// A standby HAProxy still holds DOWN (a slot started moments ago: its checks have not
/// caught up) is promoted once the health gate proved it healthy: it serves from the
/// first request, because its stale state line is not carried into the new worker. With
/// a 60 s check interval and rise 3, HAProxy alone would need minutes to see it up.
#[test]
fn a_promoted_standby_haproxy_still_holds_down_serves_from_the_first_request() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    green.set_healthy(false);
    let port = free_port();
    let render = |active: Color, s: &EdgeSettings, inter: &str| {
        let mut r = render_edge(&demo_env(port, &blue, &green, active), s).unwrap();
        r.config = r.config.replace("inter 1s fall 2 rise 1", inter);
        r
    };
    let edge = Edge::start(|s| render(Color::Blue, s, "inter 200ms fall 1 rise 1"));
    edge.wait_status(
        "demo_hello",
        "green-2222222222",
        &ServerStatus::Down,
        Duration::from_secs(10),
    );
    // Slow checks from now on; the state (green DOWN) carries over this reload.
    let slow = "inter 60s fall 2 rise 3";
    edge.install(&render(Color::Blue, &edge.settings, slow).config).unwrap();
    edge.wait_status(
        "demo_hello",
        "green-2222222222",
        &ServerStatus::Down,
        Duration::from_secs(10),
    );
    green.set_healthy(true);

    let running = AtomicBool::new(true);
    let (served, report) = std::thread::scope(|scope| {
        let looper = scope.spawn(|| {
            let mut served: BTreeMap<String, usize> = BTreeMap::new();
            // Bounded: stops when the switch is done, or after 2000 requests.
            for _ in 0..2000 {
                let got = match get(port, "demo.localhost", "/", None, Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => r.body.trim().to_string(),
                    Ok(r) => format!("HTTP {}", r.status),
                    Err(e) => e,
                };
                *served.entry(got).or_default() += 1;
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            served
        });
        std::thread::sleep(Duration::from_millis(100));
        let out = edge.install(&render(Color::Green, &edge.settings, slow).config).unwrap();
        // Requests right after the switch, still inside the loop.
        std::thread::sleep(Duration::from_millis(300));
        running.store(false, Ordering::SeqCst);
        (looper.join().unwrap(), out)
    });
    let InstallOutcome::Installed(report) = report else { panic!("{report:?}") };
    let failed: usize = served
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "blue" | "green"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(failed, 0, "requests during the switch: {served:?}\n{}", edge.haproxy.log());
    assert!(served.get("green").copied().unwrap_or(0) > 0, "{served:?}");
    let dropped: Vec<_> =
        report.dropped_state.iter().map(|d| (d.server.as_str(), d.reason)).collect();
    assert_eq!(dropped, [("green-2222222222", veza_host::haproxy::parse::DropReason::Enabled)]);
    for _ in 0..5 {
        let r = get(port, "demo.localhost", "/", None, Duration::from_secs(2)).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "green\n"));
    }
}

#[test]
fn health_of_real_servers_is_observed() {
    let DemoEdge { blue, green: _green, port, edge } = DemoEdge::start();
    let (b, g) = ("blue-1111111111", "green-2222222222");
    edge.wait_status("demo_hello", b, &ServerStatus::Up, Duration::from_secs(10));
    let stat = parse_show_stat(&edge.runtime.master("@1 show stat").unwrap()).unwrap();
    let state =
        parse_servers_state(&edge.runtime.master("@1 show servers state").unwrap()).unwrap();
    let health = edge_health(&stat, Some(&state));
    let names: Vec<&str> = health.iter().map(|h| h.backend.as_str()).collect();
    assert_eq!(names, ["demo_hello", "default_503"]);
    let hello = &health[0];
    let blue_h = hello.server(b).unwrap();
    assert_eq!((blue_h.check_status.as_deref(), blue_h.check_code), (Some("L7OK"), Some(200)));
    assert_eq!(blue_h.admin, Some(AdminState(0)));
    assert_eq!(blue_h.addr.as_deref(), Some(format!("127.0.0.1:{}", blue.port).as_str()));
    // The standby (`weight 0`) is checked like the active color, so a promotion finds its
    // health already known.
    edge.wait_status("demo_hello", g, &ServerStatus::Up, Duration::from_secs(10));
    let stat = parse_show_stat(&edge.runtime.master("@1 show stat").unwrap()).unwrap();
    let green_h = edge_health(&stat, Some(&state))[0].server(g).unwrap().clone();
    assert_eq!((green_h.check_status.as_deref(), green_h.check_code), (Some("L7OK"), Some(200)));
    assert_eq!(green_h.admin, Some(AdminState(0)), "{green_h:?}");

    blue.set_healthy(false);
    edge.wait_status("demo_hello", b, &ServerStatus::Down, Duration::from_secs(10));
    let stat = parse_show_stat(&edge.runtime.master("@1 show stat").unwrap()).unwrap();
    let blue_h = edge_health(&stat, None)[0].server(b).unwrap().clone();
    assert_eq!((blue_h.check_status.as_deref(), blue_h.check_code), (Some("L7STS"), Some(503)));
    assert_eq!(blue_h.check_desc.as_deref(), Some("Layer7 wrong status"));
    assert!(blue_h.last_change_secs.is_some());
    // The healthy standby still gets nothing: traffic moves only through a promotion.
    assert_eq!(get(port, "demo.localhost", "/", None, Duration::from_secs(2)).unwrap().status, 503);
    blue.set_healthy(true);
    edge.wait_status("demo_hello", b, &ServerStatus::Up, Duration::from_secs(10));
}

/// Render + validate + reload, ten times, alternating colors: prints the medians.
#[test]
fn bench_render_validate_reload() {
    let DemoEdge { blue, green, port, edge } = DemoEdge::start();
    let prod_staging = envs_from(&shipped(&["manifests/prod.yaml", "manifests/staging.yaml"]), &[]);
    let mut render_demo = Vec::new();
    let mut render_full = Vec::new();
    let mut validate = Vec::new();
    let mut reload = Vec::new();
    let mut total = Vec::new();
    for i in 0..10 {
        let active = if i % 2 == 0 { Color::Green } else { Color::Blue };
        let t0 = Instant::now();
        let envs = demo_env(port, &blue, &green, active);
        let rendered = render_edge(&envs, &edge.settings).unwrap();
        render_demo.push(t0.elapsed());
        let t = Instant::now();
        render_edge(&prod_staging, &EdgeSettings::default()).unwrap();
        render_full.push(t.elapsed());
        let t1 = Instant::now();
        let out = edge.install(&rendered.config).unwrap();
        let InstallOutcome::Installed(report) = out else { panic!("{out:?}") };
        total.push(render_demo[i] + t1.elapsed());
        validate.push(report.validate_time);
        reload.push(report.reload_time);
    }
    let t = Instant::now();
    let unchanged = edge
        .install(
            &render_edge(&demo_env(port, &blue, &green, Color::Blue), &edge.settings)
                .unwrap()
                .config,
        )
        .unwrap();
    let noop = t.elapsed();
    assert_eq!(unchanged, InstallOutcome::Unchanged);
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "edge bench (median of 10): render demo {:?}, render prod+staging {:?}, validate {:?}, reload+confirm {:?}, render+install total {:?}; no-change install {noop:?}",
        median(&mut render_demo),
        median(&mut render_full),
        median(&mut validate),
        median(&mut reload),
        median(&mut total),
    );
}

// ------------------------------------------------------------------ inside an instance

#[test]
fn edge_inside_an_incus_instance() {
    require_incus().unwrap();
    let container = veza_testkit::TestContainer::spec(DEBIAN_IMAGE)
        .config("user.veza.managed", "true")
        .create()
        .unwrap();
    container.wait_for_systemd(Duration::from_secs(60)).unwrap();
    // Two "slots" inside the instance: a second haproxy answering its color.
    let apps = "global\n    log stderr local0\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\nfrontend blue\n    bind 127.0.0.1:18101\n    http-request return status 200 content-type text/plain string blue\nfrontend green\n    bind 127.0.0.1:18102\n    http-request return status 200 content-type text/plain string green\n";
    container.push_bytes(apps.as_bytes(), "/root/apps.cfg", 0o644).unwrap();
    container.exec_ok(&["haproxy", "-D", "-f", "/root/apps.cfg", "-p", "/run/apps.pid"]).unwrap();
    container.exec_ok(&["systemctl", "is-active", "haproxy"]).unwrap();

    let rt_tokio =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let incus = veza_host::incus::IncusClient::local();
    let exec = IncusExec { incus: &incus, handle: rt_tokio.handle().clone() };
    let rt = InstanceRuntime::new(exec, container.name());
    let paths = EdgePaths::debian();
    let settings = EdgeSettings { log: "/dev/log local0".into(), ..EdgeSettings::default() };
    let render = |active: Color| {
        let yaml =
            std::fs::read_to_string(repo_root().join("manifests/examples/minimal.yaml")).unwrap();
        let yaml = yaml.replace("green: {}", &format!("green: {{release: {GREEN}}}")).replace(
            "      sha256:\n",
            &format!("      sha256:\n        {GREEN}: {z}\n", z = "0".repeat(64)),
        );
        let envs =
            envs_from(&[("minimal.yaml".into(), yaml.into_bytes())], &[("demo", "hello", active)]);
        render_edge(&envs, &settings).unwrap().config
    };
    let curl = || {
        container
            .exec_ok(&[
                "curl",
                "-s",
                "-m",
                "2",
                "-H",
                "Host: demo.localhost",
                "http://127.0.0.1:18100/",
            ])
            .unwrap()
    };
    let opts = InstallOptions::default();

    let mut timings = Vec::new();
    for (active, want) in [(Color::Blue, "blue"), (Color::Green, "green"), (Color::Blue, "blue")] {
        let t = Instant::now();
        let out = install(&rt, &paths, &render(active), &opts).unwrap();
        let InstallOutcome::Installed(report) = out else { panic!("{out:?}") };
        assert!(matches!(report.reload, ReloadOutcome::Reloaded { .. }), "{report:?}");
        timings.push(t.elapsed());
        // The new worker serves at once; allow a few checks for the first start.
        let start = Instant::now();
        let mut got = curl();
        while got != want && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            got = curl();
        }
        assert_eq!(got, want);
    }
    eprintln!("edge in instance: install+reload {timings:?}");
    assert_eq!(
        install(&rt, &paths, &render(Color::Blue), &opts).unwrap(),
        InstallOutcome::Unchanged
    );
    let live = rt.read_file(&paths.config).unwrap().unwrap();
    let bad = render(Color::Green).replacen(
        "frontend fe_edge\n",
        "frontend fe_edge\n    bogus_keyword\n",
        1,
    );
    let err = install(&rt, &paths, &bad, &opts).unwrap_err();
    assert!(
        matches!(&err, InstallError::Invalid { stderr, .. } if stderr.contains("bogus_keyword")),
        "{err}"
    );
    assert_eq!(rt.read_file(&paths.config).unwrap().unwrap(), live);
    assert_eq!(rt.read_file(&paths.candidate()).unwrap(), None);
    assert_eq!(curl(), "blue");
    let procs = parse_show_proc(&rt.master("show proc").unwrap()).unwrap();
    assert_eq!(procs.master.failed_reloads, 0);
}
