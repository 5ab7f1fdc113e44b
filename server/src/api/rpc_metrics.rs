//! A tower layer counting every gRPC call by method and status code and timing it
//! (`holdfast_grpc_requests_total{method,code}`, `holdfast_grpc_seconds{method}`). The code is
//! read from the response headers: tonic sends a handler's error as a trailers-only response
//! (`grpc-status` in the headers); a response without it counts as OK (a streaming call that
//! fails later is counted when its headers went out). The time is until the headers: for
//! streams, until the stream opened.
//!
//! A method's metric handles are made on its first call and kept, so a call costs a map lookup
//! by its path, not the building of label sets. Only methods the router knows get a label of
//! their own: a path answered `Unimplemented` that has none yet is counted as `method="other"`,
//! so a client sending made-up paths cannot grow the map or the exported series.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Counter, Histogram, counter, histogram};
use tonic::codegen::http;

/// Most methods given a label of their own (the services' methods are far fewer); calls to
/// others are counted as `method="other"`.
pub const RPC_METHOD_LABELS_MAX: usize = 128;
/// The label of calls to a method without one of its own.
const OTHER_METHOD: &str = "other";
/// gRPC status codes: 0 (`Ok`) to 16 (`Unauthenticated`).
const GRPC_CODES: usize = 17;

/// Wraps the server's services with [`RpcMetrics`].
#[derive(Clone, Copy, Debug)]
pub struct RpcMetricsLayer {
    pub node: u64,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        let node = self.node.to_string();
        RpcMetrics {
            inner,
            methods: Arc::new(Methods {
                other: Arc::new(MethodMetrics::new(&node, OTHER_METHOD)),
                node,
                labelled: RwLock::default(),
            }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
    methods: Arc<Methods>,
}

/// The handles of every method seen so far, by path.
#[derive(Debug)]
struct Methods {
    node: String,
    labelled: RwLock<HashMap<Box<str>, Arc<MethodMetrics>>>,
    other: Arc<MethodMetrics>,
}

impl Methods {
    fn get(&self, path: &str) -> Option<Arc<MethodMetrics>> {
        let labelled = self.labelled.read().expect("rpc metrics lock");
        labelled.get(path).cloned()
    }

    /// The handles for a first call to `path` that was answered `code`.
    fn first_call(&self, path: &str, code: tonic::Code) -> Arc<MethodMetrics> {
        if let Some(method) = self.get(path) {
            return method;
        }
        if code == tonic::Code::Unimplemented {
            return Arc::clone(&self.other);
        }
        let mut labelled = self.labelled.write().expect("rpc metrics lock");
        if let Some(method) = labelled.get(path) {
            return Arc::clone(method);
        }
        if labelled.len() >= RPC_METHOD_LABELS_MAX {
            return Arc::clone(&self.other);
        }
        let method = Arc::new(MethodMetrics::new(&self.node, path));
        labelled.insert(path.into(), Arc::clone(&method));
        method
    }
}

/// One method's histogram, and its counter per status code (made when that code first occurs,
/// so that only codes seen are exported).
#[derive(Debug)]
struct MethodMetrics {
    node: String,
    method: String,
    seconds: Histogram,
    requests: [OnceLock<Counter>; GRPC_CODES],
}

impl MethodMetrics {
    fn new(node: &str, method: &str) -> MethodMetrics {
        MethodMetrics {
            node: node.to_owned(),
            method: method.to_owned(),
            seconds: histogram!(
                "holdfast_grpc_seconds",
                "node" => node.to_owned(),
                "method" => method.to_owned()
            ),
            requests: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn record(&self, code: tonic::Code, seconds: f64) {
        let slot = usize::try_from(code as i32).map_or(GRPC_CODES - 1, |i| i.min(GRPC_CODES - 1));
        self.requests[slot]
            .get_or_init(|| {
                counter!(
                    "holdfast_grpc_requests_total",
                    "node" => self.node.clone(),
                    "method" => self.method.clone(),
                    "code" => format!("{code:?}")
                )
            })
            .increment(1);
        self.seconds.record(seconds);
    }
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
        let path = request.uri().path();
        // Known: its handles. First call: the path, to make them once the code is known.
        let method = self
            .methods
            .get(path)
            .ok_or_else(|| (Arc::clone(&self.methods), path.to_owned()));
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
            let method = method.unwrap_or_else(|(methods, path)| methods.first_call(&path, code));
            method.record(code, started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods() -> Methods {
        Methods {
            node: "1".into(),
            labelled: RwLock::default(),
            other: Arc::new(MethodMetrics::new("1", OTHER_METHOD)),
        }
    }

    #[test]
    fn a_method_gets_its_label_on_a_call_the_router_knows() {
        let methods = methods();
        let path = "/holdfast.v1.Locks/Acquire";
        assert!(methods.get(path).is_none());
        let first = methods.first_call(path, tonic::Code::NotFound);
        assert_eq!(first.method, path);
        let again = methods.get(path).expect("kept");
        assert!(Arc::ptr_eq(&first, &again));
        // Once labelled, even its Unimplemented answers keep the label.
        assert!(Arc::ptr_eq(
            &methods.first_call(path, tonic::Code::Unimplemented),
            &again
        ));
    }

    #[test]
    fn made_up_paths_are_counted_as_other_and_kept_nowhere() {
        let methods = methods();
        for i in 0..1_000 {
            let path = format!("/made.up/Method{i}");
            let method = methods.first_call(&path, tonic::Code::Unimplemented);
            assert_eq!(method.method, OTHER_METHOD);
        }
        assert!(methods.labelled.read().unwrap().is_empty());
    }

    #[test]
    fn labels_stop_at_the_cap() {
        let methods = methods();
        for i in 0..RPC_METHOD_LABELS_MAX + 10 {
            let path = format!("/svc/M{i}");
            let method = methods.first_call(&path, tonic::Code::Ok);
            let wanted = if i < RPC_METHOD_LABELS_MAX {
                path.as_str()
            } else {
                OTHER_METHOD
            };
            assert_eq!(method.method, wanted);
        }
        assert_eq!(
            methods.labelled.read().unwrap().len(),
            RPC_METHOD_LABELS_MAX
        );
    }
}
