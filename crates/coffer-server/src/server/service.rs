//! The `coffer.v1.Secrets` service: a plain struct implementing the generated trait over the
//! store. Every error goes through [`super::status`].
//!
//! Each RPC first passes the [`Gate`] (authentication, per-connection limits, authorization),
//! which returns the admitted [`Call`](crate::auth::gate::Call); the call audits the outcome
//! and strips the data of Secrets the caller may not `get` from what is returned.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::convert::{secret_from_proto, secret_into_proto};
use super::status::{self, store_error};
use super::watch::{
    self, WatchAuthorizer, WatchContext, WatchEvents, WatchManyEvents, WatchRequest,
};
use crate::auth::Verb;
use crate::auth::gate::{Filtered, Gate, Target};
use crate::proto::v1 as pb;
use crate::proto::v1::secrets_server::Secrets;
use coffer_core::store::{ListOptions, Store, StoreError, UpdateOptions};

/// The Secret service.
///
/// Writes run in their own task, so a client that goes away mid-call cannot leave a write
/// applied but its change event unpublished; the write simply completes.
#[derive(Debug, Clone)]
pub struct SecretsService {
    store: Arc<Store>,
    watch: WatchContext,
    gate: Gate,
}

impl SecretsService {
    pub(crate) fn new(watch: WatchContext, gate: Gate) -> Self {
        Self {
            store: watch.store.clone(),
            watch,
            gate,
        }
    }

    /// The store behind the service.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs a store call in its own task (see the type's doc).
    async fn detached<T, F>(&self, f: impl FnOnce(Arc<Store>) -> F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let fut = f(self.store.clone());
        match tokio::spawn(fut).await {
            Ok(r) => r.map_err(|e| store_error(&e)),
            Err(e) => {
                tracing::error!(error = %e, "a store task failed");
                Err(status::status(tonic::Code::Internal, "internal error"))
            }
        }
    }
}

/// The `secret` field of a Create or Update request, which is required.
fn required_secret(secret: Option<pb::Secret>) -> Result<coffer_core::model::Secret, Status> {
    secret
        .map(secret_from_proto)
        .ok_or_else(|| status::required("secret"))
}

/// What a Create or Update acts on: its Secret's namespace and name.
fn secret_target(secret: Option<&pb::Secret>) -> Target {
    let meta = secret.and_then(|s| s.metadata.as_ref());
    Target::object(
        meta.map_or("", |m| m.namespace.as_str()),
        meta.map_or("", |m| m.name.as_str()),
    )
}

