//! Where each stored version of a key lies, kept in memory as etcd keeps its key index.
//!
//! A version is written once, into the change row of the revision that wrote it (`r/<rev><idx>`),
//! and stays there when a later version supersedes it: nothing is copied on an update. A read at
//! an old revision then needs to know which revisions hold a key's versions, and this index says
//! so without a row per version in key order (a new key at a random place, which was two thirds
//! of what an update's rows cost sled: README, "The write path").
//!
//! Rows written by the layout before this one (`h/<key><rev>` copies) are indexed too, so that
//! their data directories are read as they are and lose those rows to compaction in time.
//!
//! The current version's own row (`l/<key>`) is not indexed: the live key set covers it.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Revision;

/// A row holding one version of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Row {
    /// The version's `mod_revision`.
    pub revision: Revision,
    /// Which row.
    pub place: Place,
    /// The length of the version's encoded entry, for the history's byte count.
    pub bytes: u32,
}

/// The kind of row a version is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// The change row `r/<revision><idx>`, which holds the version it records.
    Change(u32),
    /// A copy under `h/<key><revision>`: the layout before this one, or a version whose change
    /// row compaction removed while it was current.
    History,
}

/// Each key's stored versions, oldest first.
#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    keys: BTreeMap<Box<[u8]>, Vec<Row>>,
}

impl KeyIndex {
    /// Records `row` for `key` (usually the newest, so the vector's end).
    pub(super) fn insert(&mut self, key: &[u8], row: Row) {
        let rows = match self.keys.get_mut(key) {
            Some(rows) => rows,
            None => self.keys.entry(key.into()).or_default(),
        };
        match rows.binary_search_by_key(&row.revision, |r| r.revision) {
            Ok(i) => rows[i] = row,
            Err(i) => rows.insert(i, row),
        }
    }

    /// The newest row of `key` at or below `at`.
    pub(super) fn floor(&self, key: &[u8], at: Revision) -> Option<Row> {
        let rows = self.keys.get(key)?;
        let n = rows.partition_point(|r| r.revision <= at);
        n.checked_sub(1).map(|i| rows[i])
    }

    /// The row of `key`'s version at exactly `revision`.
    pub(super) fn exact(&self, key: &[u8], revision: Revision) -> Option<Row> {
        self.floor(key, revision)
            .filter(|row| row.revision == revision)
    }

    /// Every row of `key`, newest first.
    pub(super) fn newest_first(&self, key: &[u8]) -> Vec<Row> {
        self.keys
            .get(key)
            .map(|rows| rows.iter().rev().copied().collect())
            .unwrap_or_default()
    }

    /// Forgets `key`'s row at `revision`.
    pub(super) fn remove(&mut self, key: &[u8], revision: Revision) {
        let Some(rows) = self.keys.get_mut(key) else {
            return;
        };
        if let Ok(i) = rows.binary_search_by_key(&revision, |r| r.revision) {
            rows.remove(i);
        }
        if rows.is_empty() {
            self.keys.remove(key);
        }
    }

    /// The first indexed key after `cursor` (from the start when `None`) that starts with
    /// `prefix`.
    pub(super) fn next_key(&self, prefix: &[u8], cursor: Option<&[u8]>) -> Option<Vec<u8>> {
        let start = match cursor {
            Some(c) if c >= prefix => Bound::Excluded(c),
            _ => Bound::Included(prefix),
        };
        self.keys
            .range::<[u8], _>((start, Bound::Unbounded))
            .next()
            .map(|(k, _)| k.to_vec())
            .filter(|k| k.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(revision: Revision) -> Row {
        Row {
            revision,
            place: Place::Change(0),
            bytes: 10,
        }
    }

    #[test]
    fn floor_exact_and_removal_follow_revisions() {
        let mut index = KeyIndex::default();
        index.insert(b"k", row(5));
        index.insert(b"k", row(2));
        index.insert(b"k", row(9));
        index.insert(b"k", row(9));
        assert_eq!(index.floor(b"k", 1), None);
        assert_eq!(index.floor(b"k", 6), Some(row(5)));
        assert_eq!(index.floor(b"k", 100), Some(row(9)));
        assert_eq!(index.exact(b"k", 5), Some(row(5)));
        assert_eq!(index.exact(b"k", 6), None);
        assert_eq!(
            index.newest_first(b"k"),
            vec![row(9), row(5), row(2)],
            "newest first"
        );
        index.remove(b"k", 2);
        index.remove(b"k", 5);
        assert_eq!(index.newest_first(b"k"), vec![row(9)]);
        index.remove(b"k", 9);
        assert_eq!(index.next_key(b"", None), None, "an empty key is dropped");
    }

    #[test]
    fn next_key_walks_a_prefix_in_key_order() {
        let mut index = KeyIndex::default();
        for key in [&b"a/1"[..], b"a/2", b"b/1", b"a"] {
            index.insert(key, row(3));
        }
        assert_eq!(index.next_key(b"a/", None), Some(b"a/1".to_vec()));
        assert_eq!(index.next_key(b"a/", Some(b"a/1")), Some(b"a/2".to_vec()));
        assert_eq!(index.next_key(b"a/", Some(b"a/2")), None);
        assert_eq!(index.next_key(b"", Some(b"a/2")), Some(b"b/1".to_vec()));
        assert_eq!(index.next_key(b"b/", Some(b"a")), Some(b"b/1".to_vec()));
    }
}
