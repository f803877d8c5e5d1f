//! The operator under test and what the operator tests share.
//!
//! ONE `pss-operator run` process serves every operator test of a test-binary run. It runs as the
//! ServiceAccount `pss-system/pss-operator` with exactly the RBAC of `config/rbac` (applied with
//! `kubectl apply -k`), through a kubeconfig holding a TokenRequest token: every operator test is
//! thereby also a test of the least-privilege RBAC. Tests share it safely because each one labels
//! its namespaces `e2e.pss-operator.io/test=<unique tag>` and its profiles select only that tag.
//!
//! The process is started on first use (like the control plane), its metrics/health server on a
//! free loopback port, its log written to a file that a failing test prints. Statics are never
//! dropped, so a small watchdog stops it (SIGTERM, then SIGKILL) as soon as the test process exits,
//! however it exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use pss_operator::operator::crd::{PodSecurityProfile, PodSecurityProfileSpec};

use crate::harness::{self, Cluster, eventually, unique_name};

/// Generous guard for "eventually": far above what any step needs, never a timing assertion.
pub const EVENTUALLY: Duration = Duration::from_secs(60);
/// The label every operator test puts on its namespaces; its profiles select on it.
pub const TEST_LABEL: &str = "e2e.pss-operator.io/test";
/// The operator's field manager (labels and status).
pub use pss_operator::operator::MANAGER;
pub const OPERATOR_NAMESPACE: &str = "pss-system";
pub const SERVICE_ACCOUNT: &str = "pss-operator";

pub use pss_operator::pss::level::labels::{
    AUDIT, AUDIT_VERSION, ENFORCE, ENFORCE_VERSION, WARN, WARN_VERSION,
};

/// The running operator.
pub struct Operator {
    pub cluster: &'static Cluster,
    /// The folder of the kubeconfig and the log.
    pub dir: PathBuf,
    /// `127.0.0.1:<port>` of /metrics, /healthz, /readyz.
    pub metrics_addr: String,
    /// stdout + stderr of the process.
    pub log: PathBuf,
    /// The ServiceAccount kubeconfig the operator runs with.
    pub kubeconfig: PathBuf,
    child: Mutex<Child>,
}

static OPERATOR: OnceLock<Result<Operator, String>> = OnceLock::new();

/// The shared operator, started on first use. Panics (failing the caller) when it cannot start.
pub fn operator() -> &'static Operator {
    match OPERATOR.get_or_init(|| start().map_err(|e| format!("{e:#}"))) {
        Ok(op) => op,
        Err(reason) => panic!("the operator under test could not be started: {reason}"),
    }
}

/// Runs kubectl (admin kubeconfig) synchronously; fails with its stderr unless it succeeds.
pub fn kubectl_sync(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let out = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running kubectl {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A kubeconfig for `token` against the cluster of the admin kubeconfig (server and CA kept).
pub fn token_kubeconfig(cluster: &Cluster, token: &str) -> Result<String> {
    let flat = kubectl_sync(
        cluster,
        &["config", "view", "--raw", "--minify", "--flatten"],
    )?;
    let admin: serde_yaml_ng::Value = serde_yaml_ng::from_str(&flat)?;
    let cluster_entry = admin["clusters"][0]["cluster"].clone();
    ensure!(
        cluster_entry.get("server").is_some(),
        "no server in the admin kubeconfig"
    );
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": serde_json::to_value(&cluster_entry)?}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": SERVICE_ACCOUNT}}],
        "current-context": "e2e",
    });
    Ok(serde_yaml_ng::to_string(&config)?)
}

/// What `make install` and config/rbac set up (the CRD, the operator's namespace, exactly
/// config/rbac), and a kubeconfig in `dir` for the operator's ServiceAccount (TokenRequest token).
/// Applies the CRD in `file` (server-side) and waits until `name` is Established.
pub fn apply_crd(cluster: &Cluster, file: &Path, name: &str) -> Result<()> {
    kubectl_sync(
        cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &file.to_string_lossy(),
        ],
    )?;
    kubectl_sync(
        cluster,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=120s",
            &format!("crd/{name}"),
        ],
    )?;
    Ok(())
}

