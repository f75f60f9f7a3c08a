//! A tmpfs of a given size mounted for one test (a full disk on demand), unmounted on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use veza_host::process::Cmd;

/// A tmpfs mounted for the test, unmounted (lazily) on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `32m`) on `dir`, created if needed.
    /// Panics when it cannot (the real test host runs the suite as root).
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mountpoint");
        Cmd::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .run()
            .expect("mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg("-l").arg(&self.0).timeout(Duration::from_secs(30)).run();
    }
}
