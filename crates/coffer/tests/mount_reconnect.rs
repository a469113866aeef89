//! The mount agent across server restarts: a `coffer serve` child process killed and started
//! again on the same unix socket and data directory. The agent resumes its watches from the
//! last resource_version; when the server can no longer serve that revision ("too old resource
//! version"), it re-reads the Secret and rewrites the mount.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::server as server_common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coffer::mount::{Agent, AgentEvent, AgentOptions, Connector, MountSpec};
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use server_common::{create, secret, try_unix_channel, unix_channel, update};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use coffer_testkit::process::{Proc, Serve};

/// `coffer serve` on a unix socket in `dir` with a two-event watch window and no history (so a
/// resume from before the window is "too old" rather than replayed from history, which
/// server_history covers); a restart is the same call on the same directory (data and socket).
fn start_serve(dir: &Path) -> Proc {
    Serve::new(dir)
        .args(&["--watch-window", "2", "--history-retention", "0"])
        .log_file("serve.log")
        .start()
}

async fn client(serve: &Proc) -> SecretsClient<tonic::transport::Channel> {
    SecretsClient::new(unix_channel(&serve.socket).await)
}

async fn wait(
    events: &mut UnboundedReceiver<AgentEvent>,
    seen: &mut Vec<AgentEvent>,
    what: &str,
    f: impl Fn(&AgentEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                let hit = f(&ev);
                seen.push(ev);
                if hit {
                    return;
                }
            }
            Ok(None) => panic!("agent ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; events: {seen:?}"),
        }
    }
}

fn rv_of(s: &pb::Secret) -> u64 {
    s.metadata.as_ref().map_or(0, |m| m.resource_version)
}

fn written(rv: u64) -> impl Fn(&AgentEvent) -> bool {
    move |e| matches!(e, AgentEvent::Written { mount: 0, resource_version, .. } if *resource_version == rv)
}

#[tokio::test]
async fn resumes_after_restart_and_rereads_when_too_old() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = start_serve(tmp.path());
    let target = tmp.path().join("vol");
    let mut c = client(&serve).await;
    let s1 = create(&mut c, secret("default", "db", &[("k", "v1")]))
        .await
        .unwrap();

    // The test decides when the agent may connect.
    let open = Arc::new(AtomicBool::new(true));
    let connector: Connector = {
        let open = open.clone();
        let socket = serve.socket.clone();
        Arc::new(move || {
            let open = open.load(Ordering::SeqCst);
            let socket = socket.clone();
            Box::pin(async move {
                if !open {
                    return Err("held back by the test".to_owned());
                }
                let channel = try_unix_channel(&socket).await.map_err(|e| e.to_string())?;
                Ok(coffer::credentials::Bearer::none().client(channel))
            })
        })
    };
    let options = AgentOptions {
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(100),
        warn_not_tmpfs: false,
        ..AgentOptions::default()
    };
    let mut agent = Agent::new(
        vec![MountSpec::new("default", "db", &target)],
        connector,
        options,
    );
    let mut events = agent.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    let mut seen = Vec::new();
    wait(&mut events, &mut seen, "first write", written(rv_of(&s1))).await;
    let read = || std::fs::read_to_string(target.join("k")).unwrap();
    assert_eq!(read(), "v1");

    // 1. Restart with nothing missed: the watch resumes where it was.
    serve.kill();
    wait(&mut events, &mut seen, "disconnect", |e| {
        matches!(e, AgentEvent::Disconnected { .. })
    })
    .await;
    let serve = start_serve(tmp.path());
    wait(&mut events, &mut seen, "reconnect", |e| {
        matches!(e, AgentEvent::Connected)
    })
    .await;
    let mut c = client(&serve).await;
    let s2 = update(&mut c, secret("default", "db", &[("k", "v2")]))
        .await
        .unwrap();
    wait(
        &mut events,
        &mut seen,
        "update after restart",
        written(rv_of(&s2)),
    )
    .await;
    assert_eq!(read(), "v2");
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, AgentEvent::Resynced { .. })),
        "a resume from a served revision must not re-read: {seen:?}"
    );
    // A resume does not replay the initial state: the only writes were rv1 and rv2.
    let writes: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Written {
                resource_version, ..
            } => Some(*resource_version),
            _ => None,
        })
        .collect();
    assert_eq!(writes, vec![rv_of(&s1), rv_of(&s2)]);

    // 2. Restart, then more changes than the server's window keeps before the agent is back:
    //    "too old resource version", so the agent re-reads and rewrites.
    open.store(false, Ordering::SeqCst);
    serve.kill();
    wait(&mut events, &mut seen, "disconnect", |e| {
        matches!(e, AgentEvent::Disconnected { .. })
    })
    .await;
    let serve = start_serve(tmp.path());
    let mut c = client(&serve).await;
    let s3 = update(&mut c, secret("default", "db", &[("k", "v3")]))
        .await
        .unwrap();
    create(&mut c, secret("default", "other1", &[("x", "1")]))
        .await
        .unwrap();
    create(&mut c, secret("default", "other2", &[("x", "2")]))
        .await
        .unwrap();
    open.store(true, Ordering::SeqCst);
    wait(
        &mut events,
        &mut seen,
        "a re-read",
        |e| matches!(e, AgentEvent::Resynced { name, .. } if name == "db"),
    )
    .await;
    wait(&mut events, &mut seen, "the rewrite", written(rv_of(&s3))).await;
    assert_eq!(read(), "v3");

    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("agent stops")
        .unwrap();
    assert_eq!(report.ready, 1, "{report:?}");
}
