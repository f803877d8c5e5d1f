//! The control plane the end-to-end tests run against, and a fresh namespace per test.
//!
//! By default the first test to ask starts ONE private control plane for the whole test binary
//! (`e2e/scripts/cluster-up.sh` with a temporary `PSS_CLUSTER_DIR`). The script's watchdog
//! (`PSS_CLUSTER_OWNER_PID` = this process) stops it and deletes its folder as soon as this process
//! exits, however it exits (pass, fail, panic, abort, SIGKILL), so no etcd or kube-apiserver outlives
//! `cargo test`.
//!
//! `PSS_E2E_USE_KUBECONFIG=1` runs against the existing cluster `KUBECONFIG` points at instead
//! (kind, EKS, or `make cluster-up`). It is an explicit opt-in so a developer's everyday `KUBECONFIG`
//! is never used by accident. kubectl is then `PSS_E2E_KUBECTL`, else `kubectl` on `PATH`.
//!
//! When the control plane cannot be started every test fails with the reason; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a file shipped in the repository, e.g. `examples/seed/namespace-app.yaml`.
pub fn repo_file(relative: &str) -> Result<String> {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[derive(Debug)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The shared control plane, started on first use. Panics (failing the calling test) with the
/// reason when it cannot be started or found; every later caller sees the same failure.
pub fn cluster() -> &'static Cluster {
    cluster_with(None)
}

/// [`cluster`], its kube-apiserver started with these extra flags if this call starts it (the
/// first caller's flags count; the fault tests pass an audit policy).
pub fn cluster_with(apiserver_extra: Option<String>) -> &'static Cluster {
    match CLUSTER.get_or_init(|| connect_or_start(apiserver_extra).map_err(|e| format!("{e:#}"))) {
        Ok(cluster) => cluster,
        Err(reason) => panic!("no Kubernetes control plane for the e2e tests: {reason}"),
    }
}

static ADMISSION_CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// A second private control plane whose kube-apiserver runs with this PodSecurity admission
/// configuration (`--admission-control-config-file`), started on first use (the first caller's
/// configuration counts). It needs a private control plane: with `PSS_E2E_USE_KUBECONFIG=1` the
/// caller fails, saying so.
pub fn admission_cluster(config: &str) -> &'static Cluster {
    let started = ADMISSION_CLUSTER.get_or_init(|| {
        if std::env::var("PSS_E2E_USE_KUBECONFIG").as_deref() == Ok("1") {
            return Err("this test starts a kube-apiserver with its own admission configuration: it cannot run on PSS_E2E_USE_KUBECONFIG's cluster".to_owned());
        }
        let dir = tempfile::Builder::new()
            .prefix("pss-e2e-admission-")
            .tempdir()
            .map(|d| d.keep())
            .map_err(|e| format!("creating a folder for the admission configuration: {e}"))?;
        let file = dir.join("admission.yaml");
        std::fs::write(&file, config).map_err(|e| format!("writing {}: {e}", file.display()))?;
        start_private(Some(format!(
            "--admission-control-config-file={}",
            file.display()
        )))
        .map_err(|e| format!("{e:#}"))
    });
    match started {
        Ok(cluster) => cluster,
        Err(reason) => panic!("no control plane with the admission configuration: {reason}"),
    }
}

fn connect_or_start(apiserver_extra: Option<String>) -> Result<Cluster> {
    if std::env::var("PSS_E2E_USE_KUBECONFIG").as_deref() == Ok("1") {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("PSS_E2E_USE_KUBECONFIG=1 but KUBECONFIG is not set"))?;
        let kubectl = std::env::var_os("PSS_E2E_KUBECTL").unwrap_or_else(|| "kubectl".into());
        eprintln!(
            "e2e: using the existing cluster from KUBECONFIG={}",
            kubeconfig.to_string_lossy()
        );
        return Ok(Cluster {
            kubeconfig: kubeconfig.into(),
            kubectl: kubectl.into(),
        });
    }

    start_private(apiserver_extra)
}

