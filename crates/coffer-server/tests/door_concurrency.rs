//! Door transactions run without the store's lock and join the group commit (their reads are
//! their commit's conditions; one that lost a race is evaluated again, and its last try takes
//! the lock). These tests drive many real etcd clients at once against the door, alone and
//! beside the Secret service, and check what a serial store would give: no update lost, no two
//! writes at one revision, every write its own version, reads current at the revision reported.

use std::collections::BTreeSet;

use coffer_server::proto::etcd::etcdserverpb as pb;
use coffer_server::proto::etcd::mvccpb;
use coffer_testkit::etcd::{Clients, get_kv_at, get_op, guarded_put, mod_eq, put_op};
use coffer_testkit::server::{TestServer, create, get, secret, update};

const COUNTER: &[u8] = b"/counter";

async fn kv_at(c: &mut Clients, key: &[u8], revision: i64) -> mvccpb::KeyValue {
    get_kv_at(c, key, revision).await.expect("the key")
}

/// kube-apiserver's GuaranteedUpdate: compare the key's mod_revision with the one read, put on
/// success, read it again on failure and retry from what the failure branch returned. Returns
/// the revision the write got and the value it wrote.
async fn increment(c: &mut Clients) -> (i64, u64) {
    let mut kv = kv_at(c, COUNTER, 0).await;
    loop {
        let n: u64 = std::str::from_utf8(&kv.value)
            .expect("utf-8")
            .parse()
            .expect("a number");
        let next = (n + 1).to_string();
        let r =
            c.kv.txn(pb::TxnRequest {
                compare: vec![mod_eq(COUNTER, kv.mod_revision)],
                success: vec![put_op(COUNTER, next.as_bytes(), 0)],
                failure: vec![get_op(COUNTER)],
            })
            .await
            .expect("txn")
            .into_inner();
        let revision = r.header.expect("header").revision;
        if r.succeeded {
            return (revision, n + 1);
        }
        // The failure branch's read is current at the revision the transaction reports.
        let Some(pb::response_op::Response::ResponseRange(range)) =
            r.responses.into_iter().next().and_then(|op| op.response)
        else {
            panic!("the failure branch's range response");
        };
        assert_eq!(
            range.header.expect("inner header").revision,
            revision,
            "the read inside reports the transaction's revision"
        );
        kv = range.kvs.into_iter().next().expect("the key");
        assert!(
            kv.mod_revision <= revision,
            "a value read at revision {revision} was written at {}",
            kv.mod_revision
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compare_and_swap_loses_no_update() {
    const TASKS: usize = 16;
    const EACH: usize = 8;
    let server = TestServer::builder().etcd().start().await;
    let mut c = server.etcd().await;
    c.kv.put(pb::PutRequest {
        key: COUNTER.to_vec(),
        value: b"0".to_vec(),
        ..Default::default()
    })
    .await
    .expect("put");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let mut c = server.etcd().await;
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for _ in 0..EACH {
                done.push(increment(&mut c).await);
            }
            done
        }));
    }
    let mut writes = Vec::new();
    for t in tasks {
        writes.extend(t.await.expect("task"));
    }
    writes.sort_unstable();
    let total = (TASKS * EACH) as u64;
    let revisions: BTreeSet<i64> = writes.iter().map(|(r, _)| *r).collect();
    assert_eq!(revisions.len(), writes.len(), "two writes at one revision");
    // Serial: the k-th write by revision wrote k, having read k - 1.
    for (k, (revision, value)) in writes.iter().enumerate() {
        assert_eq!(*value, k as u64 + 1, "write at revision {revision}");
        let kv = kv_at(&mut c, COUNTER, *revision).await;
        assert_eq!(kv.mod_revision, *revision);
        assert_eq!(kv.value, value.to_string().as_bytes());
    }
    let last = kv_at(&mut c, COUNTER, 0).await;
    assert_eq!(
        last.value,
        total.to_string().as_bytes(),
        "an update was lost"
    );
    assert_eq!(
        last.version,
        total as i64 + 1,
        "every write its own version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_and_secret_service_writes_interleave_at_distinct_revisions() {
    const TASKS: usize = 4;
    const EACH: usize = 10;
    let server = TestServer::builder().etcd().start().await;
    let mut secrets = server.client().await;
    let mut door = server.etcd().await;
    let created = create(&mut secrets, secret("ns", "shared", &[("k", "v0")]))
        .await
        .expect("create");
    let created_rev = created.metadata.as_ref().expect("meta").resource_version as i64;
    let key = b"/registry/secrets/ns/shared".to_vec();
    // The bytes the API server would write for this Secret.
    let value = kv_at(&mut door, &key, 0).await.value;

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        // The API server's writes to the Secret, through the door.
        let mut c = server.etcd().await;
        let (key, value) = (key.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for _ in 0..EACH {
                let mut kv = kv_at(&mut c, &key, 0).await;
                loop {
                    let r = guarded_put(&mut c, &key, kv.mod_revision, &value).await;
                    if r.succeeded {
                        revs.push((kv.mod_revision, r.header.expect("header").revision));
                        break;
                    }
                    kv = kv_at(&mut c, &key, 0).await;
                }
            }
            (revs, Vec::new())
        }));
        // The Secret service's writes to the same Secret, and Creates of others.
        let mut s = server.client().await;
        tasks.push(tokio::spawn(async move {
            let (mut shared, mut others) = (Vec::new(), Vec::new());
            for i in 0..EACH {
                let data = format!("t{t}-{i}");
                let u = update(&mut s, secret("ns", "shared", &[("k", &data)]))
                    .await
                    .expect("update");
                shared.push(u.metadata.expect("meta").resource_version as i64);
                let name = format!("other-{t}-{i}");
                let c = create(&mut s, secret("ns", &name, &[("k", "v")]))
                    .await
                    .expect("create");
                others.push(c.metadata.expect("meta").resource_version as i64);
            }
            // (Unconditional: compared with nothing.)
            (shared.into_iter().map(|r| (0, r)).collect(), others)
        }));
    }
    let (mut writes, mut all) = (Vec::new(), Vec::new());
    for t in tasks {
        let (s, o) = t.await.expect("task");
        writes.extend(s);
        all.extend(o);
    }
    let shared: Vec<i64> = writes.iter().map(|(_, r)| *r).collect();
    all.extend(&shared);
    // A door write compared with the version it read: no other write to the Secret came
    // between that version and it.
    for (compared, rev) in writes.iter().filter(|(c, _)| *c != 0) {
        let between: Vec<&i64> = shared
            .iter()
            .filter(|w| (*compared + 1..*rev).contains(*w))
            .collect();
        assert!(
            between.is_empty(),
            "the door's write at {rev}, compared with {compared}, came after {between:?}"
        );
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "two writes at one revision");
    assert_eq!(all.len(), TASKS * EACH * 3);
    // Nothing else wrote: the revisions are exactly the ones after the first create.
    let expected: BTreeSet<i64> = (created_rev + 1..=created_rev + all.len() as i64).collect();
    assert_eq!(distinct, expected, "a revision skipped or taken twice");
    let last = kv_at(&mut door, &key, 0).await;
    assert_eq!(
        last.version,
        1 + (TASKS * EACH * 2) as i64,
        "every write to the shared Secret its own version"
    );
    // Every version of the shared Secret opens: each write was sealed for the version it
    // was stored as (a door write sealed against a version another write replaced first
    // would not).
    for rev in &shared {
        let at = secrets
            .get(coffer_server::proto::v1::GetSecretRequest {
                namespace: "ns".into(),
                name: "shared".into(),
                resource_version: *rev as u64,
            })
            .await
            .unwrap_or_else(|e| panic!("the version at {rev}: {e:?}"))
            .into_inner();
        assert_eq!(at.metadata.expect("meta").resource_version as i64, *rev);
    }
    let shown = get(&mut secrets, "ns", "shared").await.expect("get");
    assert_eq!(
        shown.metadata.expect("meta").resource_version as i64,
        last.mod_revision,
        "the Secret service shows the last write"
    );
}
