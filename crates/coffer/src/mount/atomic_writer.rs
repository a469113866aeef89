//! The Kubernetes atomic writer: a Secret volume's files, swapped in all at once.
//!
//! The layout in the target directory is exactly the kubelet's, so that tools written for
//! Kubernetes Secret volumes (which watch `..data`) work unchanged:
//!
//! ```text
//! target/
//!   ..2026_11_28_15_04_05.3141592653/   the files of the current version (mode 0700; 0750
//!                                         with a group, see [`DirAccess`])
//!     password
//!     nested/cert.pem
//!   ..data -> ..2026_11_28_15_04_05.3141592653
//!   password -> ..data/password           one link per top-level name
//!   nested -> ..data/nested
//! ```
//!
//! An update compares the new payload with the current files (bytes, modes and the set of
//! paths). When nothing changed, it only makes sure the top-level links exist. Otherwise it
//! writes every file into a new timestamped directory (exact modes, chmod after write so the
//! umask does not matter; each file and directory fsync'd), points `..data_tmp` at it, renames
//! `..data_tmp` over `..data` (the atomic step), creates missing top-level links, removes the
//! links of removed paths, and removes the old directory.
//!
//! A reader that resolves paths through the top-level links sees either the old or the new
//! version of each file. To read several files as one consistent set, read `..data` (a
//! `readlink`) before and after reading them: if it did not change, the files all belong to the
//! same version (this is what Kubernetes-aware consumers do).
//!
//! Directories the writer creates (the target when missing, each version directory and the
//! directories inside it) are owner-only, 0700, or 0750 with a group ([`DirAccess`]), and owned
//! by the given owner and group: a file's own mode (0644 by default) applies inside a directory
//! that others cannot enter. An existing target is left as it is ([`exposure_warning`] says when
//! others can read it).
//!
//! Plaintext passed to the writer, and read back for comparison, lives in zeroizing buffers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

/// The symlink to the current timestamped directory.
pub const DATA_DIR_NAME: &str = "..data";
/// The temporary symlink renamed over `..data`.
pub const DATA_TMP_NAME: &str = "..data_tmp";
/// The longest item path, in bytes.
pub const MAX_PATH_LENGTH: usize = 4096;
/// The longest element of an item path, in bytes.
pub const MAX_FILE_NAME_LENGTH: usize = 255;
/// The largest file mode (permission bits only).
pub const MAX_MODE: u32 = 0o777;
/// The mode of files when none is given.
pub const DEFAULT_MODE: u32 = 0o644;
/// The mode of the directories the writer creates when no group is given: owner-only.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the directories the writer creates when a group is given.
pub const GROUP_DIR_MODE: u32 = 0o750;

/// Who may enter the directories the writer creates: the owner only (0700) by default; with a
/// `group`, its members too (0750, group set to it); `owner` hands them (and the files) to
/// another user, which only root may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirAccess {
    /// The uid that owns what the writer creates; `None`: the agent's own.
    pub owner: Option<u32>,
    /// The gid of what the writer creates; `None`: the agent's own, and mode 0700.
    pub group: Option<u32>,
}

impl DirAccess {
    /// The mode of the directories the writer creates.
    pub fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            GROUP_DIR_MODE
        } else {
            DIR_MODE
        }
    }

    /// Sets the mode of a directory the writer created and, when asked, its owner and group.
    fn apply_dir(&self, path: &Path) -> io::Result<()> {
        fs::set_permissions(path, Permissions::from_mode(self.dir_mode()))?;
        self.apply_owner(path)
    }

    /// Hands `path` to the owner and group, when given.
    fn apply_owner(&self, path: &Path) -> io::Result<()> {
        if self.owner.is_some() || self.group.is_some() {
            std::os::unix::fs::chown(path, self.owner, self.group)?;
        }
        Ok(())
    }
}

