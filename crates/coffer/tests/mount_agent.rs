//! The mount agent against a real server (in process, over TCP), writing real files in temp
//! directories: the Kubernetes atomic-writer layout after each kind of change, consistent
//! reads during rapid updates, items and modes, dotfiles, optional and missing Secrets and
//! keys, bad paths, and immutable Secrets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::server as server_common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coffer::credentials::Bearer;
use coffer::mount::atomic_writer::is_timestamp_dir_name;
use coffer::mount::{
    Agent, AgentEvent, AgentOptions, AgentReport, Connector, KeyToPath, MountSpec,
};
use coffer_server::proto::v1 as pb;
use server_common::{TestServer, create, delete, get, secret, tcp_channel, update};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn fast_options() -> AgentOptions {
    AgentOptions {
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(400),
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        warn_not_tmpfs: false,
        ..AgentOptions::default()
    }
}

fn connector(server: &TestServer) -> Connector {
    let addr = server.running.tcp_addr().expect("tcp");
    Arc::new(move || {
        Box::pin(async move {
            Ok(Bearer::none()
                .client(tcp_channel(addr).await)
                .max_decoding_message_size(16 << 20))
        })
    })
}

struct Running {
    events: UnboundedReceiver<AgentEvent>,
    /// Events received but not matched yet.
    backlog: Vec<AgentEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<AgentReport>,
}

impl Running {
    fn start(connector: Connector, mounts: Vec<MountSpec>, options: AgentOptions) -> Self {
        let mut agent = Agent::new(mounts, connector, options);
        let events = agent.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        Self {
            events,
            backlog: Vec::new(),
            stop,
            task,
        }
    }

