//! The check every Secret RPC passes before it runs, and the audit record it leaves after.
//!
//! [`Gate::admit`] takes a request from the connection's rate budget, authenticates the caller,
//! takes a request from the server-wide budget, makes sure the audit log is writable when the
//! server fails closed, and authorizes the verb on its namespace and name; a refusal is audited
//! (sampled for the refusals a flood can cause before the caller is known, see
//! [`crate::audit`]) and returned as a status. The [`Call`] it
//! hands back writes the request's audit record with its outcome ([`Call::finish`]) and strips
//! Secret data the caller may not read ([`ReadFilter`]): list, watch, and the responses of
//! create, update and delete carry `data` only when the caller also holds `get` on the object.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Code, Request, Status};

use super::conn::{ConnState, WatchStreamGuard};
use super::{AuthError, Identity, Security, Verb, conn_state};
use crate::audit::{Record, now_rfc3339};
use crate::proto::v1 as pb;
use coffer_core::model::selector::FieldSelector;

/// The kubectl annotation that holds a whole applied object, data included: stripped with the
/// data.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a request acts on.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The namespace (empty: all).
    pub namespace: String,
    /// The name (for list and watch: the one name selected, if any).
    pub name: Option<String>,
    /// The label selector (audited as an HMAC).
    pub label_selector: String,
    /// False for a request authorized piece by piece later (a WatchMany stream).
    pub authorize: bool,
}

impl Target {
    /// One object.
    pub fn object(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: Some(name.to_owned()),
            label_selector: String::new(),
            authorize: true,
        }
    }

    /// A list or watch: its namespace (or the field selector's exact namespace) and the name its
    /// field selector selects exactly, if any.
    pub fn selection(namespace: &str, label_selector: &str, field_selector: &str) -> Self {
        let fields = FieldSelector::parse(field_selector).ok();
        let namespace = if namespace.is_empty() {
            fields
                .as_ref()
                .and_then(|f| f.exact_namespace())
                .unwrap_or_default()
                .to_owned()
        } else {
            namespace.to_owned()
        };
        Self {
            namespace,
            name: fields
                .as_ref()
                .and_then(|f| f.exact_name())
                .map(str::to_owned),
            label_selector: label_selector.to_owned(),
            authorize: true,
        }
    }

    /// A watch request's target.
    pub fn of_watch(req: &pb::WatchSecretsRequest) -> Self {
        Self::selection(&req.namespace, &req.label_selector, &req.field_selector)
    }

    /// A WatchMany stream: authenticated now, each watch authorized as it is created.
    pub fn stream() -> Self {
        Self::default()
    }
}

/// Checks requests against a server's [`Security`].
#[derive(Debug, Clone)]
pub struct Gate {
    security: Arc<Security>,
}

/// Where a request comes from.
#[derive(Debug, Clone)]
struct Source {
    address: String,
    connection: u64,
    conn: Option<Arc<ConnState>>,
}

impl Gate {
    /// A gate over `security`.
    pub fn new(security: Arc<Security>) -> Self {
        Self { security }
    }

    /// The security state.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// Admits a request to do `verb` on what `target` says it acts on, or refuses it (audited).
    pub fn admit<T>(
        &self,
        request: Request<T>,
        verb: Verb,
        verb_name: &'static str,
        target: impl FnOnce(&T) -> Target,
    ) -> Result<(Call, T), Status> {
        let (metadata, ext, message) = request.into_parts();
        let conn = conn_state(&ext).cloned();
        let source = Source {
            address: conn
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), |c| c.source()),
            connection: conn.as_ref().map_or(0, |c| c.id),
            conn,
        };
        let target = target(&message);
        let sec = &self.security;
        // `sampled`: a refusal a flood can cause before the caller is known; its audit line is
        // sampled (see `crate::audit`), while every one is counted.
        let refuse = |identity: &Identity, e: Status, sampled: bool| -> Status {
            if sampled && !sec.auditor().sample_refusal() {
                return e;
            }
            let call = Call {
                security: sec.clone(),
                identity: Arc::new(identity.clone()),
                verb,
                verb_name,
                target: target.clone(),
                source: source.clone(),
            };
            // A refusal is refused either way; its record is written if it can be.
            let _ = call.audit(e.code(), 0, None);
            e
        };
        let nobody = || Identity {
            user: String::new(),
            groups: Vec::new(),
            method: super::identity::Method::Unauthenticated,
            credential_id: None,
        };
        // The connection pays before authentication: a flood of unauthenticated calls on one
        // connection is cut off by its own budget, not by the server's.
        if let Err(e) = sec.limit_rate(source.conn.as_deref()) {
            return Err(refuse(&nobody(), e.into(), true));
        }
        let identity = match sec.authenticate(&ext, &metadata) {
            Ok(id) => id,
            Err(e) => {
                sec.count_unauthenticated();
                return Err(refuse(&nobody(), e.into(), true));
            }
        };
        // The server-wide budget, only once the caller is known (with authentication on,
        // unauthenticated calls never spend it).
        if let Err(s) = sec.charge_server_budget() {
            return Err(refuse(&identity, s, true));
        }
        if sec.auditor().fail_closed()
            && let Err(e) = sec.auditor().ready()
        {
            return Err(AuthError::AuditUnavailable(e.to_string()).into());
        }
        if target.authorize
            && let Err(e) =
                sec.authorize(&identity, verb, &target.namespace, target.name.as_deref())
        {
            return Err(refuse(&identity, e.into(), false));
        }
        Ok((
            Call {
                security: sec.clone(),
                identity: Arc::new(identity),
                verb,
                verb_name,
                target,
                source,
            },
            message,
        ))
    }
}

