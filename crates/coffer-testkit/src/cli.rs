//! Shared helpers of the CLI tests: a real `coffer serve` child process per test (listening on
//! a unix socket in a temp dir and on 127.0.0.1:0, started with [`Serve`]), and a runner for
//! the built binary.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{Proc, Serve, run_with};
pub use crate::process::{Run, coffer_bin};

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
    run_with(coffer_bin(), args, env, stdin, cwd)
}

/// A `coffer serve` child process with its own data directory, for the CLI to talk to;
/// killed on drop.
pub struct Server {
    proc: Proc,
    pub dir: tempfile::TempDir,
    /// `unix:///.../coffer.sock`
    pub socket: String,
}

impl Server {
    /// Starts a server and waits until its socket accepts connections.
    pub fn start() -> Self {
        Self::start_with(tempfile::tempdir().expect("tempdir"), &[])
    }

    /// Starts a server in `dir` with extra `serve` flags (security settings whose files the
    /// test wrote in `dir`).
    pub fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let proc = Serve::new(dir.path())
            .tcp()
            .args(extra)
            .log_file("serve.log")
            .start();
        Self {
            socket: format!("unix://{}", proc.socket.display()),
            proc,
            dir,
        }
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
        self.proc.log_text()
    }

    /// The bound TCP address, read from the "listening on" log line (waits for it).
    pub fn tcp_addr(&self) -> String {
        self.proc.tcp_addr()
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
        std::fs::write(&p, content).expect("write");
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
            .expect("spawn coffer")
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