    /// Waits for an event matching `f` (at most 10 s), earlier unmatched ones included;
    /// returns it.
    async fn wait(&mut self, what: &str, f: impl Fn(&AgentEvent) -> bool) -> AgentEvent {
        if let Some(i) = self.backlog.iter().position(&f) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) if f(&ev) => return ev,
                Ok(Some(ev)) => self.backlog.push(ev),
                Ok(None) => panic!("agent stopped while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Waits until mount `m` holds resource_version `rv`.
    async fn written(&mut self, m: usize, rv: u64) -> AgentEvent {
        self.wait(&format!("mount {m} at rv {rv}"), |e| {
            matches!(e, AgentEvent::Written { mount, resource_version, .. } if *mount == m && *resource_version == rv)
        })
        .await
    }

    async fn failed(&mut self, m: usize) -> String {
        match self
            .wait(
                &format!("mount {m} failing"),
                |e| matches!(e, AgentEvent::Failed { mount, .. } if *mount == m),
            )
            .await
        {
            AgentEvent::Failed { message, .. } => message,
            _ => unreachable!(),
        }
    }

    /// Drains events already received.
    fn drain(&mut self) -> Vec<AgentEvent> {
        let mut out = std::mem::take(&mut self.backlog);
        while let Ok(ev) = self.events.try_recv() {
            out.push(ev);
        }
        out
    }

    async fn stop(self) -> AgentReport {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops")
            .expect("agent task")
    }
}

fn rv_of(s: &pb::Secret) -> u64 {
    s.metadata.as_ref().map_or(0, |m| m.resource_version)
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Checks the kubelet layout of `dir` and returns the files under `..data` (path -> content):
/// one timestamped directory (0700) that `..data` names, and one `name -> ..data/name` link per
/// top-level name, nothing else.
fn layout(dir: &Path) -> BTreeMap<String, String> {
    let data = std::fs::read_link(dir.join("..data")).expect("..data is a link");
    let ts = data.to_str().unwrap().to_owned();
    assert!(is_timestamp_dir_name(&ts), "..data -> {ts}");
    assert!(!data.is_absolute(), "..data must be relative");
    assert_eq!(mode_of(&dir.join(&ts)), 0o700, "timestamped dir mode");
    let mut files = BTreeMap::new();
    collect(&dir.join(&ts), "", &mut files);
    let top: BTreeSet<String> = files
        .keys()
        .map(|p| p.split('/').next().unwrap().to_owned())
        .collect();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_str().unwrap().to_owned();
        if name == "..data" || name == ts {
            continue;
        }
        assert!(
            !name.starts_with(".."),
            "stray entry {name} in {}",
            dir.display()
        );
        let link =
            std::fs::read_link(entry.path()).unwrap_or_else(|_| panic!("{name} is not a link"));
        assert_eq!(link, Path::new("..data").join(&name), "link {name}");
        seen.insert(name);
    }
    assert_eq!(seen, top, "top-level links");
    files
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_str().unwrap().to_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type().unwrap().is_dir() {
            assert_eq!(mode_of(&entry.path()), 0o700, "dir {rel}");
            collect(&entry.path(), &rel, out);
        } else {
            out.insert(rel, std::fs::read_to_string(entry.path()).unwrap());
        }
    }
}

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn data_dir(dir: &Path) -> PathBuf {
    std::fs::read_link(dir.join("..data")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn layout_after_create_and_each_kind_of_update() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let s = create(&mut c, secret("default", "db", &[("a", "1"), ("b", "2")]))
        .await
        .unwrap();
    let mut agent = Running::start(
        connector(&server),
        vec![MountSpec::new("default", "db", &dir)],
        fast_options(),
    );
    agent.written(0, rv_of(&s)).await;
    assert_eq!(layout(&dir), files(&[("a", "1"), ("b", "2")]));
    assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
    assert_eq!(mode_of(&dir.join("a")), 0o644);
    let first = data_dir(&dir);

    // A key added.
    let s = update(
        &mut c,
        secret("default", "db", &[("a", "1"), ("b", "2"), ("c", "3")]),
    )
    .await
    .unwrap();
    agent.written(0, rv_of(&s)).await;
    assert_eq!(layout(&dir), files(&[("a", "1"), ("b", "2"), ("c", "3")]));
    let second = data_dir(&dir);
    assert_ne!(first, second);
    assert!(!dir.join(&first).exists(), "the old version is removed");

    // A key changed.
    let s = update(
        &mut c,
        secret("default", "db", &[("a", "one"), ("b", "2"), ("c", "3")]),
    )
    .await
    .unwrap();
    agent.written(0, rv_of(&s)).await;
    assert_eq!(layout(&dir), files(&[("a", "one"), ("b", "2"), ("c", "3")]));
    assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "one");

    // A key removed: its link goes too.
    let s = update(&mut c, secret("default", "db", &[("a", "one"), ("c", "3")]))
        .await
        .unwrap();
    agent.written(0, rv_of(&s)).await;
    assert_eq!(layout(&dir), files(&[("a", "one"), ("c", "3")]));
    assert!(std::fs::symlink_metadata(dir.join("b")).is_err());

    // Same bytes (a label change): nothing is rewritten.
    let before = data_dir(&dir);
    let mut same = secret("default", "db", &[("a", "one"), ("c", "3")]);
    same.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("x".into(), "y".into());
    let s = update(&mut c, same).await.unwrap();
    match agent.written(0, rv_of(&s)).await {
        AgentEvent::Written { changed, .. } => assert!(!changed, "unchanged bytes rewrote"),
        _ => unreachable!(),
    }
    assert_eq!(data_dir(&dir), before);
    let report = agent.stop().await;
    assert_eq!((report.mounts, report.ready), (1, 1), "{report:?}");
}

