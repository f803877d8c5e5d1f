//! The I/O edge: the tasks that connect the pure core to the API server. Follow a label from a
//! profile to the server and back:
//! - [`watch`]: profiles and namespaces into their stores, Pods into the Pod index, workload
//!   templates into the template index; each event
//!   marks the namespaces whose inputs changed and wakes the pass;
//! - [`pass`]: re-plans those namespaces (all of them after a relist, a profile change, after a
//!   minute with nothing to do, or every five minutes while events keep coming) and queues the
//!   label writes that differ ([`crate::operator::labels`] decides them);
//!   it never waits for a write, and starts labelling before the Pods are listed;
//! - [`writer`]: applies the label writes, 32 in flight, and books each answer as it lands
//!   (ledger, drift count, Events);
//! - [`reporter`]: publishes metrics and writes changed statuses from the latest pass's picture,
//!   at most every 250 ms, computing them on a blocking thread;
//! - [`reports`]: with `--reports`, the policy report of each governed namespace, written when
//!   its content changed;
//! - [`events`]: Events are posted in the background; [`finalizer`]: our finalizer on `Remove`
//!   profiles; [`context`]: what the tasks share. A heartbeat fences writes after a standstill;
//!   the client's write gate refuses every write the fence does not allow.
//!
//! Why one global pass rather than a per-object `Controller`: who governs a namespace depends on
//! every profile (priorities, ties), and a profile's status depends on every namespace and Pod it
//! governs, so per-object reconcilers would each need the whole picture anyway and would race on
//! it. The pass keeps the plans of all namespaces and re-plans from the stores only what changed
//! (pure and cheap: all 2,000 namespaces with 50k Pods take ~5 ms, `cargo bench --bench
//! reconcile`), and only writes what differs, so it stays idempotent; wake-ups are coalesced.

mod context;
mod events;
mod finalizer;
#[cfg(test)]
mod fixtures;
mod lists;
mod namespace_store;
mod pass;
mod reporter;
mod reports;
mod version;
mod watch;
mod writer;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::reflector;
use tracing::warn;

pub use crate::operator::MANAGER;
pub use context::Config;
pub use lists::InitialLists;

use crate::operator::crd::PodSecurityProfile;
use crate::operator::error::{Error, Result};
use crate::operator::metrics::Metrics;
use crate::operator::workloads::{
    WatchedCronJob, WatchedDaemonSet, WatchedDeployment, WatchedJob, WatchedReplicaSet,
    WatchedReplicationController, WatchedStatefulSet,
};
use context::Context;

/// Runs until a watch ends for good (it does not: watches retry with backoff) or the future is
/// dropped. `ready` turns true after the first complete pass.
pub async fn run(
    client: Client,
    mut config: Config,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> Result<()> {
    // Metadata only: a profile that no longer deserializes must not stop the start.
    Api::<PodSecurityProfile>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(|e| match e {
            kube::Error::Api(ref s) if s.code == 404 => Error::CrdNotInstalled(e),
            e => Error::Kube(e),
        })?;

    // Every verdict depends on what `latest` means on this server.
    let kube = version::first(&client).await;
    config.initial_lists = match lists::resolve(&client, config.initial_lists).await {
        true => InitialLists::Streaming,
        false => InitialLists::Paginated,
    };
    let (profiles, profiles_writer) = reflector::store();
    let (namespaces, namespaces_writer) = reflector::store();
    let (ctx, receivers) = Context::new(client, config, metrics, ready, profiles, namespaces);
    let ctx = Arc::new(ctx);
    version::adopt(&ctx, kube).await;

    // Separate tasks, so the pass, the reporter and the decoding of watch events use both cores
    // instead of taking turns in one task. Dropping the set (leadership lost) aborts them all.
    let mut tasks = tokio::task::JoinSet::new();
    let c = ctx.clone();
    tasks.spawn(async move {
        watch::profiles(c, profiles_writer).await;
        warn!("profile watch ended");
    });
    let c = ctx.clone();
    tasks.spawn(async move {
        watch::namespaces(c, namespaces_writer).await;
        warn!("namespace watch ended");
    });
    let c = ctx.clone();
    tasks.spawn(async move {
        watch::pods(c).await;
        warn!("pod watch ended");
    });
    tasks.spawn(watch::workloads::<WatchedCronJob>(ctx.clone()));
    tasks.spawn(watch::workloads::<WatchedDaemonSet>(ctx.clone()));
    tasks.spawn(watch::workloads::<WatchedDeployment>(ctx.clone()));
    tasks.spawn(watch::workloads::<WatchedJob>(ctx.clone()));
    tasks.spawn(watch::workloads::<WatchedReplicaSet>(ctx.clone()));
    tasks.spawn(watch::workloads::<WatchedReplicationController>(
        ctx.clone(),
    ));
    tasks.spawn(watch::workloads::<WatchedStatefulSet>(ctx.clone()));
    tasks.spawn(watch::refusals(ctx.clone()));
    tasks.spawn(version::follow(ctx.clone(), kube));
    tasks.spawn(pass::pass_loop(ctx.clone()));
    tasks.spawn(reporter::report_loop(ctx.clone(), receivers.pictures));
    tasks.spawn(writer::label_writer(ctx.clone(), receivers.writes));
    if ctx.config.reports != crate::operator::reports::Wanted::Off {
        tasks.spawn(reports::report_loop(ctx.clone(), ctx.config.reports));
    }
    tasks.spawn(events::post(ctx.clone(), receivers.events));
    let c = ctx.clone();
    tasks.spawn(async move { c.fence.heartbeat().await });
    if let Some(Err(e)) = tasks.join_next().await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    ctx.fence.check_standstill()
}