/// A warning when the existing directory `target` can be read or entered by others (mode bits
/// 0007): the files inside keep their own modes, but their names and, for modes such as the
/// default 0644, their contents are open to every user of the machine. `None` when it does
/// not exist or is closed to others.
pub fn exposure_warning(target: &Path) -> Option<String> {
    let mode = fs::metadata(target).ok()?.permissions().mode() & 0o777;
    (mode & 0o007 != 0).then(|| {
        format!(
            "mount target {} has mode {mode:04o}: other users can enter it and read files whose \
             own mode allows it (0644 by default); chmod o-rwx it, or let the agent create it \
             (0700, or 0750 with --group)",
            target.display()
        )
    })
}

/// One file of a payload: its bytes (wiped on drop) and its mode.
pub struct FileProjection {
    data: Zeroizing<Vec<u8>>,
    mode: u32,
}

impl FileProjection {
    /// A file with these bytes and this mode (permission bits, at most 0777).
    pub fn new(data: Zeroizing<Vec<u8>>, mode: u32) -> Self {
        Self { data, mode }
    }

    /// The file's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The file's mode.
    pub fn mode(&self) -> u32 {
        self.mode
    }
}

impl fmt::Debug for FileProjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileProjection")
            .field(
                "data",
                &format_args!("[REDACTED; {} bytes]", self.data.len()),
            )
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish()
    }
}

/// Why a path or a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty (or only `.` and `/`).
    #[error("invalid path {0:?}: must not be empty")]
    Empty(String),
    /// The path is absolute.
    #[error("invalid path {0:?}: must be a relative path")]
    Absolute(String),
    /// The path is too long.
    #[error("invalid path {0:?}: must be at most {MAX_PATH_LENGTH} bytes long")]
    TooLong(String),
    /// The path has a `..` element.
    #[error("invalid path {0:?}: must not contain '..'")]
    DotDot(String),
    /// An element is too long.
    #[error("invalid path {0:?}: each file name must be at most {MAX_FILE_NAME_LENGTH} bytes long")]
    NameTooLong(String),
    /// The first element starts with `..` (reserved for the writer's own names).
    #[error("invalid path {0:?}: must not start with '..'")]
    LeadingDotDot(String),
    /// The path has a NUL byte.
    #[error("invalid path {0:?}: must not contain a NUL byte")]
    Nul(String),
    /// Two items write the same path, or one's path is a directory of another's.
    #[error("invalid path {0:?}: conflicts with path {1:?}")]
    Conflict(String, String),
    /// A mode outside 0..=0777.
    #[error("invalid mode {mode:#o} for path {path:?}: must be between 0 and 0777")]
    Mode {
        /// The path.
        path: String,
        /// The mode.
        mode: u32,
    },
}

/// Checks an item path as the kubelet does and returns its clean form (`a//b/./c` -> `a/b/c`):
/// relative, no `..` element, no element over 255 bytes, at most 4096 bytes in all, and a
/// first element that does not start with `..`.
pub fn validate_path(path: &str) -> Result<String, PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul(path.to_owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    if path.len() > MAX_PATH_LENGTH {
        return Err(PathError::TooLong(path.to_owned()));
    }
    let mut elements = Vec::new();
    for element in path.split('/') {
        if element == ".." {
            return Err(PathError::DotDot(path.to_owned()));
        }
        if element.len() > MAX_FILE_NAME_LENGTH {
            return Err(PathError::NameTooLong(path.to_owned()));
        }
        if !element.is_empty() && element != "." {
            elements.push(element);
        }
    }
    let Some(first) = elements.first() else {
        return Err(PathError::Empty(path.to_owned()));
    };
    if first.starts_with("..") {
        return Err(PathError::LeadingDotDot(path.to_owned()));
    }
    Ok(elements.join("/"))
}

/// The files to write: validated relative paths and their contents.
#[derive(Debug, Default)]
pub struct Payload {
    files: BTreeMap<String, FileProjection>,
}

