//! Client tests against a scripted HTTP/1.1 server on a temporary unix socket: the paths
//! a real incusd only takes under races or faults (HTTP 412 and the bounded retry, `/wait`
//! answering `context deadline exceeded` again and again, an operation that vanished), and
//! the exact requests sent (`If-Match`, the push headers and body).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::incus::{
    ExecRequest, FilePush, Incus, InstanceUpdate, ProfileSpec, ResourceKind, StateChange,
};

struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn reply(status: u16, body: Value) -> Canned {
    Canned { status, headers: Vec::new(), body: body.to_string() }
}

fn with_etag(mut c: Canned, etag: &str) -> Canned {
    c.headers.push(("Etag", format!("\"{etag}\"")));
    c
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

struct Server {
    socket: PathBuf,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Server {
    /// Serves `script` in order, then `fallback` forever (or HTTP 599 when none).
    fn start(script: Vec<Canned>, fallback: Option<Canned>) -> Server {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = std::env::temp_dir().join(format!(
            "veza-incus-scripted-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind scripted socket");
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new((
            script.into_iter().collect::<std::collections::VecDeque<_>>(),
            fallback,
        )));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = Arc::clone(&log2);
                let script = Arc::clone(&script);
                std::thread::spawn(move || serve(stream, &log, &script));
            }
        });
        Server { socket, log }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::line).collect()
    }

    fn client(&self, options: ClientOptions) -> IncusClient {
        IncusClient::new(Transport::Unix { socket: self.socket.clone() }, options)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

type Script = Mutex<(std::collections::VecDeque<Canned>, Option<Canned>)>;

fn serve(stream: std::os::unix::net::UnixStream, log: &Mutex<Vec<Recorded>>, script: &Script) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        log.lock().expect("log").push(Recorded { method: method.clone(), path, headers, body });
        let canned = {
            let mut s = script.lock().expect("script");
            match s.0.pop_front() {
                Some(c) => c,
                None => match &s.1 {
                    Some(f) => Canned {
                        status: f.status,
                        headers: f.headers.clone(),
                        body: f.body.clone(),
                    },
                    None => reply(
                        599,
                        json!({"type":"error","error_code":599,"error":"script exhausted"}),
                    ),
                },
            }
        };
        // HEAD replies announce the length but carry no body.
        let body = if method == "HEAD" { String::new() } else { canned.body.clone() };
        let mut out = format!("HTTP/1.1 {} X\r\nContent-Type: application/json\r\n", canned.status);
        for (k, v) in &canned.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", canned.body.len()));
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

fn sync(metadata: Value) -> Value {
    json!({"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":metadata})
}

fn async_op(op: &str) -> Value {
    json!({"type":"async","status":"Operation created","status_code":100,"operation":format!("/1.0/operations/{op}"),"error_code":0,"error":"","metadata":{}})
}

fn error(code: u16, text: &str) -> Value {
    json!({"type":"error","status":"","status_code":0,"operation":"","error_code":code,"error":text,"metadata":null})
}

fn done(metadata: Value) -> Value {
    sync(json!({"status":"Success","status_code":200,"err":"","metadata":metadata}))
}

fn instance(name: &str, owned: bool) -> Value {
    let mut config = json!({"volatile.uuid":"u1","user.app":"web"});
    if owned {
        config[MARK] = json!("true");
    }
    json!({"name":name,"type":"container","status":"Running","config":config,"devices":{},
           "expanded_devices":{"root":{"type":"disk","path":"/","pool":"default"}},
           "profiles":["default"],"architecture":"x86_64","ephemeral":false,"stateful":false,"description":""})
}

const MARK: &str = veza_model::live::MARK_MANAGED;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    super::super::runtime().expect("runtime").block_on(f)
}

fn update() -> InstanceUpdate {
    let mut u = InstanceUpdate { profiles: vec!["default".into()], ..InstanceUpdate::default() };
    u.config.insert("user.app".into(), "api".into());
    u
}

