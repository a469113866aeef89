//! A real etcd member (Debian's `etcd-server`, `/usr/bin/etcd`) on loopback ports in a temp dir,
//! and etcd's gRPC clients (generated from etcd's own protos in coffer-server), so that the
//! etcd door's tests can run the same calls against etcd and against Coffer.
//!
//! A missing `etcd` or `etcdctl` fails the test with the install command: these tests are part
//! of the suite, never skipped (`.ci/run` installs the packages).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use coffer_server::proto::etcd::etcdserverpb as pb;
use coffer_server::proto::etcd::mvccpb;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;
use tonic::transport::Channel;

/// A transaction's Put.
pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

/// A transaction's Range of one key.
pub fn get_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// A compare: the key's mod_revision is `rev` (0: absent).
pub fn mod_eq(key: &[u8], rev: i64) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// kube-apiserver's shape: put if the key's mod_revision is `rev` (0: absent), else get it.
pub async fn guarded_put(c: &mut Clients, key: &[u8], rev: i64, value: &[u8]) -> pb::TxnResponse {
    c.kv.txn(pb::TxnRequest {
        compare: vec![mod_eq(key, rev)],
        success: vec![put_op(key, value, 0)],
        failure: vec![get_op(key)],
    })
    .await
    .expect("txn")
    .into_inner()
}

/// A key's current version.
pub async fn get_kv(c: &mut Clients, key: &[u8]) -> Option<mvccpb::KeyValue> {
    get_kv_at(c, key, 0).await
}

/// A key's version at `revision` (0: the current one).
pub async fn get_kv_at(c: &mut Clients, key: &[u8], revision: i64) -> Option<mvccpb::KeyValue> {
    c.kv.range(pb::RangeRequest {
        key: key.to_vec(),
        revision,
        ..Default::default()
    })
    .await
    .expect("range")
    .into_inner()
    .kvs
    .into_iter()
    .next()
}

/// etcd's gRPC clients over one channel.
#[derive(Clone)]
pub struct Clients {
    pub kv: KvClient<Channel>,
    pub watch: WatchClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
}

impl Clients {
    pub fn new(channel: Channel) -> Self {
        Self {
            kv: KvClient::new(channel.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            watch: WatchClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel),
        }
    }
}

