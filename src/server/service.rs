//! The `coffer.v1.Secrets` service: a plain struct implementing the generated trait over the
//! store. Every error goes through [`super::status`].

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::convert::{secret_from_proto, secret_into_proto};
use super::status;
use super::watch::{self, WatchContext, WatchRequest};
use super::watch_queue::{WatchEvents, WatchManyEvents};
use crate::proto::v1 as pb;
use crate::proto::v1::secrets_server::Secrets;
use crate::store::{ListOptions, Store, StoreError};

/// The Secret service.
///
/// Writes run in their own task, so a client that goes away mid-call cannot leave a write
/// applied but its change event unpublished; the write simply completes.
#[derive(Debug, Clone)]
pub struct SecretsService {
    store: Arc<Store>,
    watch: WatchContext,
}

impl SecretsService {
    pub(crate) fn new(watch: WatchContext) -> Self {
        Self {
            store: watch.store.clone(),
            watch,
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
            Ok(r) => r.map_err(Status::from),
            Err(e) => {
                tracing::error!(error = %e, "a store task failed");
                Err(status::status(tonic::Code::Internal, "internal error"))
            }
        }
    }
}

/// The `secret` field of a Create or Update request, which is required.
fn required_secret(secret: Option<pb::Secret>) -> Result<crate::model::Secret, Status> {
    secret
        .map(secret_from_proto)
        .ok_or_else(|| status::required("secret"))
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn create(
        &self,
        request: Request<pb::CreateSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let secret = required_secret(request.into_inner().secret)?;
        let created = self
            .detached(move |store| async move { store.create(secret).await })
            .await?;
        Ok(Response::new(secret_into_proto(created)))
    }

    async fn get(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let req = request.into_inner();
        let secret = self.store.get(&req.namespace, &req.name).await?;
        Ok(Response::new(secret_into_proto(secret)))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let secret = required_secret(request.into_inner().secret)?;
        let updated = self
            .detached(move |store| async move { store.update(secret).await })
            .await?;
        Ok(Response::new(secret_into_proto(updated)))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let req = request.into_inner();
        let last = self
            .detached(move |store| async move {
                store
                    .delete(&req.namespace, &req.name, req.resource_version)
                    .await
            })
            .await?;
        Ok(Response::new(pb::DeleteSecretResponse {
            secret: Some(secret_into_proto(last)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let req = request.into_inner();
        let opts = ListOptions {
            namespace: req.namespace,
            label_selector: req.label_selector,
            field_selector: req.field_selector,
            limit: usize::try_from(req.limit).unwrap_or(usize::MAX),
            continue_token: req.continue_token,
            max_bytes: self.watch.list_page_bytes,
        };
        let page = self.store.list(&opts).await?;
        Ok(Response::new(pb::ListSecretsResponse {
            items: page.items.into_iter().map(secret_into_proto).collect(),
            resource_version: page.revision,
            continue_token: page.continue_token,
        }))
    }

    type WatchStream = WatchEvents;

    async fn watch(
        &self,
        request: Request<pb::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if self.watch.shutdown.is_cancelled() {
            return Err(status::shutting_down());
        }
        let req = WatchRequest::parse(&self.watch, request.into_inner())?;
        Ok(Response::new(watch::open_watch(&self.watch, req)))
    }

    type WatchManyStream = WatchManyEvents;

    async fn watch_many(
        &self,
        request: Request<Streaming<pb::WatchManyRequest>>,
    ) -> Result<Response<Self::WatchManyStream>, Status> {
        if self.watch.shutdown.is_cancelled() {
            return Err(status::shutting_down());
        }
        Ok(Response::new(watch::open_watch_many(
            &self.watch,
            request.into_inner(),
        )))
    }
}
