//! `coffer serve` as a process: SIGHUP reloads the token file and the policy without dropping
//! connections; a canary Secret value is absent from the audit log, the server's log and every
//! file under the data directory; a non-loopback listener without authentication is refused.

use coffer_testkit::auth as auth_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use auth_support::*;
use coffer_server::proto::v1 as pb;
use tonic::Code;

use coffer_testkit::process::{Proc, Serve, coffer_bin};
use coffer_testkit::server::eventually;

const POLICY: &str = "rules:\n  - groups: [admins]\n    verbs: [\"*\"]\n    namespaces: [\"*\"]\n";
const TOKENS: &str = "tok-admin,root,1,admins\n";

/// `coffer serve` on a unix socket in `dir` with `extra` flags, logging at debug level to
/// `server.log`.
fn start_serve(dir: &Path, extra: &[&str]) -> Proc {
    Serve::new(dir)
        .args(extra)
        .env("RUST_LOG", "info,coffer=debug")
        .log_file("server.log")
        .start()
}

#[tokio::test]
async fn sighup_reloads_tokens_and_policy_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = write_file(dir.path(), "tokens.csv", TOKENS);
    let policy = write_file(dir.path(), "policy.yaml", POLICY);
    let serve = start_serve(
        dir.path(),
        &[
            "--token-file",
            &tokens.display().to_string(),
            "--authz-policy",
            &policy.display().to_string(),
        ],
    );
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
    let log = serve.terminate().log;
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
    let serve = start_serve(
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
    let log = serve.terminate().log;

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
    let serve = start_serve(dir.path(), &[]);
    // The socket accepts before the start-up lines are all written: wait for the line.
    let said = eventually(10, || async {
        serve.log_text().contains("authentication is off")
    })
    .await;
    let log = serve.terminate().log;
    assert!(said, "{log}");
}

/// Issue 18, item 9: the unix socket is bound under umask 077 (owner-only from the moment it
/// exists), whatever umask `coffer serve` starts with, and the process's umask is given back.
#[tokio::test]
async fn the_socket_is_owner_only_under_any_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let serve = Serve::new(dir.path())
        .through(
            Path::new("/bin/sh"),
            &["-c", "umask 000; exec \"$@\"", "sh"],
        )
        .start();
    let mode = std::fs::metadata(&serve.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", serve.child.id())).unwrap_or_default();
    if let Some(umask) = status.lines().find_map(|l| l.strip_prefix("Umask:")) {
        assert_eq!(umask.trim(), "0000", "the process's umask is restored");
    }
    serve.kill();
}