/// Finds the binary or fails with how to install it.
pub fn require(binary: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{binary} not found: install Debian's etcd-server and etcd-client \
         (apt-get install etcd-server etcd-client; .ci/run does)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One etcd member, killed when dropped.
pub struct RealEtcd {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RealEtcd {
    /// Starts a single-member etcd on loopback and waits until it answers.
    pub async fn start() -> Self {
        let etcd = require("etcd");
        let dir = tempfile::tempdir().expect("tempdir");
        let client = free_port();
        let peer = free_port();
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(etcd)
            .arg("--name=member")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=member={peer_url}"))
            .arg("--experimental-watch-progress-notify-interval=1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let addr: SocketAddr = format!("127.0.0.1:{client}").parse().expect("addr");
        let me = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = me.clients().await;
            let ok =
                c.kv.range(pb::RangeRequest {
                    key: b"health".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok();
            if ok {
                return me;
            }
            assert!(Instant::now() < deadline, "etcd did not start in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn clients(&self) -> Clients {
        // Lazy: etcd may not be listening yet while it starts.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_lazy();
        Clients::new(channel)
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real etcd cluster of `n` members on loopback (one process each, in one temp dir), for the
/// scale-out tests: members can be killed (SIGKILL) and restarted on their data directories.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    dir: tempfile::TempDir,
    /// Client TLS (CA, the members' certificate and key): clients must present a certificate
    /// signed by the CA.
    tls: Option<[PathBuf; 3]>,
    /// Whether members send a progress notification to idle watchers every second (else
    /// etcd's default, every 10 minutes: a test then relies on none).
    progress_notify: bool,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers a linearizable read.
    pub async fn start(n: usize) -> Self {
        Self::start_inner(n, None, true).await
    }

    /// As [`EtcdCluster::start`], with etcd's default progress notifications (every 10
    /// minutes), as a cluster run without `--experimental-watch-progress-notify-interval` has:
    /// nothing but events moves a watcher's revision within a test.
    pub async fn start_without_progress_notify(n: usize) -> Self {
        Self::start_inner(n, None, false).await
    }

    /// Starts `n` members serving clients over TLS only (`https://`), with client-certificate
    /// authentication against `ca` (PEM files), and waits until their client ports accept
    /// connections (a test's own TLS client then proves the cluster answers).
    pub async fn start_tls(n: usize, ca: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        Self::start_inner(n, Some([ca, cert, key]), true).await
    }

    async fn start_inner(n: usize, tls: Option<[PathBuf; 3]>, progress_notify: bool) -> Self {
        // A port picked free can be taken by another test before etcd binds it; etcd then
        // exits at once, and the cluster starts again on other ports.
        for _ in 0..3 {
            let mut me = Self::spawn_all(n, tls.clone(), progress_notify);
            let mut started = true;
            for i in 0..n {
                if !me.first_ready(i).await {
                    started = false;
                    break;
                }
            }
            if started {
                for i in 0..n {
                    me.wait_ready(i).await;
                }
                return me;
            }
        }
        panic!("etcd exited at start three times (ports taken?)");
    }

    fn spawn_all(n: usize, tls: Option<[PathBuf; 3]>, progress_notify: bool) -> Self {
        require("etcd");
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut me = Self {
            members,
            initial_cluster,
            dir,
            tls,
            progress_notify,
        };
        for i in 0..n {
            me.spawn(i);
        }
        me
    }

    /// Whether member `i`, just started, is running once its client port accepts connections
    /// (false: it exited, as etcd does at once when a port it was given is taken).
    async fn first_ready(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = self.members[i]
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                return false;
            }
            if std::net::TcpStream::connect(self.addr(i)).is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not listen in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer_url = format!("http://127.0.0.1:{}", m.peer);
        let mut command = Command::new(require("etcd"));
        if let Some([ca, cert, key]) = &self.tls {
            command
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg(format!("--name={}", m.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join(&m.name).display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-token=coffer-test")
            .arg("--initial-cluster-state=new")
            // Short elections: a killed leader is replaced within a second or so.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .args(
                self.progress_notify
                    .then_some("--experimental-watch-progress-notify-interval=1s"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    /// Waits until member `i` answers a linearizable read (so the cluster has a leader); with
    /// TLS, until its client port accepts connections.
    pub async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        if self.tls.is_some() {
            while std::net::TcpStream::connect(self.addr(i)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {i} did not listen in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        loop {
            let mut c = self.clients(i);
            let ok =
                c.kv.range(pb::RangeRequest {
                    key: b"health".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not answer in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `127.0.0.1:PORT` of member `i`'s client listener.
    pub fn addr(&self, i: usize) -> SocketAddr {
        format!("127.0.0.1:{}", self.members[i].client)
            .parse()
            .expect("addr")
    }

    /// `etcd://` + every member + `prefix` (e.g. `/coffer`), as `--storage` takes it.
    pub fn storage_url(&self, prefix: &str) -> String {
        let hosts: Vec<String> = (0..self.len()).map(|i| self.addr(i).to_string()).collect();
        format!("etcd://{}{prefix}", hosts.join(","))
    }

    /// etcd's clients on member `i`.
    pub fn clients(&self, i: usize) -> Clients {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(i)))
            .expect("endpoint")
            .connect_lazy();
        Clients::new(channel)
    }

    /// SIGKILLs member `i` (its data directory stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory and waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// The index of the current leader (asks each live member's Maintenance.Status).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..self.len() {
                if self.members[i].child.is_none() {
                    continue;
                }
                let mut c = self.clients(i);
                if let Ok(s) = c.maintenance.status(pb::StatusRequest {}).await {
                    let s = s.into_inner();
                    if s.leader != 0 && s.header.as_ref().map(|h| h.member_id) == Some(s.leader) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `etcdctl get --prefix PREFIX` against the cluster: every key and value, as text.
    pub fn etcdctl_get_prefix(&self, prefix: &str) -> Vec<u8> {
        let endpoints: Vec<String> = (0..self.len())
            .filter(|i| self.members[*i].child.is_some())
            .map(|i| self.addr(i).to_string())
            .collect();
        let out = Command::new(require("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("get")
            .arg("--prefix")
            .arg(prefix)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl get --prefix failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A Coffer store over `cluster` under `prefix` (etcd storage, as `coffer serve --storage`
/// opens it), with the KEK in `kek_file` (create it once with
/// `coffer_core::kms::LocalKek::create_new`; every replica opens the same file).
pub async fn etcd_store(
    cluster: &EtcdCluster,
    prefix: &str,
    kek_file: &std::path::Path,
    config: coffer_core::store::StoreConfig,
) -> coffer_core::store::Store {
    let url: coffer_etcd::StorageUrl = cluster.storage_url(prefix).parse().expect("url");
    let client =
        coffer_etcd::EtcdClient::new(&url, &coffer_etcd::StorageTls::default()).expect("client");
    let mvcc = coffer_etcd::EtcdMvcc::open(client)
        .await
        .expect("open etcd");
    let kms = coffer_core::kms::LocalKek::open_existing(kek_file).expect("kek file");
    coffer_core::store::Store::open_mvcc(
        std::sync::Arc::new(mvcc),
        std::sync::Arc::new(kms),
        config,
    )
    .await
    .expect("open store")
}
