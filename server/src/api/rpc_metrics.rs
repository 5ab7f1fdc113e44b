//! A tower layer counting every gRPC call by method and status code and timing it
//! (`holdfast_grpc_requests_total{method,code}`, `holdfast_grpc_seconds{method}`). The code is
//! read from the response headers: tonic sends a handler's error as a trailers-only response
//! (`grpc-status` in the headers); a response without it counts as OK (a streaming call that
//! fails later is counted when its headers went out). The time is until the headers: for
//! streams, until the stream opened.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{counter, histogram};
use tonic::codegen::http;

/// Wraps the server's services with [`RpcMetrics`].
#[derive(Clone, Copy, Debug)]
pub struct RpcMetricsLayer {
    pub node: u64,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            node: self.node,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
    node: u64,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let node = self.node.to_string();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |value| {
                        tonic::Code::from_bytes(value.as_bytes())
                    }),
                Err(_) => tonic::Code::Unknown,
            };
            counter!(
                "holdfast_grpc_requests_total",
                "node" => node.clone(),
                "method" => method.clone(),
                "code" => format!("{code:?}")
            )
            .increment(1);
            histogram!("holdfast_grpc_seconds", "node" => node, "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}