fn rv_of(s: &coffer_core::model::Secret) -> u64 {
    s.metadata.resource_version
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn create(
        &self,
        request: Request<pb::CreateSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let (call, req) = self.gate.admit(request, Verb::Create, "create", |r| {
            secret_target(r.secret.as_ref())
        })?;
        let result = match required_secret(req.secret) {
            Ok(secret) => {
                self.detached(move |store| async move { store.create(secret).await })
                    .await
            }
            Err(s) => Err(s),
        };
        let mut created = secret_into_proto(call.finish(result, rv_of)?);
        call.read_filter().apply(&mut created);
        Ok(Response::new(created))
    }

    async fn get(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let (call, req) = self.gate.admit(request, Verb::Get, "get", |r| {
            Target::object(&r.namespace, &r.name)
        })?;
        let result = self
            .store
            .get_at(&req.namespace, &req.name, req.resource_version)
            .await
            .map_err(|e| store_error(&e));
        let secret = call.finish(result, rv_of)?;
        Ok(Response::new(secret_into_proto(secret)))
    }

    /// Old versions are read with the `get` verb (as `get --revision` is): no separate right.
    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let (call, req) = self.gate.admit(request, Verb::Get, "history", |r| {
            Target::object(&r.namespace, &r.name)
        })?;
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        let result = self
            .store
            .history(&req.namespace, &req.name, limit)
            .await
            .map_err(|e| store_error(&e));
        let page = call.finish(result, |p| p.versions.first().map_or(0, |v| v.revision))?;
        Ok(Response::new(pb::HistoryResponse {
            versions: page
                .versions
                .into_iter()
                .map(|v| pb::SecretVersion {
                    revision: v.revision,
                    deleted: v.deleted,
                    created: v.created,
                    secret: v.secret.map(secret_into_proto),
                    written_at: v.written_ms.map(|ms| prost_types::Timestamp {
                        seconds: (ms / 1000) as i64,
                        nanos: ((ms % 1000) * 1_000_000) as i32,
                    }),
                })
                .collect(),
            compact_revision: page.compact_revision,
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let (call, req) = self.gate.admit(request, Verb::Update, "update", |r| {
            secret_target(r.secret.as_ref())
        })?;
        let result = match required_secret(req.secret) {
            Ok(secret) => {
                // A caller without `get` must not learn from the answer whether the data it
                // sent matches (issue 18): see `UpdateOptions::blind`.
                let options = UpdateOptions {
                    blind: !call
                        .read_filter()
                        .allows_get(&secret.metadata.namespace, &secret.metadata.name),
                };
                self.detached(move |store| async move { store.update_with(secret, options).await })
                    .await
            }
            Err(s) => Err(s),
        };
        let mut updated = secret_into_proto(call.finish(result, rv_of)?);
        call.read_filter().apply(&mut updated);
        Ok(Response::new(updated))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let (call, req) = self.gate.admit(request, Verb::Delete, "delete", |r| {
            Target::object(&r.namespace, &r.name)
        })?;
        let result = self
            .detached(move |store| async move {
                store
                    .delete(&req.namespace, &req.name, req.resource_version)
                    .await
            })
            .await;
        let mut last = secret_into_proto(call.finish(result, rv_of)?);
        call.read_filter().apply(&mut last);
        Ok(Response::new(pb::DeleteSecretResponse {
            secret: Some(last),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let (call, req) = self.gate.admit(request, Verb::List, "list", |r| {
            Target::selection(&r.namespace, &r.label_selector, &r.field_selector)
        })?;
        let opts = ListOptions {
            namespace: req.namespace,
            label_selector: req.label_selector,
            field_selector: req.field_selector,
            limit: usize::try_from(req.limit).unwrap_or(usize::MAX),
            continue_token: req.continue_token,
            resource_version: req.resource_version,
            max_bytes: self.watch.list_page_bytes,
        };
        let result = self.store.list(&opts).await.map_err(|e| store_error(&e));
        let page = call.finish(result, |p| p.revision)?;
        let filter = call.read_filter();
        Ok(Response::new(pb::ListSecretsResponse {
            items: page
                .items
                .into_iter()
                .map(|s| {
                    let mut s = secret_into_proto(s);
                    filter.apply(&mut s);
                    s
                })
                .collect(),
            resource_version: page.revision,
            continue_token: page.continue_token,
        }))
    }

    type WatchStream = Filtered<WatchEvents>;

    async fn watch(
        &self,
        request: Request<pb::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (call, req) = self
            .gate
            .admit(request, Verb::Watch, "watch", Target::of_watch)?;
        let slot = call.watch_stream_slot()?;
        let rv = req.resource_version;
        // On etcd storage: a revision another replica gave out may not be published here yet.
        // Wait for it (bounded); if it still is not, the parse below refuses it as too large.
        if rv != 0 {
            let _ = self.watch.store.await_revision(rv).await;
        }
        // The stream's one watch counts against the connection's and the identity's caps.
        let mut watches = call.watch_budget();
        let parsed = if self.watch.shutdown.is_cancelled() {
            Err(status::shutting_down())
        } else {
            WatchRequest::parse(&self.watch, req).and_then(|p| watches.try_add().map(|()| p))
        };
        let parsed = call.finish(parsed, |_| rv)?;
        let events = watch::open_watch(&self.watch, parsed);
        Ok(Response::new(
            Filtered::new(events, call.read_filter(), slot).holding(watches),
        ))
    }

    type WatchManyStream = Filtered<WatchManyEvents>;

    async fn watch_many(
        &self,
        request: Request<Streaming<pb::WatchManyRequest>>,
    ) -> Result<Response<Self::WatchManyStream>, Status> {
        let (call, input) = self
            .gate
            .admit(request, Verb::Watch, "watchmany", |_| Target::stream())?;
        let slot = call.watch_stream_slot()?;
        let open = if self.watch.shutdown.is_cancelled() {
            Err(status::shutting_down())
        } else {
            Ok(())
        };
        call.finish(open, |()| 0)?;
        let filter = call.read_filter();
        let watches = call.watch_budget();
        let call = Arc::new(call);
        let authorize = WatchAuthorizer(Arc::new(move |id, req: &pb::WatchSecretsRequest| {
            call.authorize_watch(id, req)
        }));
        let events = watch::open_watch_many(&self.watch, input, authorize, watches);
        Ok(Response::new(Filtered::new(events, filter, slot)))
    }
}