pub fn install_as_service_account(cluster: &Cluster, dir: &Path) -> Result<PathBuf> {
    let root = harness::repo_root();
    // The CRD, as `make install` applies it.
    apply_crd(
        cluster,
        &root.join("crds/podsecurityprofiles.yaml"),
        "podsecurityprofiles.pss-operator.io",
    )?;
    // The operator's namespace (from config/manager) and exactly config/rbac.
    let ns = root.join("config/manager/namespace.yaml");
    kubectl_sync(cluster, &["apply", "-f", &ns.to_string_lossy()])?;
    let rbac = root.join("config/rbac");
    kubectl_sync(cluster, &["apply", "-k", &rbac.to_string_lossy()])?;
    // A TokenRequest token of the ServiceAccount (the account may take a moment to be visible).
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        match kubectl_sync(
            cluster,
            &[
                "create",
                "token",
                SERVICE_ACCOUNT,
                "-n",
                OPERATOR_NAMESPACE,
                "--duration=3h",
            ],
        ) {
            Ok(t) => break t.trim().to_owned(),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    ensure!(!token.is_empty(), "kubectl create token printed no token");

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let kubeconfig = dir.join("serviceaccount.kubeconfig");
    std::fs::write(&kubeconfig, token_kubeconfig(cluster, &token)?)?;
    Ok(kubeconfig)
}

fn start() -> Result<Operator> {
    let cluster = harness::cluster();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("e2e-operator-{}", std::process::id()));
    let kubeconfig = install_as_service_account(cluster, &dir)?;
    let log = dir.join("operator.log");
    let identity = format!("pss-operator-e2e-{}", std::process::id());

    let spawned = spawn_operator(&kubeconfig, &log, &identity, &[], Some(&kubeconfig))?;
    let pid = spawned.child.id();
    let metrics_addr = spawned.metrics_addr;
    let child = spawned.child;
    let op = Operator {
        cluster,
        dir: dir.clone(),
        metrics_addr,
        log,
        kubeconfig,
        child: Mutex::new(child),
    };
    eprintln!(
        "e2e: pss-operator (pid {pid}) as ServiceAccount {OPERATOR_NAMESPACE}/{SERVICE_ACCOUNT}, metrics on {}, log {}",
        op.metrics_addr,
        op.log.display()
    );
    // Ready after its first complete pass.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        op.check_alive()?;
        if let Ok((200, _)) = http_get_sync(&op.metrics_addr, "/readyz") {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "pss-operator not ready after 120s; its log:\n{}",
                op.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(op)
}

/// A started `pss-operator run` (as the ServiceAccount) and its metrics address.
pub struct Spawned {
    pub child: Child,
    pub metrics_addr: String,
}

/// Starts `pss-operator run` with `kubeconfig`, its server on a free loopback port, output to
/// `log`, `POD_NAME` = `identity`, and `extra` arguments; plus a watchdog that stops it (and deletes
/// `delete_on_exit`) once this test process is gone.
pub fn spawn_operator(
    kubeconfig: &std::path::Path,
    log: &std::path::Path,
    identity: &str,
    extra: &[&str],
    delete_on_exit: Option<&std::path::Path>,
) -> Result<Spawned> {
    let port = free_port()?;
    let metrics_addr = format!("127.0.0.1:{port}");
    let binary = env!("CARGO_BIN_EXE_pss-operator");
    let log_file = std::fs::File::create(log)?;
    let child = Command::new(binary)
        .args([
            "run",
            // Plain metrics on loopback: these tests read /metrics directly (the secure port is
            // tested by faults::metrics_auth and the observability e2e).
            "--metrics-secure=false",
            "--metrics-addr",
            &metrics_addr,
            "--operator-namespace",
            OPERATOR_NAMESPACE,
            "--log-format",
            "text",
        ])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("POD_NAME", identity)
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let pid = child.id();
    // Statics are never dropped: stop the operator once this test process is gone (checking the
    // pid still runs our binary, so a reused pid is never signalled), and delete the token.
    Command::new("sh")
        .args([
            "-c",
            r#"owner=$1 pid=$2 bin=$3
               while kill -0 "$owner" 2>/dev/null; do sleep 1; done
               [ -n "$4" ] && rm -f "$4"
               [ "$(readlink "/proc/$pid/exe")" = "$bin" ] || exit 0
               kill -TERM "$pid" 2>/dev/null; sleep 5
               [ "$(readlink "/proc/$pid/exe")" = "$bin" ] && kill -KILL "$pid" 2>/dev/null
               exit 0"#,
            "pss-operator-e2e-watchdog",
            &std::process::id().to_string(),
            &pid.to_string(),
            binary,
            &delete_on_exit
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the operator watchdog")?;
    Ok(Spawned {
        child,
        metrics_addr,
    })
}

fn http_get_sync(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_http(&raw)
}

/// GET `path` from the operator's server: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || http_get_sync(&addr, &path)).await?
}

/// (status code, body) of a raw HTTP/1.1 response, a chunked body put together.
pub fn parse_http(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP response: {text:?}"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status code in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((code, body.to_owned()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            break;
        }
        out.push_str(after.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
        rest = after.get(size + 2..).unwrap_or_default();
    }
    Ok((code, out))
}

impl Operator {
    /// Fails (with the log) when the process has exited.
    pub fn check_alive(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(status) = child.try_wait()? {
            bail!(
                "pss-operator exited ({status}); its log:\n{}",
                self.log_tail(80)
            );
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log lines mentioning `needle` (a test's tag), at most the last `max`.
    pub fn log_lines_with(&self, needle: &str, max: usize) -> String {
        let text = self.log_text();
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        hits[hits.len().saturating_sub(max)..].join("\n")
    }

    /// The parsed /metrics.
    pub async fn metrics(&self) -> Result<Metrics> {
        self.check_alive()?;
        let (code, body) = http_get(&self.metrics_addr, "/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}: {body}");
        Metrics::parse(&body)
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line).with_context(|| format!("metrics line {line:?}"))?);
        }
        Ok(Metrics(samples))
    }

    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn find<'a>(&'a self, name: &'a str, labels: &'a [(&'a str, &'a str)]) -> Vec<&'a Sample> {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with these labels; `None` when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        match found.as_slice() {
            [] => None,
            [one] => Some(one.value),
            _ => Some(found.iter().map(|s| s.value).sum()),
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let (n, r) = line.split_once(' ').ok_or_else(|| anyhow!("no value"))?;
            (n, r)
        }
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let end;
        loop {
            let Some((i, c)) = chars.next() else {
                bail!("unterminated labels");
            };
            match c {
                '}' => {
                    end = i;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    ensure!(
                        chars.next().map(|(_, c)| c) == Some('"'),
                        "label value quote"
                    );
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '"')) => break,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, other)) => value.push(other),
                                None => bail!("dangling escape"),
                            },
                            Some((_, other)) => value.push(other),
                            None => bail!("unterminated label value"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &body[end + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse()?,
    };
    Ok(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

/// One operator test: its tag, a client, and what it created (deleted when it passes).
pub struct OpTest {
    pub op: &'static Operator,
    pub client: Client,
    /// Unique per test; the value of [`TEST_LABEL`] on its namespaces, the prefix of its names.
    pub tag: String,
    namespaces: Mutex<Vec<String>>,
    profiles: Mutex<Vec<String>>,
}

/// Operator tests share the cluster and the operator; a test that starts operators of its own
/// (which act on every profile) takes this exclusively so no other operator test runs meanwhile.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Runs an operator test body. On failure the operator's log lines about this test (and the last
/// lines of the log) are printed, and what the test created is kept for inspection.
pub async fn run_test(test: &str, body: impl AsyncFnOnce(&OpTest) -> Result<()>) -> Result<()> {
    let _shared = EXCLUSIVE.read().await;
    run_test_inner(test, body).await
}

/// [`run_test`] with no other operator test running meanwhile.
pub async fn run_exclusive_test(
    test: &str,
    body: impl AsyncFnOnce(&OpTest) -> Result<()>,
) -> Result<()> {
    let _alone = EXCLUSIVE.write().await;
    run_test_inner(test, body).await
}

async fn run_test_inner(test: &str, body: impl AsyncFnOnce(&OpTest) -> Result<()>) -> Result<()> {
    let op = tokio::task::spawn_blocking(operator)
        .await
        .map_err(|e| anyhow!("starting the operator panicked: {e}"))?;
    let client = harness::client(op.cluster).await?;
    let t = OpTest {
        op,
        client,
        tag: unique_name(test),
        namespaces: Mutex::new(Vec::new()),
        profiles: Mutex::new(Vec::new()),
    };
    // A panicking assertion is a failure too: report it the same way, then let it go on.
    let result = match AssertUnwindSafe(body(&t)).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            t.report_failure();
            std::panic::resume_unwind(panic);
        }
    };
    match result {
        Ok(()) => {
            t.cleanup().await?;
            op.check_alive()?;
            // Every test also shows config/rbac is enough for what it made the operator do.
            let m = op.metrics().await?;
            let forbidden = m.find("pss_reconcile_errors_total", &[("error", "forbidden")]);
            ensure!(
                forbidden.is_empty(),
                "the operator (as its ServiceAccount) was refused calls: {forbidden:?}\n{}",
                op.log_lines_with("forbidden", 20)
            );
            Ok(())
        }
        Err(e) => {
            t.report_failure();
            Err(e.context(format!(
                "operator test {} failed (objects kept for inspection)",
                t.tag
            )))
        }
    }
}

