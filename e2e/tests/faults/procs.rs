//! The processes the fault tests break: `pss-operator run` replicas (started, signalled, killed
//! and restarted here) and the control plane's components (stopped and started again with the
//! exact command line `cluster-up.sh` recorded in `restart/<component>.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

use crate::harness::{self, Cluster};
use crate::support::{self, Metrics, OPERATOR_NAMESPACE, http_get};

/// The cluster with the CRD and `config/rbac` installed, and a ServiceAccount kubeconfig.
pub struct Env {
    pub cluster: &'static Cluster,
    /// The control plane's state folder (pid files, logs, restart scripts).
    pub state_dir: PathBuf,
    /// kubeconfig of `pss-system/pss-operator` (TokenRequest token, only `config/rbac`).
    pub sa_kubeconfig: PathBuf,
    /// Where operator logs go.
    pub dir: PathBuf,
    /// kube-apiserver's audit log: every write of the operator's ServiceAccount (see
    /// [`AUDIT_POLICY`]), with the user agent naming the replica that made it.
    pub audit_log: PathBuf,
}

/// The fault tests' audit policy: the write requests of the operator's ServiceAccount, at
/// Metadata level, once answered. What a replica wrote is then known from the API server itself,
/// not from the replica's own log.
pub const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [\"system:serviceaccount:pss-system:pss-operator\"]
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

/// One write the API server audited.
#[derive(Debug, Clone)]
pub struct Audited {
    /// When the API server received it (seconds since the epoch).
    pub received: f64,
    pub user_agent: String,
    pub verb: String,
    /// `resource[/subresource] namespace/name`.
    pub object: String,
    pub code: i64,
}

impl Env {
    /// The writes the API server audited whose user agent names `identity` (the operator sends
    /// `pss-operator/<version> (<identity>)`), received at or after `since`.
    pub fn audited_writes(&self, identity: &str, since: f64) -> Result<Vec<Audited>> {
        let text = std::fs::read_to_string(&self.audit_log)
            .with_context(|| format!("reading {}", self.audit_log.display()))?;
        let needle = format!("({identity})");
        let mut out = Vec::new();
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let agent = e["userAgent"].as_str().unwrap_or_default();
            if !agent.contains(&needle) {
                continue;
            }
            let Some(received) = e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map(|t| t.as_millisecond() as f64 / 1000.0)
            else {
                continue;
            };
            if received < since {
                continue;
            }
            let r = &e["objectRef"];
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or_default()),
                None => r["resource"].as_str().unwrap_or_default().to_owned(),
            };
            out.push(Audited {
                received,
                user_agent: agent.to_owned(),
                verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                object: format!(
                    "{resource} {}/{}",
                    r["namespace"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default()
                ),
                code: e["responseStatus"]["code"].as_i64().unwrap_or_default(),
            });
        }
        Ok(out)
    }
}

static ENV: OnceLock<Result<Env, String>> = OnceLock::new();

pub async fn env() -> Result<&'static Env> {
    let env = tokio::task::spawn_blocking(|| {
        ENV.get_or_init(|| setup().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("fault-test setup failed: {e}"))
    })
    .await??;
    Ok(env)
}

fn setup() -> Result<Env> {
    ensure!(
        std::env::var("PSS_E2E_USE_KUBECONFIG").as_deref() != Ok("1"),
        "the fault tests stop kube-apiserver and etcd: they need their private control plane, not \
         PSS_E2E_USE_KUBECONFIG=1 (run them with `cargo test --test faults` and it unset)"
    );
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY)?;
    let audit_log = dir.join("audit.log");
    let cluster = harness::cluster_with(Some(format!(
        "--audit-policy-file={} --audit-log-path={} --audit-log-format=json --audit-log-maxsize=500 --audit-log-maxbackup=1",
        policy.display(),
        audit_log.display()
    )));
    let state_dir = cluster
        .kubeconfig
        .parent()
        .ok_or_else(|| anyhow!("kubeconfig without a folder"))?
        .to_path_buf();
    ensure!(
        state_dir.join("restart/kube-apiserver.sh").is_file(),
        "{} has no restart scripts (cluster-up.sh writes restart/<component>.sh)",
        state_dir.display()
    );
    let sa_kubeconfig = support::install_as_service_account(cluster, &dir)?;
    Ok(Env {
        cluster,
        state_dir,
        sa_kubeconfig,
        dir,
        audit_log,
    })
}

