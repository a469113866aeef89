//! Child processes of the tests: the built binaries (`coffer`, the KMS plugins, built with
//! `cargo build -p` since a test may only name its own package's binaries), a runner that waits
//! for a command, [`Proc`] (a child killed when dropped), and [`Serve`], the one way a test
//! starts `coffer serve` as a child process.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a child server may take to listen: several build and test processes share two
/// cores in CI.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `coffer` binary: the one `cargo test` built beside the running test executable when
/// there is one (a test of the `coffer` package, or `cargo test --workspace`), else built with
/// [`workspace_bin`].
pub fn coffer_bin() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("coffer")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| workspace_bin("coffer"))
    })
}

/// Builds a workspace member's binary (once per test process) and returns its path. Cargo
/// answers at once when it is up to date.
pub fn workspace_bin(package: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(package) {
        return p.clone();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(env!("CARGO"));
    // What cargo set for the running test (its package's name, version, manifest dir, ...)
    // must not reach this cargo: build scripts that watch those variables (ring's does) would
    // see them change, and the crates above them would be rebuilt, here and again in the next
    // cargo run from a shell.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_for_the_test) {
            cmd.env_remove(&key);
        }
    }
    cmd.args([
        "build",
        "--quiet",
        "--message-format=json",
        "-p",
        package,
        "--bin",
        package,
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build -p {package} failed");
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
        .unwrap_or_else(|| panic!("cargo build -p {package} named no executable"));
    built.insert(package.to_owned(), exe.clone());
    exe
}

/// Whether `key` is a variable cargo sets for the crate it builds or runs (not one that
/// configures cargo itself, such as `CARGO_HOME` or `CARGO_TARGET_DIR`).
fn set_for_the_test(key: &str) -> bool {
    const EXACT: [&str; 7] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
    ];
    EXACT.contains(&key)
        || key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_EXE_")
        || key == "OUT_DIR"
}

/// The result of running a command to completion.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit code 0 and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        &self.stdout
    }

    /// Asserts exit code `code` and a stderr containing `needle`; returns stderr.
    #[track_caller]
    pub fn fails(&self, code: i32, needle: &str) -> &str {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
        &self.stderr
    }
}

/// Runs `program` with `args` and extra environment variables.
pub fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_with(program, args, env, None, None)
}

