//! An in-memory [`EdgeRuntime`] for tests: files in a map, a simulated master process
//! (reload counter, `[failed: N]`, worker pids, `show proc` in HAProxy 2.6's format), a
//! validator that rejects configs containing a marker (`bogus` by default), a record of
//! every operation, and injectable faults. It is also the apply engine's [`Edge`](crate::apply::Edge)
//! (the real installer over this runtime, at [`EdgePaths::debian`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::install::{EdgePaths, InstallOptions, install};
use super::parse::{EMPTY_STATE_FILE, ServerStatus, edge_view};
use super::runtime::{EdgeError, EdgeRuntime};
use crate::apply::EdgeView;
use crate::fake_state::FakeState;

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeOp {
    /// `read_file`.
    Read(PathBuf),
    /// `write_file`.
    Write(PathBuf),
    /// `rename`.
    Rename(PathBuf, PathBuf),
    /// `remove_file`.
    Remove(PathBuf),
    /// `check_config`.
    Check(PathBuf),
    /// `master`, with the command.
    Master(String),
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeFault {
    /// Every read of this path fails.
    FailRead(PathBuf),
    /// Every write to this path fails.
    FailWrite(PathBuf),
    /// Every rename fails.
    FailRename,
    /// This master command fails (not as "not running").
    FailMaster(String),
    /// The next reload is refused by HAProxy (`[failed: 1]`, old worker kept).
    ReloadRefusedOnce,
    /// The master is killed (-9) when `reload` is sent: it is not running afterwards.
    MasterDiesOnReload,
    /// `reload` is accepted but never takes effect (the counter never moves).
    ReloadNeverConfirms,
}

#[derive(Debug)]
struct State {
    files: BTreeMap<PathBuf, Vec<u8>>,
    ops: Vec<FakeOp>,
    faults: Vec<FakeFault>,
    running: bool,
    master_pid: u32,
    reloads: u64,
    failed: u64,
    workers: Vec<u32>,
    next_pid: u32,
    servers_state: String,
    /// What HAProxy's checks say of a server, by `(backend, server)`.
    checked: BTreeMap<(String, String), ServerStatus>,
    invalid_marker: String,
    config_path: PathBuf,
}

/// The fake edge. Cheap to create; safe to share between threads.
#[derive(Debug)]
pub struct FakeEdge {
    state: FakeState<State>,
}

impl Default for FakeEdge {
    fn default() -> Self {
        FakeEdge::new()
    }
}

impl FakeEdge {
    /// A running HAProxy (one worker) with no files, whose config is
    /// `/etc/haproxy/haproxy.cfg`.
    pub fn new() -> FakeEdge {
        FakeEdge {
            state: FakeState::new(State {
                files: BTreeMap::new(),
                ops: Vec::new(),
                faults: Vec::new(),
                running: true,
                master_pid: 100,
                reloads: 0,
                failed: 0,
                workers: vec![101],
                next_pid: 102,
                servers_state: EMPTY_STATE_FILE.to_string(),
                checked: BTreeMap::new(),
                invalid_marker: "bogus".to_string(),
                config_path: PathBuf::from("/etc/haproxy/haproxy.cfg"),
            }),
        }
    }

    /// Sets the path the simulated master loads on reload.
    pub fn set_config_path(&self, path: &Path) {
        self.state.lock().config_path = path.to_path_buf();
    }
    /// Puts a file in place (not recorded as an operation).
    pub fn set_file(&self, path: &Path, bytes: &[u8]) {
        self.state.lock().files.insert(path.to_path_buf(), bytes.to_vec());
    }
    /// A file's content.
    pub fn file(&self, path: &Path) -> Option<Vec<u8>> {
        self.state.lock().files.get(path).cloned()
    }
    /// The operations so far.
    pub fn ops(&self) -> Vec<FakeOp> {
        self.state.lock().ops.clone()
    }
    /// Forgets the recorded operations.
    pub fn clear_ops(&self) {
        self.state.lock().ops.clear();
    }
    /// Adds a fault.
    pub fn inject(&self, fault: FakeFault) {
        self.state.lock().faults.push(fault);
    }
    /// Starts or stops the simulated HAProxy.
    pub fn set_running(&self, running: bool) {
        self.state.lock().running = running;
    }
    /// What `@1 show servers state` answers.
    pub fn set_servers_state(&self, text: &str) {
        self.state.lock().servers_state = text.to_string();
    }
    /// What HAProxy's own health checks say of `server` in `backend` (its `show stat`
    /// status), as the apply engine's [`Edge::server_view`](crate::apply::Edge) reads it.
    pub fn set_server_status(&self, backend: &str, server: &str, status: ServerStatus) {
        self.state.lock().checked.insert((backend.to_string(), server.to_string()), status);
    }
    /// Configs containing this text are invalid (default `bogus`).
    pub fn set_invalid_marker(&self, marker: &str) {
        self.state.lock().invalid_marker = marker.to_string();
    }
    /// The master's reload counter.
    pub fn reloads(&self) -> u64 {
        self.state.lock().reloads
    }
    /// Whether the fake validator accepts these bytes.
    pub fn valid(&self, bytes: &[u8]) -> bool {
        let marker = self.state.lock().invalid_marker.clone();
        !String::from_utf8_lossy(bytes).contains(&marker)
    }

    fn not_running(&self) -> EdgeError {
        EdgeError::NotRunning {
            location: self.location(),
            socket: PathBuf::from("/fake/master.sock"),
        }
    }

    fn show_proc(st: &State) -> String {
        let mut out = format!(
            "#<PID>          <type>          <reloads>       <uptime>        <version>\n{:<15} {:<15} {:<15} {:<15} 2.6.12-fake\n# workers\n",
            st.master_pid,
            "master",
            format!("{} [failed: {}]", st.reloads, st.failed),
            "0d00h00m01s"
        );
        for pid in &st.workers {
            out.push_str(&format!(
                "{pid:<15} {:<15} {:<15} {:<15} 2.6.12-fake\n",
                "worker", 0, "0d00h00m01s"
            ));
        }
        out.push_str("# programs\n\n");
        out
    }
}

/// The error of an injected file fault.
fn injected(op: &'static str, path: &Path) -> EdgeError {
    EdgeError::File {
        location: "fake".into(),
        op,
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("injected {op} failure")),
    }
}