impl Env {
    pub async fn admin(&self) -> Result<Client> {
        harness::client(self.cluster).await
    }

    pub async fn service_account(&self) -> Result<Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.sa_kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(Client::try_from(config)?)
    }

    fn component_pid(&self, name: &str) -> Result<u32> {
        let file = self.state_dir.join(format!("pids/{name}.pid"));
        let pid: u32 = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("pid in {}", file.display()))?;
        // The pid must still be our component (its argv holds the state folder).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        ensure!(
            String::from_utf8_lossy(&cmdline).contains(&*self.state_dir.to_string_lossy()),
            "{name} (pid {pid}) is not running"
        );
        Ok(pid)
    }

    /// Stops a control-plane component: SIGTERM to its process group, SIGKILL after 20 s.
    pub async fn stop_component(&self, name: &str) -> Result<()> {
        let pid = self.component_pid(name)?;
        eprintln!("faults: stopping {name} (pid {pid})");
        signal(&format!("-{pid}"), "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(pid) {
            if Instant::now() > deadline {
                signal(&format!("-{pid}"), "KILL")?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Starts a stopped component again with its recorded command line.
    pub async fn start_component(&self, name: &str) -> Result<()> {
        let script = self.state_dir.join(format!("restart/{name}.sh"));
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        ensure!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "faults: started {name} again (pid {})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        Ok(())
    }

    /// Waits until kube-apiserver serves reads from etcd again (namespace `default`).
    pub async fn wait_apiserver_ready(&self) -> Result<()> {
        let client = self.admin().await?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
        harness::eventually(
            "kube-apiserver serving again",
            Duration::from_secs(180),
            || {
                let namespaces = namespaces.clone();
                async move { Ok(namespaces.get("default").await.ok().map(|_| ())) }
            },
        )
        .await
    }

    /// The Lease `name` in the operator's namespace, if it exists.
    pub async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let leases: Api<Lease> = Api::namespaced(self.admin().await?, OPERATOR_NAMESPACE);
        Ok(leases.get_opt(name).await?)
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not reaped yet) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `kill -<sig> <target>` (target `-<pgid>` for a process group).
fn signal(target: &str, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "kill -{sig} {target} failed");
    Ok(())
}

/// How the operator serves its metrics.
#[derive(Debug, Clone, Default)]
pub enum Serving {
    /// `--metrics-secure=false`: /metrics, /healthz, /readyz in plain HTTP on one loopback port.
    #[default]
    Plain,
    /// The default: /metrics over TLS for authorized readers (certificate self-signed, or from
    /// `cert_dir`), /healthz and /readyz on a plain port of their own.
    Secure { cert_dir: Option<PathBuf> },
}

/// One `pss-operator run` process under test, running as the ServiceAccount. Killed when dropped.
pub struct OperatorProc {
    pub identity: String,
    /// `127.0.0.1:<port>` of /metrics (HTTPS in [`Serving::Secure`]).
    pub metrics_addr: String,
    /// `127.0.0.1:<port>` of /healthz and /readyz (plain HTTP).
    pub health_addr: String,
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl OperatorProc {
    /// Starts `pss-operator run` as `identity` (POD_NAME) with leader election on Lease `lease`
    /// (when given), debug logs of every write.
    pub fn start(env: &Env, identity: &str, lease: Option<&str>) -> Result<Self> {
        Self::start_serving(env, identity, lease, Serving::Plain)
    }

    /// [`OperatorProc::start`], serving metrics as `serving` says.
    pub fn start_serving(
        env: &Env,
        identity: &str,
        lease: Option<&str>,
        serving: Serving,
    ) -> Result<Self> {
        let port = support::free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let mut health_addr = metrics_addr.clone();
        let log = env.dir.join(format!("{identity}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let binary = env!("CARGO_BIN_EXE_pss-operator");
        let mut args = vec![
            "run".to_owned(),
            "--metrics-addr".into(),
            metrics_addr.clone(),
            "--operator-namespace".into(),
            OPERATOR_NAMESPACE.into(),
            "--log-format".into(),
            "text".into(),
        ];
        match &serving {
            // Plain metrics on loopback, read directly (faults::metrics_auth tests the secure port).
            Serving::Plain => args.push("--metrics-secure=false".into()),
            Serving::Secure { cert_dir } => {
                health_addr = format!("127.0.0.1:{}", support::free_port()?);
                args.extend(["--health-addr".into(), health_addr.clone()]);
                if let Some(dir) = cert_dir {
                    args.extend([
                        "--metrics-cert-dir".into(),
                        dir.to_string_lossy().into_owned(),
                    ]);
                }
            }
        }
        if let Some(lease) = lease {
            args.extend(["--leader-elect".into(), "--lease-name".into(), lease.into()]);
        }
        let child = Command::new(binary)
            .args(&args)
            .env("KUBECONFIG", &env.sa_kubeconfig)
            // Debug for our crate: every status write is logged ("status written"), so the
            // writes of each replica can be audited from its log.
            .env("RUST_LOG", "info,pss_operator=debug")
            .env("NO_COLOR", "1")
            .env("POD_NAME", identity)
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        watchdog(child.id(), binary)?;
        eprintln!(
            "faults: started pss-operator {identity} (pid {}), metrics {metrics_addr}, log {}",
            child.id(),
            log.display()
        );
        Ok(OperatorProc {
            identity: identity.to_owned(),
            metrics_addr,
            health_addr,
            log,
            child,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) -> Result<()> {
        eprintln!(
            "faults: SIG{sig} to pss-operator {} (pid {})",
            self.identity,
            self.pid()
        );
        signal(&self.pid().to_string(), sig)
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) -> Result<()> {
        self.signal("KILL")?;
        self.exited = Some(self.child.wait()?);
        Ok(())
    }

    /// Waits for the process to exit on its own (after a signal); fails after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "pss-operator {} still running {}s after being asked to stop; log tail:\n{}",
                    self.identity,
                    limit.as_secs(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails (with the log tail) when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exited = Some(status);
            bail!(
                "pss-operator {} exited ({status}); log tail:\n{}",
                self.identity,
                self.log_tail(60)
            );
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http_get(&self.metrics_addr, "/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}: {body}");
        Metrics::parse(&body)
    }

    /// Waits until /readyz answers 200 (after its first complete pass, or as a standby).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = http_get(&self.health_addr, "/readyz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pss-operator {} not ready after 120s; log tail:\n{}",
                    self.identity,
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for OperatorProc {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops `pid` once this test process is gone, however it goes (Drop does not run on SIGKILL).
fn watchdog(pid: u32, binary: &str) -> Result<()> {
    Command::new("sh")
        .args([
            "-c",
            r#"owner=$1 pid=$2 bin=$3
               while kill -0 "$owner" 2>/dev/null; do sleep 1; done
               [ "$(readlink "/proc/$pid/exe")" = "$bin" ] && kill -KILL "$pid" 2>/dev/null
               exit 0"#,
            "pss-operator-faults-watchdog",
            &std::process::id().to_string(),
            &pid.to_string(),
            binary,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the operator watchdog")?;
    Ok(())
}

/// The lines of an operator log that record a write to the cluster (labels, status, finalizers,
/// lease aside): the writes audited for "one writer at a time".
pub fn write_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            [
                "labels applied",
                "drift repaired",
                "status written",
                "finalizer updated",
                "labels removed",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect()
}

/// Seconds since the epoch at the start of a log line (`2026-11-26T23:59:01.123456Z ...`).
pub fn line_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let t: k8s_openapi::jiff::Timestamp = stamp.parse().ok()?;
    Some(t.as_millisecond() as f64 / 1000.0)
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
