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

use coffer_server::proto::etcd::etcdserverpb as pb;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;
use tonic::transport::Channel;

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
