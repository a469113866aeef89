//! One store, two doors: the Secrets kube-apiserver keeps under `/registry/secrets/<ns>/<name>`
//! through the etcd door are the Secrets Coffer's own clients see, and the other way round.
//!
//! A real `coffer serve --etcd-listen` child process; the door driven with etcd's generated
//! clients the way kube-apiserver's etcd3 store drives it (create = Txn on mod_revision 0,
//! update = Txn on the mod_revision read, delete = Txn then DeleteRange); the Secret service
//! through the real CLI (`get`, `apply`, `create`, `delete`) and the real mount agent. The
//! Kubernetes values are built here from the field numbers of Kubernetes' `generated.proto`
//! files, with the rules of its generated marshallers (see `coffer_core::model::k8s`'s golden
//! tests for the same rules byte by byte).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use coffer_server::proto::etcd::etcdserverpb as pb;
use coffer_testkit::etcd::Clients;
use coffer_testkit::process::{Proc, Run, Serve, coffer_bin, free_addr, run_with};

const CMP_EQUAL: i32 = 0;
const CMP_MOD: i32 = 2;

// ---------------------------------------------------------------------------------------------
// Kubernetes values, by field number
// ---------------------------------------------------------------------------------------------

fn varint(mut n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    while n >= 0x80 {
        v.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
    v
}

/// A length-delimited field.
fn ld(tag: u64, bytes: &[u8]) -> Vec<u8> {
    [
        &varint(tag << 3 | 2)[..],
        &varint(bytes.len() as u64),
        bytes,
    ]
    .concat()
}

/// A varint field.
fn vi(tag: u64, n: u64) -> Vec<u8> {
    [varint(tag << 3), varint(n)].concat()
}

fn entry(tag: u64, k: &str, v: &[u8]) -> Vec<u8> {
    ld(tag, &[ld(1, k.as_bytes()), ld(2, v)].concat())
}

/// What the API server's etcd3 store writes for a Secret: `k8s\0` + runtime.Unknown{typeMeta
/// {v1, Secret}, raw = core/v1 Secret, "", ""}. `extra_meta` and `extra` are fields Coffer's
/// model lacks, already encoded, placed in field-number order by the caller.
struct K8s<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    created: u64,
    labels: &'a [(&'a str, &'a str)],
    data: &'a [(&'a str, &'a [u8])],
    /// ObjectMeta fields 7..10 (generation, deletion*), written before the labels.
    meta_mid: Vec<u8>,
    /// ObjectMeta fields after annotations (13 ownerReferences, 14 finalizers, 17 managedFields).
    meta_tail: Vec<u8>,
    /// Secret fields after type (5 immutable, unknown ones).
    tail: Vec<u8>,
}