/// An admitted request.
#[derive(Debug)]
pub struct Call {
    security: Arc<Security>,
    identity: Arc<Identity>,
    verb: Verb,
    verb_name: &'static str,
    target: Target,
    source: Source,
}

impl Call {
    /// Who is calling.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The verb authorized.
    pub fn verb(&self) -> Verb {
        self.verb
    }

    fn audit(
        &self,
        code: Code,
        resource_version: u64,
        watch: Option<(u64, &Target)>,
    ) -> Result<(), AuthError> {
        let auditor = self.security.auditor();
        if !auditor.enabled() {
            return Ok(());
        }
        let target = watch.map_or(&self.target, |(_, t)| t);
        let record = Record {
            time: now_rfc3339(),
            user: &self.identity.user,
            groups: &self.identity.groups,
            auth: self.identity.method.as_str(),
            credential: self.identity.credential_id.as_deref(),
            verb: if watch.is_some() {
                "watch"
            } else {
                self.verb_name
            },
            namespace: &target.namespace,
            name: target.name.as_deref(),
            label_selector_hmac: (!target.label_selector.is_empty())
                .then(|| auditor.hmac(target.label_selector.as_bytes())),
            watch_id: watch.map(|(id, _)| id),
            code: coffer_kms::code::audit_name(code).to_owned(),
            resource_version,
            source: &self.source.address,
            connection: self.source.connection,
        };
        match auditor.write(&record) {
            Ok(()) => Ok(()),
            Err(e) if auditor.fail_closed() => Err(AuthError::AuditUnavailable(e.to_string())),
            Err(_) => Ok(()),
        }
    }

    /// Audits the request's outcome (`resource_version` of its result) and returns the result;
    /// when the audit record cannot be written and the server fails closed, `UNAVAILABLE`.
    pub fn finish<T>(
        &self,
        result: Result<T, Status>,
        resource_version: impl FnOnce(&T) -> u64,
    ) -> Result<T, Status> {
        let (code, rv) = match &result {
            Ok(v) => (Code::Ok, resource_version(v)),
            Err(s) => (s.code(), 0),
        };
        self.audit(code, rv, None)?;
        result
    }

    /// What this caller may read.
    pub fn read_filter(&self) -> ReadFilter {
        ReadFilter {
            security: self.security.clone(),
            identity: self.identity.clone(),
        }
    }

    /// Takes one of the connection's watch stream slots (held until the guard is dropped).
    pub fn watch_stream_slot(&self) -> Result<Option<WatchStreamGuard>, Status> {
        self.security
            .open_watch_stream(self.source.conn.as_ref())
            .map_err(|e| {
                let s = Status::from(e);
                let _ = self.audit(s.code(), 0, None);
                s
            })
    }

    /// An empty [`WatchBudget`] for this caller's watches.
    pub fn watch_budget(&self) -> WatchBudget {
        let (identity, max_conn, max_identity) = self.security.watch_counts(&self.identity);
        WatchBudget {
            conn: self.source.conn.clone(),
            identity,
            max_conn,
            max_identity,
            held: 0,
        }
    }

    /// Authorizes (and audits) one watch of a WatchMany stream.
    pub fn authorize_watch(
        &self,
        watch_id: u64,
        req: &pb::WatchSecretsRequest,
    ) -> Result<(), Status> {
        let target = Target::of_watch(req);
        // A create is a request: it pays the connection's and the server's rate (a create with
        // initial events reads a whole namespace). Over-rate refusals are sampled in the log.
        let charged = self
            .security
            .limit_rate(self.source.conn.as_deref())
            .map_err(Status::from)
            .and_then(|()| self.security.charge_server_budget());
        if let Err(s) = charged {
            if self.security.auditor().sample_refusal() {
                self.audit(s.code(), req.resource_version, Some((watch_id, &target)))?;
            }
            return Err(s);
        }
        let decision = self.security.authorize(
            &self.identity,
            Verb::Watch,
            &target.namespace,
            target.name.as_deref(),
        );
        let status = decision.err().map(Status::from);
        let code = status.as_ref().map_or(Code::Ok, Status::code);
        self.audit(code, req.resource_version, Some((watch_id, &target)))?;
        status.map_or(Ok(()), Err)
    }
}

/// The watches one stream holds, counted against its connection's cap
/// (`--max-watches-per-connection`) and, with authentication on, its identity's
/// (`--max-watches-per-identity`); given back when it is dropped.
#[derive(Debug)]
pub struct WatchBudget {
    conn: Option<Arc<ConnState>>,
    identity: Option<Arc<super::conn::WatchCount>>,
    max_conn: usize,
    max_identity: usize,
    /// Watches counted by this budget now.
    held: usize,
}

