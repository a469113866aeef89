//! The mount agent: keeps many target directories equal to their Secrets, over one WatchMany
//! stream.
//!
//! Each distinct Secret gets one watch on the agent's single WatchMany stream (namespace plus
//! the field selector `metadata.name=NAME`), started with `send_initial_events` so that its
//! current state arrives first (ADDED, then the bookmark that ends the initial events; no ADDED
//! means the Secret does not exist). Every mount of that Secret is then written with the
//! [`AtomicWriter`]; writes run on the blocking pool, a few at a time, and a mount never has two
//! writes in flight (a newer state waits and replaces any older one that is still waiting).
//!
//! - A missing Secret: an optional mount becomes an empty directory; otherwise the mount reports
//!   an error and retries (a `Get`) with exponential backoff, its directory left as it was. A
//!   failed write (a listed key missing, a refused path, an I/O error) is retried the same way.
//!   A newer state from the watch supersedes a pending retry.
//! - An immutable Secret is written once and its watch canceled: it can never change (Kubernetes
//!   requires deleting and re-creating it, and the Pods that use it).
//! - When the stream breaks, the agent reconnects with backoff and resumes every watch from the
//!   last resource_version it saw (bookmarks keep that recent). A watch refused with
//!   `OUT_OF_RANGE` ("too old resource version") starts over with initial events: the agent
//!   re-reads the Secret and rewrites its mounts (the writer only swaps when bytes changed).
//! - `once` mode writes every mount and returns, with the failures in the report.
//!
//! Plaintext lives in zeroizing buffers, only from its arrival until its mounts are written.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use zeroize::Zeroizing;

use super::atomic_writer::{AtomicWriter, DirAccess, WriteOutcome, exposure_warning};
use super::config::MountSpec;
use super::fsinfo;
use crate::credentials::Client;
use coffer_kms::code::name as code_name;
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::watch_event::Type as EventType;
use coffer_server::server::convert::INITIAL_EVENTS_END_ANNOTATION;

/// The future a [`Connector`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Client, String>> + Send>>;
/// Opens a new client to the server (called at start and on every reconnect).
pub type Connector = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;

/// How long a retry's `Get` may take.
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// How many targets are named in "not on tmpfs" warnings before they are summed up.
const TMPFS_WARNINGS: usize = 3;

/// Tuning of the agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Write every mount once, then return.
    pub once: bool,
    /// With `once`: how long failed mounts (and the connection) are retried before giving up.
    pub once_timeout: Duration,
    /// The first retry delay of a failed mount; doubled on each failure.
    pub retry_initial: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// The first reconnect delay; doubled on each failed attempt.
    pub reconnect_initial: Duration,
    /// The longest reconnect delay.
    pub reconnect_max: Duration,
    /// How many mounts are written at the same time.
    pub write_concurrency: usize,
    /// Warn about targets that are not on tmpfs or ramfs.
    pub warn_not_tmpfs: bool,
    /// The mode and ownership of the directories the agent creates (0700 by default).
    pub access: DirAccess,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            once: false,
            once_timeout: Duration::ZERO,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            write_concurrency: 4,
            warn_not_tmpfs: true,
            access: DirAccess::default(),
        }
    }
}

/// What the agent did, for tests, benchmarks and status displays. Mounts are numbered in the
/// order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The WatchMany stream is open.
    Connected,
    /// The connection failed or the stream ended.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A target is not on tmpfs or ramfs.
    NotInMemory {
        /// The mount.
        mount: usize,
        /// Its file system (`ext2/3/4`, `xfs`, ..., or its magic number in hex).
        fs: String,
    },
    /// A mount holds a Secret's state (possibly unchanged, possibly empty for an optional mount).
    Written {
        /// The mount.
        mount: usize,
        /// The Secret's resource_version (0 when it does not exist).
        resource_version: u64,
        /// Whether a new version was swapped in.
        changed: bool,
        /// The timestamped directory `..data` points at.
        data_dir: String,
    },
    /// A mount could not be written; its directory is as it was.
    Failed {
        /// The mount.
        mount: usize,
        /// Why.
        message: String,
        /// When it is retried (`None`: never).
        retry_in: Option<Duration>,
    },
    /// A watch was restarted from the current state after a "too old resource version".
    Resynced {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// The watch of an immutable Secret was canceled: it is not watched any more.
    StoppedWatching {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
}

/// How the agent ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// How many mounts were configured.
    pub mounts: usize,
    /// How many mounts held their Secret's state at the end.
    pub ready: usize,
    /// Mounts not written: `namespace/name -> dir: why`.
    pub failures: Vec<String>,
}

