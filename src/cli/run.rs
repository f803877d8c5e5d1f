//! `pss-operator run`: the operator against the cluster of the current kubeconfig (or the
//! in-cluster ServiceAccount).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, ValueEnum};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info, warn};

use crate::operator::controller::{self, Config};
use crate::operator::desired::Exclusions;

use crate::operator::metrics::Metrics;
use crate::operator::{Error, Result, server};

/// Leader Lease duration and how long before its expiry the leader renews it (seconds).
const LEASE_DURATION: u64 = 15;
const LEASE_GRACE: u64 = 5;

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

    /// Namespaces never labelled nor reported as unprotected (comma-separated). The operator's
    /// own namespace is always added.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub exclude_namespaces: Vec<String>,

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

async fn operate(args: RunArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let client = Client::try_default().await?;
    let exclusions = Exclusions::new(
        args.exclude_namespaces
            .iter()
            .cloned()
            .chain(args.operator_namespace.clone()),
    );
    let identity = identity();
    info!(%identity, leader_elect = args.leader_elect, "starting pss-operator");
    let config = Config {
        exclusions,
        identity: identity.clone(),
        // The Lease is renewed `LEASE_GRACE` seconds before it expires, so a standstill
        // shorter than that cannot have let it expire.
        pause_limit: args
            .leader_elect
            .then(|| std::time::Duration::from_secs(LEASE_GRACE - 1)),
    };

    let server = server::serve(args.metrics_addr, metrics.clone(), ready.clone());
    let mut lease = None;
    if args.leader_elect {
        // A standby replica is ready: it serves and waits (rollouts must not hang on it).
        ready.store(true, Ordering::Relaxed);
        let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(
                args.operator_namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            )
            .with_identity(&identity)
            .with_duration(LEASE_DURATION)
            .with_grace(LEASE_GRACE)
            // One field manager per replica: the library takes a free Lease by server-side
            // apply and relies on a conflict between distinct managers; a shared manager let two
            // replicas starting together both win.
            .with_field_manager(format!("pss-operator-leader-election-{identity}"))
            .build()
            .await
            .map_err(Error::Lease)?;
        lease = Some(manager.watch().await);
    }
    let work = async {
        let Some((leader, _)) = lease.as_mut() else {
            return controller::run(client, config, metrics, ready.clone()).await;
        };
        info!(lease = %args.lease_name, "waiting for the leader lease");
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return Err(Error::LeadershipLost);
            }
        }
        info!("became leader");
        ready.store(false, Ordering::Relaxed);
        let lost = async {
            loop {
                if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            r = controller::run(client, config, metrics, ready.clone()) => r,
            _ = lost => Err(Error::LeadershipLost),
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
    if let Some((leader, task)) = lease {
        // Closing the channel makes the lease task release the Lease (holder cleared), so no
        // replica believes we still lead; a standby takes it at its next check, within one lease
        // duration (15 s; measured 14.4 s in the e2e leader test).
        drop(leader);
        match tokio::time::timeout(std::time::Duration::from_secs(3), task).await {
            Ok(Ok(Ok(_))) => info!("leader lease released"),
            Ok(Ok(Err(e))) => warn!(error = %e, "releasing the leader lease"),
            _ => warn!("the leader lease was not released in time; it expires on its own"),
        }
    }
    result
}
