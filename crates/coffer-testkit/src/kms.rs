//! Shared helpers of the KMS tests: the `coffer-kms-local` plugin as a child process on a
//! unix socket in a temp dir (`coffer serve` beside it is [`Serve`]`::new(dir).kms(socket)`),
//! and gRPC clients over unix sockets.

use std::path::Path;

use coffer_kms::proto::key_management_service_client::KeyManagementServiceClient;
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use tonic::transport::Channel;

pub use crate::process::{Proc, Run, Serve, coffer_bin, run, wait_for_socket, workspace_bin};
pub use crate::server::{eventually, unix_channel};

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

/// Runs `coffer` with `args`.
pub fn coffer(args: &[&str]) -> Run {
    run(coffer_bin(), args, &[])
}

/// Runs `coffer-kms-local <sub> --key-dir <dir>/keys [extra]`.
pub fn local_plugin_cmd(dir: &Path, sub: &str, extra: &[&str]) -> Run {
    let bin = workspace_bin("coffer-kms-local");
    let keys = dir.join("keys").display().to_string();
    let mut args = vec![sub, "--key-dir", keys.as_str()];
    args.extend_from_slice(extra);
    run(&bin, &args, &[])
}

pub async fn secrets_client(socket: &Path) -> SecretsClient<Channel> {
    SecretsClient::new(unix_channel(socket).await)
}

pub async fn kms_client(socket: &Path) -> KeyManagementServiceClient<Channel> {
    KeyManagementServiceClient::new(unix_channel(socket).await)
}

/// A wire Secret `ns/name` with one key, `k`.
pub fn secret(ns: &str, name: &str, value: &str) -> pb::Secret {
    crate::server::secret(ns, name, &[("k", value)])
}

/// Creates `ns/name` with `k` = `value`.
pub async fn create(
    c: &mut SecretsClient<Channel>,
    ns: &str,
    name: &str,
    value: &str,
) -> Result<pb::Secret, tonic::Status> {
    crate::server::create(c, secret(ns, name, value)).await
}

/// Reads `ns/name` and returns the value of key `k`.
pub async fn get_value(
    c: &mut SecretsClient<Channel>,
    ns: &str,
    name: &str,
) -> Result<String, tonic::Status> {
    let s = crate::server::get(c, ns, name).await?;
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