#[tokio::test]
async fn readers_always_see_one_complete_version() {
    const KEYS: usize = 5;
    const UPDATES: usize = 60;
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let version = |n: usize| {
        let values: Vec<(String, String)> = (0..KEYS)
            .map(|k| {
                (
                    format!("k{k}"),
                    format!("{n}:k{k}:{}", "x".repeat(n % 7 * 100)),
                )
            })
            .collect();
        values
    };
    let as_secret = |n: usize| {
        let v = version(n);
        let pairs: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        secret("default", "rapid", &pairs)
    };
    let s = create(&mut c, as_secret(0)).await.unwrap();
    let mut agent = Running::start(
        connector(&server),
        vec![MountSpec::new("default", "rapid", &dir)],
        fast_options(),
    );
    agent.written(0, rv_of(&s)).await;

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        let dir = dir.clone();
        std::thread::spawn(move || {
            let (mut consistent, mut retried, mut link_misses) = (0u64, 0u64, 0u64);
            let mut versions = BTreeSet::new();
            let mut last = 0usize;
            while !done.load(Ordering::SeqCst) {
                let before = std::fs::read_link(dir.join("..data")).unwrap();
                let reads: Vec<std::io::Result<String>> = (0..KEYS)
                    .map(|k| std::fs::read_to_string(dir.join(format!("k{k}"))))
                    .collect();
                let after = std::fs::read_link(dir.join("..data")).unwrap();
                if before != after {
                    // A swap happened while reading: a consumer reads again.
                    retried += 1;
                    link_misses += reads.iter().filter(|r| r.is_err()).count() as u64;
                    continue;
                }
                let mut seen = BTreeSet::new();
                for (k, r) in reads.into_iter().enumerate() {
                    let text = r.unwrap_or_else(|e| {
                        panic!("k{k} missing while ..data stayed {}: {e}", before.display())
                    });
                    let (n, rest) = text.split_once(':').unwrap();
                    assert!(rest.starts_with(&format!("k{k}:")), "wrong content {text}");
                    seen.insert(n.parse::<usize>().unwrap());
                }
                assert_eq!(seen.len(), 1, "a mix of versions: {seen:?}");
                let n = *seen.iter().next().unwrap();
                assert!(n >= last, "went back from version {last} to {n}");
                last = n;
                versions.insert(n);
                consistent += 1;
            }
            (consistent, retried, link_misses, versions.len())
        })
    };
    let mut last = s;
    for n in 1..=UPDATES {
        last = update(&mut c, as_secret(n)).await.unwrap();
    }
    agent.written(0, rv_of(&last)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, Ordering::SeqCst);
    let (consistent, retried, link_misses, versions) = reader.join().expect("reader");
    eprintln!(
        "consistent snapshots: {consistent}, retried: {retried} (reads through links that \
         failed during a swap: {link_misses}), distinct versions seen: {versions}"
    );
    assert!(consistent > 10, "too few snapshots: {consistent}");
    assert!(versions > 1, "the reader saw no update");
    let want = version(UPDATES);
    let want: BTreeMap<String, String> = want.into_iter().collect();
    assert_eq!(layout(&dir), want);
    agent.stop().await;
}

#[tokio::test]
async fn items_modes_nested_paths_and_dotfiles() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut s = secret(
        "default",
        "reg",
        &[
            (".dockerconfigjson", "{}"),
            ("tls.crt", "CERT"),
            ("tls.key", "KEY"),
        ],
    );
    s.r#type = "Opaque".into();
    let s = create(&mut c, s).await.unwrap();

    let mut all = MountSpec::new("default", "reg", tmp.path().join("all"));
    all.default_mode = 0o440;
    let mut some = MountSpec::new("default", "reg", tmp.path().join("some"));
    some.items = vec![
        KeyToPath {
            key: "tls.key".into(),
            path: "certs/private/key.pem".into(),
            mode: Some(0o400),
        },
        KeyToPath {
            key: "tls.crt".into(),
            path: "certs/cert.pem".into(),
            mode: None,
        },
        KeyToPath {
            key: ".dockerconfigjson".into(),
            path: "config.json".into(),
            mode: Some(0o600),
        },
    ];
    let mut agent = Running::start(connector(&server), vec![all, some], fast_options());
    agent.written(0, rv_of(&s)).await;
    agent.written(1, rv_of(&s)).await;

    let all = tmp.path().join("all");
    assert_eq!(
        layout(&all),
        files(&[
            (".dockerconfigjson", "{}"),
            ("tls.crt", "CERT"),
            ("tls.key", "KEY")
        ])
    );
    // A dotfile key is a hidden file, reached through its own hidden link.
    assert_eq!(
        std::fs::read_link(all.join(".dockerconfigjson")).unwrap(),
        Path::new("..data/.dockerconfigjson")
    );
    for f in [".dockerconfigjson", "tls.crt", "tls.key"] {
        let st = std::fs::metadata(all.join(f)).unwrap();
        assert_eq!(st.permissions().mode(), 0o100_440, "{f} st_mode");
    }

    let some = tmp.path().join("some");
    assert_eq!(
        layout(&some),
        files(&[
            ("certs/cert.pem", "CERT"),
            ("certs/private/key.pem", "KEY"),
            ("config.json", "{}"),
        ])
    );
    assert_eq!(
        std::fs::read_link(some.join("certs")).unwrap(),
        Path::new("..data/certs")
    );
    let mode = |p: &str| {
        std::fs::metadata(some.join(p))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("certs/private/key.pem"), 0o100_400);
    assert_eq!(mode("certs/cert.pem"), 0o100_644);
    assert_eq!(mode("config.json"), 0o100_600);
    assert_eq!(mode("certs"), 0o040_700);
    assert_eq!(mode("certs/private"), 0o040_700);
    // Keys not listed are not projected.
    assert!(std::fs::symlink_metadata(some.join("tls.crt")).is_err());
    agent.stop().await;
}

