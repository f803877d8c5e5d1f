//! `pss-operator run`: the operator against the cluster of the current kubeconfig (or the
//! in-cluster ServiceAccount).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Args, ValueEnum};
use kube::client::ClientBuilder;
use tracing::{error, info, warn};

use crate::operator::controller::{self, Config};
use crate::operator::desired::Exclusions;
use crate::operator::error::Error;
use crate::operator::fence::Fence;
use crate::operator::gate::{LeaseWatchLayer, WriteGateLayer};
use crate::operator::leader::{self, Leadership};
use crate::operator::metrics::Metrics;
use crate::operator::{Result, server};
use crate::pss::AdmissionConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// More namespaces never labelled nor reported as unprotected (comma-separated), besides
    /// kube-system, kube-public, kube-node-lease and the operator's own, which always are.
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,

    /// The cluster's PodSecurity admission configuration: the file given to kube-apiserver with
    /// --admission-control-config-file (a PodSecurityConfiguration, alone or inside an
    /// AdmissionConfiguration). Its defaults apply to unlabelled namespaces and its exempt
    /// namespaces and runtimeClasses are not evaluated. Without it: privileged defaults, no
    /// exemptions (kube-apiserver's own defaults).
    #[arg(long, value_name = "FILE")]
    pub admission_config: Option<std::path::PathBuf>,

    /// The namespace the operator runs in: excluded, and where the leader Lease lives.
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// Log format: `json` (one object per line, for log pipelines) or `text`. Levels and
    /// targets follow `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Run leader election on a coordination.k8s.io Lease: of several replicas exactly one writes.
    #[arg(long)]
    pub leader_elect: bool,

    /// Name of the leader election Lease (in --operator-namespace, else `default`).
    #[arg(long, default_value = "pss-operator-leader")]
    pub lease_name: String,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("pss-operator-{}", std::process::id()))
}

pub fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "starting the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(operate(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "pss-operator stopped");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reads the admission configuration file, or kube-apiserver's defaults without one. An invalid
/// file stops the start: the operator never runs on a half-read configuration.
pub fn load_admission_config(
    path: Option<&std::path::Path>,
) -> std::result::Result<AdmissionConfig, String> {
    let Some(path) = path else {
        return Ok(AdmissionConfig::default());
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
    let text = read(path).map_err(|e| format!("--admission-config {}: {e}", path.display()))?;
    AdmissionConfig::parse(&text, path, &read).map_err(|e| format!("--admission-config {e}"))
}

async fn operate(args: RunArgs) -> Result<()> {
    let admission =
        load_admission_config(args.admission_config.as_deref()).map_err(Error::Config)?;
    info!(
        defaults = %format!("enforce={} audit={} warn={}", admission.defaults.enforce, admission.defaults.audit, admission.defaults.warn),
        exempt_namespaces = admission.exemptions.namespaces.len(),
        exempt_runtime_classes = admission.exemptions.runtime_classes.len(),
        exempt_usernames = admission.exemptions.usernames.len(),
        "PodSecurity admission configuration"
    );
    let metrics = Arc::new(Metrics::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let exclusions = Exclusions::new(
        args.exclude_namespaces
            .iter()
            .cloned()
            .chain(args.operator_namespace.clone()),
    );
    let identity = identity();
    info!(%identity, leader_elect = args.leader_elect, "starting pss-operator");
    // With leader election, no write leaves this process unless the Lease was confirmed within
    // WRITE_VALIDITY and the process never stood still (src/operator/fence.rs).
    let fence = Arc::new(if args.leader_elect {
        Fence::new(Some(leader::PAUSE_LIMIT), Some(leader::WRITE_VALIDITY))
    } else {
        Fence::unfenced()
    });
    let lease_namespace = args
        .operator_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut kube_config = kube::Config::infer()
        .await
        .map_err(|e| Error::Kube(kube::Error::InferConfig(e)))?;
    // Which replica made a request, in the API server's audit log.
    if let Ok(agent) = http::HeaderValue::from_str(&format!(
        "pss-operator/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    )) {
        kube_config.headers.push((http::header::USER_AGENT, agent));
    }
    let lease_client = ClientBuilder::try_from(kube_config.clone())?
        .with_layer(&LeaseWatchLayer::new(
            fence.clone(),
            &lease_namespace,
            &args.lease_name,
            &identity,
        ))
        .build();
    // kube's retry layer would sit below the gate and resend without asking it: off; the
    // operator's own retries go through the gate.
    kube_config.default_retry = false;
    let client = ClientBuilder::try_from(kube_config)?
        .with_layer(&WriteGateLayer::new(fence.clone()))
        .build();
    let config = Config {
        exclusions,
        admission,
        identity: identity.clone(),
        fence,
    };

    let server = server::serve(args.metrics_addr, metrics.clone(), ready.clone());
    let mut leadership = None;
    if args.leader_elect {
        leadership = Some(
            Leadership::join(lease_client, &args.lease_name, lease_namespace, &identity).await?,
        );
    }
    let work = async {
        let controller = controller::run(client, config, metrics, ready.clone());
        match leadership.as_mut() {
            Some(l) => l.lead(&ready, controller).await,
            None => controller.await,
        }
    };
    let result = tokio::select! {
        r = server => r,
        r = work => r,
        _ = shutdown_signal() => {
            warn!("shutting down");
            Ok(())
        }
    };
    if let Some(l) = leadership {
        l.release().await;
    }
    result
}