/// The agent. Build it, optionally [`subscribe`](Agent::subscribe), then [`run`](Agent::run).
pub struct Agent {
    mounts: Vec<MountSpec>,
    connector: Connector,
    options: AgentOptions,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("mounts", &self.mounts.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent for `mounts`, reaching the server through `connector`.
    pub fn new(mounts: Vec<MountSpec>, connector: Connector, options: AgentOptions) -> Self {
        Self {
            mounts,
            connector,
            options,
            events: None,
        }
    }

    /// A channel of everything the agent does (replaces an earlier subscription).
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<AgentEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events = Some(tx);
        rx
    }

    /// Runs until `shutdown` is cancelled, or, in `once` mode, until every mount is written or
    /// has failed for good. In-flight writes finish before it returns.
    pub async fn run(self, shutdown: CancellationToken) -> AgentReport {
        let mut st = State::new(self.mounts, self.options, self.events);
        let mut conn: Option<Conn> = None;
        let mut reconnect_delay = st.options.reconnect_initial;
        let mut next_connect = Instant::now();
        let deadline = st
            .options
            .once
            .then(|| Instant::now() + st.options.once_timeout);
        st.deadline = deadline;
        loop {
            st.pump_writes();
            if st.options.once && st.settled() {
                break;
            }
            if conn.is_none() && Instant::now() >= next_connect {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    c = st.connect(&self.connector) => match c {
                        Ok(c) => {
                            conn = Some(c);
                            st.emit(AgentEvent::Connected);
                        }
                        Err(e) => {
                            tracing::warn!(
                                "cannot open the watch stream: {e}; retrying in {reconnect_delay:?}"
                            );
                            st.emit(AgentEvent::Disconnected { reason: e.clone() });
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                st.expire_retries(&format!("cannot reach the server: {e}"));
                                continue;
                            }
                            next_connect = Instant::now() + reconnect_delay;
                            reconnect_delay = (reconnect_delay * 2).min(st.options.reconnect_max);
                        }
                    },
                }
                continue;
            }
            let mut wake = st.next_retry(conn.is_some());
            if conn.is_none() {
                wake = Some(wake.map_or(next_connect, |w| w.min(next_connect)));
            }
            if let Some(d) = deadline
                && Instant::now() < d
            {
                wake = Some(wake.map_or(d, |w| w.min(d)));
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = st.writes.join_next(), if !st.writes.is_empty() => {
                    match done {
                        Ok((m, rv, result)) => st.on_done(m, rv, result),
                        Err(e) => tracing::error!("a write task failed: {e}"),
                    }
                }
                msg = next_message(&mut conn) => match msg {
                    Ok(Some(ev)) => {
                        reconnect_delay = st.options.reconnect_initial;
                        if let Some(c) = &conn {
                            st.on_event(ev, c);
                        }
                    }
                    other => {
                        let reason = match other {
                            Err(s) => format!("{}: {}", code_name(s.code()), s.message()),
                            _ => "the server closed the stream".to_owned(),
                        };
                        tracing::warn!("watch stream ended ({reason}); reconnecting in {reconnect_delay:?}");
                        st.emit(AgentEvent::Disconnected { reason });
                        conn = None;
                        st.on_disconnect();
                        next_connect = Instant::now() + reconnect_delay;
                        reconnect_delay = (reconnect_delay * 2).min(st.options.reconnect_max);
                    }
                },
                () = sleep_until(wake) => {
                    if let Some(d) = deadline
                        && Instant::now() >= d
                    {
                        st.expire_retries("timed out waiting for the Secret");
                    }
                    st.run_retries(conn.as_ref()).await;
                }
            }
        }
        // Let in-flight writes finish: a half-done swap is never visible, but finishing keeps
        // the directory tidy.
        st.stopping = true;
        while let Some(done) = st.writes.join_next().await {
            if let Ok((m, rv, result)) = done {
                st.on_done(m, rv, result);
            }
        }
        drop(conn);
        st.report()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    conn: &mut Option<Conn>,
) -> Result<Option<pb::WatchManyEvent>, tonic::Status> {
    match conn {
        Some(c) => c.stream.message().await,
        None => std::future::pending().await,
    }
}

