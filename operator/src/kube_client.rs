//! Kubernetes client that counts its requests by method, so that writes per reconcile
//! can be observed (`geodb_kube_api_requests_total`).

use std::sync::Arc;
use std::task::{Context, Poll};

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::{Layer, Service};

use crate::metrics::{MethodLabels, Metrics};

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
