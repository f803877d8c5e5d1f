//! Leader election: two replicas with `--leader-elect` on one Lease, as the ServiceAccount (so the
//! leader-election Role of `config/rbac` is exercised): exactly one runs passes (and so writes), the
//! other is ready but idle; when the leader stops it releases the Lease and the other takes over.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;

use super::support::{
    ENFORCE, EVENTUALLY, Metrics, OPERATOR_NAMESPACE, OpTest, http_get, run_exclusive_test,
    spawn_operator,
};
use crate::harness::eventually;

/// A replica, killed (SIGKILL) when dropped if still running.
struct Replica {
    identity: String,
    child: Mutex<Child>,
    addr: String,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Replica {
    fn start(t: &OpTest, suffix: &str) -> Result<Replica> {
        let identity = t.name(suffix);
        let log = t.op.dir.join(format!("{identity}.log"));
        let spawned = spawn_operator(
            &t.op.kubeconfig,
            &log,
            &identity,
            &["--leader-elect", "--lease-name", &t.tag],
            None,
        )?;
        Ok(Replica {
            identity,
            child: Mutex::new(spawned.child),
            addr: spawned.metrics_addr,
            log,
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&self) -> Result<Option<ExitStatus>> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        Ok(child.try_wait()?)
    }

    fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    async fn metrics(&self) -> Result<Metrics> {
        if let Some(status) = self.exited()? {
            return Err(anyhow!(
                "replica {} exited ({status}):\n{}",
                self.identity,
                self.log_text()
            ));
        }
        let (code, body) = http_get(&self.addr, "/metrics").await?;
        anyhow::ensure!(code == 200, "/metrics answered {code}");
        Metrics::parse(&body)
    }

    /// Passes run so far (every write happens in a pass).
    async fn passes(&self) -> Result<f64> {
        Ok(self
            .metrics()
            .await?
            .value(
                "pss_reconcile_duration_seconds_count",
                &[("controller", "namespace")],
            )
            .unwrap_or(0.0))
    }

    async fn ready(&self) -> bool {
        matches!(http_get(&self.addr, "/readyz").await, Ok((200, _)))
    }

    fn terminate(&self) -> Result<()> {
        let pid = self.pid();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid}");
        Ok(())
    }

    /// Whether the replica has run a pass that covers namespace `ns`.
    async fn covers(&self, ns: &str) -> Result<bool> {
        let m = self.metrics().await?;
        Ok(!m
            .find("pss_namespace_level", &[("namespace", ns)])
            .is_empty())
    }
}

async fn holder(t: &OpTest, lease: &str) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(t.client.clone(), OPERATOR_NAMESPACE);
    Ok(api
        .get_opt(lease)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_exactly_one_replica_works_and_the_other_takes_over() -> Result<()> {
    run_exclusive_test("leader", async |t: &OpTest| {
        let a = Replica::start(t, "a")?;
        let b = Replica::start(t, "b")?;
        let leader_id = eventually("a holder of the Lease", EVENTUALLY, || async {
            holder(t, &t.tag).await
        })
        .await?;
        let (leader, standby) = if leader_id == a.identity {
            (a, b)
        } else if leader_id == b.identity {
            (b, a)
        } else {
            return Err(anyhow!(
                "the Lease is held by {leader_id}, not by a replica"
            ));
        };
        // A standby is ready too (a rollout must not hang on it).
        eventually("both replicas ready", EVENTUALLY, || async {
            Ok((leader.ready().await && standby.ready().await).then_some(()))
        })
        .await?;

        // Work for them: the leader's passes see it, the standby runs none.
        let ns = t.namespace("ns", &[]).await?;
        t.profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
            .await?;
        t.wait_labels(&ns, &[(ENFORCE, "baseline")], &[]).await?;
        eventually(
            "the leader's pass over the new namespace",
            EVENTUALLY,
            || async { Ok(leader.covers(&ns).await?.then_some(())) },
        )
        .await?;
        assert!(leader.passes().await? > 0.0);
        assert_eq!(standby.passes().await?, 0.0, "the standby ran no pass");
        let m = standby.metrics().await?;
        assert!(
            m.find("pss_namespace_level", &[]).is_empty(),
            "the standby published nothing"
        );
        assert!(standby.log_text().contains("waiting for the leader lease"));
        assert_eq!(
            holder(t, &t.tag).await?.as_deref(),
            Some(leader.identity.as_str())
        );

        // The leader stops: it releases the Lease, the standby takes over and works.
        leader.terminate()?;
        let exit = eventually("the leader to exit", EVENTUALLY, || async {
            leader.exited()
        })
        .await
        .context("the leader did not stop on SIGTERM")?;
        assert!(
            exit.success(),
            "the leader exits cleanly on SIGTERM: {exit}"
        );
        assert!(
            leader.log_text().contains("leader lease released"),
            "{}",
            leader.log_text()
        );
        // Released, not left to expire: right after the exit nobody (or already the standby)
        // holds it.
        let after_exit = holder(t, &t.tag).await?;
        eprintln!("Lease holder right after the leader exited: {after_exit:?}");
        assert_ne!(
            after_exit.as_deref(),
            Some(leader.identity.as_str()),
            "the leader released the Lease"
        );
        let new_holder = eventually("the standby holding the Lease", EVENTUALLY, || async {
            Ok(holder(t, &t.tag).await?.filter(|h| *h == standby.identity))
        })
        .await?;
        assert_eq!(new_holder, standby.identity);
        eventually("the new leader's pass", EVENTUALLY, || async {
            Ok(standby.covers(&ns).await?.then_some(()))
        })
        .await?;
        assert!(standby.log_text().contains("became leader"));
        Ok(())
    })
    .await
}
