//! Files as Kustomize's root-only loader reads them: every path is taken relative to the
//! kustomization's directory (with symlinks resolved) and must stay inside it, and failures are
//! worded as kustomize words them (`evalsymlink failure on ...`, `security; file ... is not in
//! or below ...`, `... must resolve to a file`), because users compare them with kubectl's.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use zeroize::Zeroizing;

/// The kustomization's directory, absolute with symlinks resolved (kustomize's
/// `ConfirmedDir`).
#[derive(Debug, Clone)]
pub(crate) struct Root(PathBuf);

impl Root {
    /// Confirms the directory given on the command line.
    pub(crate) fn new(dir: &str) -> Result<Self, String> {
        let resolved = eval_symlinks(dir, &absolute(dir))
            .map_err(|e| format!("must build at directory: not a valid directory: {e}"))?;
        if !resolved.is_dir() {
            return Err(format!(
                "must build at directory: '{}': file is not directory",
                resolved.display()
            ));
        }
        Ok(Self(resolved))
    }

    /// The directory, as kustomize prints it.
    pub(crate) fn display(&self) -> String {
        self.0.display().to_string()
    }

    /// `path` as kustomize names it in messages: joined to the root (and cleaned) when
    /// relative, as given when absolute.
    pub(crate) fn named(&self, path: &str) -> String {
        if Path::new(path).is_absolute() {
            path.to_owned()
        } else {
            clean(&self.0.join(path)).display().to_string()
        }
    }

    /// Where `path` leads when it is a file inside the root (kustomize's
    /// `RestrictionRootOnly`), or kustomize's message for why it is not.
    pub(crate) fn confine(&self, path: &str) -> Result<PathBuf, String> {
        let named = self.named(path);
        let resolved = eval_symlinks(&named, &clean(Path::new(&named)))?;
        if resolved.is_dir() {
            return Err(format!("'{named}' must resolve to a file"));
        }
        let dir = resolved.parent().unwrap_or(Path::new("/"));
        if !(self.0 == Path::new("/") || dir == self.0 || dir.starts_with(&self.0)) {
            return Err(format!(
                "security; file '{named}' is not in or below '{}'",
                self.display()
            ));
        }
        Ok(resolved)
    }

    /// Reads a file inside the root.
    pub(crate) fn load(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let file = self.confine(path)?;
        std::fs::read(&file)
            .map(Zeroizing::new)
            .map_err(|e| format!("open {}: {}", file.display(), go_io_error(&e)))
    }
}

/// Go's `filepath.Abs`: joined to the working directory, then cleaned.
fn absolute(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return clean(p);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    clean(&cwd.join(p))
}

/// Go's `filepath.Clean` (lexical: `.` dropped, `..` applied).
pub(crate) fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("/");
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Go's `filepath.EvalSymlinks` for messages: `named` is how the caller named the path.
fn eval_symlinks(named: &str, abs: &Path) -> Result<PathBuf, String> {
    match std::fs::canonicalize(abs) {
        Ok(p) => Ok(p),
        Err(e) => {
            // Go reports the first component that fails `lstat`.
            let mut prefix = PathBuf::new();
            let mut failed = abs.to_path_buf();
            let mut why = go_io_error(&e);
            for c in abs.components() {
                prefix.push(c.as_os_str());
                if let Err(e) = std::fs::symlink_metadata(&prefix) {
                    failed.clone_from(&prefix);
                    why = go_io_error(&e);
                    break;
                }
            }
            Err(format!(
                "evalsymlink failure on '{named}' : lstat {}: {why}",
                failed.display()
            ))
        }
    }
}

/// An I/O error as Go's `syscall.Errno` prints it.
fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "no such file or directory".to_owned(),
        ErrorKind::PermissionDenied => "permission denied".to_owned(),
        ErrorKind::NotADirectory => "not a directory".to_owned(),
        ErrorKind::IsADirectory => "is a directory".to_owned(),
        _ => {
            let s = e.to_string();
            let s = s.find(" (os error").map_or(s.as_str(), |i| &s[..i]);
            s.to_lowercase()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert_eq!(clean(Path::new("/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn confinement() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("k");
        std::fs::create_dir(&root_dir).unwrap();
        std::fs::write(root_dir.join("in.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("out.txt"), b"x").unwrap();
        let root = Root::new(&root_dir.to_string_lossy()).unwrap();
        assert_eq!(root.load("in.txt").unwrap().as_slice(), b"x");
        let e = root.load("../out.txt").unwrap_err();
        assert!(e.starts_with("security; file '"), "{e}");
        let e = root.load("missing.txt").unwrap_err();
        assert!(e.starts_with("evalsymlink failure on '"), "{e}");
        assert!(e.ends_with("missing.txt: no such file or directory"), "{e}");
        let e = root.load(".").unwrap_err();
        assert!(e.ends_with("' must resolve to a file"), "{e}");
    }
}