impl K8s<'_> {
    fn encode(&self) -> Vec<u8> {
        let mut meta = [
            ld(1, self.name.as_bytes()),
            ld(2, b""),
            ld(3, self.namespace.as_bytes()),
            ld(4, b""),
            ld(5, self.uid.as_bytes()),
            ld(6, b""),
        ]
        .concat();
        if self.meta_mid.is_empty() {
            meta.extend(vi(7, 0));
        }
        meta.extend(&self.meta_mid);
        meta.extend(ld(8, &[vi(1, self.created), vi(2, 0)].concat()));
        for (k, v) in self.labels {
            meta.extend(entry(11, k, v.as_bytes()));
        }
        meta.extend(&self.meta_tail);
        let mut secret = ld(1, &meta);
        for (k, v) in self.data {
            secret.extend(entry(2, k, v));
        }
        secret.extend(ld(3, b"Opaque"));
        secret.extend(&self.tail);
        [
            &b"k8s\0"[..],
            &ld(1, &[ld(1, b"v1"), ld(2, b"Secret")].concat()),
            &ld(2, &secret),
            &ld(3, b""),
            &ld(4, b""),
        ]
        .concat()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The server and its two doors
// ---------------------------------------------------------------------------------------------

struct Both {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    socket: String,
    door: Clients,
    rt: tokio::runtime::Runtime,
}

impl Both {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let proc = Serve::new(dir.path())
            .etcd_listen(addr)
            .log_file("serve.log")
            .start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let door = rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect to the door");
            Clients::new(channel)
        });
        Self {
            socket: format!("unix://{}", proc.socket.display()),
            proc: Some(proc),
            dir,
            door,
            rt,
        }
    }

    fn cli(&self, args: &[&str]) -> Run {
        let mut all = vec!["--server", self.socket.as_str()];
        all.extend_from_slice(args);
        run_with(coffer_bin(), &all, &[], None, None)
    }

    fn file(&self, name: &str, content: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        p.display().to_string()
    }

    fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The current value and mod_revision of a key.
    fn get(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        let mut kv = self.door.kv.clone();
        let r = self
            .rt
            .block_on(kv.range(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }))
            .expect("range")
            .into_inner();
        r.kvs
            .into_iter()
            .next()
            .map(|kv| (kv.value, kv.mod_revision))
    }

    /// Every key (and value) in `[start, end)`.
    fn range(&self, start: &str, end: &str) -> Vec<(String, Vec<u8>)> {
        let mut kv = self.door.kv.clone();
        let r = self
            .rt
            .block_on(kv.range(pb::RangeRequest {
                key: start.as_bytes().to_vec(),
                range_end: end.as_bytes().to_vec(),
                ..Default::default()
            }))
            .expect("range")
            .into_inner();
        r.kvs
            .into_iter()
            .map(|kv| (String::from_utf8(kv.key).expect("utf-8"), kv.value))
            .collect()
    }

    /// A write as the API server's etcd3 store makes it: a Txn guarded by the key's
    /// mod_revision (0: create). Returns the revision it got.
    fn write(&self, key: &str, expect_mod: i64, value: Option<&[u8]>) -> i64 {
        let op = match value {
            Some(v) => pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: v.to_vec(),
                ..Default::default()
            }),
            None => pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }),
        };
        let mut kv = self.door.kv.clone();
        let r = self
            .rt
            .block_on(kv.txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CMP_EQUAL,
                    target: CMP_MOD,
                    key: key.as_bytes().to_vec(),
                    target_union: Some(pb::compare::TargetUnion::ModRevision(expect_mod)),
                    ..Default::default()
                }],
                success: vec![pb::RequestOp { request: Some(op) }],
                failure: vec![],
            }))
            .expect("txn")
            .into_inner();
        assert!(r.succeeded, "{key}: the guarded write failed");
        r.header.expect("header").revision
    }

    /// `coffer get secret NAME -o json`, parsed.
    fn coffer_get(&self, name: &str) -> serde_json::Value {
        let out = self.cli(&["get", "secret", name, "-o", "json"]);
        serde_json::from_str(out.ok()).expect("json")
    }

    /// Starts the real mount agent on one Secret (killed by the caller).
    fn mount(&self, secret: &str, dir: &Path) -> std::process::Child {
        std::process::Command::new(coffer_bin())
            .args([
                "--server",
                &self.socket,
                "mount",
                "--secret",
                secret,
                "--dir",
            ])
            .arg(dir)
            .env_remove("COFFER_SERVER")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mount")
    }

    fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            let exit = p.terminate();
            assert!(
                exit.status.is_some_and(|s| s.success()),
                "serve did not stop cleanly: {}",
                exit.log
            );
        }
    }
}

fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_file(p: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while read(p) != want {
        assert!(
            Instant::now() < deadline,
            "{} never became {want:?} (is {:?})",
            p.display(),
            read(p)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Fields of ObjectMeta Coffer's model lacks, as the API server encodes them.
fn owner_reference() -> Vec<u8> {
    ld(
        13,
        &[
            ld(1, b"Deployment"),
            ld(3, b"web"),
            ld(4, b"owner-uid-1"),
            ld(5, b"apps/v1"),
            vi(6, 1),
        ]
        .concat(),
    )
}

fn finalizer() -> Vec<u8> {
    ld(14, b"example.com/keep-me")
}

fn managed_fields() -> Vec<u8> {
    ld(
        17,
        &[
            ld(1, b"kubectl-create"),
            ld(2, b"Update"),
            ld(3, b"v1"),
            ld(4, &[vi(1, 1_700_000_000), vi(2, 0)].concat()),
            ld(6, b"FieldsV1"),
            ld(
                7,
                &ld(1, br#"{"f:data":{".":{},"f:password":{}},"f:type":{}}"#),
            ),
        ]
        .concat(),
    )
}

/// A field number no Kubernetes version uses yet: what a newer API server might write.
fn unknown_field() -> Vec<u8> {
    ld(111, b"from-the-future")
}

#[test]
fn a_secret_the_api_server_writes_is_a_coffer_secret_and_keeps_every_field() {
    let both = Both::start();
    let key = "/registry/secrets/default/db-creds";
    let generation = vi(7, 2);
    let original = K8s {
        namespace: "default",
        name: "db-creds",
        uid: "uid-db-creds",
        created: 1_700_000_000,
        labels: &[("app", "db")],
        data: &[("password", b"s3cret-canary"), ("user", b"admin")],
        meta_mid: generation.clone(),
        meta_tail: [owner_reference(), finalizer(), managed_fields()].concat(),
        tail: [vi(5, 0), unknown_field()].concat(),
    }
    .encode();
    let created = both.write(key, 0, Some(&original));

    // The Secret service, the CLI: the same Secret, resource_version = mod_revision.
    let got = both.coffer_get("db-creds");
    assert_eq!(got["metadata"]["resourceVersion"], created.to_string());
    assert_eq!(got["metadata"]["uid"], "uid-db-creds");
    assert_eq!(got["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(got["metadata"]["labels"]["app"], "db");
    assert_eq!(got["data"]["password"], b64(b"s3cret-canary"));
    assert_eq!(got["type"], "Opaque");
    let list = both.cli(&["get", "secrets"]);
    assert!(list.ok().contains("db-creds"), "{list:?}");
    // The door: byte for byte what was written.
    assert_eq!(both.get(key), Some((original.clone(), created)));

    // The mount agent follows it over WatchMany.
    let mount = tempfile::tempdir().expect("tempdir");
    let dir = mount.path().join("db");
    let mut agent = both.mount("db-creds", &dir);
    wait_file(&dir.join("password"), "s3cret-canary");

    // An update through the Secret service keeps every field Coffer's model lacks.
    let manifest = both.file(
        "db.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-creds\n  labels:\n    app: db\n    tier: data\n\
         stringData:\n  password: rotated-canary\n  user: admin\ntype: Opaque\n",
    );
    both.cli(&["apply", "-f", &manifest]).ok();
    wait_file(&dir.join("password"), "rotated-canary");
    let (edited, updated) = both.get(key).expect("still there");
    assert!(updated > created);
    for kept in [
        ld(2, b""),
        generation,
        owner_reference(),
        finalizer(),
        managed_fields(),
        vi(5, 0),
        unknown_field(),
        ld(5, b"uid-db-creds"),
        ld(6, b""),
        ld(8, &[vi(1, 1_700_000_000), vi(2, 0)].concat()),
    ] {
        assert!(contains(&edited, &kept), "lost {kept:02x?}");
    }
    assert!(contains(&edited, &entry(2, "password", b"rotated-canary")));
    assert!(contains(
        &edited,
        &[entry(11, "app", b"db"), entry(11, "tier", b"data")].concat()
    ));
    assert!(
        edited.starts_with(
            &[
                &b"k8s\0"[..],
                &ld(1, &[ld(1, b"v1"), ld(2, b"Secret")].concat())
            ]
            .concat()
        )
    );
    assert!(edited.ends_with(&[ld(3, b""), ld(4, b"")].concat()));
    let got = both.coffer_get("db-creds");
    assert_eq!(got["metadata"]["resourceVersion"], updated.to_string());
    assert_eq!(got["metadata"]["labels"]["tier"], "data");

    // The API server's next update (guarded by the revision it read) is seen by Coffer too.
    let again = K8s {
        namespace: "default",
        name: "db-creds",
        uid: "uid-db-creds",
        created: 1_700_000_000,
        labels: &[("app", "db")],
        data: &[("password", b"third-canary"), ("user", b"admin")],
        meta_mid: Vec::new(),
        meta_tail: Vec::new(),
        tail: Vec::new(),
    }
    .encode();
    let third = both.write(key, updated, Some(&again));
    wait_file(&dir.join("password"), "third-canary");
    assert_eq!(
        both.coffer_get("db-creds")["metadata"]["resourceVersion"],
        third.to_string()
    );

    // Deleted through the door: gone for the Secret service.
    both.write(key, third, None);
    both.cli(&["get", "secret", "db-creds"])
        .fails(1, "not found");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_json_secret_the_api_server_writes_is_read_and_updated_in_json() {
    let both = Both::start();
    let key = "/registry/secrets/default/api-key";
    let original = concat!(
        r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"api-key","namespace":"default","uid":"uid-api-key","#,
        r#""creationTimestamp":"2023-11-14T22:13:20Z","labels":{"app":"web"},"ownerReferences":[{"apiVersion":"apps/v1","#,
        r#""kind":"Deployment","name":"web","uid":"owner-uid-1","controller":true}],"finalizers":["example.com/keep-me"]},"#,
        r#""data":{"token":"dG9rZW4tY2FuYXJ5"},"type":"Opaque","futureField":{"x":1}}"#,
        "\n"
    );
    let created = both.write(key, 0, Some(original.as_bytes()));
    let got = both.coffer_get("api-key");
    assert_eq!(got["data"]["token"], b64(b"token-canary"));
    assert_eq!(got["metadata"]["resourceVersion"], created.to_string());
    assert_eq!(got["metadata"]["uid"], "uid-api-key");
    assert_eq!(both.get(key).expect("value").0, original.as_bytes());
    let mount = tempfile::tempdir().expect("tempdir");
    let dir = mount.path().join("api");
    let mut agent = both.mount("api-key", &dir);
    wait_file(&dir.join("token"), "token-canary");

    let manifest = both.file(
        "api.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: api-key\n  labels:\n    app: web\n\
         stringData:\n  token: new<canary>\ntype: Opaque\n",
    );
    both.cli(&["apply", "-f", &manifest]).ok();
    let (edited, _) = both.get(key).expect("value");
    let text = String::from_utf8(edited).expect("still JSON");
    assert!(text.ends_with("}\n"), "{text}");
    for kept in [
        r#""ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"web","uid":"owner-uid-1","controller":true}]"#,
        r#""finalizers":["example.com/keep-me"]"#,
        r#""futureField":{"x":1}"#,
        r#""uid":"uid-api-key""#,
        r#""creationTimestamp":"2023-11-14T22:13:20Z""#,
    ] {
        assert!(text.contains(kept), "lost {kept} in {text}");
    }
    assert!(
        text.contains(&format!(r#""token":"{}""#, b64(b"new<canary>"))),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["kind"], "Secret");
    assert!(v.get("stringData").is_none());
    assert_eq!(
        both.coffer_get("api-key")["data"]["token"],
        b64(b"new<canary>")
    );
    wait_file(&dir.join("token"), "new<canary>");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_secret_coffer_writes_reaches_the_door_as_the_api_server_would_store_it() {
    let both = Both::start();
    // A watch on every Secret, as the API server's cacher makes it.
    let mut watch = both.door.watch.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::WatchRequest>();
    let mut events = both
        .rt
        .block_on(watch.watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)))
        .expect("watch")
        .into_inner();
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b"/registry/secrets/".to_vec(),
                range_end: b"/registry/secrets0".to_vec(),
                prev_kv: true,
                ..Default::default()
            },
        )),
    })
    .expect("send");
    let created = both
        .rt
        .block_on(events.message())
        .expect("created")
        .expect("open");
    assert!(created.created);

    both.cli(&[
        "create",
        "secret",
        "generic",
        "native",
        "--from-literal=token=t0k3n-canary",
    ])
    .ok();
    let got = both.coffer_get("native");
    let uid = got["metadata"]["uid"].as_str().expect("uid").to_owned();
    let rv: i64 = got["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .parse()
        .expect("number");
    let ts = got["metadata"]["creationTimestamp"].as_str().expect("ts");
    let created_secs = {
        let out = run_with(
            Path::new("/bin/date"),
            &["-u", "-d", ts, "+%s"],
            &[],
            None,
            None,
        );
        out.ok().trim().parse::<u64>().expect("seconds")
    };
    let expected = K8s {
        namespace: "default",
        name: "native",
        uid: &uid,
        created: created_secs,
        labels: &[],
        data: &[("token", b"t0k3n-canary")],
        meta_mid: Vec::new(),
        meta_tail: Vec::new(),
        tail: Vec::new(),
    }
    .encode();
    let key = "/registry/secrets/default/native";
    assert_eq!(both.get(key), Some((expected.clone(), rv)));
    // The watch sees the same object at the same revision.
    let put = both
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), events.message()).await })
        .expect("in time")
        .expect("event")
        .expect("open");
    let ev = &put.events[0];
    assert_eq!(ev.r#type, 0, "PUT");
    let kv = ev.kv.as_ref().expect("kv");
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (key.as_bytes(), expected.as_slice())
    );
    assert_eq!(
        (kv.mod_revision, kv.create_revision, kv.version),
        (rv, rv, 1)
    );

    // Secrets and the door's own keys list together, in key order; a key under the prefix
    // that cannot name a Secret stays a plain door key.
    both.write("/registry/secrets/default/Not_A_Name", 0, Some(b"x"));
    both.write("/registry/secrets/default/zz", 0, Some(&expected));
    both.write("/registry/configmaps/default/c", 0, Some(b"y"));
    let keys: Vec<String> = both
        .range("/registry/", "/registry0")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            "/registry/configmaps/default/c",
            "/registry/secrets/default/Not_A_Name",
            "/registry/secrets/default/native",
            "/registry/secrets/default/zz",
        ]
    );
    // A Secret written under another's key is shown under the key's name.
    assert_eq!(both.coffer_get("zz")["metadata"]["name"], "zz");

    // Deleted through the Secret service: the door's watch sees the delete with the last state.
    both.cli(&["delete", "secret", "native"]).ok();
    let mut deleted = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while deleted.is_none() {
        assert!(Instant::now() < deadline, "no delete event");
        let msg = both
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), events.message()).await
            })
            .expect("in time")
            .expect("event")
            .expect("open");
        deleted = msg
            .events
            .into_iter()
            .find(|e| e.r#type == 1 && e.kv.as_ref().is_some_and(|kv| kv.key == key.as_bytes()));
    }
    let deleted = deleted.expect("delete");
    assert_eq!(
        deleted.prev_kv.expect("prev_kv").value,
        expected,
        "the last state"
    );
    assert_eq!(both.get(key), None);
}