/// An open WatchMany stream.
struct Conn {
    client: Client,
    requests: mpsc::UnboundedSender<pb::WatchManyRequest>,
    stream: Streaming<pb::WatchManyEvent>,
}

/// A Secret's state as the agent holds it while writing it out.
struct SecretState {
    resource_version: u64,
    data: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl SecretState {
    fn from_proto(mut s: pb::Secret) -> (Self, bool) {
        let rv = s.metadata.as_ref().map_or(0, |m| m.resource_version);
        let data = s
            .data
            .drain()
            .map(|(k, v)| (k, Zeroizing::new(v)))
            .collect();
        (
            Self {
                resource_version: rv,
                data,
            },
            s.immutable,
        )
    }
}

/// What a mount should hold.
#[derive(Clone)]
enum Desired {
    Present(Arc<SecretState>),
    Missing,
}

impl Desired {
    fn resource_version(&self) -> u64 {
        match self {
            Desired::Present(s) => s.resource_version,
            Desired::Missing => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Pending,
    Ready,
    Failed(String),
}

struct Mount {
    spec: Arc<MountSpec>,
    writer: AtomicWriter,
    watch: usize,
    /// A configuration error: never written.
    invalid: Option<String>,
    phase: Phase,
    attempt: u32,
    retry_at: Option<Instant>,
    in_flight: bool,
    queued: bool,
    pending: Option<Desired>,
}

struct Watch {
    namespace: String,
    name: String,
    mounts: Vec<usize>,
    /// The id of its watch on the current stream.
    id: Option<u64>,
    /// The resume point.
    last_rv: u64,
    /// The initial events have been received (a resume needs no new ones).
    synced: bool,
    /// Initial events requested and not finished; whether an object came in them.
    awaiting_initial: bool,
    initial_found: bool,
    /// Seen as immutable: its watch is (being) canceled and never re-created.
    immutable: bool,
    stopped: bool,
    attempt: u32,
    retry_at: Option<Instant>,
}

enum Done {
    Written(WriteOutcome),
    Failed(String),
}

struct State {
    options: AgentOptions,
    events: Option<mpsc::UnboundedSender<AgentEvent>>,
    mounts: Vec<Mount>,
    watches: Vec<Watch>,
    ids: HashMap<u64, usize>,
    next_id: u64,
    queue: VecDeque<usize>,
    writes: JoinSet<(usize, u64, Done)>,
    /// `once` mode: no retry is scheduled past this.
    deadline: Option<Instant>,
    /// Shutting down: no more retries.
    stopping: bool,
}

impl State {
    fn new(
        specs: Vec<MountSpec>,
        options: AgentOptions,
        events: Option<mpsc::UnboundedSender<AgentEvent>>,
    ) -> Self {
        let mut st = Self {
            options,
            events,
            mounts: Vec::with_capacity(specs.len()),
            watches: Vec::new(),
            ids: HashMap::new(),
            next_id: 1,
            queue: VecDeque::new(),
            writes: JoinSet::new(),
            deadline: None,
            stopping: false,
        };
        let mut by_secret: HashMap<(String, String), usize> = HashMap::new();
        let mut not_in_memory = 0usize;
        let mut targets: HashMap<PathBuf, usize> = HashMap::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let mut invalid = spec.validate().err().map(|e| e.to_string());
            if invalid.is_none() {
                let key = std::path::absolute(&spec.dir).unwrap_or_else(|_| spec.dir.clone());
                if let Some(first) = targets.insert(key, i) {
                    invalid = Some(format!(
                        "mount {spec}: target directory already used by mount {first}"
                    ));
                }
            }
            if invalid.is_none()
                && let Some(warning) = exposure_warning(&spec.dir)
            {
                tracing::warn!("{warning}");
            }
            if let Some(e) = &invalid {
                tracing::error!("{e}; nothing is written for this mount");
                st.emit(AgentEvent::Failed {
                    mount: i,
                    message: e.clone(),
                    retry_in: None,
                });
            } else if st.options.warn_not_tmpfs {
                match fsinfo::backing(&spec.dir) {
                    Ok(b) if !b.in_memory => {
                        not_in_memory += 1;
                        if not_in_memory <= TMPFS_WARNINGS {
                            tracing::warn!(
                                "target {} is not on tmpfs or ramfs (file system {} at {}): Secret \
                                 plaintext will be stored on disk; mount a tmpfs there",
                                spec.dir.display(),
                                b.fs,
                                b.checked.display()
                            );
                        }
                        st.emit(AgentEvent::NotInMemory { mount: i, fs: b.fs });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        "cannot check the file system of {}: {e}",
                        spec.dir.display()
                    ),
                }
            }
            let key = (spec.namespace.clone(), spec.name.clone());
            let watch = if invalid.is_some() {
                usize::MAX
            } else {
                *by_secret.entry(key).or_insert_with(|| {
                    st.watches.push(Watch {
                        namespace: spec.namespace.clone(),
                        name: spec.name.clone(),
                        mounts: Vec::new(),
                        id: None,
                        last_rv: 0,
                        synced: false,
                        awaiting_initial: false,
                        initial_found: false,
                        immutable: false,
                        stopped: false,
                        attempt: 0,
                        retry_at: None,
                    });
                    st.watches.len() - 1
                })
            };
            if let Some(w) = st.watches.get_mut(watch) {
                w.mounts.push(i);
            }
            st.mounts.push(Mount {
                writer: AtomicWriter::new(spec.dir.clone()).with_access(st.options.access),
                spec: Arc::new(spec),
                watch,
                phase: if invalid.is_some() {
                    Phase::Failed(invalid.clone().unwrap_or_default())
                } else {
                    Phase::Pending
                },
                invalid,
                attempt: 0,
                retry_at: None,
                in_flight: false,
                queued: false,
                pending: None,
            });
        }
        if not_in_memory > TMPFS_WARNINGS {
            tracing::warn!(
                "{} more targets are not on tmpfs or ramfs",
                not_in_memory - TMPFS_WARNINGS
            );
        }
        tracing::info!(
            "mount agent: {} mounts of {} Secrets over one WatchMany stream",
            st.mounts.len(),
            st.watches.len()
        );
        st
    }

    fn emit(&self, ev: AgentEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev);
        }
    }

