//! The servers on loopback: real TLS (a test CA, rustls on both sides) and real HTTP; only the
//! reviewer is a fake (a table of tokens), the API calls being the e2e tests' business.

use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

struct Fake {
    calls: Arc<AtomicUsize>,
}

impl Reviewer for Fake {
    async fn review(&self, token: &str) -> std::result::Result<Decision, kube::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match token {
            "reader" => Ok(Decision::Allowed),
            "stranger" => Ok(Decision::Forbidden),
            "down" => Err(kube::Error::Api(Box::new(
                kube::core::Status::failure("etcd is down", "InternalError").with_code(500),
            ))),
            _ => Ok(Decision::Unauthenticated),
        }
    }
}

/// A CA and a leaf for `localhost` signed by it, written as tls.crt / tls.key into `dir`.
fn issue(dir: &std::path::Path) -> rustls::RootCertStore {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("leaf");
    std::fs::write(dir.join(tls::CERT_FILE), leaf.pem()).expect("write cert");
    std::fs::write(dir.join(tls::KEY_FILE), key.serialize_pem()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    roots
}

struct Https {
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    calls: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

async fn start_https() -> Https {
    let dir = tempfile::tempdir().expect("tempdir");
    let roots = issue(dir.path());
    let (store, _) = tls::load(&CertSource::Dir(dir.path().to_path_buf())).expect("certs");
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new(Fake {
        calls: calls.clone(),
    });
    let metrics = some_metrics();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = tls::server_config(store).expect("config");
    tokio::spawn(serve_tls(
        listener,
        config,
        secure_metrics_router(metrics, gate),
    ));
    Https {
        addr,
        roots,
        calls,
        _dir: dir,
    }
}

/// Metrics with a drift counted, so the exposition has a family.
fn some_metrics() -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    metrics.drift("app", "p", "pod-security.kubernetes.io/enforce");
    metrics
}

fn request(path: &str, authorization: Option<&str>) -> String {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

/// (status, head, body) of one request over TLS, the server's certificate verified.
async fn https_get(h: &Https, path: &str, authorization: Option<&str>) -> (u16, String, String) {
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(h.roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(h.addr).await.expect("connect");
    let mut stream = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with a verified certificate");
    stream
        .write_all(request(path, authorization).as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    // rustls reports a peer closing without close_notify as an error; the bytes are there.
    let _ = stream.read_to_end(&mut raw).await;
    split(&raw)
}

fn split(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn metrics_over_tls_only_for_authorized_readers() {
    let h = start_https().await;
    let (code, head, _) = https_get(&h, "/metrics", None).await;
    assert_eq!(code, 401, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"pss-operator\""),
        "{head}"
    );
    assert_eq!(https_get(&h, "/metrics", Some("Basic eDp5")).await.0, 401);
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        0,
        "no review without a token"
    );
    assert_eq!(
        https_get(&h, "/metrics", Some("Bearer forged")).await.0,
        401
    );
    let (code, _, body) = https_get(&h, "/metrics", Some("Bearer stranger")).await;
    assert_eq!(code, 403);
    assert!(body.contains("pss-operator-metrics-reader"), "{body}");
    assert_eq!(https_get(&h, "/metrics", Some("Bearer down")).await.0, 503);

    let (code, head, body) = https_get(&h, "/metrics", Some("Bearer reader")).await;
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("# TYPE pss_label_drift_total counter")
            && body.contains("pss_label_drift_total{"),
        "the exposition as before: {body}"
    );
    let before = h.calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(
            https_get(&h, "/metrics", Some("Bearer reader")).await.0,
            200
        );
    }
    assert_eq!(h.calls.load(Ordering::SeqCst), before, "cached");
    // Only /metrics is served here: health is on its own plain port.
    assert_eq!(
        https_get(&h, "/healthz", Some("Bearer reader")).await.0,
        404
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_no_metrics() {
    let h = start_https().await;
    let mut tcp = TcpStream::connect(h.addr).await.expect("connect");
    tcp.write_all(request("/metrics", Some("Bearer reader")).as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("pss_"), "{text}");
    assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
    // The server is still fine afterwards.
    assert_eq!(
        https_get(&h, "/metrics", Some("Bearer reader")).await.0,
        200
    );
}

#[tokio::test]
async fn a_stalled_handshake_does_not_block_others() {
    let h = start_https().await;
    // Connects and says nothing.
    let _idle = TcpStream::connect(h.addr).await.expect("connect");
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        https_get(&h, "/metrics", Some("Bearer reader")),
    )
    .await
    .expect("answered while another handshake stalls");
    assert_eq!(answered.0, 200);
}

async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request(path, None).as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.expect("read");
    let (code, _, body) = split(&raw);
    (code, body)
}

#[tokio::test]
async fn plain_mode_serves_all_three_and_health_stays_plain() {
    let metrics = some_metrics();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve_plain(listener, router(metrics, ready.clone())));
    assert_eq!(plain_get(addr, "/healthz").await.0, 200);
    assert_eq!(plain_get(addr, "/readyz").await.0, 503);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(plain_get(addr, "/readyz").await.0, 200);
    let (code, body) = plain_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("pss_label_drift_total{"), "{body}");

    let health = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let health_addr = health.local_addr().expect("addr");
    tokio::spawn(serve_plain(health, health_router(ready)));
    assert_eq!(plain_get(health_addr, "/readyz").await.0, 200);
    assert_eq!(plain_get(health_addr, "/metrics").await.0, 404);
}

