//! `/metrics`, `/healthz` and `/readyz`.
//!
//! Two modes ([`Options`]):
//! - secure (the default, and what `config/` deploys): `/metrics` alone on a TLS port, each request
//!   authenticated by a TokenReview and authorized by a SubjectAccessReview (`get` on the
//!   non-resource URL `/metrics`), decisions cached briefly ([`access`], [`review`]); the
//!   certificate self-signed at start or read from a folder and reloaded when it changes
//!   ([`tls`]); `/healthz` and `/readyz` in plain HTTP on their own port, for the kubelet;
//! - plain (`--metrics-secure=false`, for a laptop: `make run`, the demo, the tests that read
//!   `/metrics` directly): all three in plain HTTP without authentication, on one port unless a
//!   health address is given.

pub mod access;
pub mod review;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use self::access::Decision;
use self::review::{Gate, KubeReviewer, Reviewer};
use self::tls::{CertSource, CertStore, PemPair};
use super::error::{Error, Result};
use super::metrics::Metrics;

/// A TLS handshake not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many handshakes at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 64;

/// `/healthz` and `/readyz`.
pub fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(ready)
}

/// `/metrics`, `/healthz` and `/readyz` in one, unauthenticated (plain mode).
pub fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Router {
    plain_metrics_router(metrics).merge(health_router(ready))
}

fn plain_metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics)
}

/// `/metrics` behind the gate: 401 without a valid token, 403 for a user who may not read it.
pub fn secure_metrics_router<R: Reviewer>(metrics: Arc<Metrics>, gate: Arc<Gate<R>>) -> Router {
    plain_metrics_router(metrics)
        .route_layer(middleware::from_fn_with_state(gate, require_reader::<R>))
}

/// The exposition, gzip-compressed when the scraper accepts it (Prometheus does: at 10,000
/// namespaces the text is ~13 MB, gzip ~20x smaller). Rendered (and compressed) on a blocking
/// thread: tens of milliseconds at that size. Plain text is streamed as it is rendered, so no
/// scrape holds the whole text.
async fn metrics_handler(
    State(metrics): State<Arc<Metrics>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_gzip);
    let headers = [
        (header::CONTENT_TYPE, "text/plain; version=0.0.4"),
        (header::VARY, "Accept-Encoding"),
    ];
    if !gzip {
        return (headers, streamed(metrics)).into_response();
    }
    let rendered = tokio::task::spawn_blocking(move || gzipped(&metrics)).await;
    let body = match rendered {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "/metrics: compressing the exposition (500)");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e, "/metrics: rendering the exposition (500)");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut response = (headers, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    response
}

/// The plain exposition as a body streamed in chunks while a blocking thread renders it; a
/// scraper that goes away stops the rendering.
fn streamed(metrics: Arc<Metrics>) -> axum::body::Body {
    let (send, receive) = mpsc::channel::<bytes::Bytes>(2);
    tokio::task::spawn_blocking(move || {
        let sent = metrics.render_chunked(&mut |text| {
            send.blocking_send(bytes::Bytes::copy_from_slice(text.as_bytes()))
                .map_err(|_| std::io::Error::other("the scraper went away"))
        });
        if let Err(e) = sent {
            tracing::debug!(error = %e, "/metrics: rendering stopped");
        }
    });
    axum::body::Body::from_stream(futures::stream::unfold(receive, |mut r| async move {
        r.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), r))
    }))
}

/// Whether one `Accept-Encoding` header value accepts gzip (`gzip`, `x-gzip` or `*`, with a
/// non-zero quality), as RFC 9110 section 12.5.3 reads it.
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let accepted = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .all(|q| q.parse::<f32>().is_ok_and(|q| q > 0.0));
        accepted
            && ["gzip", "x-gzip", "*"]
                .iter()
                .any(|c| name.eq_ignore_ascii_case(c))
    })
}

/// The exposition gzip-compressed at the fastest level as it is rendered, never whole as text:
/// most of a scrape's cost is the compression, and level 1 already shrinks the exposition's
/// repetitive lines ~20x.
fn gzipped(metrics: &Metrics) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(64 * 1024), flate2::Compression::fast());
    metrics.render_chunked(&mut |text| encoder.write_all(text.as_bytes()))?;
    encoder.finish()
}

async fn ready_handler(State(ready): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn require_reader<R: Reviewer>(
    State(gate): State<Arc<Gate<R>>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match gate.decide(authorization).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer realm="pss-operator""#)],
            "Unauthorized: send a Kubernetes bearer token (Authorization: Bearer <token>)\n",
        )
            .into_response(),
        Ok(Decision::Forbidden) => (
            StatusCode::FORBIDDEN,
            "Forbidden: this user may not get /metrics (bind it to the ClusterRole pss-operator-metrics-reader)\n",
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "/metrics: cannot review the token (503)");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: the Kubernetes API could not review the token\n",
            )
                .into_response()
        }
    }
}

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct Options {
    /// `/metrics` (and, in plain mode without `health_addr`, `/healthz` and `/readyz`).
    pub metrics_addr: SocketAddr,
    /// `Some`: TLS with this certificate, TokenReview + SubjectAccessReview. `None`: plain.
    pub tls: Option<CertSource>,
    /// `/healthz` and `/readyz`, plain HTTP. Required in secure mode.
    pub health_addr: Option<SocketAddr>,
}