#[tokio::test]
async fn missing_secrets_optional_or_retried() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let required = tmp.path().join("required");
    let optional = tmp.path().join("optional");
    let mut opt = MountSpec::new("default", "later", &optional);
    opt.optional = true;
    let mut agent = Running::start(
        connector(&server),
        vec![MountSpec::new("default", "later", &required), opt],
        fast_options(),
    );
    // Optional: an empty volume (..data to an empty directory, no links).
    agent.written(1, 0).await;
    assert_eq!(layout(&optional), BTreeMap::new());
    // Required: an error, retried with growing delays; nothing written.
    let msg = agent.failed(0).await;
    assert!(msg.contains("secret default/later not found"), "{msg}");
    let mut delays = Vec::new();
    while delays.len() < 3 {
        if let AgentEvent::Failed {
            mount: 0,
            retry_in: Some(d),
            ..
        } = agent
            .wait("a retry", |e| {
                matches!(e, AgentEvent::Failed { mount: 0, .. })
            })
            .await
        {
            delays.push(d);
        }
    }
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert!(delays[2] > delays[0], "backoff grows: {delays:?}");
    assert!(
        !required.join("..data").exists(),
        "nothing written for a missing Secret"
    );

    // Created: both mounts get it through the watch.
    let s = create(&mut c, secret("default", "later", &[("k", "v")]))
        .await
        .unwrap();
    agent.written(0, rv_of(&s)).await;
    agent.written(1, rv_of(&s)).await;
    assert_eq!(layout(&required), files(&[("k", "v")]));
    assert_eq!(layout(&optional), files(&[("k", "v")]));

    // Deleted: the optional mount empties, the required one keeps its files and reports.
    delete(&mut c, "default", "later", 0).await.unwrap();
    agent.written(1, 0).await;
    assert_eq!(layout(&optional), BTreeMap::new());
    let msg = agent.failed(0).await;
    assert!(msg.contains("not found"), "{msg}");
    assert_eq!(layout(&required), files(&[("k", "v")]));
    agent.stop().await;
}

#[tokio::test]
async fn missing_keys_and_bad_paths() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = create(
        &mut c,
        secret("default", "app", &[("user", "u"), ("pass", "p")]),
    )
    .await
    .unwrap();
    let item = |key: &str, path: &str| KeyToPath {
        key: key.into(),
        path: path.into(),
        mode: None,
    };
    let dir = |n: &str| tmp.path().join(n);
    let mut missing = MountSpec::new("default", "app", dir("missing"));
    missing.items = vec![item("user", "user"), item("nope", "nope")];
    let mut skipped = MountSpec::new("default", "app", dir("skipped"));
    skipped.items = vec![item("user", "user"), item("nope", "nope")];
    skipped.optional = true;
    let mut dotdot = MountSpec::new("default", "app", dir("dotdot"));
    dotdot.items = vec![item("user", "user"), item("pass", "../escape")];
    let mut absolute = MountSpec::new("default", "app", dir("absolute"));
    absolute.items = vec![item("pass", "/etc/pass")];
    let mut reserved = MountSpec::new("default", "app", dir("reserved"));
    reserved.items = vec![item("pass", "..data")];
    let mut long = MountSpec::new("default", "app", dir("long"));
    long.items = vec![item("pass", &"n".repeat(256))];
    let good = MountSpec::new("default", "app", dir("good"));
    let same_dir = MountSpec::new("default", "app", dir("good"));
    let mut agent = Running::start(
        connector(&server),
        vec![
            missing, skipped, dotdot, absolute, reserved, long, good, same_dir,
        ],
        fast_options(),
    );
    let msg = agent.failed(7).await;
    assert!(msg.contains("already used by mount 6"), "{msg}");
    let msg = agent.failed(2).await;
    assert!(msg.contains("must not contain '..'"), "{msg}");
    let msg = agent.failed(3).await;
    assert!(msg.contains("must be a relative path"), "{msg}");
    let msg = agent.failed(4).await;
    assert!(msg.contains("must not start with '..'"), "{msg}");
    let msg = agent.failed(5).await;
    assert!(msg.contains("at most 255 bytes"), "{msg}");
    let msg = agent.failed(0).await;
    assert!(
        msg.contains("references non-existent secret key: nope"),
        "{msg}"
    );
    agent.written(1, rv_of(&s)).await;
    agent.written(6, rv_of(&s)).await;
    assert_eq!(layout(&dir("skipped")), files(&[("user", "u")]));
    assert_eq!(layout(&dir("good")), files(&[("pass", "p"), ("user", "u")]));
    for n in ["missing", "dotdot", "absolute", "reserved", "long"] {
        assert!(!dir(n).join("..data").exists(), "{n} was written");
    }
    assert!(!tmp.path().join("escape").exists());
    let report = agent.stop().await;
    assert_eq!(report.ready, 2, "{report:?}");
    assert_eq!(report.failures.len(), 6, "{report:?}");
}