    async fn connect(&mut self, connector: &Connector) -> Result<Conn, String> {
        let mut client = connector().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let response = client
            .watch_many(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{}: {}", code_name(s.code()), s.message()))?;
        let conn = Conn {
            client,
            requests: tx,
            stream: response.into_inner(),
        };
        for w in 0..self.watches.len() {
            let wanted = {
                let watch = &self.watches[w];
                !watch.stopped && !watch.immutable
            };
            if wanted {
                self.create_watch(w, &conn);
            }
        }
        Ok(conn)
    }

    fn create_watch(&mut self, w: usize, conn: &Conn) {
        let id = self.next_id;
        self.next_id += 1;
        let watch = &mut self.watches[w];
        if let Some(old) = watch.id.take() {
            self.ids.remove(&old);
        }
        let resume = watch.synced && watch.last_rv > 0;
        watch.awaiting_initial = !resume;
        watch.initial_found = false;
        watch.id = Some(id);
        watch.retry_at = None;
        let req = pb::WatchSecretsRequest {
            namespace: watch.namespace.clone(),
            field_selector: format!("metadata.name={}", watch.name),
            resource_version: if resume { watch.last_rv } else { 0 },
            send_initial_events: !resume,
            allow_bookmarks: true,
            ..pb::WatchSecretsRequest::default()
        };
        self.ids.insert(id, w);
        let _ = conn.requests.send(pb::WatchManyRequest {
            op: Some(pb::watch_many_request::Op::Create(pb::WatchCreate {
                watch_id: id,
                watch: Some(req),
            })),
        });
    }

    fn on_disconnect(&mut self) {
        self.ids.clear();
        for w in &mut self.watches {
            w.id = None;
            if w.awaiting_initial {
                w.awaiting_initial = false;
                w.synced = false;
            }
            if w.immutable {
                // Its data arrived; a cancel that was not acknowledged does not matter now.
                w.stopped = true;
            }
        }
    }

    fn on_event(&mut self, ev: pb::WatchManyEvent, conn: &Conn) {
        let Some(&w) = self.ids.get(&ev.watch_id) else {
            return;
        };
        if ev.created {
            return;
        }
        if ev.canceled {
            self.ids.remove(&ev.watch_id);
            self.on_canceled(w, &ev, conn);
            return;
        }
        let Some(event) = ev.event else { return };
        let Some(object) = event.object else { return };
        let rv = object.metadata.as_ref().map_or(0, |m| m.resource_version);
        let watch = &mut self.watches[w];
        watch.last_rv = watch.last_rv.max(rv);
        watch.attempt = 0;
        match EventType::try_from(event.r#type) {
            Ok(EventType::Added | EventType::Modified) => {
                if watch.awaiting_initial {
                    watch.initial_found = true;
                }
                let (state, immutable) = SecretState::from_proto(object);
                self.dispatch_watch(w, &Desired::Present(Arc::new(state)));
                let watch = &mut self.watches[w];
                if immutable && !watch.immutable {
                    watch.immutable = true;
                    if let Some(id) = watch.id {
                        let _ = conn.requests.send(pb::WatchManyRequest {
                            op: Some(pb::watch_many_request::Op::Cancel(id)),
                        });
                    }
                }
            }
            Ok(EventType::Deleted) => {
                self.dispatch_watch(w, &Desired::Missing);
            }
            Ok(EventType::Bookmark) => {
                let end = object.metadata.as_ref().is_some_and(|m| {
                    m.annotations
                        .get(INITIAL_EVENTS_END_ANNOTATION)
                        .is_some_and(|v| v == "true")
                });
                if end && watch.awaiting_initial {
                    watch.awaiting_initial = false;
                    watch.synced = true;
                    if !watch.initial_found {
                        self.dispatch_watch(w, &Desired::Missing);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_canceled(&mut self, w: usize, ev: &pb::WatchManyEvent, conn: &Conn) {
        let watch = &mut self.watches[w];
        if watch.id == Some(ev.watch_id) {
            watch.id = None;
        }
        if ev.error_code == 0 {
            if watch.immutable {
                watch.stopped = true;
                tracing::info!(
                    "Secret {}/{} is immutable: written once, no longer watched",
                    watch.namespace,
                    watch.name
                );
                let ev = AgentEvent::StoppedWatching {
                    namespace: watch.namespace.clone(),
                    name: watch.name.clone(),
                };
                self.emit(ev);
            }
            return;
        }
        if watch.immutable {
            watch.stopped = true;
            return;
        }
        if ev.error_code == Code::OutOfRange as i32 {
            tracing::info!(
                "watch of Secret {}/{} cannot resume ({}); re-reading it",
                watch.namespace,
                watch.name,
                ev.error_message
            );
            watch.synced = false;
            watch.last_rv = 0;
            let ev = AgentEvent::Resynced {
                namespace: watch.namespace.clone(),
                name: watch.name.clone(),
            };
            self.emit(ev);
            self.create_watch(w, conn);
            return;
        }
        let delay = backoff(
            self.options.retry_initial,
            self.options.retry_max,
            watch.attempt,
        );
        watch.attempt = watch.attempt.saturating_add(1);
        watch.retry_at = Some(Instant::now() + delay);
        watch.awaiting_initial = false;
        let message = format!(
            "the watch of Secret {}/{} failed: {}: {}",
            watch.namespace,
            watch.name,
            code_name(Code::from_i32(ev.error_code)),
            ev.error_message
        );
        tracing::warn!("{message}; retrying in {delay:?}");
        let mounts = watch.mounts.clone();
        for m in mounts {
            if self.mounts[m].phase != Phase::Ready {
                self.mounts[m].phase = Phase::Failed(message.clone());
                self.emit(AgentEvent::Failed {
                    mount: m,
                    message: message.clone(),
                    retry_in: Some(delay),
                });
            }
        }
    }

    /// Hands a new state to every mount of watch `w`.
    fn dispatch_watch(&mut self, w: usize, desired: &Desired) {
        let mounts = self.watches[w].mounts.clone();
        for m in mounts {
            self.dispatch(m, desired.clone());
        }
    }

    fn dispatch(&mut self, m: usize, desired: Desired) {
        let mount = &mut self.mounts[m];
        if mount.invalid.is_some() {
            return;
        }
        mount.pending = Some(desired);
        mount.retry_at = None;
        if !mount.in_flight && !mount.queued {
            mount.queued = true;
            self.queue.push_back(m);
        }
    }

    /// Starts queued writes, up to the concurrency limit.
    fn pump_writes(&mut self) {
        while self.writes.len() < self.options.write_concurrency.max(1) {
            let Some(m) = self.queue.pop_front() else {
                break;
            };
            let mount = &mut self.mounts[m];
            mount.queued = false;
            let Some(desired) = mount.pending.take() else {
                continue;
            };
            let rv = desired.resource_version();
            if matches!(desired, Desired::Missing) && !mount.spec.optional {
                let w = &self.watches[mount.watch];
                let msg = format!("secret {}/{} not found", w.namespace, w.name);
                self.on_done(m, rv, Done::Failed(msg));
                continue;
            }
            mount.in_flight = true;
            let spec = mount.spec.clone();
            let writer = mount.writer.clone();
            self.writes.spawn_blocking(move || {
                let payload = match &desired {
                    Desired::Present(s) => {
                        spec.payload(Some(s.data.iter().map(|(k, v)| (k.as_str(), v.as_slice()))))
                    }
                    Desired::Missing => spec.payload(None::<[(&str, &[u8]); 0]>),
                };
                drop(desired);
                let done = match payload {
                    Ok(Some(p)) => match writer.write(&p) {
                        Ok(o) => Done::Written(o),
                        Err(e) => Done::Failed(e.to_string()),
                    },
                    Ok(None) => Done::Failed("secret not found".into()),
                    Err(e) => Done::Failed(e.to_string()),
                };
                (m, rv, done)
            });
        }
    }

    fn on_done(&mut self, m: usize, rv: u64, done: Done) {
        let options = self.options.clone();
        let mount = &mut self.mounts[m];
        mount.in_flight = false;
        match done {
            Done::Written(outcome) => {
                mount.phase = Phase::Ready;
                mount.attempt = 0;
                mount.retry_at = None;
                if outcome.changed {
                    tracing::info!("{}: wrote resource_version {rv}", mount.spec);
                } else {
                    tracing::debug!("{}: unchanged at resource_version {rv}", mount.spec);
                }
                self.emit(AgentEvent::Written {
                    mount: m,
                    resource_version: rv,
                    changed: outcome.changed,
                    data_dir: outcome.data_dir,
                });
            }
            Done::Failed(message) => {
                let delay = backoff(options.retry_initial, options.retry_max, mount.attempt);
                mount.attempt = mount.attempt.saturating_add(1);
                let retry_at = Instant::now() + delay;
                let out_of_time = self.deadline.is_some_and(|d| retry_at > d);
                let retry = (!self.stopping && !out_of_time).then_some(retry_at);
                mount.retry_at = retry;
                let message = format!("{}: {message}", mount.spec);
                match retry {
                    Some(_) => tracing::error!("{message}; retrying in {delay:?}"),
                    None => tracing::error!("{message}"),
                }
                mount.phase = Phase::Failed(message.clone());
                self.emit(AgentEvent::Failed {
                    mount: m,
                    message,
                    retry_in: retry.map(|_| delay),
                });
            }
        }
        let mount = &mut self.mounts[m];
        if mount.pending.is_some() && !mount.queued {
            mount.retry_at = None;
            mount.queued = true;
            self.queue.push_back(m);
        }
    }

    /// The next retry's time; retries wait for a connection.
    fn next_retry(&self, connected: bool) -> Option<Instant> {
        if !connected {
            return None;
        }
        let mounts = self.mounts.iter().filter_map(|m| m.retry_at);
        let watches = self.watches.iter().filter_map(|w| w.retry_at);
        mounts.chain(watches).min()
    }

    /// Re-creates failed watches and re-reads the Secrets of failed mounts whose time has come.
    async fn run_retries(&mut self, conn: Option<&Conn>) {
        let now = Instant::now();
        // Without a connection, retries wait for the next one.
        let Some(conn) = conn else { return };
        for w in 0..self.watches.len() {
            if self.watches[w].retry_at.is_some_and(|t| t <= now) {
                self.create_watch(w, conn);
            }
        }
        let due: Vec<usize> = (0..self.mounts.len())
            .filter(|&m| {
                let mount = &self.mounts[m];
                mount.retry_at.is_some_and(|t| t <= now) && !mount.in_flight
            })
            .collect();
        for m in due {
            self.mounts[m].retry_at = None;
            let spec = self.mounts[m].spec.clone();
            let mut client = conn.client.clone();
            let got = tokio::time::timeout(
                GET_TIMEOUT,
                client.get(pb::GetSecretRequest {
                    namespace: spec.namespace.clone(),
                    name: spec.name.clone(),
                    resource_version: 0,
                }),
            )
            .await;
            match got {
                Ok(Ok(resp)) => {
                    let (state, _) = SecretState::from_proto(resp.into_inner());
                    self.dispatch(m, Desired::Present(Arc::new(state)));
                }
                Ok(Err(s)) if s.code() == Code::NotFound => self.dispatch(m, Desired::Missing),
                Ok(Err(s)) => {
                    let msg = format!("cannot read the Secret: {}", s.message());
                    self.on_done(m, 0, Done::Failed(msg));
                }
                Err(_) => {
                    let msg = "cannot read the Secret: timed out".to_owned();
                    self.on_done(m, 0, Done::Failed(msg));
                }
            }
        }
    }

    /// `once` mode past its deadline: no more retries; mounts not written yet fail with `why`.
    fn expire_retries(&mut self, why: &str) {
        for m in &mut self.mounts {
            m.retry_at = None;
        }
        for w in &mut self.watches {
            w.retry_at = None;
        }
        self.fail_unsettled(why);
    }

    /// Marks every mount that is neither written nor failed as failed (`once` mode giving up).
    fn fail_unsettled(&mut self, why: &str) {
        for m in 0..self.mounts.len() {
            let mount = &mut self.mounts[m];
            if mount.phase == Phase::Pending && !mount.in_flight && !mount.queued {
                let message = format!("{}: {why}", mount.spec);
                tracing::error!("{message}");
                mount.phase = Phase::Failed(message.clone());
                self.emit(AgentEvent::Failed {
                    mount: m,
                    message,
                    retry_in: None,
                });
            }
        }
    }

    /// `once` mode: every mount is written, or failed with no retry left.
    fn settled(&self) -> bool {
        self.writes.is_empty()
            && self.queue.is_empty()
            && self.mounts.iter().all(|m| {
                !m.in_flight
                    && m.pending.is_none()
                    && match m.phase {
                        Phase::Ready => true,
                        Phase::Failed(_) => m.retry_at.is_none(),
                        Phase::Pending => false,
                    }
            })
    }

    fn report(&self) -> AgentReport {
        let mut r = AgentReport {
            mounts: self.mounts.len(),
            ..AgentReport::default()
        };
        for m in &self.mounts {
            match &m.phase {
                Phase::Ready => r.ready += 1,
                Phase::Failed(msg) => r.failures.push(msg.clone()),
                Phase::Pending => r.failures.push(format!("{}: not written", m.spec)),
            }
        }
        r
    }
}

/// `initial * 2^attempt`, at most `max`.
fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial
        .checked_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), s(60), 0), s(1));
        assert_eq!(backoff(s(1), s(60), 3), s(8));
        assert_eq!(backoff(s(1), s(60), 10), s(60));
        assert_eq!(backoff(s(1), s(60), 400), s(60));
    }
}
