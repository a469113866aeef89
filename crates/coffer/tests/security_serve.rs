//! `coffer serve` as a process: SIGHUP reloads the token file and the policy without dropping
//! connections; a canary Secret value is absent from the audit log, the server's log and every
//! file under the data directory; a non-loopback listener without authentication is refused.

use coffer_testkit::auth as auth_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use auth_support::*;
use coffer_server::proto::v1 as pb;
use tonic::Code;

use coffer_testkit::kms::coffer_bin;

const POLICY: &str = "rules:\n  - groups: [admins]\n    verbs: [\"*\"]\n    namespaces: [\"*\"]\n";
const TOKENS: &str = "tok-admin,root,1,admins\n";

/// A `coffer serve` process on a unix socket, its stderr going to a file.
struct Serve {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Serve {
    fn spawn(dir: &Path, extra: &[&str]) -> Self {
        let socket = dir.join("coffer.sock");
        let log = dir.join("server.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(coffer_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .args(extra)
            .env("RUST_LOG", "info,coffer=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn coffer serve");
        Self { child, socket, log }
    }

    async fn ready(&mut self) {
        for _ in 0..300 {
            if self.socket.exists() && tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("coffer serve exited: {status}: {}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("coffer serve did not start: {}", self.log_text());
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        self.signal("TERM");
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.log_text();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }
}

async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn sighup_reloads_tokens_and_policy_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = write_file(dir.path(), "tokens.csv", TOKENS);
    let policy = write_file(dir.path(), "policy.yaml", POLICY);
    let mut serve = Serve::spawn(
        dir.path(),
        &[
            "--token-file",
            &tokens.display().to_string(),
            "--authz-policy",
            &policy.display().to_string(),
        ],
    );
    serve.ready().await;
    let ch = unix_channel(&serve.socket).await;
    let mut admin = client(ch.clone(), Some("tok-admin"));
    create(&mut admin, secret("ns", "a", &[("k", b"v")]))
        .await
        .expect("create");
    let mut watch = admin
        .watch(pb::WatchSecretsRequest {
            namespace: "ns".into(),
            ..pb::WatchSecretsRequest::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut newbie = client(ch.clone(), Some("tok-new"));
    assert_eq!(
        get(&mut newbie, "ns", "a")
            .await
            .expect_err("unknown")
            .code(),
        Code::Unauthenticated
    );

    std::fs::write(&tokens, format!("{TOKENS}tok-new,newbie,2\n")).expect("write");
    std::fs::write(
        &policy,
        format!("{POLICY}  - users: [newbie]\n    verbs: [get]\n    namespaces: [ns]\n"),
    )
    .expect("write");
    serve.signal("HUP");
    assert!(
        eventually(10, || {
            let mut c = newbie.clone();
            async move { get(&mut c, "ns", "a").await.is_ok() }
        })
        .await,
        "the new token and rule work after SIGHUP: {}",
        serve.log_text()
    );
    // The connection and the watch opened before the reload are still up.
    create(&mut admin, secret("ns", "b", &[("k", b"v")]))
        .await
        .expect("create on the same connection");
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert_eq!(
        ev.object.and_then(|o| o.metadata).map(|m| m.name),
        Some("b".into())
    );

    // A bad policy on SIGHUP: logged, and the previous one stays.
    std::fs::write(
        &policy,
        "rules:\n  - users: [x]\n    verbs: [fly]\n    namespaces: [ns]\n",
    )
    .expect("write");
    serve.signal("HUP");
    assert!(
        eventually(10, || {
            let log = serve.log_text();
            async move { log.contains("reload failed") }
        })
        .await,
        "{}",
        serve.log_text()
    );
    get(&mut newbie, "ns", "a")
        .await
        .expect("the old policy stays");
    let log = serve.stop();
    assert!(log.contains("security settings reloaded"), "{log}");
    assert!(log.contains("unknown verb \"fly\""), "{log}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn canary_is_absent_from_audit_log_server_log_and_data_dir() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("dir");
    let tokens = write_file(dir.path(), "tokens.csv", TOKENS);
    let policy = write_file(dir.path(), "policy.yaml", POLICY);
    let audit = dir.path().join("audit.log");
    let mut serve = Serve::spawn(
        dir.path(),
        &[
            "--token-file",
            &tokens.display().to_string(),
            "--authz-policy",
            &policy.display().to_string(),
            "--audit-log",
            &audit.display().to_string(),
            "--audit-fail-closed",
        ],
    );
    serve.ready().await;
    let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
    let ch = unix_channel(&serve.socket).await;
    let mut admin = client(ch.clone(), Some("tok-admin"));
    let mut s = secret("ns", "canary", &[("k", canary.as_bytes())]);
    s.string_data.insert("s".into(), canary.clone());
    create(&mut admin, s).await.expect("create");
    let got = get(&mut admin, "ns", "canary").await.expect("get");
    assert_eq!(got.data["k"], canary.as_bytes());
    admin
        .list(pb::ListSecretsRequest::default())
        .await
        .expect("list");
    let ev = first_watch_event(
        &mut admin,
        pb::WatchSecretsRequest {
            send_initial_events: true,
            ..pb::WatchSecretsRequest::default()
        },
    )
    .await
    .expect("watch");
    assert!(ev.object.is_some());
    let mut updated = secret("ns", "canary", &[("k", canary.as_bytes()), ("k2", b"x")]);
    updated
        .metadata
        .get_or_insert_default()
        .labels
        .insert("l".into(), "v".into());
    admin
        .update(pb::UpdateSecretRequest {
            secret: Some(updated),
        })
        .await
        .expect("update");
    // A refused request is logged and audited too.
    let mut nobody = client(ch, Some("wrong-token"));
    let _ = get(&mut nobody, "ns", "canary").await.expect_err("refused");
    let log = serve.stop();

    let forms = [
        canary.as_bytes().to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(canary.as_bytes())
            .into_bytes(),
        hex::encode(canary.as_bytes()).into_bytes(),
    ];
    let audit_text = std::fs::read(&audit).expect("audit log");
    assert!(!audit_text.is_empty());
    let mut files = Vec::new();
    files_under(&dir.path().join("data"), &mut files);
    assert!(!files.is_empty());
    for form in &forms {
        assert!(!contains(&audit_text, form), "canary in the audit log");
        assert!(!contains(log.as_bytes(), form), "canary in the server log");
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            assert!(!contains(&bytes, form), "canary in {}", f.display());
        }
    }
    println!(
        "canary absent from the audit log ({} records), the server log ({} lines) and {} files under the data dir",
        audit_text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        log.lines().count(),
        files.len()
    );
}

#[tokio::test]
async fn serve_refuses_non_loopback_without_auth() {
    let dir = tempfile::tempdir().expect("dir");
    let out = Command::new(coffer_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:"), "{err}");
    assert!(err.contains("--insecure-allow-unauthenticated"), "{err}");

    // On loopback it starts, and says that authentication is off.
    let mut serve = Serve::spawn(dir.path(), &[]);
    serve.ready().await;
    // The socket accepts before the start-up lines are all written: wait for the line.
    let said = eventually(10, || async {
        serve.log_text().contains("authentication is off")
    })
    .await;
    let log = serve.stop();
    assert!(said, "{log}");
}