impl Payload {
    /// An empty payload (an empty volume: only `..data` and its empty directory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file; refuses a bad path, a mode over 0777, or a path that clashes with one already
    /// added (the same path, or one that would have to be both a file and a directory).
    pub fn insert(&mut self, path: &str, file: FileProjection) -> Result<(), PathError> {
        let clean = validate_path(path)?;
        if file.mode > MAX_MODE {
            return Err(PathError::Mode {
                path: path.to_owned(),
                mode: file.mode,
            });
        }
        for existing in self.files.keys() {
            let clash = *existing == clean
                || is_dir_prefix(existing, &clean)
                || is_dir_prefix(&clean, existing);
            if clash {
                return Err(PathError::Conflict(path.to_owned(), existing.clone()));
            }
        }
        self.files.insert(clean, file);
        Ok(())
    }

    /// The files, by clean path.
    pub fn files(&self) -> &BTreeMap<String, FileProjection> {
        &self.files
    }

    /// The number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there are no files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The user-visible top-level names (the first element of each path).
    pub fn top_level_names(&self) -> BTreeSet<&str> {
        self.files
            .keys()
            .map(|p| p.split('/').next().unwrap_or(p))
            .collect()
    }
}

/// Whether `dir` is a directory prefix of `path` (`a` of `a/b`).
fn is_dir_prefix(dir: &str, path: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// A failed write. Nothing of the new version is visible when it happens before the swap.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and on which path.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something that is not the writer's occupies a name the writer needs.
    #[error("{0}")]
    Occupied(String),
}