/// [`Options`] with their certificate loaded: made by [`prepare`] before anything else starts,
/// so that a wrong certificate folder stops the operator at once, naming the file.
#[derive(Debug)]
pub struct Prepared {
    options: Options,
    certs: Option<(Arc<CertStore>, Option<PemPair>)>,
}

pub fn prepare(options: Options) -> Result<Prepared> {
    if options.tls.is_some() && options.health_addr.is_none() {
        return Err(Error::Flags(
            "the secure metrics server needs a health address for /healthz and /readyz".into(),
        ));
    }
    if options.health_addr == Some(options.metrics_addr) {
        return Err(Error::Flags(format!(
            "the metrics and the health address are the same ({}): give them different ports",
            options.metrics_addr
        )));
    }
    let certs = options.tls.as_ref().map(tls::load).transpose()?;
    Ok(Prepared { options, certs })
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve {
            addr: addr.to_string(),
            source,
        })
}

/// Serves until an error: metrics (TLS and reviews through `client` in secure mode) and health.
pub async fn serve(
    prepared: Prepared,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    client: kube::Client,
) -> Result<()> {
    let Prepared { options, certs } = prepared;
    let metrics_addr = options.metrics_addr;
    let metrics_server = async {
        match (&options.tls, certs) {
            (Some(source), Some((store, pair))) => {
                if let (CertSource::Dir(dir), Some(pair)) = (source, pair) {
                    tokio::spawn(tls::watch(
                        store.clone(),
                        dir.clone(),
                        pair,
                        tls::RELOAD_INTERVAL,
                    ));
                }
                let gate = Gate::new(KubeReviewer::new(client));
                let listener = bind(metrics_addr).await?;
                tracing::info!(addr = %metrics_addr, certificate = %describe(source), "serving /metrics over TLS to authorized readers (TokenReview + SubjectAccessReview)");
                serve_tls(
                    listener,
                    tls::server_config(store)?,
                    secure_metrics_router(metrics, gate),
                )
                .await
            }
            _ => {
                let router = if options.health_addr.is_some() {
                    plain_metrics_router(metrics)
                } else {
                    router(metrics, ready.clone())
                };
                let listener = bind(metrics_addr).await?;
                if metrics_addr.ip().is_loopback() {
                    tracing::info!(addr = %metrics_addr, "serving /metrics in plain HTTP without authentication (--metrics-secure=false)");
                } else {
                    tracing::warn!(addr = %metrics_addr, "serving /metrics in plain HTTP without authentication on a non-loopback address: whoever reaches it reads which namespaces are unprotected; in a cluster keep --metrics-secure (the default)");
                }
                serve_plain(listener, router).await
            }
        }
    };
    let health_server = async {
        match options.health_addr {
            Some(addr) => {
                let listener = bind(addr).await?;
                tracing::info!(%addr, "serving /healthz, /readyz");
                serve_plain(listener, health_router(ready.clone())).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::try_join!(metrics_server, health_server).map(|_| ())
}

fn describe(source: &CertSource) -> String {
    match source {
        CertSource::SelfSigned(names) => format!("self-signed for {}", names.join(",")),
        CertSource::Dir(dir) => format!(
            "{}/{{{},{}}} (reloaded when they change)",
            dir.display(),
            tls::CERT_FILE,
            tls::KEY_FILE
        ),
    }
}

/// Plain HTTP.
pub async fn serve_plain(listener: TcpListener, router: Router) -> Result<()> {
    let addr = local_addr(&listener);
    axum::serve(listener, router)
        .await
        .map_err(|source| Error::Serve { addr, source })
}

/// HTTPS: TLS handshakes run concurrently (at most [`MAX_HANDSHAKES`], each within
/// [`HANDSHAKE_TIMEOUT`]) and only finished ones reach the HTTP server.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
) -> Result<()> {
    let addr = local_addr(&listener);
    let listener = TlsListener::new(listener, config).map_err(|source| Error::Serve {
        addr: addr.clone(),
        source,
    })?;
    axum::serve(listener, router)
        .await
        .map_err(|source| Error::Serve { addr, source })
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Accepts TCP connections and hands on the ones whose TLS handshake succeeded.
struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, handshaken) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum's own listener does.
                        tracing::debug!(error = %e, "accepting a metrics connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            handshaken,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task is gone (only when this listener is dropped): nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests;
