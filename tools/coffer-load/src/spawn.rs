//! `--spawn`: an in-process Coffer server on `127.0.0.1:0` over a data directory of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_core::crypto::Algorithm;
use coffer_core::storage::Durability;
use coffer_core::store::{Store, StoreConfig};
use coffer_server::server::{ListenAddr, RunningServer, Server, ServerOptions};

/// A server started by `coffer-load`, and the data directory it owns.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The running server.
    server: RunningServer,
    /// The data directory.
    data_dir: PathBuf,
    /// Whether the directory is removed when the server stops.
    temporary: bool,
}

impl Spawned {
    /// Opens the embedded default store (sled, local key-file KEK) in `data_dir`, or in a fresh
    /// temporary directory, and serves it on `127.0.0.1:0`.
    pub(crate) async fn start(
        data_dir: Option<&Path>,
        durability: Durability,
        algorithm: Algorithm,
    ) -> Result<Self, String> {
        let (data_dir, temporary) = match data_dir {
            Some(d) => (d.to_path_buf(), false),
            None => (temp_dir_path(), true),
        };
        create_private_dir(&data_dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
        match Self::serve(&data_dir, durability, algorithm).await {
            Ok(server) => Ok(Self {
                server,
                data_dir,
                temporary,
            }),
            Err(e) => {
                if temporary {
                    let _ = std::fs::remove_dir_all(&data_dir);
                }
                Err(e)
            }
        }
    }

    async fn serve(
        data_dir: &Path,
        durability: Durability,
        algorithm: Algorithm,
    ) -> Result<RunningServer, String> {
        let config = StoreConfig {
            algorithm,
            ..StoreConfig::default()
        };
        let store = Store::open_default(data_dir, durability, config)
            .await
            .map_err(|e| format!("cannot open the store in {}: {e}", data_dir.display()))?;
        let options = ServerOptions {
            token_cleaner_interval: None,
            ..ServerOptions::default()
        };
        Server::new(Arc::new(store))
            .options(options)
            .listen(ListenAddr::Tcp("127.0.0.1:0".into()))
            .start()
            .await
            .map_err(|e| format!("cannot start the server: {e}"))
    }

    /// The address to connect to (`HOST:PORT`).
    pub(crate) fn addr(&self) -> Result<String, String> {
        self.server
            .tcp_addr()
            .map(|a| a.to_string())
            .ok_or_else(|| "the spawned server has no TCP address".to_owned())
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the data directory is temporary.
    pub(crate) fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Shuts the server down gracefully and removes a temporary data directory.
    pub(crate) async fn stop(self) -> Result<(), String> {
        let result = self
            .server
            .shutdown()
            .await
            .map_err(|e| format!("the spawned server did not shut down cleanly: {e}"));
        if self.temporary
            && let Err(e) = std::fs::remove_dir_all(&self.data_dir)
        {
            eprintln!("warning: cannot remove {}: {e}", self.data_dir.display());
        }
        result
    }
}

/// A fresh path under the system temporary directory.
fn temp_dir_path() -> PathBuf {
    let tag: u64 = rand::random();
    std::env::temp_dir().join(format!("coffer-load-{}-{tag:016x}", std::process::id()))
}

/// Creates `dir` (and its parents) owner-only, as `coffer serve` does: it holds the local KEK.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