/// Runs `program` with `args`, extra environment variables, optional stdin and working
/// directory. `COFFER_SERVER` and `COFFER_TOKEN` from the test's own environment never reach
/// it; `NO_COLOR` is set.
pub fn run_with(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
    cwd: Option<&Path>,
) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("COFFER_SERVER")
        .env_remove("COFFER_TOKEN")
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until a unix socket accepts connections (a stale socket file does not count).
pub fn wait_for_socket(path: &Path, what: &str, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {}: {}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resident memory of process `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A child process (a plugin or `coffer serve`) listening on a unix socket, its stderr going
/// to a log file; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// How a stopped process ended, and what it logged.
#[derive(Debug)]
pub struct Exit {
    pub status: Option<ExitStatus>,
    pub log: String,
}

impl Proc {
    /// Spawns `program args` with `RUST_LOG=info` (unless `env` says otherwise), logging to
    /// `log`, and waits until `socket` accepts connections.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        socket: &Path,
        log: &Path,
    ) -> Self {
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let mut proc = Self {
            child,
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        proc.wait_ready(&program.display().to_string());
        proc
    }

    /// Waits until the socket accepts connections; fails at once if the process exits.
    fn wait_ready(&mut self, what: &str) {
        let socket = self.socket.clone();
        self.wait_until(what, &format!("listening on {}", socket.display()), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// Polls `ready` every 10 ms for 30 s at most; fails at once if the process exits.
    fn wait_until(&mut self, what: &str, state: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{what} is not {state}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` (`HUP`, `TERM`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to 30 s for the process to end (then kills it); returns how
    /// it ended and its log.
    pub fn terminate(mut self) -> Exit {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Exit {
            status,
            log: self.log_text(),
        }
    }

    /// Stops it with SIGTERM and asserts a clean exit.
    pub fn stop(self) {
        let exit = self.terminate();
        match exit.status {
            Some(status) => assert!(status.success(), "exit {status}: {}", exit.log),
            None => panic!("did not stop: {}", exit.log),
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The TCP address `coffer serve` bound for a `127.0.0.1:0` listener, read from its
    /// "listening on" log line (waits for it).
    pub fn tcp_addr(&self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log_text();
            if let Some(at) = log.find("127.0.0.1:") {
                let rest = &log[at + "127.0.0.1:".len()..];
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if !port.is_empty() && port != "0" {
                    return format!("127.0.0.1:{port}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "no TCP address in the log: {log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `coffer serve` as a child process: data in `<dir>/data`, a unix socket `<dir>/coffer.sock`
/// (what [`Serve::start`] waits for), stderr to `<dir>/coffer.log`, `RUST_LOG=info`, the token
/// cleaner off; each setting below adds to or replaces one of these.
#[derive(Debug)]
pub struct Serve {
    dir: PathBuf,
    wrapper: Option<(PathBuf, Vec<String>)>,
    kms: Option<PathBuf>,
    tcp: bool,
    tcp_at: Option<SocketAddr>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: String,
}

impl Serve {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            wrapper: None,
            kms: None,
            tcp: false,
            tcp_at: None,
            args: Vec::new(),
            env: Vec::new(),
            log: "coffer.log".into(),
        }
    }

    /// The KMS v2 plugin on this unix socket (`--kms unix://...`).
    pub fn kms(mut self, socket: &Path) -> Self {
        self.kms = Some(socket.to_owned());
        self
    }

    /// Also listens on TCP 127.0.0.1:0 (see [`Proc::tcp_addr`]).
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Also listens on TCP at `addr` (a port the test chose), and [`Serve::start`] waits for
    /// it too: the unix socket accepts as soon as it is bound, before the listeners after it.
    pub fn listen_tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp_at = Some(addr);
        self
    }

    /// More `serve` flags, after the ones above.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| (*s).to_owned()));
        self
    }

    /// An environment variable (`RUST_LOG` replaces the default).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The log file's name in the directory.
    pub fn log_file(mut self, name: &str) -> Self {
        name.clone_into(&mut self.log);
        self
    }

    /// Runs `coffer` through `program args...` (setpriv, say), which then execs it.
    pub fn through(mut self, program: &Path, args: &[&str]) -> Self {
        self.wrapper = Some((
            program.to_owned(),
            args.iter().map(|s| (*s).to_owned()).collect(),
        ));
        self
    }

    /// The unix socket it listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("coffer.sock")
    }

    /// Starts it and waits until its unix socket accepts connections.
    pub fn start(self) -> Proc {
        let socket = self.socket();
        let mut args: Vec<String> = Vec::new();
        let program = match &self.wrapper {
            Some((program, pre)) => {
                args.extend(pre.iter().cloned());
                args.push(coffer_bin().display().to_string());
                program.clone()
            }
            None => coffer_bin().to_owned(),
        };
        args.extend([
            "serve".to_owned(),
            "--data-dir".to_owned(),
            self.dir.join("data").display().to_string(),
            "--listen".to_owned(),
            format!("unix://{}", socket.display()),
        ]);
        if self.tcp {
            args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        if let Some(addr) = self.tcp_at {
            args.extend(["--listen".to_owned(), addr.to_string()]);
        }
        if let Some(kms) = &self.kms {
            args.extend(["--kms".to_owned(), format!("unix://{}", kms.display())]);
        }
        args.extend(["--token-cleaner-interval".to_owned(), "0".to_owned()]);
        args.extend(self.args.iter().cloned());
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut proc = Proc::spawn(&program, &args, &env, &socket, &self.dir.join(&self.log));
        if let Some(addr) = self.tcp_at {
            proc.wait_until("coffer serve", &format!("listening on {addr}"), || {
                std::net::TcpStream::connect(addr).is_ok()
            });
        }
        proc
    }
}
