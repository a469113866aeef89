//! Whether a target directory is memory-backed (tmpfs or ramfs), so that Secret plaintext never
//! reaches a disk.

use std::io;
use std::path::{Path, PathBuf};

const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// What a target directory is stored on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// The directory that was checked: the target, or its nearest existing ancestor.
    pub checked: PathBuf,
    /// `tmpfs`, `ramfs`, a common disk file system's name, or the magic number in hex.
    pub fs: String,
    /// Whether the file system keeps files in memory only.
    pub in_memory: bool,
}

/// Checks the file system of `target` (or of its nearest existing ancestor when it does not
/// exist yet) with `statfs`.
pub fn backing(target: &Path) -> io::Result<Backing> {
    let mut checked = if target.is_absolute() {
        target.to_owned()
    } else {
        std::env::current_dir()?.join(target)
    };
    loop {
        match rustix::fs::statfs(&checked) {
            Ok(st) => {
                #[allow(clippy::unnecessary_cast, clippy::cast_sign_loss)]
                let magic = (st.f_type as i64 as u64) & 0xffff_ffff;
                let (fs, in_memory) = match magic {
                    TMPFS_MAGIC => ("tmpfs".to_owned(), true),
                    RAMFS_MAGIC => ("ramfs".to_owned(), true),
                    other => (disk_fs_name(other), false),
                };
                return Ok(Backing {
                    checked,
                    fs,
                    in_memory,
                });
            }
            Err(rustix::io::Errno::NOENT) => {
                if !checked.pop() {
                    return Err(io::Error::from(io::ErrorKind::NotFound));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A common disk file system's name, else its magic number in hex.
fn disk_fs_name(magic: u64) -> String {
    let name = match magic {
        0xef53 => "ext2/3/4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x794c_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2fc1_2fc1 => "zfs",
        0x0102_1997 => "9p",
        _ => return format!("{magic:#x}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn shm_is_memory_and_missing_dirs_use_an_ancestor() {
        if Path::new("/dev/shm").is_dir() {
            let b = backing(Path::new("/dev/shm/coffer-test-does-not-exist/x")).unwrap();
            assert!(b.in_memory, "{b:?}");
            assert_eq!(b.checked, Path::new("/dev/shm"));
        }
        assert!(backing(Path::new("/")).is_ok());
    }
}
