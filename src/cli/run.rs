//! `pss-operator run`: the operator against the cluster of the current kubeconfig (or the
//! in-cluster ServiceAccount).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Args, ValueEnum};
use kube::client::ClientBuilder;
use tracing::{error, info, warn};

use crate::operator::controller::{self, Config, InitialLists};
use crate::operator::desired::Exclusions;
use crate::operator::error::Error;
use crate::operator::fence::Fence;
use crate::operator::gate::{LeaseWatchLayer, WriteGateLayer};
use crate::operator::leader::{self, Leadership};
use crate::operator::metrics::Metrics;
use crate::operator::reports::{Format, Wanted};
use crate::operator::server::tls::CertSource;
use crate::operator::{Result, server};
use crate::pss::AdmissionConfig;

/// The health address of the secure mode when none is given.
pub const DEFAULT_HEALTH_ADDR: &str = "0.0.0.0:8081";
/// The metrics Service of `config/manager`: a name the self-signed certificate carries.
pub const METRICS_SERVICE: &str = "pss-operator-metrics";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitialListsArg {
    Auto,
    Streaming,
    Paginated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address serving /metrics: HTTPS for authorized readers by default; with
    /// --metrics-secure=false plain HTTP (and /healthz, /readyz too unless --health-addr is given).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub metrics_addr: SocketAddr,

    /// Serve /metrics over TLS, each request authenticated (TokenReview) and authorized
    /// (SubjectAccessReview: `get` on the non-resource URL /metrics, e.g. the ClusterRole
    /// pss-operator-metrics-reader). `--metrics-secure=false`: plain HTTP, no authentication, for a
    /// laptop (`make run`).
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub metrics_secure: bool,

    /// A folder with `tls.crt` and `tls.key` (PEM; a mounted kubernetes.io/tls Secret, e.g.
    /// cert-manager's) for the metrics port, read again when they change. Without it a
    /// self-signed certificate is made at start.
    #[arg(long, value_name = "DIR")]
    pub metrics_cert_dir: Option<PathBuf>,

    /// Address serving /healthz and /readyz in plain HTTP (for the kubelet's probes). Default:
    /// 0.0.0.0:8081 with --metrics-secure, else the metrics address.
    #[arg(long)]
    pub health_addr: Option<SocketAddr>,

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

    /// How the watches fetch their initial lists: `streaming` (WatchList: sendInitialEvents,
    /// served from the API server's watch cache), `paginated` (LIST in pages of 500), or `auto`:
    /// streaming where the server supports it (asked once at start), else paginated.
    #[arg(long, value_enum, default_value = "auto")]
    pub initial_lists: InitialListsArg,

    /// Name of the leader election Lease (in --operator-namespace, else `default`).
    #[arg(long, default_value = "pss-operator-leader")]
    pub lease_name: String,

    /// Write a policy report per governed namespace: `openreports` (openreports.io Report),
    /// `policyreport` (wgpolicyk8s.io PolicyReport), `auto` (the first of those the API server
    /// serves), `off`. Needs the CRD and RBAC of config/reports (Helm: reports.enabled).
    #[arg(long, value_enum, default_value = "off")]
    pub reports: ReportsFlag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportsFlag {
    Off,
    Auto,
    Openreports,
    Policyreport,
}

impl From<ReportsFlag> for Wanted {
    fn from(f: ReportsFlag) -> Wanted {
        match f {
            ReportsFlag::Off => Wanted::Off,
            ReportsFlag::Auto => Wanted::Auto,
            ReportsFlag::Openreports => Wanted::Only(Format::OpenReports),
            ReportsFlag::Policyreport => Wanted::Only(Format::PolicyReport),
        }
    }
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
    // The first line of every log says which build it is.
    info!(
        version = super::VERSION,
        commit = super::COMMIT,
        "pss-operator {}",
        super::LONG_VERSION
    );
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

/// The server options the flags ask for; an error names the flags that do not go together.
pub fn server_options(args: &RunArgs, hostname: &str) -> Result<server::Options> {
    if !args.metrics_secure && args.metrics_cert_dir.is_some() {
        return Err(Error::Flags(
            "--metrics-cert-dir needs --metrics-secure=true (plain HTTP uses no certificate)"
                .into(),
        ));
    }
    let tls = args.metrics_secure.then(|| match &args.metrics_cert_dir {
        Some(dir) => CertSource::Dir(dir.clone()),
        None => CertSource::SelfSigned(self_signed_names(
            args.operator_namespace.as_deref(),
            hostname,
        )),
    });
    let health_addr = match (args.health_addr, args.metrics_secure) {
        (Some(addr), _) => Some(addr),
        (None, true) => Some(DEFAULT_HEALTH_ADDR.parse().map_err(|e| {
            Error::Flags(format!("default health address {DEFAULT_HEALTH_ADDR}: {e}"))
        })?),
        (None, false) => None,
    };
    Ok(server::Options {
        metrics_addr: args.metrics_addr,
        tls,
        health_addr,
    })
}

/// What the self-signed certificate is made for: loopback, the Pod's host name, and the metrics
/// Service's DNS names in the operator's namespace.
pub fn self_signed_names(namespace: Option<&str>, hostname: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !hostname.is_empty()
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        names.push(hostname.to_owned());
    }
    if let Some(ns) = namespace.filter(|ns| !ns.is_empty()) {
        for suffix in ["", ".svc", ".svc.cluster.local"] {
            names.push(format!("{METRICS_SERVICE}.{ns}{suffix}"));
        }
    }
    names
}

async fn operate(args: RunArgs) -> Result<()> {
    // Flags and certificate first: a wrong --metrics-cert-dir stops the operator at once.
    let serving = server::prepare(server_options(&args, &identity())?)?;
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
    metrics.build_info(super::VERSION, super::COMMIT);
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
        initial_lists: match args.initial_lists {
            InitialListsArg::Auto => InitialLists::Auto,
            InitialListsArg::Streaming => InitialLists::Streaming,
            InitialListsArg::Paginated => InitialLists::Paginated,
        },
        reports: args.reports.into(),
    };

    let server = server::serve(serving, metrics.clone(), ready.clone(), client.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn options(args: &[&str]) -> Result<server::Options> {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .map_err(|e| Error::Flags(e.to_string()))?;
        server_options(&cli.run, "pss-operator-abc")
    }

    #[test]
    fn secure_by_default_with_health_on_its_own_port() {
        let o = options(&["--operator-namespace", "pss-system"]).expect("options");
        assert_eq!(o.metrics_addr.to_string(), "0.0.0.0:8443");
        assert_eq!(
            o.health_addr.map(|a| a.to_string()).as_deref(),
            Some("0.0.0.0:8081")
        );
        match o.tls {
            Some(CertSource::SelfSigned(names)) => {
                assert!(names.contains(&"pss-operator-metrics.pss-system.svc".to_owned()));
                assert!(names.contains(&"pss-operator-abc".to_owned()));
                assert!(names.contains(&"localhost".to_owned()));
            }
            other => panic!("self-signed expected, got {other:?}"),
        }
        let o = options(&["--metrics-secure", "--metrics-cert-dir", "/certs"]).expect("options");
        assert!(matches!(o.tls, Some(CertSource::Dir(d)) if d == std::path::Path::new("/certs")));
    }

    #[test]
    fn plain_mode_is_one_port_unless_told_otherwise() {
        let o = options(&["--metrics-secure=false", "--metrics-addr", "127.0.0.1:8080"])
            .expect("options");
        assert!(o.tls.is_none());
        assert_eq!(o.health_addr, None, "health on the metrics port");
        let o = options(&[
            "--metrics-secure",
            "false",
            "--health-addr",
            "127.0.0.1:9000",
        ])
        .expect("options");
        assert_eq!(o.health_addr.map(|a| a.port()), Some(9000));
    }

    #[test]
    fn contradictory_flags_are_named() {
        let err = options(&["--metrics-secure=false", "--metrics-cert-dir", "/certs"])
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("--metrics-cert-dir") && err.contains("--metrics-secure"),
            "{err}"
        );
        let err = options(&["--metrics-secure=maybe"])
            .expect_err("refused")
            .to_string();
        assert!(err.contains("maybe"), "{err}");
    }

    #[test]
    fn reports_are_off_unless_asked() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
                .map(|c| Wanted::from(c.run.reports))
        };
        assert_eq!(parse(&[]).expect("parses"), Wanted::Off);
        assert_eq!(parse(&["--reports", "auto"]).expect("parses"), Wanted::Auto);
        assert_eq!(
            parse(&["--reports=openreports"]).expect("parses"),
            Wanted::Only(Format::OpenReports)
        );
        assert_eq!(
            parse(&["--reports=policyreport"]).expect("parses"),
            Wanted::Only(Format::PolicyReport)
        );
        let err = parse(&["--reports=yes"]).expect_err("refused").to_string();
        assert!(
            err.contains("possible values: off, auto, openreports, policyreport"),
            "{err}"
        );
    }

    #[test]
    fn odd_host_names_are_left_out_of_the_certificate() {
        let names = self_signed_names(None, "bad name!");
        assert_eq!(names, ["localhost", "127.0.0.1", "::1"]);
    }
}
