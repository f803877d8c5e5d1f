//! The secure metrics port (issue 20) on the real control plane: `pss-operator run` as its
//! ServiceAccount with only `config/rbac` (so its TokenReview and SubjectAccessReview rights are
//! exactly the shipped ones), /metrics over TLS with a mounted certificate (a test CA, verified by
//! the client), real ServiceAccount tokens (TokenRequest):
//! - no token and a made-up one: 401; a valid token whose user is not bound to
//!   `pss-operator-metrics-reader` (and the operator's own): 403; a bound one: 200 with the series;
//! - repeated scrapes cost no further TokenReview or SubjectAccessReview (kube-apiserver's own
//!   `apiserver_request_total` counts them); a binding added is honoured once the refusal expires,
//!   a binding removed once the permission expires;
//! - a new certificate written to the folder is served without a restart;
//! - /healthz and /readyz answer in plain HTTP on their own port, plain HTTP on the TLS port gets
//!   nothing; a missing certificate folder stops the operator with an error naming the file;
//! - the optional NetworkPolicy is accepted by kube-apiserver (server-side dry run).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use kube::Client;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{self, unique_name};
use crate::procs::{OperatorProc, Serving, env};
use crate::security::url_allowed;
use crate::serial;
use crate::support::{OPERATOR_NAMESPACE, http_get, kubectl_sync, parse_http};

/// A CA, and a leaf for `localhost` it signed, written as tls.crt / tls.key into `dir`.
struct Issued {
    roots: rustls::RootCertStore,
    leaf: CertificateDer<'static>,
}

fn issue(dir: &Path) -> Result<Issued> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pss-operator e2e CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca)?;
    // The key first: a reader between the two writes sees a mismatched pair, which is refused.
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    std::fs::write(dir.join("tls.crt"), leaf.pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    Ok(Issued {
        roots,
        leaf: leaf.der().clone(),
    })
}

struct Reply {
    code: u16,
    body: String,
    /// The certificate the server presented.
    leaf: CertificateDer<'static>,
}

/// GET /metrics over TLS (the server's certificate verified against `roots` for `localhost`).
async fn scrape(addr: &str, roots: &rustls::RootCertStore, token: Option<&str>) -> Result<Reply> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake")?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| anyhow!("no server certificate"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    // A peer closing without close_notify is an error to rustls; the bytes are there.
    let _ = tls.read_to_end(&mut raw).await;
    // The plain exposition is streamed (chunked).
    let (code, body) = parse_http(&raw)?;
    Ok(Reply { code, body, leaf })
}