impl EdgeRuntime for FakeEdge {
    fn location(&self) -> String {
        "fake".to_string()
    }

    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, EdgeError> {
        let mut st = self.state.lock();
        st.ops.push(FakeOp::Read(path.to_path_buf()));
        if st.faults.contains(&FakeFault::FailRead(path.to_path_buf())) {
            return Err(injected("read", path));
        }
        Ok(st.files.get(path).cloned())
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), EdgeError> {
        let mut st = self.state.lock();
        st.ops.push(FakeOp::Write(path.to_path_buf()));
        if st.faults.contains(&FakeFault::FailWrite(path.to_path_buf())) {
            return Err(injected("write", path));
        }
        st.files.insert(path.to_path_buf(), bytes.to_vec());
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), EdgeError> {
        let mut st = self.state.lock();
        st.ops.push(FakeOp::Rename(from.to_path_buf(), to.to_path_buf()));
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        if st.faults.contains(&FakeFault::FailRename) {
            return Err(EdgeError::File {
                location: "fake".into(),
                op: "rename into place",
                path: from.to_path_buf(),
                source: std::io::Error::other("injected rename failure"),
            });
        }
        let bytes = st.files.remove(from).ok_or_else(|| EdgeError::File {
            location: "fake".into(),
            op: "rename into place",
            path: from.to_path_buf(),
            source: missing(),
        })?;
        st.files.insert(to.to_path_buf(), bytes);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<(), EdgeError> {
        let mut st = self.state.lock();
        st.ops.push(FakeOp::Remove(path.to_path_buf()));
        st.files.remove(path);
        Ok(())
    }

    fn check_config(&self, path: &Path) -> Result<(), EdgeError> {
        let bytes = {
            let mut st = self.state.lock();
            st.ops.push(FakeOp::Check(path.to_path_buf()));
            st.files.get(path).cloned()
        };
        match bytes {
            Some(b) if self.valid(&b) => Ok(()),
            Some(_) => Err(EdgeError::Invalid {
                location: "fake".into(),
                path: path.to_path_buf(),
                stderr: format!(
                    "[ALERT]    (1) : config : parsing [{}] : unknown keyword 'bogus_keyword'",
                    path.display()
                ),
            }),
            None => Err(EdgeError::Invalid {
                location: "fake".into(),
                path: path.to_path_buf(),
                stderr: "Cannot open configuration file".into(),
            }),
        }
    }

    fn master(&self, command: &str) -> Result<String, EdgeError> {
        let mut st = self.state.lock();
        st.ops.push(FakeOp::Master(command.to_string()));
        if st.faults.contains(&FakeFault::FailMaster(command.to_string())) {
            return Err(EdgeError::Instance {
                location: "fake".into(),
                op: format!("master CLI `{command}`"),
                message: "injected failure".into(),
            });
        }
        if !st.running {
            drop(st);
            return Err(self.not_running());
        }
        match command {
            "show proc" => Ok(Self::show_proc(&st)),
            "@1 show servers state" => Ok(st.servers_state.clone()),
            "reload" => {
                if st.faults.contains(&FakeFault::MasterDiesOnReload) {
                    st.running = false;
                    drop(st);
                    return Err(self.not_running());
                }
                if st.faults.contains(&FakeFault::ReloadNeverConfirms) {
                    return Ok(String::new());
                }
                st.reloads += 1;
                let refused =
                    match st.faults.iter().position(|f| *f == FakeFault::ReloadRefusedOnce) {
                        Some(i) => {
                            st.faults.remove(i);
                            true
                        }
                        None => false,
                    };
                let loadable = st.files.get(&st.config_path).is_some_and(|b| {
                    !String::from_utf8_lossy(b).contains(st.invalid_marker.as_str())
                });
                if refused || !loadable {
                    st.failed += 1;
                } else {
                    st.failed = 0;
                    let pid = st.next_pid;
                    st.next_pid += 1;
                    st.workers = vec![pid];
                }
                Ok(String::new())
            }
            _ => Ok(String::new()),
        }
    }
}

impl crate::apply::Edge for FakeEdge {
    async fn live_config(&self) -> Result<Option<String>, String> {
        self.read_file(&EdgePaths::debian().config)
            .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| e.to_string())
    }

    async fn install(&self, config: &str) -> Result<(), String> {
        // The fake confirms a reload at the first poll: no need to wait between polls.
        let opts =
            InstallOptions { poll_interval: std::time::Duration::ZERO, ..Default::default() };
        install(self, &EdgePaths::debian(), config, &opts).map(|_| ()).map_err(|e| e.to_string())
    }

    async fn server_view(&self, backend: &str, server: &str) -> Result<EdgeView, String> {
        let st = self.state.lock();
        if !st.running {
            return Ok(EdgeView::Unknown);
        }
        // The fake's checks have run: a status it holds comes from a check that passed.
        Ok(edge_view(st.checked.get(&(backend.to_string(), server.to_string())), Some("L7OK")))
    }
}
