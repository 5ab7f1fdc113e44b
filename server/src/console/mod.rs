//! The node's HTTP listener (`--metrics-listen ADDR`): Prometheus `GET /metrics` and the
//! operator's console at `/console`.
//!
//! The console is one page built into the binary (`console.html`: markup, style and script,
//! nothing fetched from elsewhere, so it works offline) and the JSON it reads under
//! `/console/api/` ([`pages`]). Every answer comes from the serving node's own applied state
//! and says how fresh it is (applied index, cluster time, role); every listing is a bounded
//! page. Nothing here changes state: the listener answers GET only.
//!
//! With a token file, every `/console/api/` request needs the read role: a bearer token
//! (`Authorization: Bearer`; the page asks for it and keeps it in the tab's session storage)
//! or, on a node that runs TLS (whose listener then speaks HTTPS with the node's certificate),
//! a client certificate listed in the token file. `/metrics` and the page itself (which holds
//! no data) stay open, as etcd's `/metrics` does.
//!
//! One listener serves every node of its process (`holdfast dev` runs three): the API takes
//! `?node=ID`, by default the lowest registered.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::api::auth::{Role, SharedAuth};
use crate::node::Node;
use crate::raft::NodeId;

mod pages;
mod query;

use query::{ApiError, Query};

/// The page: markup, style and script in one file, compiled into the binary.
const CONSOLE_HTML: &str = include_str!("console.html");
/// Largest request head (line plus headers) the listener reads; hyper's floor is 8 KiB.
pub const CONSOLE_HEADER_BYTES_MAX: usize = 16 * 1024;
/// Most connections the listener serves at once; more wait in the accept queue.
pub const CONSOLE_CONNECTIONS_MAX: usize = 256;
/// The live stream sends at most one update per this many milliseconds.
pub const CONSOLE_EVENTS_MIN_INTERVAL_MS: u64 = 250;
/// With nothing applied, the live stream still sends its freshness this often (a comment
/// would do for keepalive; the page also shows the node is still answering).
pub const CONSOLE_EVENTS_IDLE_MS: u64 = 5_000;

/// How long the listener waits after a failed accept (e.g. out of file descriptors).
pub const CONSOLE_ACCEPT_RETRY_MS: u64 = 100;

/// Only what the page needs: its own inline script and style, calls to this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

type Body = BoxBody<Bytes, Infallible>;

/// A node this process runs, as the console serves it.
struct Local {
    node: Arc<Node>,
    auth: SharedAuth,
}

/// The listener's view of its process: the Prometheus recorder and the local nodes.
pub struct Console {
    metrics: Option<PrometheusHandle>,
    nodes: RwLock<BTreeMap<NodeId, Local>>,
}

impl Console {
    /// A console over `metrics` (None: `/metrics` answers 404), with no node yet.
    pub fn new(metrics: Option<PrometheusHandle>) -> Arc<Console> {
        Arc::new(Console {
            metrics,
            nodes: RwLock::default(),
        })
    }

    /// Serves `node` (checking calls against `auth`) from now on.
    pub fn register(&self, node: Arc<Node>, auth: SharedAuth) {
        let id = node.id;
        self.nodes
            .write()
            .expect("console nodes lock")
            .insert(id, Local { node, auth });
    }

