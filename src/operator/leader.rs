//! Leader election on a `coordination.k8s.io` Lease: of several replicas exactly one runs the
//! controller; the others serve `/healthz`, `/readyz` and `/metrics` and wait.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::error::{Error, Result};

/// Leader Lease duration and how long before its expiry the leader renews it (seconds).
const LEASE_DURATION: u64 = 15;
const LEASE_GRACE: u64 = 5;

/// The longest standstill after which the Lease may still be ours (see
/// [`super::fence::Fence`]): it is renewed `LEASE_GRACE` seconds before it expires, so a
/// standstill shorter than that cannot have let it expire.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(LEASE_GRACE - 1);

/// How long after a renewal (or acquisition) was sent, answered with us as holder, this replica
/// may write (see [`super::fence::Fence`]): the lease duration less 2 s for clock skew between
/// replicas and the requests in flight. A standby takes the Lease at the earliest one lease
/// duration after the last renewal; renewals come every `LEASE_DURATION - LEASE_GRACE` seconds,
/// leaving 3 s for a renewal to be answered before writes wait for it.
pub const WRITE_VALIDITY: Duration = Duration::from_secs(LEASE_DURATION - 2);

/// This replica's part in the election.
pub struct Leadership {
    lease: String,
    leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Leadership {
    /// Joins the election for the Lease `lease` in `namespace` as `identity`. `client` is the
    /// election's own, ungated client; its renewals confirm the fence when built with
    /// [`super::gate::LeaseWatchLayer`].
    pub async fn join(
        client: Client,
        lease: &str,
        namespace: String,
        identity: &str,
    ) -> Result<Leadership> {
        let manager = LeaseManagerBuilder::new(client, lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_DURATION)
            .with_grace(LEASE_GRACE)
            // One field manager per replica: the library takes a free Lease by server-side
            // apply and relies on a conflict between distinct managers; a shared manager let two
            // replicas starting together both win.
            .with_field_manager(format!("pss-operator-leader-election-{identity}"))
            .build()
            .await
            .map_err(Error::Lease)?;
        let (leader, task) = manager.watch().await;
        Ok(Leadership {
            lease: lease.to_owned(),
            leader,
            task,
        })
    }

    /// Waits for the Lease, then runs `work` until it ends or the Lease is lost. A standby is
    /// ready (rollouts must not hang on it); the leader is ready again once `work` says so.
    pub async fn lead(
        &mut self,
        ready: &AtomicBool,
        work: impl Future<Output = Result<()>>,
    ) -> Result<()> {
        ready.store(true, Ordering::Relaxed);
        info!(lease = %self.lease, "waiting for the leader lease");
        while !*self.leader.borrow_and_update() {
            if self.leader.changed().await.is_err() {
                return Err(Error::LeadershipLost);
            }
        }
        info!("became leader");
        ready.store(false, Ordering::Relaxed);
        let leader = &mut self.leader;
        let lost = async {
            loop {
                if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            r = work => r,
            _ = lost => Err(Error::LeadershipLost),
        }
    }

    /// Gives the Lease up (holder cleared), so no replica believes we still lead; a standby
    /// takes it at its next check, within one lease duration.
    pub async fn release(self) {
        drop(self.leader);
        match tokio::time::timeout(Duration::from_secs(3), self.task).await {
            Ok(Ok(Ok(_))) => info!("leader lease released"),
            Ok(Ok(Err(e))) => warn!(error = %e, "releasing the leader lease"),
            _ => warn!("the leader lease was not released in time; it expires on its own"),
        }
    }
}