#[test]
fn put_retries_after_412_with_the_fresh_etag_and_polls_wait_until_done() {
    let server = Server::start(
        vec![
            with_etag(reply(200, sync(instance("w", true))), "e1"),
            reply(412, error(412, "ETag doesn't match: e9 vs e1")),
            with_etag(reply(200, sync(instance("w", true))), "e2"),
            reply(202, async_op("op1")),
            reply(200, error(500, "context deadline exceeded")),
            reply(200, error(500, "context deadline exceeded")),
            reply(200, done(Value::Null)),
        ],
        None,
    );
    let c = server.client(ClientOptions::default());
    assert!(block_on(c.update_instance("w", &update())).unwrap());
    assert_eq!(
        server.lines(),
        [
            "GET /1.0/instances/w",
            "PUT /1.0/instances/w",
            "GET /1.0/instances/w",
            "PUT /1.0/instances/w",
            "GET /1.0/operations/op1/wait?timeout=30",
            "GET /1.0/operations/op1/wait?timeout=30",
            "GET /1.0/operations/op1/wait?timeout=30",
        ]
    );
    let reqs = server.requests();
    assert_eq!(reqs[1].header("if-match"), Some("\"e1\""));
    assert_eq!(reqs[3].header("if-match"), Some("\"e2\""));
    let put: Value = serde_json::from_slice(&reqs[3].body).unwrap();
    assert_eq!(put["config"], json!({"volatile.uuid":"u1","user.app":"api",MARK:"true"}));
    assert_eq!(put["architecture"], "x86_64");
    assert_eq!(c.writes(), 2);
}

#[test]
fn persistent_412_gives_up_after_the_bounded_attempts() {
    let profile = json!({"name":"p","description":"","config":{MARK:"true"},"devices":{}});
    let spec =
        ProfileSpec { name: "p".into(), description: "changed".into(), ..Default::default() };
    type Update = Box<dyn Fn(&IncusClient) -> Result<bool>>;
    // Instances and profiles share the read-modify-write loop under `If-Match`.
    let cases: [(ResourceKind, Value, &str, Update); 2] = [
        (
            ResourceKind::Instance,
            instance("w", true),
            "/1.0/instances/w",
            Box::new(|c| block_on(c.update_instance("w", &update()))),
        ),
        (
            ResourceKind::Profile,
            profile,
            "/1.0/profiles/p",
            Box::new(move |c| block_on(c.update_profile(&spec))),
        ),
    ];
    for (kind, live, path, update) in cases {
        let server = Server::start(
            vec![
                with_etag(reply(200, sync(live.clone())), "e1"),
                reply(412, error(412, "ETag doesn't match")),
                with_etag(reply(200, sync(live)), "e2"),
                reply(412, error(412, "ETag doesn't match")),
            ],
            None,
        );
        let c = server.client(ClientOptions { etag_attempts: 2, ..ClientOptions::default() });
        let err = update(&c).unwrap_err();
        assert!(
            matches!(err, IncusError::Conflict { kind: k, attempts: 2, .. } if k == kind),
            "{kind:?}: {err}"
        );
        let (get, put) = (format!("GET {path}"), format!("PUT {path}"));
        assert_eq!(server.lines(), [get.as_str(), &put, &get, &put], "{kind:?}");
        let reqs = server.requests();
        assert_eq!(reqs[3].header("if-match"), Some("\"e2\""), "{kind:?}: the fresh ETag");
    }
}

#[test]
fn an_unchanged_instance_and_a_foreign_one_get_no_write() {
    let mut same = instance("w", true);
    same["config"]["user.app"] = json!("api");
    let server = Server::start(
        vec![
            with_etag(reply(200, sync(same)), "e1"),
            with_etag(reply(200, sync(instance("f", false))), "e2"),
        ],
        None,
    );
    let c = server.client(ClientOptions::default());
    assert!(!block_on(c.update_instance("w", &update())).unwrap());
    let err = block_on(c.update_instance("f", &update())).unwrap_err();
    assert!(matches!(err, IncusError::NotOwned { .. }), "{err}");
    assert_eq!(c.writes(), 0);
    assert_eq!(server.lines(), ["GET /1.0/instances/w", "GET /1.0/instances/f"]);
}