#[test]
fn values_the_api_server_encrypted_and_non_secrets_stay_behind_the_door() {
    let mut both = Both::start();
    let enc = b"k8s:enc:kms:v2:key-1:\x00\x01sealed-canary";
    both.write("/registry/secrets/default/enc", 0, Some(enc));
    both.write(
        "/registry/secrets/default/junk",
        0,
        Some(b"junk-canary, not a Secret"),
    );
    both.write("/registry/secrets/default/enc2", 0, Some(enc));
    for name in ["enc", "junk"] {
        both.cli(&["get", "secret", name]).fails(1, "not found");
    }
    let list = both.cli(&["get", "secrets"]);
    assert!(
        !list.stdout.contains("enc") && !list.stdout.contains("junk"),
        "{list:?}"
    );
    // Through the door: byte for byte.
    assert_eq!(
        both.get("/registry/secrets/default/enc").expect("enc").0,
        enc
    );
    // The Secret service cannot take over a name the door holds.
    both.cli(&["create", "secret", "generic", "enc", "--from-literal=a=b"])
        .fails(1, "already exists");
    // A value that becomes a Secret appears for the Secret service.
    let now_a_secret = K8s {
        namespace: "default",
        name: "junk",
        uid: "uid-junk",
        created: 1_700_000_000,
        labels: &[],
        data: &[("k", b"v")],
        meta_mid: Vec::new(),
        meta_tail: Vec::new(),
        tail: Vec::new(),
    }
    .encode();
    let (_, junk_rev) = both.get("/registry/secrets/default/junk").expect("junk");
    both.write(
        "/registry/secrets/default/junk",
        junk_rev,
        Some(&now_a_secret),
    );
    assert_eq!(both.coffer_get("junk")["data"]["k"], b64(b"v"));

    // Logged, never with the value: the non-Secret per write, the API server's encryption once.
    let log = both.log();
    assert!(!log.contains("canary"), "{log}");
    assert_eq!(log.matches("is not a Secret").count(), 1, "{log}");
    assert!(log.contains("default/junk"), "{log}");
    assert_eq!(log.matches("encrypts Secrets itself").count(), 1, "{log}");

    // kms status counts them, so an operator knows to turn the API server's encryption off.
    both.stop();
    let data = both.data_dir().display().to_string();
    let status = run_with(
        coffer_bin(),
        &["kms", "status", "--data-dir", &data, "-o", "json"],
        &[],
        None,
        None,
    );
    let v: serde_json::Value = serde_json::from_str(status.ok()).expect("json");
    assert_eq!(v["apiserverEncryptedSecrets"], 2);
    let table = run_with(
        coffer_bin(),
        &["kms", "status", "--data-dir", &data],
        &[],
        None,
        None,
    );
    assert!(
        table
            .ok()
            .contains("2 Secrets were encrypted by the API server itself"),
        "{table:?}"
    );
}