fn io_err(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> WriteError {
    move |source| WriteError::Io {
        context: context(),
        source,
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Whether a new version was swapped in (false: the content was already there).
    pub changed: bool,
    /// The name of the timestamped directory `..data` points at now.
    pub data_dir: String,
}

/// Writes payloads into one target directory with the kubelet's layout. One writer per target;
/// two writers on the same target are not supported.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    target: PathBuf,
    /// The mode and ownership of the directories it creates.
    access: DirAccess,
}

impl AtomicWriter {
    /// A writer for `target` (created, with its parents, on the first write if missing), its
    /// directories owner-only (see [`DirAccess`]).
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            access: DirAccess::default(),
        }
    }

    /// The same writer, creating its directories with `access`.
    pub fn with_access(mut self, access: DirAccess) -> Self {
        self.access = access;
        self
    }

    /// The target directory.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes the target hold exactly `payload` (see the module documentation for the steps).
    pub fn write(&self, payload: &Payload) -> Result<WriteOutcome, WriteError> {
        let target = &self.target;
        if fs::symlink_metadata(target).is_err() {
            // Missing parents are made owner-only too (less the umask); the target itself gets
            // exactly the access mode.
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(target)
                .and_then(|()| self.access.apply_dir(target))
                .map_err(io_err(|| format!("cannot create {}", target.display())))?;
        }
        let top: BTreeSet<&str> = payload.top_level_names();
        self.check_names(&top)?;

        let old = self.current_data_dir()?;
        let unchanged = match &old {
            Some(dir) => self.same_content(dir, payload)?,
            None => false,
        };
        let (changed, current) = match (&old, unchanged) {
            (Some(dir), true) => {
                // A version written by an older agent (0755) is closed now.
                let path = target.join(dir);
                let mode = fs::metadata(&path)
                    .map_err(io_err(|| format!("cannot stat {}", path.display())))?
                    .permissions()
                    .mode();
                if mode & 0o777 != self.access.dir_mode() {
                    self.access
                        .apply_dir(&path)
                        .map_err(io_err(|| format!("cannot chmod {}", path.display())))?;
                }
                (false, dir.clone())
            }
            _ => (true, self.swap_in(payload)?),
        };

        // Links of the new version's top-level names.
        for name in &top {
            let link = target.join(name);
            match fs::symlink_metadata(&link) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    symlink(Path::new(DATA_DIR_NAME).join(name), &link)
                        .map_err(io_err(|| format!("cannot create link {}", link.display())))?;
                }
                Err(e) => {
                    return Err(io_err(|| format!("cannot stat {}", link.display()))(e));
                }
            }
        }
        let removed_links = self.remove_stale_links(&top)?;
        if changed {
            // The old version, and any version an interrupted write left behind.
            self.remove_old_dirs(&current)?;
        }
        if changed || removed_links {
            sync_dir(target)?;
        }
        Ok(WriteOutcome {
            changed,
            data_dir: current,
        })
    }

    /// Refuses to go on when a top-level name is taken by something that is not a link.
    fn check_names(&self, top: &BTreeSet<&str>) -> Result<(), WriteError> {
        for name in top {
            let path = self.target.join(name);
            match fs::symlink_metadata(&path) {
                Ok(m) if !m.file_type().is_symlink() => {
                    return Err(WriteError::Occupied(format!(
                        "{} exists and is not a link into {DATA_DIR_NAME}; refusing to replace it",
                        path.display()
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(|| format!("cannot stat {}", path.display()))(e)),
            }
        }
        Ok(())
    }

    /// The directory `..data` points at, when it is a link to an existing directory.
    fn current_data_dir(&self) -> Result<Option<String>, WriteError> {
        let link = self.target.join(DATA_DIR_NAME);
        let text = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(WriteError::Occupied(format!(
                    "{} exists and is not a link; refusing to replace it",
                    link.display()
                )));
            }
            Err(e) => return Err(io_err(|| format!("cannot read {}", link.display()))(e)),
        };
        let Some(name) = text.to_str().filter(|n| is_timestamp_dir_name(n)) else {
            // Not a link the writer made: replace it on this write.
            return Ok(None);
        };
        match fs::symlink_metadata(self.target.join(name)) {
            Ok(m) if m.is_dir() => Ok(Some(name.to_owned())),
            _ => Ok(None),
        }
    }

    /// Whether `dir` holds exactly the payload's files, bytes and modes.
    fn same_content(&self, dir: &str, payload: &Payload) -> Result<bool, WriteError> {
        let root = self.target.join(dir);
        let mut present = BTreeSet::new();
        list_files(&root, String::new(), &mut present)?;
        if present.len() != payload.len()
            || !payload.files.keys().all(|p| present.contains(p.as_str()))
        {
            return Ok(false);
        }
        for (path, file) in &payload.files {
            let full = root.join(path);
            let meta = match fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(_) => return Ok(false),
            };
            if !meta.is_file()
                || meta.permissions().mode() & 0o7777 != file.mode
                || meta.len() != file.data.len() as u64
            {
                return Ok(false);
            }
            let mut current = Zeroizing::new(Vec::with_capacity(file.data.len()));
            File::open(&full)
                .and_then(|mut f| f.read_to_end(&mut current))
                .map_err(io_err(|| format!("cannot read {}", full.display())))?;
            if current.as_slice() != file.data.as_slice() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes the payload into a new timestamped directory and renames `..data` over to it;
    /// returns the directory's name.
    fn swap_in(&self, payload: &Payload) -> Result<String, WriteError> {
        let target = &self.target;
        let name = self.new_timestamp_dir()?;
        let dir = target.join(&name);
        if let Err(e) = write_files(&dir, payload, self.access) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let tmp = target.join(DATA_TMP_NAME);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(io_err(|| format!("cannot remove {}", tmp.display()))(e));
            }
        }
        let swapped = symlink(&name, &tmp)
            .map_err(io_err(|| format!("cannot create link {}", tmp.display())))
            .and_then(|()| {
                fs::rename(&tmp, target.join(DATA_DIR_NAME)).map_err(io_err(|| {
                    format!(
                        "cannot rename {} over {}",
                        tmp.display(),
                        target.join(DATA_DIR_NAME).display()
                    )
                }))
            });
        if let Err(e) = swapped {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(name)
    }

    /// Creates `..YYYY_MM_DD_HH_MM_SS.<random>` (UTC) with the access mode (0700 or 0750).
    fn new_timestamp_dir(&self) -> Result<String, WriteError> {
        let stamp = utc_stamp(SystemTime::now());
        let mut last = None;
        for _ in 0..100 {
            let name = format!("..{stamp}.{}", rand::random::<u32>());
            let path = self.target.join(&name);
            match DirBuilder::new().mode(DIR_MODE).create(&path) {
                Ok(()) => {
                    self.access
                        .apply_dir(&path)
                        .map_err(io_err(|| format!("cannot chmod {}", path.display())))?;
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(io_err(|| format!("cannot create {}", path.display()))(e));
                }
            }
        }
        Err(WriteError::Io {
            context: format!(
                "cannot create a timestamped directory in {}",
                self.target.display()
            ),
            source: last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
        })
    }

    /// Removes top-level links into `..data` whose names are not in `keep`; returns whether it
    /// removed any.
    fn remove_stale_links(&self, keep: &BTreeSet<&str>) -> Result<bool, WriteError> {
        let mut removed = false;
        for (name, path) in self.entries()? {
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("..") || keep.contains(name) {
                continue;
            }
            let Ok(text) = fs::read_link(&path) else {
                continue;
            };
            if text == Path::new(DATA_DIR_NAME).join(name) {
                fs::remove_file(&path)
                    .map_err(io_err(|| format!("cannot remove link {}", path.display())))?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Removes every timestamped directory but `current`.
    fn remove_old_dirs(&self, current: &str) -> Result<(), WriteError> {
        for (name, path) in self.entries()? {
            let Some(name) = name.to_str() else { continue };
            if name != current && is_timestamp_dir_name(name) {
                fs::remove_dir_all(&path)
                    .map_err(io_err(|| format!("cannot remove {}", path.display())))?;
            }
        }
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(OsString, PathBuf)>, WriteError> {
        let target = &self.target;
        let read =
            fs::read_dir(target).map_err(io_err(|| format!("cannot list {}", target.display())))?;
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(io_err(|| format!("cannot list {}", target.display())))?;
            out.push((entry.file_name(), entry.path()));
        }
        Ok(out)
    }
}

/// Writes every file of `payload` under `dir` (which exists), then fsyncs the directories.
fn write_files(dir: &Path, payload: &Payload, access: DirAccess) -> Result<(), WriteError> {
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    dirs.insert(dir.to_owned());
    for (path, file) in &payload.files {
        let full = dir.join(path);
        // Create the directories inside the version directory, each with the access mode.
        let mut parent = dir.to_owned();
        let elements: Vec<&str> = path.split('/').collect();
        for element in &elements[..elements.len().saturating_sub(1)] {
            parent.push(element);
            if dirs.insert(parent.clone()) {
                DirBuilder::new()
                    .mode(DIR_MODE)
                    .create(&parent)
                    .and_then(|()| access.apply_dir(&parent))
                    .map_err(io_err(|| format!("cannot create {}", parent.display())))?;
            }
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&full)
            .map_err(io_err(|| format!("cannot create {}", full.display())))?;
        f.write_all(&file.data)
            .and_then(|()| f.set_permissions(Permissions::from_mode(file.mode)))
            .and_then(|()| access.apply_owner(&full))
            .and_then(|()| f.sync_all())
            .map_err(io_err(|| format!("cannot write {}", full.display())))?;
    }
    // Deepest first, so that each directory's entry is durable in its parent.
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    Ok(())
}

/// Collects the regular files under `dir` as relative paths (`a/b`).
fn list_files(dir: &Path, prefix: String, out: &mut BTreeSet<String>) -> Result<(), WriteError> {
    let read = fs::read_dir(dir).map_err(io_err(|| format!("cannot list {}", dir.display())))?;
    for entry in read {
        let entry = entry.map_err(io_err(|| format!("cannot list {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(io_err(|| format!("cannot stat {}", entry.path().display())))?;
        if kind.is_dir() {
            list_files(&entry.path(), rel, out)?;
        } else {
            out.insert(rel);
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(|| format!("cannot fsync {}", dir.display())))
}

/// Whether `name` looks like `..YYYY_MM_DD_HH_MM_SS.<digits>`.
pub fn is_timestamp_dir_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("..") else {
        return false;
    };
    let Some((stamp, random)) = rest.split_once('.') else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 4 | 7 | 10 | 13 | 16) {
                *c == b'_'
            } else {
                c.is_ascii_digit()
            }
        })
        && !random.is_empty()
        && random.bytes().all(|c| c.is_ascii_digit())
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    // `2026-11-28T15:04:05Z` -> `2026_11_28_15_04_05`
    coffer_core::model::timestamp::format_rfc3339(secs)
        .trim_end_matches('Z')
        .replace(['-', 'T', ':'], "_")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn paths() {
        assert_eq!(validate_path("a").unwrap(), "a");
        assert_eq!(
            validate_path(".dockerconfigjson").unwrap(),
            ".dockerconfigjson"
        );
        assert_eq!(validate_path("a//b/./c").unwrap(), "a/b/c");
        assert_eq!(validate_path("./a").unwrap(), "a");
        assert_eq!(validate_path("a/..b").unwrap(), "a/..b");
        assert_eq!(
            validate_path("..").unwrap_err(),
            PathError::DotDot("..".into())
        );
        assert!(matches!(validate_path("a/../b"), Err(PathError::DotDot(_))));
        assert!(matches!(
            validate_path("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(validate_path(""), Err(PathError::Empty(_))));
        assert!(matches!(validate_path("./"), Err(PathError::Empty(_))));
        assert!(matches!(
            validate_path("..data"),
            Err(PathError::LeadingDotDot(_))
        ));
        assert!(matches!(
            validate_path("..a/b"),
            Err(PathError::LeadingDotDot(_))
        ));
        assert!(matches!(validate_path("a\0b"), Err(PathError::Nul(_))));
        let long = "x".repeat(256);
        assert!(matches!(
            validate_path(&long),
            Err(PathError::NameTooLong(_))
        ));
        assert!(validate_path(&"x".repeat(255)).is_ok());
        let total = vec!["y".repeat(255); 16].join("/"); // 16*255 + 15 = 4095
        assert!(validate_path(&total).is_ok());
        let over = format!("{total}/a"); // 4097
        assert!(matches!(validate_path(&over), Err(PathError::TooLong(_))));
    }

    #[test]
    fn payload_conflicts() {
        let f = || FileProjection::new(Zeroizing::new(b"x".to_vec()), 0o644);
        let mut p = Payload::new();
        p.insert("a/b", f()).unwrap();
        assert!(matches!(p.insert("a", f()), Err(PathError::Conflict(..))));
        assert!(matches!(
            p.insert("a/b/c", f()),
            Err(PathError::Conflict(..))
        ));
        assert!(matches!(
            p.insert("a//b", f()),
            Err(PathError::Conflict(..))
        ));
        p.insert("a/c", f()).unwrap();
        p.insert("ab", f()).unwrap();
        assert!(matches!(
            p.insert("m", FileProjection::new(Zeroizing::new(vec![]), 0o1777)),
            Err(PathError::Mode { .. })
        ));
        assert_eq!(
            p.top_level_names().into_iter().collect::<Vec<_>>(),
            ["a", "ab"]
        );
    }

    #[test]
    fn stamp_names() {
        let s = utc_stamp(UNIX_EPOCH + std::time::Duration::from_secs(1_795_878_245));
        assert_eq!(s, "2026_11_28_15_04_05");
        assert!(is_timestamp_dir_name("..2026_11_28_15_04_05.123456789"));
        assert!(!is_timestamp_dir_name("..data"));
        assert!(!is_timestamp_dir_name("..2026_11_28_15_04_05."));
        assert!(!is_timestamp_dir_name("..2026-11-28_15_04_05.1"));
    }

    #[test]
    fn debug_redacts() {
        let f = FileProjection::new(Zeroizing::new(b"hunter2".to_vec()), 0o600);
        let s = format!("{f:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("0o600"), "{s}");
    }
}