#[test]
fn a_wait_that_never_ends_hits_the_deadline_and_names_the_operation() {
    let server = Server::start(
        vec![reply(200, sync(instance("w", true))), reply(202, async_op("slow"))],
        Some(reply(200, error(500, "context deadline exceeded"))),
    );
    let c = server.client(ClientOptions::default());
    let mut req = ExecRequest::sh("sleep 100");
    req.timeout = Duration::from_millis(700);
    let t = std::time::Instant::now();
    let err = block_on(c.exec("w", &req)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(err, IncusError::Timeout { operation: Some(ref op), .. } if op == "/1.0/operations/slow"),
        "{err}"
    );
    assert!(server.lines().iter().skip(2).all(|l| l == "GET /1.0/operations/slow/wait?timeout=1"));
}

#[test]
fn failures_and_vanished_operations_are_told_apart() {
    let server = Server::start(
        vec![
            reply(200, sync(instance("w", true))),
            reply(202, async_op("a")),
            reply(200, error(500, "The instance is already running")),
            reply(200, sync(instance("w", true))),
            reply(202, async_op("b")),
            reply(404, error(404, "Operation not found")),
        ],
        None,
    );
    let c = server.client(ClientOptions::default());
    let restart = StateChange::restart(Duration::from_secs(1), true);
    let err = block_on(c.change_state("w", &restart)).unwrap_err();
    assert!(matches!(err, IncusError::Operation { code: 500, .. }), "{err}");
    assert_eq!(err.incus_message(), Some("The instance is already running"));
    assert_eq!(err.operation(), Some("/1.0/operations/a"));
    let err = block_on(c.change_state("w", &restart)).unwrap_err();
    assert!(matches!(err, IncusError::OperationLost { .. }), "{err}");
}

#[test]
fn push_sends_octet_stream_ownership_mode_and_exact_bytes() {
    let server = Server::start(
        vec![
            reply(200, sync(instance("w", true))),
            reply(404, error(404, "Not Found")),
            Canned {
                status: 200,
                headers: vec![("X-Incus-Type", "directory".into())],
                body: String::new(),
            },
            reply(200, sync(json!({}))),
            reply(200, sync(json!({}))),
        ],
        None,
    );
    let c = server.client(ClientOptions::default());
    let content: Vec<u8> = vec![0, 1, 2, 255, b'\n'];
    let mut file = FilePush::new("/etc/veza dir/app.conf", content.clone());
    file.create_parents = true;
    file.uid = 1000;
    file.gid = 1001;
    file.mode = 0o640;
    block_on(c.push_file("w", &file)).unwrap();
    assert_eq!(
        server.lines(),
        [
            "GET /1.0/instances/w",
            "HEAD /1.0/instances/w/files?path=/etc/veza%20dir",
            "HEAD /1.0/instances/w/files?path=/etc",
            "POST /1.0/instances/w/files?path=/etc/veza%20dir",
            "POST /1.0/instances/w/files?path=/etc/veza%20dir/app.conf",
        ]
    );
    let reqs = server.requests();
    let mkdir = &reqs[3];
    assert_eq!(mkdir.header("x-incus-type"), Some("directory"));
    let push = &reqs[4];
    assert_eq!(push.header("content-type"), Some("application/octet-stream"));
    assert_eq!(push.header("x-incus-type"), Some("file"));
    assert_eq!(push.header("x-incus-uid"), Some("1000"));
    assert_eq!(push.header("x-incus-gid"), Some("1001"));
    assert_eq!(push.header("x-incus-mode"), Some("0640"));
    assert_eq!(push.header("x-incus-write"), Some("overwrite"));
    assert_eq!(push.body, content);
}