/// kube-apiserver's count of TokenReview and SubjectAccessReview creations so far.
async fn reviews(admin: &Client) -> Result<(f64, f64)> {
    let text = admin
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await
        .context("kube-apiserver /metrics")?;
    let sum = |resource: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("apiserver_request_total{")
                    && l.contains(&format!("resource=\"{resource}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    Ok((sum("tokenreviews"), sum("subjectaccessreviews")))
}

fn kubectl(env: &crate::procs::Env, args: &[&str]) -> Result<String> {
    kubectl_sync(env.cluster, args)
}

fn token(env: &crate::procs::Env, account: &str) -> Result<String> {
    Ok(kubectl(
        env,
        &[
            "create",
            "token",
            account,
            "-n",
            OPERATOR_NAMESPACE,
            "--duration=1h",
        ],
    )?
    .trim()
    .to_owned())
}

/// Polls `scrape` with `token` until it answers `code`; the time it took.
async fn until_code(
    addr: &str,
    roots: &rustls::RootCertStore,
    token: &str,
    code: u16,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let got = scrape(addr, roots, Some(token)).await?.code;
        if got == code {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < limit,
            "still {got} after {limit:?}, expected {code}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_serves_only_authorized_readers() -> Result<()> {
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let admin = env.admin().await?;
    let tag = unique_name("metricsauth");
    let (reader, stranger) = (format!("{tag}-reader"), format!("{tag}-stranger"));
    for account in [&reader, &stranger] {
        kubectl(
            env,
            &[
                "create",
                "serviceaccount",
                account,
                "-n",
                OPERATOR_NAMESPACE,
            ],
        )?;
    }
    kubectl(
        env,
        &[
            "create",
            "clusterrolebinding",
            &reader,
            "--clusterrole=pss-operator-metrics-reader",
            &format!("--serviceaccount={OPERATOR_NAMESPACE}:{reader}"),
        ],
    )?;
    let result = scenario(env, &admin, &tag, &reader, &stranger).await;
    for account in [&reader, &stranger] {
        let _ = kubectl(
            env,
            &[
                "delete",
                "clusterrolebinding",
                account,
                "--ignore-not-found",
            ],
        );
        let _ = kubectl(
            env,
            &[
                "delete",
                "serviceaccount",
                account,
                "-n",
                OPERATOR_NAMESPACE,
                "--ignore-not-found",
            ],
        );
    }
    result
}

async fn scenario(
    env: &'static crate::procs::Env,
    admin: &Client,
    tag: &str,
    reader: &str,
    stranger: &str,
) -> Result<()> {
    // What kube-apiserver says the reader role allows, before any scrape.
    let user = |account: &str| format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{account}");
    let groups = vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{OPERATOR_NAMESPACE}"),
        "system:authenticated".to_owned(),
    ];
    // (kube-apiserver's RBAC authorizer sees a new binding once its informer has it.)
    harness::eventually(
        "the new binding to pss-operator-metrics-reader in effect",
        Duration::from_secs(30),
        || {
            let (admin, user, groups) = (admin.clone(), user(reader), groups.clone());
            async move {
                Ok(url_allowed(&admin, &user, &groups, "get", "/metrics")
                    .await?
                    .then_some(()))
            }
        },
    )
    .await?;
    for (verb, url) in [
        ("post", "/metrics"),
        ("get", "/debug/pprof/"),
        ("get", "/logs/"),
    ] {
        ensure!(
            !url_allowed(admin, &user(reader), &groups, verb, url).await?,
            "the reader role must allow nothing but get /metrics ({verb} {url})"
        );
    }
    ensure!(!url_allowed(admin, &user(stranger), &groups, "get", "/metrics").await?);

    let certs = env.dir.join(format!("{tag}-certs"));
    std::fs::create_dir_all(&certs)?;
    let first = issue(&certs)?;
    let mut op = OperatorProc::start_serving(
        env,
        &format!("{tag}-op"),
        Some(tag),
        Serving::Secure {
            cert_dir: Some(certs.clone()),
        },
    )?;
    op.wait_ready().await?;
    let addr = op.metrics_addr.clone();

    // Health: plain HTTP on its own port; no metrics there.
    let (code, _) = http_get(&op.health_addr, "/healthz").await?;
    ensure!(code == 200, "/healthz answered {code}");
    let (code, _) = http_get(&op.health_addr, "/metrics").await?;
    ensure!(code == 404, "/metrics on the health port answered {code}");
    // Plain HTTP on the TLS port: no metrics.
    // (An error, the TLS server closing the connection, is the expected outcome.)
    if let Ok((code, body)) = http_get(&addr, "/metrics").await {
        ensure!(
            code != 200 && !body.contains("pss_"),
            "plain HTTP on the TLS port answered {code}: {body}"
        );
    }

    // 401 / 403 / 200.
    let reader_token = token(env, reader)?;
    let stranger_token = token(env, stranger)?;
    let operator_token = token(env, "pss-operator")?;
    ensure!(scrape(&addr, &first.roots, None).await?.code == 401);
    let forged = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06YWRtaW4ifQ.c2lnbmF0dXJl";
    ensure!(scrape(&addr, &first.roots, Some(forged)).await?.code == 401);
    let r = scrape(&addr, &first.roots, Some(&stranger_token)).await?;
    ensure!(r.code == 403, "stranger: {} {}", r.code, r.body);
    ensure!(!r.body.contains("pss_"));
    let r = scrape(&addr, &first.roots, Some(&operator_token)).await?;
    ensure!(
        r.code == 403,
        "the operator's own account may not read /metrics either: {}",
        r.code
    );
    let before_cold = reviews(admin).await?;
    let started = Instant::now();
    let r = scrape(&addr, &first.roots, Some(&reader_token)).await?;
    let cold = started.elapsed();
    ensure!(r.code == 200, "reader: {} {}", r.code, r.body);
    ensure!(
        r.body.contains("pss_reconcile_duration_seconds_count{"),
        "the leader's series: {}",
        &r.body[..r.body.len().min(500)]
    );
    ensure!(r.leaf == first.leaf, "the mounted certificate is served");
    // kube-apiserver counts a request once it has answered it: wait for both to be counted.
    let mut after_cold = reviews(admin).await?;
    for _ in 0..50 {
        if after_cold.0 > before_cold.0 && after_cold.1 > before_cold.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after_cold = reviews(admin).await?;
    }
    ensure!(
        after_cold.0 - before_cold.0 == 1.0 && after_cold.1 - before_cold.1 == 1.0,
        "a first scrape costs one TokenReview and one SubjectAccessReview: {before_cold:?} -> {after_cold:?}"
    );

    // Frequent scrapes: answered from the cache, no review at all.
    const SCRAPES: usize = 50;
    let mut warm = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let started = Instant::now();
        let r = scrape(&addr, &first.roots, Some(&reader_token)).await?;
        warm.push(started.elapsed());
        ensure!(r.code == 200, "{}", r.code);
        ensure!(
            scrape(&addr, &first.roots, Some(&stranger_token))
                .await?
                .code
                == 403
        );
    }
    let after_warm = reviews(admin).await?;
    ensure!(
        after_warm == after_cold,
        "{SCRAPES} more scrapes each of the reader and the stranger made reviews: {after_cold:?} -> {after_warm:?}"
    );
    warm.sort();
    eprintln!(
        "faults: metrics auth: first scrape {cold:?} (TLS handshake + TokenReview + SubjectAccessReview); \
         {SCRAPES} cached scrapes (each a new TLS connection) p50 {:?} p90 {:?} max {:?}; \
         TokenReviews {} and SubjectAccessReviews {} for {} scrapes",
        percentile(&warm, 0.5),
        percentile(&warm, 0.9),
        warm[warm.len() - 1],
        after_warm.0 - before_cold.0,
        after_warm.1 - before_cold.1,
        1 + 2 * SCRAPES,
    );

    // A binding added: honoured once the refusal expires (10 s).
    kubectl(
        env,
        &[
            "create",
            "clusterrolebinding",
            stranger,
            "--clusterrole=pss-operator-metrics-reader",
            &format!("--serviceaccount={OPERATOR_NAMESPACE}:{stranger}"),
        ],
    )?;
    let granted = until_code(
        &addr,
        &first.roots,
        &stranger_token,
        200,
        Duration::from_secs(40),
    )
    .await?;
    // A binding removed: refused once the permission expires (60 s).
    kubectl(env, &["delete", "clusterrolebinding", reader])?;
    let revoked = until_code(
        &addr,
        &first.roots,
        &reader_token,
        403,
        Duration::from_secs(100),
    )
    .await?;
    eprintln!(
        "faults: metrics auth: a new binding honoured after {granted:?}, a removed one after {revoked:?}"
    );

    // A new certificate in the folder: served to new connections, no restart.
    let second = issue(&certs)?;
    let reload_start = Instant::now();
    loop {
        op.check_alive()?;
        if let Ok(r) = scrape(&addr, &second.roots, Some(&stranger_token)).await {
            ensure!(r.code == 200 && r.leaf == second.leaf);
            break;
        }
        if reload_start.elapsed() > Duration::from_secs(40) {
            bail!(
                "the new certificate is not served after 40 s; log:\n{}",
                op.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        scrape(&addr, &first.roots, Some(&stranger_token))
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    eprintln!(
        "faults: metrics auth: new certificate served {:?} after it was written",
        reload_start.elapsed()
    );
    ensure!(op.log_text().contains("metrics certificate reloaded"));
    op.check_alive()?;

    // A certificate folder that is not there: the operator stops at once, naming the file.
    let missing = env.dir.join(format!("{tag}-missing"));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pss-operator"))
            .args(["run", "--metrics-cert-dir"])
            .arg(&missing)
            .env("KUBECONFIG", &env.sa_kubeconfig)
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .context("pss-operator with a missing --metrics-cert-dir did not stop")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains(&*missing.join("tls.crt").to_string_lossy()),
        "{}: {stderr}",
        out.status
    );

    // The optional NetworkPolicy: valid for kube-apiserver.
    let np = harness::repo_root().join("config/network-policy");
    let dry = kubectl(
        env,
        &["apply", "--dry-run=server", "-k", &np.to_string_lossy()],
    )?;
    ensure!(
        dry.contains("networkpolicy.networking.k8s.io/pss-operator-allow-metrics-traffic"),
        "{dry}"
    );
    Ok(())
}