#[test]
fn secure_mode_needs_its_own_health_port_and_a_readable_certificate() {
    let addr: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
    let err = prepare(Options {
        metrics_addr: addr,
        tls: Some(CertSource::SelfSigned(vec!["localhost".into()])),
        health_addr: None,
    })
    .expect_err("no health address")
    .to_string();
    assert!(err.contains("health address"), "{err}");
    let err = prepare(Options {
        metrics_addr: addr,
        tls: None,
        health_addr: Some(addr),
    })
    .expect_err("same port")
    .to_string();
    assert!(err.contains("127.0.0.1:8443"), "{err}");
    let err = prepare(Options {
        metrics_addr: addr,
        tls: Some(CertSource::Dir("/nonexistent/certs".into())),
        health_addr: Some("127.0.0.1:8081".parse().expect("addr")),
    })
    .expect_err("missing files")
    .to_string();
    assert!(err.contains("/nonexistent/certs/tls.crt"), "{err}");
    assert!(
        prepare(Options {
            metrics_addr: addr,
            tls: Some(CertSource::SelfSigned(vec![
                "localhost".into(),
                "127.0.0.1".into()
            ])),
            health_addr: Some("127.0.0.1:8081".parse().expect("addr")),
        })
        .is_ok()
    );
}

#[test]
fn gzip_is_accepted_as_rfc_9110_reads_accept_encoding() {
    for yes in [
        "gzip",
        "GZIP",
        "x-gzip",
        "*",
        "identity, gzip;q=0.5",
        "br;q=1.0, gzip;q=0.8, *;q=0.1",
        "gzip ; q=1",
    ] {
        assert!(accepts_gzip(yes), "{yes}");
    }
    for no in [
        "",
        "identity",
        "br, deflate",
        "gzip;q=0",
        "gzip;q=0.0",
        "gzipped",
        "*;q=0",
    ] {
        assert!(!accepts_gzip(no), "{no}");
    }
}

/// The raw response (head and body bytes) of one plain GET with extra header lines.
async fn plain_get_raw(addr: SocketAddr, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.expect("read");
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
    (head, raw[at + 4..].to_vec())
}

/// The payload of an HTTP/1.1 chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = std::str::from_utf8(&raw[..line_end]).expect("ascii");
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .expect("hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[tokio::test]
async fn metrics_are_gzipped_for_scrapers_that_ask_and_decode_to_the_same_text() {
    use std::io::Read as _;
    let metrics = some_metrics();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve_plain(
        listener,
        router(metrics.clone(), Arc::default()),
    ));

    // Prometheus' own header.
    let prometheus = "Accept-Encoding: gzip\r\n";
    let (head, body) = plain_get_raw(addr, "/metrics", prometheus).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .expect("a gzip body");
    assert_eq!(text, metrics.render());

    // Plain: streamed as rendered (HTTP/1.1 chunked), the same text.
    let (head, body) = plain_get_raw(addr, "/metrics", "").await;
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(
        String::from_utf8(dechunk(&body)).expect("utf-8"),
        metrics.render()
    );
    let (head, _) = plain_get_raw(addr, "/metrics", "Accept-Encoding: gzip;q=0\r\n").await;
    assert!(!head.contains("content-encoding"), "{head}");
}
