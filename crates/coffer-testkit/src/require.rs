//! What a test needs from the machine, and the one way a test may skip for lack of it.
//!
//! A test that cannot run here (no SoftHSM2, no FUSE, no `setpriv`, a memlock limit too low)
//! calls [`skip`]: on a developer's machine it prints why and passes; under
//! `COFFER_TEST_NO_SKIP=1`, which `.ci/run` sets after installing everything, it fails with the
//! same reason, so CI can never go green by skipping.
//!
//! [`lazyfs`] finds or builds LazyFS, the power-loss simulator the crash harness mounts, and
//! [`Watchdog`] fails a test that hangs instead of letting it hang the run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The variable under which every skip is a failure (`.ci/run` sets it).
pub const NO_SKIP: &str = "COFFER_TEST_NO_SKIP";

/// Whether skips are failures here.
pub fn no_skip() -> bool {
    std::env::var_os(NO_SKIP).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Skips the calling test with `reason`, or fails it under [`NO_SKIP`]. The caller returns
/// right after.
#[track_caller]
pub fn skip(reason: &str) {
    assert!(
        !no_skip(),
        "{NO_SKIP} is set and this test would skip: {reason}"
    );
    eprintln!("SKIPPED: {reason} (set {NO_SKIP}=1 to make this a failure)");
}

/// The workspace's root (two levels above this crate).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// LazyFS (`third_party/lazyfs`): `COFFER_LAZYFS` if set, else the build in
/// `target/lazyfs`, built by `scripts/build-lazyfs.sh` on first use (about a minute; it
/// installs cmake, fuse3 and the libraries with apt-get when run as root). `None` after a
/// [`skip`] (no `/dev/fuse`, or the build failed).
pub fn lazyfs() -> Option<PathBuf> {
    static PATH: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let lock = PATH.get_or_init(|| Mutex::new(None));
    let mut found = lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = found.as_ref() {
        return Some(p.clone());
    }
    if !Path::new("/dev/fuse").exists() {
        skip("/dev/fuse is missing: the power-loss tests mount LazyFS (FUSE)");
        return None;
    }
    if let Some(p) = std::env::var_os("COFFER_LAZYFS") {
        *found = Some(PathBuf::from(p));
        return found.clone();
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target.join("lazyfs");
    let binary = out.join("src/lazyfs/build/lazyfs");
    if !binary.is_file() {
        let status = Command::new(root.join("scripts/build-lazyfs.sh"))
            .arg(&out)
            .status();
        if !matches!(status, Ok(s) if s.success()) || !binary.is_file() {
            skip(&format!(
                "scripts/build-lazyfs.sh {} failed ({status:?}): it needs cmake, fuse3, \
                 libfuse3-dev, libspdlog-dev and libtoml11-dev (apt-get as root)",
                out.display()
            ));
            return None;
        }
    }
    *found = Some(binary);
    found.clone()
}

/// Fails the test process if it is still running when the limit passes: a deadlock then fails
/// the run with the test's name instead of hanging CI. Dropping the guard disarms it.
///
/// The limit is multiplied by `COFFER_TEST_TIMEOUT_SCALE` (default 1) for slow machines.
pub struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// Arms a watchdog for the test `name`.
    pub fn arm(name: &str, limit: Duration) -> Self {
        let scale: f64 = std::env::var("COFFER_TEST_TIMEOUT_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|s: &f64| *s > 0.0)
            .unwrap_or(1.0);
        let limit = limit.mul_f64(scale);
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let name = name.to_owned();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("WATCHDOG: test {name} still running after {limit:?}: failing the run");
                // A panic here would only end this thread: end the process, which fails the
                // test binary (and with it `cargo test`).
                std::process::exit(101);
            }
        });
        Self { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.done.send(());
    }
}
