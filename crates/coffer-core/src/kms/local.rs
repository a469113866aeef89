//! The embedded default KEK: a 32-byte key in a local file, created with mode 0600 on first start.
//!
//! It offers the same semantics as a KMS v2 plugin (key_id, refusal of unknown key_ids) so that the
//! engine cannot tell the difference, but the key lives beside the data: use a real KMS plugin when
//! the data directory and the key must be separated.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use async_trait::async_trait;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Kms, KmsError, KmsStatus, Wrapped};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// A key-encryption key held in a local file.
pub struct LocalKek {
    key: SecretBox<[u8; KEY_LEN]>,
    key_id: String,
    path: PathBuf,
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKek")
            .field("key", &"[REDACTED]")
            .field("key_id", &self.key_id)
            .field("path", &self.path)
            .finish()
    }
}

/// The name of the local key file inside a data directory.
pub const LOCAL_KEK_FILE: &str = "kek.key";
/// The file inside a data directory that records which KMS wraps its seeds: `local`, or
/// `plugin <endpoint>`. Written on every start; read so that a store made with a KMS plugin is
/// never opened (and never given a fresh key file) without one.
pub const KMS_RECORD_FILE: &str = "kms";

/// Which KMS a data directory records (see [`KMS_RECORD_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedKms {
    /// The local key file `<data-dir>/kek.key`.
    Local,
    /// A KMS v2 plugin, last reached at this endpoint (`unix:///...`).
    Plugin(String),
}

impl RecordedKms {
    /// Reads the record of `data_dir`; `None` when there is none (a new data directory, or
    /// one made before the record existed).
    pub fn read(data_dir: &Path) -> io::Result<Option<Self>> {
        let text = match fs::read_to_string(data_dir.join(KMS_RECORD_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let line = text.lines().next().unwrap_or("").trim();
        match line.split_once(' ') {
            None if line == "local" => Ok(Some(Self::Local)),
            Some(("plugin", endpoint)) => Ok(Some(Self::Plugin(endpoint.trim().to_owned()))),
            // Anything else is not a record this version wrote: treat it as a plugin store,
            // the safe reading (no key file is created for it).
            _ => Ok(Some(Self::Plugin(String::new()))),
        }
    }

    /// Records `self` for `data_dir` (written whole under a temporary name, then renamed; mode
    /// 0600). Does nothing when `data_dir` does not exist.
    pub fn write(&self, data_dir: &Path) -> io::Result<()> {
        if !data_dir.is_dir() {
            return Ok(());
        }
        let text = match self {
            Self::Local => "local\n".to_owned(),
            Self::Plugin(endpoint) => format!("plugin {endpoint}\n"),
        };
        let path = data_dir.join(KMS_RECORD_FILE);
        if fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let tmp = data_dir.join(format!(".{KMS_RECORD_FILE}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fs::File::open(data_dir)?.sync_all()
    }
}

impl LocalKek {
    /// Opens the local key file of the data directory `data_dir` (`<data-dir>/kek.key`), the
    /// embedded default KEK, and records it as the directory's KMS.
    ///
    /// A key file is created only for a data directory that holds no store yet. A directory
    /// whose record names a KMS plugin, or that holds a store (`db/`) but no key file, is
    /// refused with [`KmsError::WrongKms`]: its seeds are wrapped by a plugin (or by a key file
    /// that was lost), and a fresh key lying beside the data would silently take over new
    /// writes (a downgrade nobody asked for).
    pub fn open_for_data_dir(data_dir: &Path) -> Result<Self, KmsError> {
        let path = data_dir.join(LOCAL_KEK_FILE);
        let recorded = RecordedKms::read(data_dir).map_err(|e| {
            KmsError::Unavailable(format!(
                "cannot read {}: {e}",
                data_dir.join(KMS_RECORD_FILE).display()
            ))
        })?;
        if let Some(RecordedKms::Plugin(endpoint)) = recorded {
            let flag = if endpoint.is_empty() {
                "--kms unix:///path/to/kms.sock".to_owned()
            } else {
                format!("--kms {endpoint}")
            };
            return Err(KmsError::WrongKms(format!(
                "data directory {} uses a KMS v2 plugin, but no --kms was given: start with {flag} \
                 (its seeds are wrapped by the plugin; no local key file is created for it)",
                data_dir.display()
            )));
        }
        let has_store = data_dir.join("db").exists();
        if has_store && !path.exists() {
            return Err(KmsError::WrongKms(format!(
                "data directory {} holds a store but no local key file {}: it was made with a KMS \
                 v2 plugin (start with --kms unix:///path/to/kms.sock) or its key file was lost \
                 (restore it); refusing to create a new key beside the data",
                data_dir.display(),
                path.display()
            )));
        }
        let kek = Self::open_or_create(&path)
            .map_err(|e| KmsError::Unavailable(format!("local key file: {e}")))?;
        RecordedKms::Local.write(data_dir).map_err(|e| {
            KmsError::Unavailable(format!(
                "cannot record the KMS in {}: {e}",
                data_dir.join(KMS_RECORD_FILE).display()
            ))
        })?;
        Ok(kek)
    }

    /// Opens the key file at `path`, creating it (mode 0600, 32 random bytes) if it does not
    /// exist. Refuses a file of the wrong size or one readable by group or others.
    pub fn open_or_create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                let key = SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| {
                    rand::rngs::OsRng.fill_bytes(k)
                });
                f.write_all(key.expose_secret())?;
                f.sync_all()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs::File::open(dir)?.sync_all()?;
                }
                Ok(Self::from_key(key, path))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::open(path),
            Err(e) => Err(e),
        }
    }

