//! kube-apiserver down for 30 s, and etcd down, while namespaces and Pods keep changing: the
//! operator (one replica with leader election, as deployed) recovers by itself, and afterwards every
//! label, status and metric matches a fresh evaluation of the cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use pss_operator::pss::Level;

use crate::check::{self, Declared, Rng, TIER};
use crate::harness::unique_name;
use crate::procs::{OperatorProc, env};
use crate::serial;
use crate::support::ENFORCE;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_recovers_from_kube_apiserver_down_for_30s() -> Result<()> {
    let _one_at_a_time = serial().await;
    outage("kube-apiserver", Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_recovers_from_etcd_down_for_20s() -> Result<()> {
    let _one_at_a_time = serial().await;
    outage("etcd", Duration::from_secs(20)).await
}

#[derive(Default)]
struct Churn {
    namespaces: AtomicUsize,
    pods: AtomicUsize,
    deleted: AtomicUsize,
    edits: AtomicUsize,
    failed: AtomicUsize,
}

/// Changes the cluster every 100 ms until `stop`: new namespaces (with a Pod), Pods created and
/// deleted, `enforce` lowered by hand. Calls fail while the control plane is down; they are
/// counted, not retried: the check afterwards evaluates whatever the cluster holds.
async fn churn(
    client: Client,
    tag: String,
    mut existing: Vec<String>,
    stop: Arc<AtomicBool>,
    counts: Arc<Churn>,
) {
    let mut rng = Rng::new(7);
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let ns = existing[rng.below(existing.len())].clone();
        let ok = match i % 4 {
            0 => {
                let name = format!("{tag}-churn-{i}");
                let created = crate::harness::create_namespace(
                    &client,
                    &name,
                    &[(crate::support::TEST_LABEL, &tag), (TIER, "a")],
                )
                .await;
                if created.is_ok() {
                    existing.push(name);
                    counts.namespaces.fetch_add(1, Ordering::Relaxed);
                }
                created.is_ok()
            }
            1 => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let ok = match check::pod(&ns, &format!("churn-{i}"), i) {
                    Ok(p) => match api.create(&Default::default(), &p).await {
                        Ok(_) => true,
                        // Refused by PodSecurity (privileged) or no ServiceAccount yet: a
                        // legitimate answer of a working API server.
                        Err(kube::Error::Api(s)) => s.code == 403,
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if ok {
                    counts.pods.fetch_add(1, Ordering::Relaxed);
                }
                ok
            }
            2 => {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                match api.list_metadata(&Default::default()).await {
                    Ok(list) => match list.items.first().and_then(|p| p.metadata.name.clone()) {
                        Some(p) => {
                            let ok = api.delete(&p, &DeleteParams::default()).await.is_ok();
                            if ok {
                                counts.deleted.fetch_add(1, Ordering::Relaxed);
                            }
                            ok
                        }
                        None => true,
                    },
                    Err(_) => false,
                }
            }
            _ => {
                let patch = json!({"metadata": {"labels": {ENFORCE: "privileged"}}});
                let ok = Api::<Namespace>::all(client.clone())
                    .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok();
                if ok {
                    counts.edits.fetch_add(1, Ordering::Relaxed);
                }
                ok
            }
        };
        if !ok {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn outage(component: &str, down_for: Duration) -> Result<()> {
    let env = env().await?;
    let client = env.admin().await?;
    let tag = unique_name(&format!("outage-{component}"));
    let declared = [Declared::new(
        &format!("{tag}-a"),
        "a",
        [Some(Level::Baseline), Some(Level::Restricted), None],
    )];

    // Before the operator: 8 namespaces with Pods of every kind (privileged ones included).
    let names = check::namespaces(&client, &tag, "ns", 8, |_| "a".into(), true).await?;
    let pods = names
        .iter()
        .flat_map(|ns| (0..6).map(move |k| (ns.clone(), format!("p{k}"), k)))
        .collect();
    let created = check::create_pods(&client, pods, 16).await?;
    ensure!(
        created.created == 48,
        "pods before the profile: {created:?}"
    );

    let mut op = OperatorProc::start(env, &format!("{tag}-op"), Some(&tag))?;
    op.wait_ready().await?;
    declared[0].create(&client, &tag).await?;
    let before = check::converged(&client, &op, &tag, &declared, Duration::from_secs(120)).await?;
    eprintln!("faults: before the {component} outage: {before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Churn::default());
    let churner = tokio::spawn(churn(
        client.clone(),
        tag.clone(),
        names.clone(),
        stop.clone(),
        counts.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    env.stop_component(component).await?;
    // The outage is real: kube-apiserver's /readyz (which checks etcd) fails.
    let probe = crate::harness::kubectl(
        env.cluster,
        &["--request-timeout=5s", "get", "--raw", "/readyz"],
        "",
    )
    .await?;
    ensure!(
        !probe.status.success(),
        "/readyz still OK with {component} stopped"
    );
    eprintln!(
        "faults: {component} stopped; /readyz: {}",
        String::from_utf8_lossy(&probe.stderr)
            .split("\\n")
            .filter(|l| l.starts_with("[-]") || l.contains("connect"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tokio::time::sleep(down_for).await;
    op.check_alive()?;
    env.start_component(component).await?;
    env.wait_apiserver_ready().await?;
    eprintln!(
        "faults: {component} was down {:.1}s; the API server serves again",
        started.elapsed().as_secs_f64()
    );
    // Keep changing things a while after the restart, then let it settle.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    churner.await?;
    eprintln!(
        "faults: churn during the outage: {} namespaces and {} pods created, {} pods deleted, {} enforce labels lowered by hand, {} calls failed",
        counts.namespaces.load(Ordering::Relaxed),
        counts.pods.load(Ordering::Relaxed),
        counts.deleted.load(Ordering::Relaxed),
        counts.edits.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );

    // Recovered by itself: same process, everything equal to a fresh evaluation.
    let after = check::converged(&client, &op, &tag, &declared, Duration::from_secs(180)).await?;
    op.check_alive()?;
    eprintln!("faults: after the {component} outage: {after:?}");
    ensure!(
        after.namespaces == 8 + counts.namespaces.load(Ordering::Relaxed),
        "every namespace is counted: {after:?}"
    );
    let lease = env.lease(&tag).await?;
    let holder = lease.and_then(|l| l.spec?.holder_identity);
    ensure!(
        holder.as_deref() == Some(op.identity.as_str()),
        "the operator still holds its lease: {holder:?}"
    );
    check::cleanup(&client, &tag, &[&declared[0].profile]).await;
    Ok(())
}
