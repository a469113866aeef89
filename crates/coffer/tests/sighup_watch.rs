//! README ("Metadata only unless `get`", "SIGHUP"): open watches check every event against the
//! current policy, so a SIGHUP that takes `get` away strips the values (and the last-applied
//! annotation) from the very next event of a watch opened before it, without ending it.

use coffer_testkit::auth as auth_support;

use std::time::Duration;

use auth_support::*;
use coffer_server::proto::v1 as pb;

use coffer_testkit::process::Serve;
use coffer_testkit::server::eventually;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const TOKENS: &str = "tok-admin,root,1,admins\ntok-viewer,viewer,2\n";
const ADMINS: &str = "rules:\n  - groups: [admins]\n    verbs: [\"*\"]\n    namespaces: [\"*\"]\n";

fn annotated(ns: &str, name: &str) -> pb::Secret {
    let mut s = secret(ns, name, &[("k", b"sighup-value")]);
    if let Some(m) = s.metadata.as_mut() {
        m.annotations
            .insert(LAST_APPLIED.into(), r#"{"data":{"k":"c2lnaHVw"}}"#.into());
    }
    s
}

async fn next_object(watch: &mut tonic::Streaming<pb::WatchEvent>) -> pb::Secret {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("an event in time")
        .expect("the watch goes on")
        .expect("open")
        .object
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_taking_get_away_strips_the_next_event_of_an_open_watch() {
    let _watchdog =
        coffer_testkit::require::Watchdog::arm("sighup_strips_watch", Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("dir");
    let tokens = write_file(dir.path(), "tokens.csv", TOKENS);
    let with_get =
        format!("{ADMINS}  - users: [viewer]\n    verbs: [get, watch]\n    namespaces: [ns]\n");
    let policy = write_file(dir.path(), "policy.yaml", &with_get);
    let serve = Serve::new(dir.path())
        .args(&[
            "--token-file",
            &tokens.display().to_string(),
            "--authz-policy",
            &policy.display().to_string(),
        ])
        .start();
    let ch = unix_channel(&serve.socket).await;
    let mut admin = client(ch.clone(), Some("tok-admin"));
    let mut viewer = client(ch.clone(), Some("tok-viewer"));
    let mut watch = viewer
        .watch(pb::WatchSecretsRequest {
            namespace: "ns".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    create(&mut admin, annotated("ns", "before"))
        .await
        .expect("create");
    let obj = next_object(&mut watch).await;
    assert_eq!(obj.data["k"], b"sighup-value");
    assert!(
        obj.metadata
            .unwrap_or_default()
            .annotations
            .contains_key(LAST_APPLIED)
    );

    // `get` taken away; `watch` kept.
    std::fs::write(
        &policy,
        format!("{ADMINS}  - users: [viewer]\n    verbs: [watch]\n    namespaces: [ns]\n"),
    )
    .expect("write");
    serve.signal("HUP");
    assert!(
        eventually(10, || {
            let mut v = viewer.clone();
            async move {
                get(&mut v, "ns", "before")
                    .await
                    .is_err_and(|e| e.code() == tonic::Code::PermissionDenied)
            }
        })
        .await,
        "get is refused after the reload: {}",
        serve.log_text()
    );
    create(&mut admin, annotated("ns", "after"))
        .await
        .expect("create");
    let obj = next_object(&mut watch).await;
    let meta = obj.metadata.clone().unwrap_or_default();
    assert_eq!(meta.name, "after");
    assert!(
        obj.data.is_empty(),
        "values after get was revoked: {:?}",
        obj.data.keys()
    );
    assert!(
        !meta.annotations.contains_key(LAST_APPLIED),
        "the annotation holds a copy"
    );
    serve.stop();
}
