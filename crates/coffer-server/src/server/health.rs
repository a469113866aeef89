//! The standard gRPC health service (tonic-health), made to end its Watch streams at shutdown.
//!
//! tonic-health's Watch streams never end by themselves, so one health watcher would hold a
//! graceful shutdown for the whole grace period. Here each Watch stream gets a last
//! `NOT_SERVING` and ends when the server starts shutting down.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// The health service of a server.
#[derive(Debug)]
pub(crate) struct ShutdownAwareHealth {
    inner: HealthService,
    shutdown: CancellationToken,
}

impl ShutdownAwareHealth {
    /// A health server reading the statuses `reporter` sets.
    pub(crate) fn server(
        reporter: HealthReporter,
        shutdown: CancellationToken,
    ) -> HealthServer<Self> {
        HealthServer::new(Self {
            inner: HealthService::from_health_reporter(reporter),
            shutdown,
        })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for ShutdownAwareHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let last = futures::stream::once(async {
            Ok(HealthCheckResponse {
                status: ServingStatus::NotServing as i32,
            })
        });
        let stream = statuses
            .take_until(self.shutdown.clone().cancelled_owned())
            .chain(last);
        Ok(Response::new(Box::pin(stream)))
    }
}
