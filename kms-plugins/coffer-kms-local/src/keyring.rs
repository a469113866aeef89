//! The plugin's key store: versions of a 32-byte KEK, one file each, in a key directory.
//!
//! ```text
//! <key-dir>/kek-000001.key    version 1 (32 random bytes, mode 0600)
//! <key-dir>/kek-000002.key    version 2: the highest version is the current one
//! ```
//!
//! Each version is a [`LocalKek`]: AES-256-GCM wrap with the key_id as associated data, key_id
//! `local-` plus a hash of the key (never the key). `rotate` adds a version and so makes it
//! current; `remove` deletes an old version (never the current one). A running plugin re-reads the
//! directory on every call (a few small files; KMS calls are rare: one `Encrypt` per seed, one
//! `Decrypt` per seed and start, a `Status` a minute), so a rotation shows in Coffer's next
//! poll and a removed version is refused at once.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use coffer_core::kms::{Kms, KmsError, KmsStatus, LocalKek, Wrapped};
use zeroize::Zeroizing;

/// The versions in a key directory, by version number.
type Versions = BTreeMap<u32, Arc<LocalKek>>;

/// A directory of KEK versions, served as a KMS.
#[derive(Debug)]
pub(crate) struct Keyring {
    dir: PathBuf,
}

/// The file name of a version.
fn file_name(version: u32) -> String {
    format!("kek-{version:06}.key")
}

/// The version a file name stands for, if it is a key file's name.
fn parse_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("kek-")?.strip_suffix(".key")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|v| *v > 0)
}

/// Reads every version in `dir`.
pub(crate) fn read_versions(dir: &Path) -> io::Result<Versions> {
    let mut versions = Versions::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(parse_name) else {
            continue;
        };
        let kek = LocalKek::open_existing(entry.path())?;
        versions.insert(version, Arc::new(kek));
    }
    Ok(versions)
}

fn no_keys(dir: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no key versions in {} (run `coffer-kms-local init --key-dir {}`)",
            dir.display(),
            dir.display()
        ),
    )
}

/// Creates the key directory (0700) and version 1, unless versions exist already. Returns the
/// current version and its key_id, and whether it was created.
pub(crate) fn init(dir: &Path) -> io::Result<(u32, String, bool)> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let versions = read_versions(dir)?;
    if let Some((v, kek)) = versions.iter().next_back() {
        return Ok((*v, kek.key_id().to_owned(), false));
    }
    let kek = LocalKek::create_new(dir.join(file_name(1)))?;
    Ok((1, kek.key_id().to_owned(), true))
}

/// Adds a new version and so makes it current; returns it and its key_id.
pub(crate) fn rotate(dir: &Path) -> io::Result<(u32, String)> {
    let versions = read_versions(dir)?;
    let Some(last) = versions.keys().next_back() else {
        return Err(no_keys(dir));
    };
    let next = last + 1;
    let kek = LocalKek::create_new(dir.join(file_name(next)))?;
    Ok((next, kek.key_id().to_owned()))
}

/// Deletes an old version; refuses the current one. Returns the removed key_id.
pub(crate) fn remove(dir: &Path, version: u32) -> io::Result<String> {
    let versions = read_versions(dir)?;
    let current = versions.keys().next_back().copied();
    let Some(kek) = versions.get(&version) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no version {version} in {}", dir.display()),
        ));
    };
    if Some(version) == current {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("version {version} is the current KEK; rotate first, migrate, then remove it"),
        ));
    }
    fs::remove_file(kek.path())?;
    fs::File::open(dir)?.sync_all()?;
    Ok(kek.key_id().to_owned())
}

impl Keyring {
    /// Opens the key directory; it must hold at least one version.
    pub(crate) fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        if read_versions(&dir)?.is_empty() {
            return Err(no_keys(&dir));
        }
        Ok(Self { dir })
    }

    /// Reads the directory; fails if it cannot be read or is empty.
    fn reload(&self) -> Result<Versions, KmsError> {
        let versions = read_versions(&self.dir).map_err(|e| {
            KmsError::Unavailable(format!(
                "cannot read key directory {}: {e}",
                self.dir.display()
            ))
        })?;
        if versions.is_empty() {
            return Err(KmsError::Unavailable(no_keys(&self.dir).to_string()));
        }
        Ok(versions)
    }

    fn current(versions: &Versions) -> Result<&Arc<LocalKek>, KmsError> {
        versions
            .values()
            .next_back()
            .ok_or_else(|| KmsError::Unavailable("no key versions".into()))
    }
}

#[async_trait]
impl Kms for Keyring {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        let versions = self.reload()?;
        Self::current(&versions)?.status().await
    }

    async fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        let versions = self.reload()?;
        Self::current(&versions)?.encrypt(uid, plaintext).await
    }

    async fn decrypt(&self, uid: &str, wrapped: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let versions = self.reload()?;
        let kek = versions
            .values()
            .find(|k| k.key_id() == wrapped.key_id)
            .ok_or_else(|| {
                KmsError::Rejected(format!(
                    "unknown key_id {:?}: no key version in {} has it (removed, or never this plugin's)",
                    wrapped.key_id.chars().take(128).collect::<String>(),
                    self.dir.display()
                ))
            })?;
        kek.decrypt(uid, wrapped).await
    }

    fn describe(&self) -> String {
        format!("local key directory {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name(&file_name(7)), Some(7));
        assert_eq!(parse_name("kek-000000.key"), None);
        assert_eq!(parse_name("kek-.key"), None);
        assert_eq!(parse_name("kek-01x.key"), None);
        assert_eq!(parse_name(".kek-000001.key.9.tmp"), None);
    }

    #[tokio::test]
    async fn init_rotate_remove_and_unknown_key_ids() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("keys");
        let (v1, id1, created) = init(&dir).expect("init");
        assert!(created);
        assert_eq!(v1, 1);
        let (_, again, created) = init(&dir).expect("init again");
        assert!(!created);
        assert_eq!(again, id1);
        let ring = Keyring::open(&dir).expect("open");
        assert_eq!(ring.status().await.expect("status").key_id, id1);
        let w1 = ring.encrypt("u", &[7u8; 32]).await.expect("encrypt");
        assert_eq!(w1.key_id, id1);

        let (v2, id2) = rotate(&dir).expect("rotate");
        assert_eq!(v2, 2);
        assert_ne!(id2, id1);
        // The next Status re-reads the directory and reports the new version.
        assert_eq!(ring.status().await.expect("status").key_id, id2);
        let w2 = ring.encrypt("u", &[8u8; 32]).await.expect("encrypt");
        assert_eq!(w2.key_id, id2);
        assert_eq!(&ring.decrypt("u", &w1).await.expect("old")[..], &[7u8; 32]);

        let err = remove(&dir, 2).expect_err("current");
        assert!(err.to_string().contains("current"), "{err}");
        assert_eq!(remove(&dir, 1).expect("remove"), id1);
        ring.status().await.expect("status");
        let err = ring.decrypt("u", &w1).await.expect_err("removed");
        assert!(
            matches!(&err, KmsError::Rejected(m) if m.contains("unknown key_id")),
            "{err}"
        );
        assert_eq!(&ring.decrypt("u", &w2).await.expect("new")[..], &[8u8; 32]);
    }

    #[test]
    fn empty_directory_is_refused_with_a_hint() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = Keyring::open(tmp.path()).expect_err("empty");
        assert!(err.to_string().contains("init"), "{err}");
        let err = rotate(tmp.path()).expect_err("empty");
        assert!(err.to_string().contains("init"), "{err}");
    }
}