#[tokio::test]
async fn immutable_secrets_are_read_once() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut frozen = secret("default", "frozen", &[("k", "v1")]);
    frozen.immutable = true;
    let frozen = create(&mut c, frozen).await.unwrap();
    let thawing = create(&mut c, secret("default", "thawing", &[("k", "m1")]))
        .await
        .unwrap();
    // A mutable Secret on the same stream: once a later write to it is written, every earlier
    // event of the stream has been handled (a barrier instead of a sleep).
    let marker = create(&mut c, secret("default", "marker", &[("k", "1")]))
        .await
        .unwrap();
    let mut agent = Running::start(
        connector(&server),
        vec![
            MountSpec::new("default", "frozen", tmp.path().join("frozen")),
            MountSpec::new("default", "thawing", tmp.path().join("thawing")),
            MountSpec::new("default", "marker", tmp.path().join("marker")),
        ],
        fast_options(),
    );
    agent.written(0, rv_of(&frozen)).await;
    agent.written(1, rv_of(&thawing)).await;
    agent.written(2, rv_of(&marker)).await;
    // The server acknowledged the cancel of the immutable Secret's watch.
    agent
        .wait(
            "the frozen watch to stop",
            |e| matches!(e, AgentEvent::StoppedWatching { name, .. } if name == "frozen"),
        )
        .await;
    // A mutable Secret made immutable: its last state is written, then its watch ends too.
    let mut now_frozen = secret("default", "thawing", &[("k", "m2")]);
    now_frozen.immutable = true;
    let now_frozen = update(&mut c, now_frozen).await.unwrap();
    agent.written(1, rv_of(&now_frozen)).await;
    agent
        .wait(
            "the thawing watch to stop",
            |e| matches!(e, AgentEvent::StoppedWatching { name, .. } if name == "thawing"),
        )
        .await;
    assert_eq!(layout(&tmp.path().join("thawing")), files(&[("k", "m2")]));

    // Deleted and re-created with new data: not watched any more, so the files stay.
    agent.drain();
    delete(&mut c, "default", "frozen", 0).await.unwrap();
    let mut again = secret("default", "frozen", &[("k", "v2")]);
    again.immutable = true;
    create(&mut c, again).await.unwrap();
    // The barrier: a later write to the marker is written, so the re-created Secret's events
    // (earlier on the same stream) would have been handled by now if it were watched.
    let marker = update(&mut c, secret("default", "marker", &[("k", "2")]))
        .await
        .unwrap();
    agent.written(2, rv_of(&marker)).await;
    let seen = agent.drain();
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            AgentEvent::Written { mount: 0, .. } | AgentEvent::Failed { mount: 0, .. }
        )),
        "{seen:?}"
    );
    assert_eq!(layout(&tmp.path().join("frozen")), files(&[("k", "v1")]));
    assert!(get(&mut c, "default", "frozen").await.is_ok());
    agent.stop().await;
}

