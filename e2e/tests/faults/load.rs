//! A burst of 5,000 Pod creations and 1,000 namespace label changes at once: no event missed, the
//! final labels, statuses and metrics equal a fresh evaluation of the cluster.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use pss_operator::pss::Level;

use crate::check::{self, Declared, Rng, TIER};
use crate::harness::unique_name;
use crate::procs::{OperatorProc, env};
use crate::serial;
use crate::support::ENFORCE;

const NAMESPACES: usize = 50;
const PODS: usize = 5_000;
const LABEL_CHANGES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_5000_pods_and_1000_label_changes_ends_exact() -> Result<()> {
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let client = env.admin().await?;
    let tag = unique_name("burst");
    // Two profiles; namespaces move between them as their tier label flips.
    let declared = [
        Declared::new(
            &format!("{tag}-a"),
            "a",
            [Some(Level::Baseline), Some(Level::Restricted), None],
        ),
        Declared::new(
            &format!("{tag}-b"),
            "b",
            [Some(Level::Baseline), None, Some(Level::Restricted)],
        ),
    ];
    let tier = |i: usize| if i.is_multiple_of(2) { "a" } else { "b" }.to_owned();
    let names = check::namespaces(&client, &tag, "ns", NAMESPACES, tier, true).await?;
    let mut op = OperatorProc::start(env, &format!("{tag}-op"), Some(&tag))?;
    op.wait_ready().await?;
    for d in &declared {
        d.create(&client, &tag).await?;
    }
    check::converged(&client, &op, &tag, &declared, Duration::from_secs(120)).await?;

    // The burst: Pods (every kind, privileged ones refused while enforce=baseline holds) and
    // label changes at the same time: 9 of 10 flip a namespace to the other profile, 1 of 10
    // lowers enforce to privileged by hand (which also lets privileged Pods in until repaired).
    let pods: Vec<(String, String, usize)> = (0..PODS)
        .map(|i| {
            (
                names[i % NAMESPACES].clone(),
                format!("burst-{i}"),
                i / NAMESPACES,
            )
        })
        .collect();
    let mut rng = Rng::new(42);
    let changes: Vec<(String, serde_json::Value)> = (0..LABEL_CHANGES)
        .map(|i| {
            let ns = names[rng.below(NAMESPACES)].clone();
            let labels = if i % 10 == 9 {
                json!({ ENFORCE: "privileged" })
            } else {
                json!({ TIER: if rng.below(2) == 0 { "a" } else { "b" } })
            };
            (ns, json!({"metadata": {"labels": labels}}))
        })
        .collect();
    let started = Instant::now();
    let label_client = client.clone();
    let labels = async move {
        use futures::StreamExt as _;
        let api: Api<Namespace> = Api::all(label_client);
        let results: Vec<bool> = futures::stream::iter(changes)
            .map(|(ns, patch)| {
                let api = api.clone();
                async move {
                    api.patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .is_ok()
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        results.into_iter().filter(|ok| *ok).count()
    };
    let (created, labelled) = tokio::join!(check::create_pods(&client, pods, 24), labels);
    let created = created?;
    eprintln!(
        "faults: burst sent in {:.1}s: {} pods created, {} refused by PodSecurity, {} failed; {labelled} of {LABEL_CHANGES} label changes applied",
        started.elapsed().as_secs_f64(),
        created.created,
        created.forbidden,
        created.failed
    );
    ensure!(created.failed == 0, "{created:?}");
    ensure!(created.created + created.forbidden == PODS);
    ensure!(labelled == LABEL_CHANGES);

    let settled = Instant::now();
    let summary = check::converged(&client, &op, &tag, &declared, Duration::from_secs(300)).await?;
    eprintln!(
        "faults: exact after the burst ({:.1}s to settle): {summary:?}",
        settled.elapsed().as_secs_f64()
    );
    ensure!(summary.namespaces == NAMESPACES);
    ensure!(summary.pods == created.created, "{summary:?}");
    op.check_alive()?;
    let profiles: Vec<&str> = declared.iter().map(|d| d.profile.as_str()).collect();
    check::cleanup(&client, &tag, &profiles).await;
    Ok(())
}
