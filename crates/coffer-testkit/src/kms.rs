//! Shared helpers of the KMS tests: the plugin binaries (built with `cargo build -p`, since a
//! test may only name its own package's binaries), plugin and `coffer serve` child processes on
//! unix sockets in a temp dir, gRPC clients over unix sockets, and in-process fake plugins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use coffer_kms::proto::key_management_service_client::KeyManagementServiceClient;
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use tonic::transport::{Channel, Endpoint, Uri};

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

/// The result of running a command to completion.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        &self.stdout
    }
}

/// Runs `program` with `args` and extra environment variables.
pub fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `coffer` with `args`.
pub fn coffer(args: &[&str]) -> Run {
    run(coffer_bin(), args, &[])
}

/// Waits until a unix socket accepts connections.
pub fn wait_for_socket(path: &Path, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
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

/// A child process (a plugin or `coffer serve`) that is killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `program args`, logging to `log`, and waits for `socket`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        socket: &Path,
        log: &Path,
    ) -> Self {
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        wait_for_socket(socket, &program.display().to_string(), log);
        Self {
            child,
            socket: socket.to_owned(),
            log: log.to_owned(),
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "exit {status}: {}", self.log_text());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "did not stop: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `coffer-kms-local serve` on `<dir>/kms.sock` with keys in `<dir>/keys`.
pub fn local_plugin(dir: &Path) -> Proc {
    let bin = workspace_bin("coffer-kms-local");
    let keys = dir.join("keys");
    let socket = dir.join("kms.sock");
    Proc::spawn(
        &bin,
        &[
            "serve".into(),
            "--key-dir".into(),
            keys.display().to_string(),
            "--listen".into(),
            format!("unix://{}", socket.display()),
        ],
        &[],
        &socket,
        &dir.join("plugin.log"),
    )
}

/// Runs `coffer-kms-local <sub> --key-dir <dir>/keys [extra]`.
pub fn local_plugin_cmd(dir: &Path, sub: &str, extra: &[&str]) -> Run {
    let bin = workspace_bin("coffer-kms-local");
    let keys = dir.join("keys").display().to_string();
    let mut args = vec![sub, "--key-dir", keys.as_str()];
    args.extend_from_slice(extra);
    run(&bin, &args, &[])
}

/// `coffer serve` on `<dir>/coffer.sock`, data in `<dir>/data`, KMS at `kms_socket`.
pub fn coffer_serve(dir: &Path, kms_socket: &Path, extra: &[&str]) -> Proc {
    let socket = dir.join("coffer.sock");
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--listen".into(),
        format!("unix://{}", socket.display()),
        "--kms".into(),
        format!("unix://{}", kms_socket.display()),
        "--token-cleaner-interval".into(),
        "0".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Proc::spawn(coffer_bin(), &args, &[], &socket, &dir.join("coffer.log"))
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect unix")
}

pub async fn secrets_client(socket: &Path) -> SecretsClient<Channel> {
    SecretsClient::new(unix_channel(socket).await)
}

pub async fn kms_client(socket: &Path) -> KeyManagementServiceClient<Channel> {
    KeyManagementServiceClient::new(unix_channel(socket).await)
}

/// A wire Secret `ns/name` with one key.
pub fn secret(ns: &str, name: &str, value: &str) -> pb::Secret {
    pb::Secret {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..pb::ObjectMeta::default()
        }),
        data: [("k".to_owned(), value.as_bytes().to_vec())].into(),
        ..pb::Secret::default()
    }
}

pub async fn create(
    c: &mut SecretsClient<Channel>,
    ns: &str,
    name: &str,
    value: &str,
) -> Result<pb::Secret, tonic::Status> {
    c.create(pb::CreateSecretRequest {
        secret: Some(secret(ns, name, value)),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Reads `ns/name` and returns the value of key `k`.
pub async fn get_value(
    c: &mut SecretsClient<Channel>,
    ns: &str,
    name: &str,
) -> Result<String, tonic::Status> {
    let s = c
        .get(pb::GetSecretRequest {
            namespace: ns.into(),
            name: name.into(),
            resource_version: 0,
        })
        .await?
        .into_inner();
    Ok(String::from_utf8_lossy(s.data.get("k").map_or(&[][..], Vec::as_slice)).into_owned())
}

/// The overall health status of the server on `socket` (`SERVING` = 1, `NOT_SERVING` = 2).
pub async fn health(socket: &Path) -> i32 {
    let mut c = tonic_health::pb::health_client::HealthClient::new(unix_channel(socket).await);
    c.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .map(|r| r.into_inner().status)
    .unwrap_or(-1)
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