    /// Opens an existing key file (never creates one); refuses the same files as
    /// [`LocalKek::open_or_create`].
    pub fn open_existing(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::open(path.as_ref().to_path_buf())
    }

    /// Creates a new key file at `path` (32 random bytes, mode 0600) and fails if the path
    /// exists. The file appears whole or not at all: it is written and synced under a temporary
    /// name, then linked into place, so a reader never sees a partial key.
    pub fn create_new(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let name = path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "key path has no file name")
            })?
            .to_string_lossy()
            .into_owned();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let key = SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| rand::rngs::OsRng.fill_bytes(k));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(key.expose_secret())?;
            f.sync_all()?;
            fs::hard_link(&tmp, &path)
        })();
        let _ = fs::remove_file(&tmp);
        written?;
        fs::File::open(&dir)?.sync_all()?;
        Ok(Self::from_key(key, path))
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(path: PathBuf) -> io::Result<Self> {
        let mut f = fs::File::open(&path)?;
        let mode = f.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "key file {} has mode {:o}; it must not be readable by group or others (chmod 600)",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
        f.read_to_end(&mut buf)?;
        if buf.len() != KEY_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "key file {} holds {} bytes, expected {KEY_LEN}",
                    path.display(),
                    buf.len()
                ),
            ));
        }
        let key = SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| k.copy_from_slice(&buf));
        Ok(Self::from_key(key, path))
    }

    fn from_key(key: SecretBox<[u8; KEY_LEN]>, path: PathBuf) -> Self {
        // The key_id is a hash of the key under a domain label: stable, public, and revealing
        // nothing about the key.
        let digest = Sha256::new()
            .chain_update(b"coffer local kek id v1\0")
            .chain_update(key.expose_secret())
            .finalize();
        let key_id = format!("local-{}", hex::encode(&digest[..16]));
        Self { key, key_id, path }
    }

    /// The key_id of this KEK.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.key.expose_secret().into())
    }
}

#[async_trait]
impl Kms for LocalKek {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        Ok(KmsStatus {
            version: "v2".into(),
            healthz: "ok".into(),
            key_id: self.key_id.clone(),
        })
    }

    async fn encrypt(&self, _uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plaintext,
                    aad: self.key_id.as_bytes(),
                },
            )
            .map_err(|_| KmsError::Rejected("plaintext too large to wrap".into()))?;
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(&ct);
        Ok(Wrapped {
            ciphertext,
            key_id: self.key_id.clone(),
            annotations: Default::default(),
        })
    }

    async fn decrypt(&self, _uid: &str, wrapped: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        if wrapped.key_id != self.key_id {
            return Err(KmsError::Rejected(format!(
                "unknown key_id {:?} (this key file's key_id is {:?})",
                wrapped.key_id, self.key_id
            )));
        }
        if wrapped.ciphertext.len() < NONCE_LEN + 16 {
            return Err(KmsError::Rejected("ciphertext is too short".into()));
        }
        let (nonce, ct) = wrapped.ciphertext.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ct,
                    aad: self.key_id.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KmsError::Rejected("ciphertext failed its integrity check".into()))
    }

    fn describe(&self) -> String {
        format!(
            "local key file {} (key_id {})",
            self.path.display(),
            self.key_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_0600_and_round_trips_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/kek.key");
        let kek = LocalKek::open_or_create(&path).expect("create");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let w = kek.encrypt("uid", b"seed bytes").await.expect("encrypt");
        assert_eq!(w.key_id, kek.key_id());
        let again = LocalKek::open_or_create(&path).expect("reopen");
        assert_eq!(again.key_id(), kek.key_id());
        let pt = again.decrypt("uid", &w).await.expect("decrypt");
        assert_eq!(&pt[..], b"seed bytes");
        assert!(kek.status().await.expect("status").check().is_ok());
    }

    #[tokio::test]
    async fn refuses_unknown_key_id_and_tampering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = LocalKek::open_or_create(dir.path().join("k")).expect("create");
        let mut w = kek.encrypt("u", b"x").await.expect("encrypt");
        let mut other = w.clone();
        other.key_id = "someone-else".into();
        assert!(matches!(
            kek.decrypt("u", &other).await,
            Err(KmsError::Rejected(_))
        ));
        w.ciphertext[NONCE_LEN] ^= 1;
        assert!(matches!(
            kek.decrypt("u", &w).await,
            Err(KmsError::Rejected(_))
        ));
        w.ciphertext.truncate(3);
        assert!(matches!(
            kek.decrypt("u", &w).await,
            Err(KmsError::Rejected(_))
        ));
    }

    #[test]
    fn refuses_world_readable_or_wrong_size_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        fs::write(&path, [0u8; 32]).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = LocalKek::open_or_create(&path).expect_err("must refuse 0644");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, [0u8; 5]).expect("write");
        let err = LocalKek::open_or_create(&path).expect_err("must refuse 5 bytes");
        assert!(err.to_string().contains("expected 32"), "{err}");
    }

    #[test]
    fn debug_is_redacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = LocalKek::open_or_create(dir.path().join("k")).expect("create");
        assert!(format!("{kek:?}").contains("[REDACTED]"));
    }
}