impl OpTest {
    /// Prints the operator's log lines about this test and the end of its log.
    fn report_failure(&self) {
        let mut report = String::new();
        let _ = writeln!(
            report,
            "\n==== pss-operator log lines mentioning {} ====\n{}",
            self.tag,
            self.op.log_lines_with(&self.tag, 200)
        );
        let _ = writeln!(
            report,
            "==== last 40 lines of the pss-operator log ({}) ====\n{}",
            self.op.log.display(),
            self.op.log_tail(40)
        );
        eprintln!("{report}");
    }

    /// `<tag>-<suffix>`, a name owned by this test.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.tag)
    }

    pub fn profiles(&self) -> Api<PodSecurityProfile> {
        Api::all(self.client.clone())
    }

    pub fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    /// The operator's ledger annotation on `ns` (`pss-operator.io/applied`), if any.
    pub async fn ledger(&self, ns: &str) -> Result<Option<String>> {
        Ok(self
            .namespaces()
            .get(ns)
            .await?
            .metadata
            .annotations
            .unwrap_or_default()
            .get(pss_operator::operator::record::ANNOTATION)
            .cloned())
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates namespace `<tag>-<suffix>` labelled with the test tag and `labels`, and waits for
    /// its `default` ServiceAccount (Pods are refused before it exists).
    pub async fn namespace(&self, suffix: &str, labels: &[(&str, &str)]) -> Result<String> {
        let name = self.name(suffix);
        let mut all: Vec<(&str, &str)> = vec![(TEST_LABEL, self.tag.as_str())];
        all.extend_from_slice(labels);
        harness::create_namespace(&self.client, &name, &all).await?;
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        harness::wait_for_default_service_account(&self.client, &name).await?;
        Ok(name)
    }

    /// Creates profile `<tag>-<suffix>` with this spec.
    pub async fn profile(&self, suffix: &str, spec: PodSecurityProfileSpec) -> Result<String> {
        let name = self.name(suffix);
        let profile = PodSecurityProfile::new(&name, spec);
        self.profiles()
            .create(&PostParams::default(), &profile)
            .await
            .with_context(|| format!("creating profile {name}"))?;
        self.profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        Ok(name)
    }

    /// A profile spec from JSON (camelCase, as in YAML) selecting this test's namespaces with
    /// `extra` selector labels; `spec` must not set `namespaceSelector`.
    pub fn spec(&self, extra: &[(&str, &str)], spec: Value) -> Result<PodSecurityProfileSpec> {
        let mut labels: BTreeMap<&str, &str> = extra.iter().copied().collect();
        labels.insert(TEST_LABEL, &self.tag);
        let mut spec = spec;
        spec["namespaceSelector"] = json!({ "matchLabels": labels });
        serde_json::from_value(spec).context("profile spec")
    }

    pub async fn labels(&self, ns: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .namespaces()
            .get(ns)
            .await
            .with_context(|| format!("reading namespace {ns}"))?
            .metadata
            .labels
            .unwrap_or_default())
    }

    /// Waits until namespace `ns` carries every pair of `want` (and none of `absent`).
    pub async fn wait_labels(
        &self,
        ns: &str,
        want: &[(&str, &str)],
        absent: &[&str],
    ) -> Result<BTreeMap<String, String>> {
        let what = format!("namespace {ns} labels {want:?} without {absent:?}");
        eventually(&what, EVENTUALLY, || async {
            let labels = self.labels(ns).await?;
            let ok = want
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
                && absent.iter().all(|k| !labels.contains_key(*k));
            Ok(ok.then_some(labels))
        })
        .await
        .map_err(|e| self.context(e, ns))
    }

    /// Adds the namespace's current labels to an error, to see what it was left with.
    fn context(&self, e: anyhow::Error, ns: &str) -> anyhow::Error {
        e.context(format!("(namespace {ns})"))
    }

    pub async fn get_profile(&self, name: &str) -> Result<PodSecurityProfile> {
        self.profiles()
            .get(name)
            .await
            .with_context(|| format!("reading profile {name}"))
    }

    /// Waits until the profile's status satisfies `ok` (for the current generation).
    pub async fn wait_status<F>(&self, name: &str, what: &str, ok: F) -> Result<PodSecurityProfile>
    where
        F: Fn(&PodSecurityProfile) -> bool,
    {
        let ok = &ok;
        let last: Mutex<Option<PodSecurityProfile>> = Mutex::new(None);
        let last = &last;
        let result = eventually(
            &format!("profile {name}: {what}"),
            EVENTUALLY,
            || async move {
                let p = self.get_profile(name).await?;
                let current =
                    p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation;
                let done = current && ok(&p);
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
                Ok(done.then_some(p))
            },
        )
        .await;
        result.map_err(|e| {
            let shown = last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|p| serde_json::to_string_pretty(&p.status).ok())
                .unwrap_or_default();
            e.context(format!("last status of {name}: {shown}"))
        })
    }

    /// Waits until /metrics satisfies `ok`; returns those metrics.
    pub async fn wait_metrics<F>(&self, what: &str, ok: F) -> Result<Metrics>
    where
        F: Fn(&Metrics) -> bool,
    {
        let ok = &ok;
        eventually(&format!("/metrics: {what}"), EVENTUALLY, || async move {
            let m = self.op.metrics().await?;
            Ok(ok(&m).then_some(m))
        })
        .await
    }

    /// Events (events.k8s.io/v1) about namespace `ns` with `reason`.
    pub async fn events(&self, ns: &str, reason: &str) -> Result<Vec<Event>> {
        self.events_about(ns, "Namespace", ns, reason).await
    }

    /// The operator's Events with `reason` about profile `name`: cluster-scoped, so in `default`.
    pub async fn profile_events(&self, name: &str, reason: &str) -> Result<Vec<Event>> {
        self.events_about("default", "PodSecurityProfile", name, reason)
            .await
    }

    /// Events in namespace `in_ns` with `reason` about the object `kind`/`name`.
    async fn events_about(
        &self,
        in_ns: &str,
        kind: &str,
        name: &str,
        reason: &str,
    ) -> Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), in_ns);
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
            })
            .collect())
    }

    /// Changes namespace labels as a person would (`kubectl label --overwrite`): `Some` sets,
    /// `None` removes.
    pub async fn edit_labels(&self, ns: &str, changes: &[(&str, Option<&str>)]) -> Result<()> {
        let mut args = vec![
            "label".to_owned(),
            "--overwrite".into(),
            format!("namespace/{ns}"),
        ];
        for (k, v) in changes {
            args.push(match v {
                Some(v) => format!("{k}={v}"),
                None => format!("{k}-"),
            });
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = harness::kubectl(self.op.cluster, &args, "").await?;
        ensure!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// kubectl with the admin kubeconfig and `stdin`.
    pub async fn op_kubectl(&self, args: &[&str], stdin: &str) -> Result<std::process::Output> {
        harness::kubectl(self.op.cluster, args, stdin).await
    }

    /// Merge-patches a profile's spec.
    pub async fn patch_spec(&self, name: &str, spec: Value) -> Result<()> {
        self.profiles()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .with_context(|| format!("patching profile {name}"))?;
        Ok(())
    }

    /// Creates a Pod from its spec (JSON); returns its name.
    pub async fn pod(&self, ns: &str, name: &str, spec: Value) -> Result<String> {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))?;
        self.pods(ns)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {ns}/{name}"))?;
        Ok(name.to_owned())
    }

    /// Deletes a profile and waits until it is gone (finalizers included).
    pub async fn delete_profile(&self, name: &str) -> Result<()> {
        self.profiles()
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting profile {name}"))?;
        let api = self.profiles();
        eventually(
            &format!("profile {name} to be gone"),
            EVENTUALLY,
            || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
        )
        .await
    }

    async fn cleanup(&self) -> Result<()> {
        let profiles =
            std::mem::take(&mut *self.profiles.lock().unwrap_or_else(|p| p.into_inner()));
        for p in profiles {
            if self.profiles().get_opt(&p).await?.is_some() {
                self.profiles()
                    .delete(&p, &DeleteParams::default())
                    .await
                    .with_context(|| format!("deleting profile {p}"))?;
            }
        }
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|p| p.into_inner()));
        for ns in namespaces {
            if self.namespaces().get_opt(&ns).await?.is_some() {
                harness::delete_namespace(&self.client, &ns).await?;
            }
        }
        Ok(())
    }
}