    /// Binds `addr` and serves until the process ends: HTTPS with `tls` (the node's own
    /// certificate; client certificates optional and verified, as on the gRPC port), else HTTP.
    pub async fn serve(
        self: Arc<Console>,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| anyhow::anyhow!("HTTP listener on {addr}: {error}"))?;
        let slots = Arc::new(tokio::sync::Semaphore::new(CONSOLE_CONNECTIONS_MAX));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "HTTP listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(CONSOLE_ACCEPT_RETRY_MS)).await;
                        continue;
                    }
                };
                let console = Arc::clone(&self);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => console.serve_connection(stream, None).await,
                        Some(tls) => {
                            let timeout =
                                Duration::from_millis(crate::tls::HTTPS_HANDSHAKE_TIMEOUT_MS);
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(timeout, tls.accept(stream)).await
                            {
                                let certificate = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|chain| chain.first())
                                    .and_then(|der| crate::tls::common_name(der.as_ref()));
                                console.serve_connection(stream, certificate).await;
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        Ok(())
    }

    /// Serves one connection whose caller presented the client certificate `certificate`
    /// (its verified common name), if any.
    async fn serve_connection<IO>(self: Arc<Console>, io: IO, certificate: Option<String>)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let console = Arc::clone(&self);
            let certificate = certificate.clone();
            async move { Ok::<_, Infallible>(console.respond(request, certificate).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .max_buf_size(CONSOLE_HEADER_BYTES_MAX)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .await;
    }

    async fn respond(
        &self,
        request: Request<hyper::body::Incoming>,
        certificate: Option<String>,
    ) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the console is read-only: GET only",
            );
        }
        let path = request.uri().path();
        match path {
            "/" => Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, "/console")
                .body(full(Bytes::new()))
                .expect("static response"),
            "/metrics" => match &self.metrics {
                Some(handle) => Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(full(handle.render()))
                    .expect("static response"),
                None => text(StatusCode::NOT_FOUND, "no metrics recorder in this process"),
            },
            "/console" | "/console/" => Response::builder()
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-store")
                .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
                .header("x-content-type-options", "nosniff")
                .body(full(CONSOLE_HTML))
                .expect("static response"),
            _ => match path.strip_prefix("/console/api/") {
                Some(page) => match self.api(page, &request, certificate).await {
                    Ok(response) => response,
                    Err(error) => {
                        json(error.status, &serde_json::json!({ "error": error.message }))
                    }
                },
                None => text(StatusCode::NOT_FOUND, "not found: try /console or /metrics"),
            },
        }
    }

    async fn api(
        &self,
        page: &str,
        request: &Request<hyper::body::Incoming>,
        certificate: Option<String>,
    ) -> Result<Response<Body>, ApiError> {
        let query = Query::parse(request.uri().query().unwrap_or(""))?;
        let node = self.node(&query, request.headers(), certificate)?;
        let page = match page {
            "nodes" => serde_json::json!({ "nodes": self.ids() }),
            "cluster" => pages::cluster(&node).await,
            "locks" => pages::locks(&node, &query)?,
            "lock" => pages::lock(&node, &query)?,
            "sessions" => pages::sessions(&node, &query)?,
            "policies" => pages::policies(&node),
            "events" => return Ok(events(node)),
            _ => return Err(ApiError::not_found(format!("no console page {page:?}"))),
        };
        Ok(json(StatusCode::OK, &page))
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes
            .read()
            .expect("console nodes lock")
            .keys()
            .copied()
            .collect()
    }

    /// The node `?node=` names (by default the lowest), once the caller may read it.
    fn node(
        &self,
        query: &Query,
        headers: &header::HeaderMap,
        certificate: Option<String>,
    ) -> Result<Arc<Node>, ApiError> {
        let nodes = self.nodes.read().expect("console nodes lock");
        let local = match query.get("node") {
            Some(id) => {
                let id: NodeId = id
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("node={id:?}: not a node id")))?;
                nodes.get(&id).ok_or_else(|| {
                    ApiError::not_found(format!("node {id} is not served by this listener"))
                })?
            }
            None => nodes
                .values()
                .next()
                .ok_or_else(|| ApiError::not_found("no node is running in this process yet"))?,
        };
        let auth = Arc::clone(&local.auth.read().expect("auth lock"));
        auth.check_role("the console", Role::Read, headers, || certificate)
            .map_err(|status| ApiError {
                status: match status.code() {
                    tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                },
                message: status.message().to_owned(),
            })?;
        Ok(Arc::clone(&local.node))
    }
}

/// Server-sent events: `event: applied` with the node's freshness whenever its applied index
/// moved (at most every [`CONSOLE_EVENTS_MIN_INTERVAL_MS`]), and at least every
/// [`CONSOLE_EVENTS_IDLE_MS`]. The page re-reads what it shows on each. Ends when the node
/// stops or the browser goes away (hyper drops the body).
fn events(node: Arc<Node>) -> Response<Body> {
    let applied = node.shared.applied_index.subscribe();
    let updates = futures::stream::unfold(
        (node, applied, true),
        |(node, mut applied, first)| async move {
            if !first {
                tokio::select! {
                    changed = applied.changed() => changed.ok()?,
                    () = tokio::time::sleep(Duration::from_millis(CONSOLE_EVENTS_IDLE_MS)) => {}
                }
                tokio::time::sleep(Duration::from_millis(CONSOLE_EVENTS_MIN_INTERVAL_MS)).await;
                applied.mark_unchanged();
            }
            let data = serde_json::to_string(&pages::freshness(&node)).ok()?;
            let frame = Frame::data(Bytes::from(format!("event: applied\ndata: {data}\n\n")));
            Some((Ok::<_, Infallible>(frame), (node, applied, false)))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(BodyExt::boxed(StreamBody::new(updates)))
        .expect("static response")
}

fn full(bytes: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(bytes.into()))
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(format!("{message}\n")))
        .expect("static response")
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(value.to_string()))
        .expect("static response")
}