/// Starts a private control plane (`cluster-up.sh`), with extra kube-apiserver flags if given.
fn start_private(apiserver_extra: Option<String>) -> Result<Cluster> {
    // An empty folder of our own; cluster-up.sh fills it, the watchdog's cluster-down.sh removes it.
    let dir = tempfile::Builder::new()
        .prefix("pss-e2e-cluster-")
        .tempdir()
        .context("creating a temporary state folder for the private control plane")?
        .keep();
    let script = repo_root().join("e2e/scripts/cluster-up.sh");
    eprintln!(
        "e2e: starting a private control plane in {} (progress below; a first run builds the binaries)",
        dir.display()
    );
    let started = Instant::now();
    // stderr is inherited so progress (and, on failure, the failing component's log tail) shows
    // up even though libtest captures the tests' own output.
    let mut command = Command::new("bash");
    if let Some(extra) = apiserver_extra {
        command.env("PSS_APISERVER_EXTRA_ARGS", extra);
    }
    let output = command
        .arg(&script)
        .env("PSS_CLUSTER_DIR", &dir)
        .env("PSS_CLUSTER_OWNER_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); its messages are above and the component logs are in {}/logs",
            script.display(),
            output.status,
            dir.display()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let kubeconfig = PathBuf::from(
        stdout
            .lines()
            .last()
            .ok_or_else(|| anyhow!("{} printed no kubeconfig path", script.display()))?,
    );
    eprintln!(
        "e2e: private control plane ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(Cluster {
        kubeconfig,
        kubectl: dir.join("bin/kubectl"),
    })
}

/// One test's view of the cluster: a client and a namespace nobody else uses.
pub struct TestEnv {
    pub cluster: &'static Cluster,
    pub client: Client,
    pub namespace: String,
}

impl TestEnv {
    /// Connects and creates a fresh namespace named after the test, with these labels.
    pub async fn new(test: &str, labels: &[(&str, &str)]) -> Result<Self> {
        let cluster = tokio::task::spawn_blocking(cluster)
            .await
            .map_err(|e| anyhow!("starting the control plane panicked: {e}"))?;
        let client = client(cluster).await?;
        let namespace = unique_name(test);
        create_namespace(&client, &namespace, labels).await?;
        wait_for_default_service_account(&client, &namespace).await?;
        Ok(TestEnv {
            cluster,
            client,
            namespace,
        })
    }

    /// Runs kubectl against the test cluster with `stdin` as standard input.
    pub async fn kubectl(&self, args: &[&str], stdin: &str) -> Result<Output> {
        kubectl(self.cluster, args, stdin).await
    }

    /// Deletes the test namespace (and with it everything the test created). Only called when a
    /// test passes: a failed test leaves its namespace for inspection on a shared cluster.
    pub async fn cleanup(self) -> Result<()> {
        delete_namespace(&self.client, &self.namespace).await
    }
}

pub async fn client(cluster: &Cluster) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", cluster.kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", cluster.kubeconfig.display()))?;
    Client::try_from(config).context("building the Kubernetes client")
}

/// A DNS-label name unique across tests, test runs and machines sharing a cluster:
/// `e2e-<test>-<pid>-<counter>-<time>`.
pub fn unique_name(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or_default();
    let mut prefix: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    prefix = prefix.trim_matches('-').to_string();
    format!("e2e-{prefix}-{}-{n}-{t}", std::process::id())
}

pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) -> Result<()> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_string());
    ns.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// kube-controller-manager creates ServiceAccount `default` in a new namespace shortly after the
/// namespace; until then the ServiceAccount admission plugin rejects every Pod there ("error looking
/// up service account"), which would be the sticky first ReplicaFailure message of a ReplicaSet.
pub async fn wait_for_default_service_account(client: &Client, namespace: &str) -> Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("ServiceAccount {namespace}/default"),
        Duration::from_secs(120),
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?.map(|_| ())) }
        },
    )
    .await
}

pub async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting namespace {name}"))?;
    Ok(())
}

pub async fn kubectl(cluster: &'static Cluster, args: &[&str], stdin: &str) -> Result<Output> {
    use std::io::Write as _;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} {}", cluster.kubectl.display(), args.join(" ")))?;
        // Manifests are far below a pipe buffer, so writing before reading cannot deadlock.
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(stdin.as_bytes())?;
        Ok(child.wait_with_output()?)
    })
    .await?
}

/// Polls `probe` until it returns `Some`, guarding against a hang: gives up with `what` after
/// `limit`. This is not a timing assertion; the limit is far above what any step needs.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("gave up after {}s waiting for {what}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API server's Kubernetes version, as the operator reads it.
pub async fn server_version(client: &Client) -> Result<pss_operator::pss::KubeVersion> {
    let info = client.apiserver_version().await?;
    pss_operator::pss::KubeVersion::from_server(&info.major, &info.minor, &info.git_version)
        .map_err(|e| anyhow!(e))
}