fn gauge(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(-1)
}

#[tokio::test]
async fn many_mounts_share_one_stream() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut mounts = Vec::new();
    let mut rvs = Vec::new();
    for i in 0..20 {
        let s = create(
            &mut c,
            secret("default", &format!("s{i}"), &[("v", &i.to_string())]),
        )
        .await
        .unwrap();
        rvs.push(rv_of(&s));
        mounts.push(MountSpec::new(
            "default",
            format!("s{i}"),
            tmp.path().join(format!("m{i}")),
        ));
    }
    // Two mounts of the same Secret share its watch.
    mounts.push(MountSpec::new("default", "s0", tmp.path().join("again")));
    let mut agent = Running::start(connector(&server), mounts, fast_options());
    for (i, rv) in rvs.iter().enumerate() {
        agent.written(i, *rv).await;
    }
    agent.written(20, rvs[0]).await;
    let metrics = server.running.metrics().render(None);
    assert_eq!(
        gauge(&metrics, "coffer_watch_streams_open "),
        1,
        "{metrics}"
    );
    assert_eq!(gauge(&metrics, "coffer_watches_open "), 20, "{metrics}");
    for i in 0..20 {
        assert_eq!(
            layout(&tmp.path().join(format!("m{i}"))),
            files(&[("v", &i.to_string())])
        );
    }
    assert_eq!(layout(&tmp.path().join("again")), files(&[("v", "0")]));
    let s = update(&mut c, secret("default", "s0", &[("v", "new")]))
        .await
        .unwrap();
    agent.written(0, rv_of(&s)).await;
    agent.written(20, rv_of(&s)).await;
    assert_eq!(layout(&tmp.path().join("again")), files(&[("v", "new")]));
    agent.stop().await;
}

#[tokio::test]
async fn once_mode_writes_and_returns() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let tmp = tempfile::tempdir().unwrap();
    create(&mut c, secret("default", "a", &[("k", "1")]))
        .await
        .unwrap();
    create(&mut c, secret("default", "b", &[("k", "2")]))
        .await
        .unwrap();
    let mut optional = MountSpec::new("default", "absent", tmp.path().join("opt"));
    optional.optional = true;
    let mounts = vec![
        MountSpec::new("default", "a", tmp.path().join("a")),
        MountSpec::new("default", "b", tmp.path().join("b")),
        optional,
    ];
    let once = || AgentOptions {
        once: true,
        ..fast_options()
    };
    let agent = Agent::new(mounts, connector(&server), once());
    let report = tokio::time::timeout(Duration::from_secs(10), agent.run(CancellationToken::new()))
        .await
        .expect("once mode returns");
    assert_eq!((report.mounts, report.ready), (3, 3), "{report:?}");
    assert_eq!(layout(&tmp.path().join("a")), files(&[("k", "1")]));
    assert_eq!(layout(&tmp.path().join("b")), files(&[("k", "2")]));
    assert_eq!(layout(&tmp.path().join("opt")), BTreeMap::new());

    // A missing Secret: a failure in the report, no retry (no timeout given).
    let agent = Agent::new(
        vec![MountSpec::new(
            "default",
            "absent",
            tmp.path().join("absent"),
        )],
        connector(&server),
        once(),
    );
    let report = tokio::time::timeout(Duration::from_secs(10), agent.run(CancellationToken::new()))
        .await
        .expect("once mode returns");
    assert_eq!(report.ready, 0);
    assert!(report.failures[0].contains("not found"), "{report:?}");

    // With a timeout, it keeps retrying and picks up a Secret created meanwhile.
    let agent = Agent::new(
        vec![MountSpec::new("default", "soon", tmp.path().join("soon"))],
        connector(&server),
        AgentOptions {
            once_timeout: Duration::from_secs(10),
            ..once()
        },
    );
    let task = tokio::spawn(agent.run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    create(&mut c, secret("default", "soon", &[("k", "3")]))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("once mode returns")
        .unwrap();
    assert_eq!(report.ready, 1, "{report:?}");
    assert_eq!(layout(&tmp.path().join("soon")), files(&[("k", "3")]));
}
