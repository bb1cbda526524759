//! Kubernetes client that counts its requests by method, so that writes per reconcile
//! can be observed (`geodb_kube_api_requests_total`).

use std::sync::Arc;
use std::task::{Context, Poll};

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::{Layer, Service};

use crate::runtime::metrics::{MethodLabels, Metrics};

#[derive(Clone)]
pub struct CountRequestsLayer {
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

impl<S, B> Service<http::Request<B>> for CountRequests<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.metrics
            .kube_requests
            .get_or_create(&MethodLabels {
                method: request.method().as_str().to_owned(),
            })
            .inc();
        self.inner.call(request)
    }
}

/// A client for `config` whose requests are counted in `metrics`.
pub fn counting_client(config: Config, metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountRequestsLayer { metrics })
        .build())
}

/// Connections opened before the first reconciles: about as many requests as one
/// reconcile of a new GeoDatabase sends at once.
pub const WARM_CONNECTIONS: usize = 32;

/// Open `count` pooled connections to the API server by sending that many cheap requests
/// (`GET /version`) at once. The client speaks HTTP/1.1, so each concurrent request needs
/// a connection of its own, and the first reconciles after a start, which apply some
/// twenty objects each at once, would otherwise wait for as many TLS handshakes
/// (`make bench-reconcile`: the first six GeoDatabases took 170 to 280 ms without this,
/// about 150 ms on average with it, 50 ms once warm). HTTP/2, which shares one
/// connection, was tried instead and made every reconcile slower (p50 115 ms against
/// 50 ms). Idle connections close after 90 s, so this helps the start-up burst only.
/// Returns how many requests failed.
pub async fn warm_up(client: &Client, count: usize) -> usize {
    futures::future::join_all((0..count).map(|_| client.apiserver_version()))
        .await
        .iter()
        .filter(|r| r.is_err())
        .count()
}