/// A container that breaks baseline: `securityContext.privileged: true`.
pub fn privileged_container(name: &str) -> Value {
    json!({"name": name, "image": "nginx:1.27", "securityContext": {"privileged": true}})
}

/// A Pod spec that passes baseline but breaks restricted (no securityContext at all).
pub fn baseline_pod() -> Value {
    json!({"containers": [{"name": "app", "image": "busybox:1.37"}]})
}

/// A Pod spec that passes restricted.
pub fn restricted_pod() -> Value {
    json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "app", "image": "busybox:1.37",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
        }],
    })
}

/// Our evaluator's verdict on the stored Pod `ns/name` at `level:latest`: (failed check ids,
/// denial message).
pub async fn evaluate_stored(
    t: &OpTest,
    ns: &str,
    name: &str,
    level: pss_operator::pss::Level,
) -> Result<(Vec<String>, String)> {
    use pss_operator::pss::{self, LevelVersion, Version};
    let pod = t.pods(ns).get(name).await?;
    let model: pss::model::Pod = serde_json::from_value(serde_json::to_value(&pod)?)
        .with_context(|| format!("the evaluator's model cannot read pod {ns}/{name}"))?;
    // As the server it runs on evaluates it (`latest` is its own version).
    let kube = crate::harness::server_version(&t.client).await?;
    let eval = pss::evaluate_on(
        kube,
        &model.metadata,
        &model.spec,
        LevelVersion::new(level, Version::Latest),
    );
    Ok((
        eval.failed_checks().map(|c| c.to_string()).collect(),
        eval.denial_message(),
    ))
}

/// The operator's managedFields entry on a namespace: (operation, fieldsV1).
pub fn manager_entries(ns: &Namespace) -> Vec<(String, String, Value)> {
    ns.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|f| {
            (
                f.manager.clone().unwrap_or_default(),
                f.operation.clone().unwrap_or_default(),
                f.fields_v1
                    .as_ref()
                    .map(|v| v.0.clone())
                    .unwrap_or(Value::Null),
            )
        })
        .collect()
}
