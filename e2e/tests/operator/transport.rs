//! How the operator reads the cluster and serves its metrics at scale: initial lists streamed
//! (WatchList) where the server supports them and paginated where it does not (v1.31 refuses
//! `sendInitialEvents`: this suite runs on both), and `/metrics` gzip-compressed for scrapers
//! that ask, decoding to the plain exposition.

use std::io::{Read as _, Write as _};

use anyhow::{Context as _, Result, ensure};

use super::support::{self, OpTest, run_test};
use crate::harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_lists_are_streamed_where_the_server_supports_them() -> Result<()> {
    run_test("initial-lists", async |t: &OpTest| {
        let kube = harness::server_version(&t.client).await?;
        // WatchList is on by default from v1.34 (beta, `WatchList` gate); v1.31 refuses it.
        let expected = if kube.minor >= 34 {
            "initial lists: streamed (WatchList, sendInitialEvents)"
        } else {
            "initial lists: paginated LIST (the server does not stream lists)"
        };
        let log = t.op.log_lines_with("initial lists:", 5);
        ensure!(
            log.lines().count() == 1 && log.contains(expected),
            "on {kube} the operator should have logged {expected:?} once; it logged:\n{log}"
        );
        // And its lists completed that way: every watch reported its list (the operator is ready).
        for what in ["namespaces", "pods", "Deployments", "podsecurityprofiles"] {
            ensure!(
                !t.op
                    .log_lines_with(&format!("list of {what} complete"), 1)
                    .is_empty(),
                "no 'list of {what} complete' in the operator's log"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_gzipped_for_prometheus_and_decode_to_the_plain_text() -> Result<()> {
    run_test("metrics-gzip", async |t: &OpTest| {
        let addr = t.op.metrics_addr.clone();
        // Two scrapes a moment apart may differ in the pass-duration histogram; the families and
        // the gauges' series do not, unless a report lands between them (the operator serves
        // the other tests too): compared again then, a few times.
        let families = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.starts_with("# TYPE") || l.starts_with("pss_namespace_level{"))
                .map(str::to_owned)
                .collect()
        };
        let mut tries = 0;
        let (plain, gz) = loop {
            let (plain_head, plain) = get(&addr, "")?;
            let (gz_head, gz) = get(&addr, "Accept-Encoding: gzip\r\n")?;
            ensure!(
                !plain_head.contains("content-encoding"),
                "plain scrape: {plain_head}"
            );
            ensure!(
                gz_head.contains("content-encoding: gzip")
                    && gz_head.contains("vary: accept-encoding"),
                "gzip scrape: {gz_head}"
            );
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut text)
                .context("decoding the gzip scrape")?;
            let plain = String::from_utf8(plain).context("plain scrape is UTF-8")?;
            if families(&text) == families(&plain) && text.contains("# TYPE pss_build_info ") {
                break (plain, gz);
            }
            tries += 1;
            ensure!(
                tries < 5,
                "the gzip scrape decodes to a different exposition five times running"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        };
        ensure!(
            gz.len() < plain.len(),
            "gzip {} bytes, plain {}",
            gz.len(),
            plain.len()
        );
        Ok(())
    })
    .await
}

/// (lower-cased head, body) of one GET /metrics with extra header lines.
fn get(addr: &str, headers: &str) -> Result<(String, Vec<u8>)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
    ensure!(head.starts_with("http/1.1 200"), "GET /metrics: {head}");
    // The plain exposition is streamed as rendered (chunked); the gzip one has its length.
    let gzip = head.contains("content-encoding: gzip");
    let chunked = head.contains("transfer-encoding: chunked");
    ensure!(chunked != gzip, "gzip {gzip}, chunked {chunked}: {head}");
    if chunked {
        let (_, body) = support::parse_http(&raw)?;
        return Ok((head, body.into_bytes()));
    }
    Ok((head, raw[at + 4..].to_vec()))
}