#[test]
fn exec_reads_and_deletes_both_output_logs() {
    let out = "/1.0/instances/w/logs/exec-output/exec_x.stdout";
    let err = "/1.0/instances/w/logs/exec-output/exec_x.stderr";
    let server = Server::start(
        vec![
            reply(200, sync(instance("w", true))),
            reply(202, async_op("x")),
            reply(200, done(json!({"return": 3, "output": {"1": out, "2": err}}))),
            Canned { status: 200, headers: Vec::new(), body: "out\n".into() },
            reply(200, sync(json!({}))),
            Canned { status: 200, headers: Vec::new(), body: "err\n".into() },
            reply(200, sync(json!({}))),
        ],
        None,
    );
    let c = server.client(ClientOptions::default());
    let mut req = ExecRequest::new(["/bin/app", "--flag"]);
    req.env.insert("K".into(), "v".into());
    req.user = Some(7);
    req.cwd = Some("/srv".into());
    let res = block_on(c.exec("w", &req)).unwrap();
    assert_eq!(
        (res.exit_code, res.stdout_str(), res.stderr_str()),
        (3, "out\n".into(), "err\n".into())
    );
    let lines = server.lines();
    assert_eq!(
        lines[3..],
        [
            format!("GET {out}"),
            format!("DELETE {out}"),
            format!("GET {err}"),
            format!("DELETE {err}")
        ]
    );
    let body: Value = serde_json::from_slice(&server.requests()[1].body).unwrap();
    assert_eq!(
        body,
        json!({"command":["/bin/app","--flag"],"environment":{"K":"v"},"wait-for-websocket":false,
               "record-output":true,"interactive":false,"user":7,"cwd":"/srv"})
    );
    assert_eq!(c.writes(), 3);
}

fn small_output() -> ClientOptions {
    ClientOptions { max_output_bytes: 1024, ..ClientOptions::default() }
}

fn raw_body(body: String) -> Canned {
    Canned { status: 200, headers: Vec::new(), body }
}

#[test]
fn exec_output_past_the_limit_is_an_error_naming_the_instance_and_the_limit() {
    let out = "/1.0/instances/w/logs/exec-output/exec_y.stdout";
    let server = Server::start(
        vec![
            reply(200, sync(instance("w", true))),
            reply(202, async_op("y")),
            reply(200, done(json!({"return": 0, "output": {"1": out}}))),
            raw_body("x".repeat(4096)),
            reply(200, sync(json!({}))),
        ],
        None,
    );
    let c = server.client(small_output());
    let err = block_on(c.exec("w", &ExecRequest::new(["/bin/chatty"]))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IncusError::TooLarge { limit: 1024, .. }), "{msg}");
    assert!(
        msg.starts_with(
            "the stdout of `/bin/chatty` in instance `w` is larger than the 1024-byte limit"
        ),
        "{msg}"
    );
    assert_eq!(server.lines()[3..], [format!("GET {out}"), format!("DELETE {out}")], "log removed");
}

#[test]
fn pulled_files_are_read_up_to_the_limit_unless_verifying_a_push() {
    let server = Server::start(
        vec![
            // A pull past the limit.
            raw_body("x".repeat(4096)),
            // A push of 4096 bytes, verified by reading back exactly that much.
            reply(200, sync(instance("w", true))),
            reply(200, sync(json!({}))),
            raw_body("y".repeat(4096)),
        ],
        None,
    );
    let c = server.client(small_output());
    let err = block_on(c.pull_file("w", "/var/log/huge")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("file `/var/log/huge` in instance `w` is larger than the 1024-byte limit"),
        "{msg}"
    );
    let push = FilePush::new("/tmp/release.tar", "y".repeat(4096).into_bytes());
    block_on(crate::incus::push_file_verified(&c, "w", &push)).unwrap();
}
