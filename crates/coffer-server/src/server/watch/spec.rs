//! What a watch selects ([`WatchSpec`]), parsed once and shared by every watch that asks for
//! the same thing ([`SpecCache`]), so that a million watches of a few thousand Secrets hold a
//! few thousand specs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tonic::Status;

use crate::server::status::store_error;
use coffer_core::model::Secret;
use coffer_core::model::selector::{FieldSelector, LabelSelector};
use coffer_core::model::validation::validate_namespace;
use coffer_core::store::StoreError;

/// What a watcher selects.
#[derive(Debug)]
pub(crate) struct WatchSpec {
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
}

/// The request fields that define a [`WatchSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SpecKey {
    pub(crate) namespace: String,
    pub(crate) label_selector: String,
    pub(crate) field_selector: String,
    pub(crate) bookmarks: bool,
}

impl WatchSpec {
    /// Checks and parses the namespace and the selectors (`INVALID_ARGUMENT` naming the field).
    pub(crate) fn parse(key: &SpecKey) -> Result<Self, Status> {
        if !key.namespace.is_empty() {
            validate_namespace(&key.namespace).map_err(|e| store_error(&StoreError::from(e)))?;
        }
        let labels = LabelSelector::parse(&key.label_selector).map_err(|e| {
            store_error(&StoreError::BadRequest {
                field: "labelSelector",
                message: e.to_string(),
            })
        })?;
        let fields = FieldSelector::parse(&key.field_selector).map_err(|e| {
            store_error(&StoreError::BadRequest {
                field: "fieldSelector",
                message: e.to_string(),
            })
        })?;
        Ok(Self {
            namespace: key.namespace.clone(),
            labels,
            fields,
            bookmarks: key.bookmarks,
        })
    }

    /// The namespace asked for (empty: all).
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The field selector.
    pub(crate) fn fields(&self) -> &FieldSelector {
        &self.fields
    }

    /// Whether the watcher asked for periodic bookmarks.
    pub(crate) fn wants_bookmarks(&self) -> bool {
        self.bookmarks
    }

    /// Whether `s` is selected.
    pub(crate) fn matches(&self, s: &Secret) -> bool {
        (self.namespace.is_empty() || s.metadata.namespace == self.namespace)
            && self.fields.matches(s)
            && self.labels.matches(&s.metadata.labels)
    }
}

/// The specs in use, so that watches asking for the same thing share one.
#[derive(Debug, Default)]
pub(crate) struct SpecCache(Mutex<Specs>);

#[derive(Debug, Default)]
struct Specs {
    map: HashMap<SpecKey, Weak<WatchSpec>>,
    /// Dead entries are swept when the map reaches this size.
    sweep_at: usize,
}

impl SpecCache {
    /// The spec for `key`: one already in use by another watch, or a new one from `parse`.
    pub(crate) fn get<E>(
        &self,
        key: SpecKey,
        parse: impl FnOnce(&SpecKey) -> Result<WatchSpec, E>,
    ) -> Result<Arc<WatchSpec>, E> {
        let mut specs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(spec) = specs.map.get(&key).and_then(Weak::upgrade) {
            return Ok(spec);
        }
        let spec = Arc::new(parse(&key)?);
        if specs.map.len() >= specs.sweep_at {
            specs.map.retain(|_, w| w.strong_count() > 0);
            specs.sweep_at = (specs.map.len() * 2).max(1024);
        }
        specs.map.insert(key, Arc::downgrade(&spec));
        Ok(spec)
    }
}
