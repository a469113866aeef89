//! Shared helpers of the CLI tests: a real `coffer serve` child process per test (listening on
//! a unix socket in a temp dir and on 127.0.0.1:0), and a runner for the built binary.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::kms::coffer_bin;

/// The result of one CLI run.
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

    /// Asserts exit code `code` and a single stderr line containing `needle`; returns stderr.
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

/// Runs the binary with `args` (no server flag, no COFFER_SERVER), optional stdin.
pub fn coffer(args: &[&str], stdin: Option<&[u8]>, cwd: Option<&Path>) -> Run {
    coffer_env(args, &[], stdin, cwd)
}

/// [`coffer`] with extra environment variables (no COFFER_SERVER or COFFER_TOKEN otherwise).
pub fn coffer_env(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
    cwd: Option<&Path>,
) -> Run {
    let mut cmd = Command::new(coffer_bin());
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
    let mut child = cmd.spawn().expect("spawn coffer");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `coffer serve` child process with its own data directory; killed on drop.
pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `unix:///.../coffer.sock`
    pub socket: String,
    log: PathBuf,
}

impl Server {
    /// Starts a server and waits until its socket accepts connections.
    pub fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), &[])
    }

    /// Starts a server in `dir` with extra `serve` flags (security settings whose files the
    /// test wrote in `dir`).
    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let sock = dir.path().join("coffer.sock");
        let log = dir.path().join("serve.log");
        let child = Command::new(coffer_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn coffer serve");
        let server = Self {
            child,
            socket: format!("unix://{}", sock.display()),
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "coffer serve did not start: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// Kills the server (SIGKILL: nothing is flushed on the way out) and starts a new one on
    /// the same data directory.
    pub fn restart(mut self) -> Self {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Self::start_with(dir, &[])
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The bound TCP address, read from the "listening on" log line (waits for it).
    pub fn tcp_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
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

    /// Runs the CLI against this server.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--server", self.socket.as_str()];
        all.extend_from_slice(args);
        coffer(&all, None, None)
    }

    /// Runs the CLI against this server with `stdin`.
    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let mut all = vec!["--server", self.socket.as_str()];
        all.extend_from_slice(args);
        coffer(&all, Some(stdin), None)
    }

    /// Writes a file in the test's temp dir and returns its path.
    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Spawns a long-running CLI command (a watch) with piped stdout.
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new(coffer_bin())
            .arg("--server")
            .arg(&self.socket)
            .args(args)
            .env_remove("COFFER_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the digits of every age cell (`5s`) with `N`, keeping the layout (the tests run in
/// well under ten seconds, so an age is one digit and `s`).
pub fn normalize_age(table: &str) -> String {
    let mut out = String::new();
    for line in table.lines() {
        let mut rebuilt = String::new();
        let mut token = String::new();
        let flush = |token: &mut String, rebuilt: &mut String| {
            let is_age = token.len() >= 2
                && token.ends_with('s')
                && token[..token.len() - 1].chars().all(|c| c.is_ascii_digit());
            if is_age {
                rebuilt.push_str(&"N".repeat(token.len() - 1));
                rebuilt.push('s');
            } else {
                rebuilt.push_str(token);
            }
            token.clear();
        };
        for c in line.chars() {
            if c == ' ' {
                flush(&mut token, &mut rebuilt);
                rebuilt.push(c);
            } else {
                token.push(c);
            }
        }
        flush(&mut token, &mut rebuilt);
        out.push_str(&rebuilt);
        out.push('\n');
    }
    out
}

/// Reads a child's stdout line by line on a thread.
pub struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    /// Takes the child's stdout.
    pub fn new(child: &mut Child) -> Self {
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut acc = Vec::new();
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        acc.extend_from_slice(&buf[..k]);
                        while let Some(pos) = acc.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = acc.drain(..=pos).collect();
                            let text =
                                String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                            if tx.send(text).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Self { rx }
    }

    /// Up to `n` more lines, waiting at most `timeout` in all.
    pub fn next(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while lines.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        lines
    }
}