impl WatchBudget {
    /// Counts one more watch, or refuses it with `RESOURCE_EXHAUSTED` naming the cap.
    pub fn try_add(&mut self) -> Result<(), Status> {
        if let Some(c) = &self.conn
            && !c.watches().try_add(self.max_conn)
        {
            return Err(AuthError::TooManyWatches {
                max: self.max_conn,
                per_identity: false,
            }
            .into());
        }
        if let Some(i) = &self.identity
            && !i.try_add(self.max_identity)
        {
            if let Some(c) = &self.conn {
                c.watches().release(1);
            }
            return Err(AuthError::TooManyWatches {
                max: self.max_identity,
                per_identity: true,
            }
            .into());
        }
        self.held += 1;
        Ok(())
    }

    /// Gives back the watches this budget holds beyond `n` (the stream holds `n` now).
    pub fn release_to(&mut self, n: usize) {
        if self.held > n {
            let gone = self.held - n;
            if let Some(c) = &self.conn {
                c.watches().release(gone);
            }
            if let Some(i) = &self.identity {
                i.release(gone);
            }
            self.held = n;
        }
    }
}

impl Drop for WatchBudget {
    fn drop(&mut self) {
        self.release_to(0);
    }
}

/// Strips what a caller may not read from outgoing Secrets.
#[derive(Debug, Clone)]
pub struct ReadFilter {
    security: Arc<Security>,
    identity: Arc<Identity>,
}

impl ReadFilter {
    /// Whether the caller holds `get` on Secret `namespace/name` (always, with authorization
    /// off).
    pub fn allows_get(&self, namespace: &str, name: &str) -> bool {
        self.security
            .allows(&self.identity, Verb::Get, namespace, Some(name))
    }

    /// Empties `data` (and the kubectl last-applied annotation, which holds a copy) unless the
    /// caller holds `get` on the Secret.
    pub fn apply(&self, s: &mut pb::Secret) {
        let (ns, name) = s
            .metadata
            .as_ref()
            .map_or(("", ""), |m| (m.namespace.as_str(), m.name.as_str()));
        if self
            .security
            .allows(&self.identity, Verb::Get, ns, Some(name))
        {
            return;
        }
        // Wiped before they are dropped: these are plaintext copies.
        coffer_kms::codec::Wipe::wipe(s);
        s.data.clear();
        s.string_data.clear();
        if let Some(m) = s.metadata.as_mut()
            && let Some(mut applied) = m.annotations.remove(LAST_APPLIED_ANNOTATION)
        {
            zeroize::Zeroize::zeroize(&mut applied);
        }
    }

    fn apply_event(&self, ev: &mut pb::WatchEvent) {
        if ev.r#type != pb::watch_event::Type::Bookmark as i32
            && let Some(s) = ev.object.as_mut()
        {
            self.apply(s);
        }
    }
}

/// A message of a watch stream whose Secrets may need stripping.
pub trait Filterable {
    /// Strips what `f` says the caller may not read.
    fn filter(&mut self, f: &ReadFilter);
}

impl Filterable for pb::WatchEvent {
    fn filter(&mut self, f: &ReadFilter) {
        f.apply_event(self);
    }
}

impl Filterable for pb::WatchManyEvent {
    fn filter(&mut self, f: &ReadFilter) {
        if let Some(ev) = self.event.as_mut() {
            f.apply_event(ev);
        }
    }
}

/// A watch response stream with each event filtered for its caller; holds the connection's
/// watch stream slot while open.
#[derive(Debug)]
pub struct Filtered<S> {
    inner: S,
    filter: ReadFilter,
    _slot: Option<WatchStreamGuard>,
    _watches: Option<WatchBudget>,
}

impl<S> Filtered<S> {
    /// Filters `inner` with `filter`, holding `slot`.
    pub fn new(inner: S, filter: ReadFilter, slot: Option<WatchStreamGuard>) -> Self {
        Self {
            inner,
            filter,
            _slot: slot,
            _watches: None,
        }
    }

    /// Also holds `watches` (a Watch stream's one watch) until the stream is dropped.
    pub fn holding(mut self, watches: WatchBudget) -> Self {
        self._watches = Some(watches);
        self
    }
}

impl<S, T> futures::Stream for Filtered<S>
where
    S: futures::Stream<Item = Result<T, Status>> + Unpin,
    T: Filterable,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(mut item))) => {
                item.filter(&this.filter);
                Poll::Ready(Some(Ok(item)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_targets() {
        let t = Target::selection("", "", "metadata.namespace=a,metadata.name=x");
        assert_eq!(t.namespace, "a");
        assert_eq!(t.name.as_deref(), Some("x"));
        let t = Target::selection("b", "app=1", "metadata.name!=x");
        assert_eq!(t.namespace, "b");
        assert_eq!(t.name, None);
        let t = Target::selection("b", "", "bogus");
        assert_eq!(t.name, None);
    }
}
