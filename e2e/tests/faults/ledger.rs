//! Nothing only in memory: operators stopped and started again on the same cluster.
//!
//! - Drift made while no operator ran (labels lowered or removed by hand between a stop and the
//!   next start) is repaired by the next operator as drift: a Warning `LabelDriftRepaired` Event,
//!   `pss_label_drift_total` and the profile's `status.driftCorrections`, because the ledger on
//!   each namespace says what the last one applied. Announcements (`RolloutPending`,
//!   `ProfileConflict`, `PodSecurityBlocked`) are not posted again; a restart with nothing
//!   changed makes no Event and no namespace write at all (counted from the API server's audit
//!   log and the namespaces' resourceVersions).
//! - With the guard (`config/guard`, applied exactly as shipped) the drift these fault tests make
//!   by hand cannot be made: refused by kube-apiserver while no operator runs, the operator's own
//!   writes pass, and the break-glass (deleting the binding) lifts it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use pss_operator::operator::crd::PodSecurityProfile;
use pss_operator::operator::record::{ANNOTATION, Record};
use pss_operator::pss::Level;

use crate::check::{self, Declared};
use crate::harness::{eventually, unique_name};
use crate::procs::{Env, OperatorProc, env, now_secs};
use crate::serial;
use crate::support::{ENFORCE, TEST_LABEL, WARN};

const PATIENCE: Duration = Duration::from_secs(120);

/// The operator's Events in this test's namespaces, counted per reason.
async fn our_events(client: &Client, tag: &str) -> Result<BTreeMap<String, usize>> {
    let list = Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut out = BTreeMap::new();
    for e in list.items {
        let ours = e.reporting_controller.as_deref() == Some("pss-operator");
        if ours && e.namespace().is_some_and(|ns| ns.starts_with(tag)) {
            let n = e.series.as_ref().map_or(1, |s| s.count.max(1)) as usize;
            *out.entry(e.reason.unwrap_or_default()).or_default() += n;
        }
    }
    Ok(out)
}

/// The notes of the operator's Events with `reason` about namespace `ns`.
async fn notes(client: &Client, ns: &str, reason: &str) -> Result<Vec<String>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect())
}

async fn merge_labels(client: &Client, ns: &str, labels: Value) -> kube::Result<Namespace> {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": labels}})),
        )
        .await
}

async fn label(client: &Client, ns: &str, key: &str) -> Result<Option<String>> {
    Ok(Api::<Namespace>::all(client.clone())
        .get(ns)
        .await?
        .labels()
        .get(key)
        .cloned())
}

async fn wait_label(client: &Client, ns: &str, key: &str, want: &str) -> Result<()> {
    eventually(&format!("{ns}: {key}={want}"), PATIENCE, || async {
        Ok((label(client, ns, key).await?.as_deref() == Some(want)).then_some(()))
    })
    .await
}

/// The ledger record on a namespace, once it is there and readable.
async fn wait_record(client: &Client, ns: &str) -> Result<Record> {
    eventually(&format!("{ns}'s ledger"), PATIENCE, || async {
        let n = Api::<Namespace>::all(client.clone()).get(ns).await?;
        Ok(n.annotations()
            .get(ANNOTATION)
            .and_then(|a| Record::decode(a).ok()))
    })
    .await
}

/// The resourceVersion of every namespace of the test.
async fn versions(client: &Client, tag: &str) -> Result<BTreeMap<String, String>> {
    Ok(Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().labels(&format!("{TEST_LABEL}={tag}")))
        .await?
        .items
        .into_iter()
        .map(|n| (n.name_any(), n.resource_version().unwrap_or_default()))
        .collect())
}

async fn create_profile(client: &Client, d: &Declared, tag: &str, extra: Value) -> Result<()> {
    let profile = PodSecurityProfile::new(&d.profile, d.spec(tag, extra)?);
    Api::<PodSecurityProfile>::all(client.clone())
        .create(&PostParams::default(), &profile)
        .await
        .with_context(|| format!("creating profile {}", d.profile))?;
    Ok(())
}

/// Stops an operator as Kubernetes would (SIGTERM: it releases its Lease).
async fn stop(op: &mut OperatorProc) -> Result<()> {
    op.signal("TERM")?;
    op.wait_exit(Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_made_while_no_operator_ran_is_counted_and_a_restart_announces_nothing_again()
-> Result<()> {
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let client = env.admin().await?;
    let tag = unique_name("ledger");
    // a: labelled; w: a WhenCompliant rollout held by a privileged Pod in each; c: two profiles
    // of equal priority (a conflict); a Deployment whose template breaks baseline in a-0.
    let a = check::namespaces(&client, &tag, "a", 6, |_| "a".into(), true).await?;
    let w = check::namespaces(&client, &tag, "w", 4, |_| "w".into(), true).await?;
    let c = check::namespaces(&client, &tag, "c", 1, |_| "c".into(), false).await?;
    let pods = w
        .iter()
        .map(|ns| (ns.clone(), "priv".to_owned(), 2))
        .collect();
    let created = check::create_pods(&client, pods, 4).await?;
    ensure!(created.created == 4, "{created:?}");
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": a[0]},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": check::pod_spec(2)},
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), &a[0])
        .create(&PostParams::default(), &deployment)
        .await?;
    let pa = Declared::new(
        &format!("{tag}-a"),
        "a",
        [Some(Level::Baseline), None, Some(Level::Restricted)],
    );
    let pw = Declared::new(
        &format!("{tag}-w"),
        "w",
        [Some(Level::Baseline), None, None],
    );
    let pc1 = Declared::new(
        &format!("{tag}-c1"),
        "c",
        [Some(Level::Baseline), None, None],
    );
    let pc2 = Declared::new(
        &format!("{tag}-c2"),
        "c",
        [Some(Level::Restricted), None, None],
    );

    let mut one = OperatorProc::start(env, &format!("{tag}-one"), Some(&tag))?;
    one.wait_ready().await?;
    create_profile(&client, &pa, &tag, json!({})).await?;
    create_profile(&client, &pw, &tag, json!({"rollout": "WhenCompliant"})).await?;
    create_profile(&client, &pc1, &tag, json!({})).await?;
    create_profile(&client, &pc2, &tag, json!({})).await?;
    for ns in &a {
        wait_label(&client, ns, ENFORCE, "baseline").await?;
    }
    wait_label(&client, &c[0], ENFORCE, "restricted").await?;
    for ns in a.iter().chain(&w).chain(&c) {
        wait_record(&client, ns).await?;
    }
    let announced = eventually("every announcement posted", PATIENCE, || async {
        let e = our_events(&client, &tag).await?;
        let n = |r: &str| e.get(r).copied().unwrap_or(0);
        Ok(
            (n("RolloutPending") == 4 && n("ProfileConflict") == 1 && n("PodSecurityBlocked") == 1)
                .then_some(e),
        )
    })
    .await?;
    eprintln!("faults: events after the first operator's passes: {announced:?}");
    // The first one's Events are all posted before it stops (a pass or two more).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(&mut one).await?;
    let before = our_events(&client, &tag).await?;

    // 1. While no operator runs: enforce lowered on a-1, warn removed from a-2.
    merge_labels(&client, &a[1], json!({ENFORCE: "privileged"})).await?;
    merge_labels(&client, &a[2], json!({WARN: null})).await?;
    let mut two = OperatorProc::start(env, &format!("{tag}-two"), Some(&tag))?;
    two.wait_ready().await?;
    wait_label(&client, &a[1], ENFORCE, "baseline").await?;
    wait_label(&client, &a[2], WARN, "restricted").await?;
    let repaired_1 = eventually("a-1's repair", PATIENCE, || async {
        let n = notes(&client, &a[1], "LabelDriftRepaired").await?;
        Ok((!n.is_empty()).then_some(n))
    })
    .await?;
    let repaired_2 = eventually("a-2's repair", PATIENCE, || async {
        let n = notes(&client, &a[2], "LabelDriftRepaired").await?;
        Ok((!n.is_empty()).then_some(n))
    })
    .await?;
    ensure!(
        repaired_1.len() == 1
            && repaired_1[0].contains("was \"privileged\", restored to \"baseline\""),
        "{repaired_1:?}"
    );
    ensure!(
        repaired_2.len() == 1 && repaired_2[0].contains(&format!("label {WARN} was <removed>")),
        "{repaired_2:?}"
    );
    eventually("driftCorrections 2", PATIENCE, || async {
        let p = Api::<PodSecurityProfile>::all(client.clone())
            .get(&pa.profile)
            .await?;
        Ok((p.status.unwrap_or_default().drift_corrections == 2).then_some(()))
    })
    .await?;
    let m = two.metrics().await?;
    for (ns, l) in [(&a[1], ENFORCE), (&a[2], WARN)] {
        ensure!(
            m.value(
                "pss_label_drift_total",
                &[("namespace", ns), ("profile", &pa.profile), ("label", l)]
            ) == Some(1.0),
            "pss_label_drift_total {ns} {l}"
        );
    }
    // Nothing else was posted again: no announcement, no LabelsApplied.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = our_events(&client, &tag).await?;
    let mut expected = before.clone();
    *expected.entry("LabelDriftRepaired".into()).or_default() += 2;
    ensure!(
        after == expected,
        "Events after the restart with drift: {after:?}, want {expected:?} (before: {before:?})"
    );
    eprintln!(
        "faults: drift made while no operator ran: 2 labels repaired as drift by the next operator (Warning Events, pss_label_drift_total, driftCorrections 2); events before {before:?}, after {after:?}"
    );

    // 2. A restart with nothing changed: no Event, no namespace write.
    stop(&mut two).await?;
    let before = our_events(&client, &tag).await?;
    let rv_before = versions(&client, &tag).await?;
    let started = now_secs();
    let mut three = OperatorProc::start(env, &format!("{tag}-three"), Some(&tag))?;
    three.wait_ready().await?;
    // Its first pass is done (ready); give it a few more passes and status reports.
    tokio::time::sleep(Duration::from_secs(8)).await;
    three.check_alive()?;
    let after = our_events(&client, &tag).await?;
    let rv_after = versions(&client, &tag).await?;
    let writes = env.audited_writes(&three.identity, started)?;
    let by_resource = |r: &str| {
        writes
            .iter()
            .filter(|w| w.object.starts_with(r) && (200..300).contains(&w.code))
            .count()
    };
    let namespace_writes = by_resource("namespaces ");
    let event_writes = by_resource("events ");
    eprintln!(
        "faults: restart without changes ({} namespaces, {} governed): {} Events before, {} after; namespace writes {namespace_writes}, Event writes {event_writes}, other writes {:?}",
        rv_before.len(),
        a.len() + w.len() + c.len(),
        before.values().sum::<usize>(),
        after.values().sum::<usize>(),
        writes
            .iter()
            .filter(|w| !w.object.starts_with("namespaces ") && !w.object.starts_with("events "))
            .map(|w| format!(
                "{} {} {} at {:.1}s",
                w.verb,
                w.object,
                w.code,
                w.received - started
            ))
            .collect::<Vec<_>>()
    );
    ensure!(
        after == before,
        "new Events at a restart: {before:?} -> {after:?}"
    );
    ensure!(
        rv_after == rv_before,
        "namespaces written at a restart: {:?}",
        rv_after
            .iter()
            .filter(|(k, v)| rv_before.get(*k) != Some(v))
            .collect::<Vec<_>>()
    );
    ensure!(namespace_writes == 0 && event_writes == 0, "{writes:#?}");
    // The audit log sees this replica (its lease, at least): the zero above is not blindness.
    ensure!(
        writes
            .iter()
            .any(|w| w.user_agent.contains(&three.identity)),
        "no audited request of {} at all",
        three.identity
    );
    three.check_alive()?;
    drop(three);
    check::cleanup(
        &client,
        &tag,
        &[&pa.profile, &pw.profile, &pc1.profile, &pc2.profile],
    )
    .await;
    Ok(())
}

/// Installs or removes `config/guard` exactly as shipped.
async fn guard(env: &Env, verb: &str) -> Result<()> {
    let dir = crate::harness::repo_root().join("config/guard");
    let dir = dir.to_string_lossy();
    let mut args = vec![verb, "-k", &dir];
    if verb == "delete" {
        args.push("--ignore-not-found");
    }
    let out = crate::harness::kubectl(env.cluster, &args, "").await?;
    ensure!(
        out.status.success(),
        "kubectl {verb} -k config/guard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A lowering as the fault tests make it (a merge patch by an admin), refused by the guard.
async fn refused(client: &Client, ns: &str, labels: Value, what: &str) -> Result<String> {
    match merge_labels(client, ns, labels).await {
        Ok(_) => anyhow::bail!("{what} on {ns}: allowed with the guard installed"),
        Err(kube::Error::Api(s))
            if s.message
                .contains("ValidatingAdmissionPolicy 'pss-operator-guard'") =>
        {
            Ok(s.message.clone())
        }
        Err(e) => Err(e).context(format!("{what} on {ns}: refused, but not by the guard")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_guard_the_drift_of_these_tests_cannot_be_made_by_hand() -> Result<()> {
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let client = env.admin().await?;
    let tag = unique_name("guard");
    let names = check::namespaces(&client, &tag, "ns", 3, |_| "a".into(), false).await?;
    let declared = [Declared::new(
        &format!("{tag}-a"),
        "a",
        [Some(Level::Baseline), None, Some(Level::Restricted)],
    )];
    let mut op = OperatorProc::start(env, &format!("{tag}-one"), Some(&tag))?;
    op.wait_ready().await?;
    declared[0].create(&client, &tag).await?;
    check::converged(&client, &op, &tag, &declared, PATIENCE).await?;
    for ns in &names {
        wait_record(&client, ns).await?;
    }
    guard(env, "apply").await?;
    let result = async {
        // In force once kube-apiserver's informer has the policy (a dry run changes nothing).
        eventually("the guard in force", PATIENCE, || async {
            let dry = Api::<Namespace>::all(client.clone())
                .patch(
                    &names[0],
                    &PatchParams::default().dry_run(),
                    &Patch::Merge(&json!({"metadata": {"labels": {ENFORCE: "privileged"}}})),
                )
                .await;
            Ok(dry.is_err().then_some(()))
        })
        .await?;
        // The operator crashes; what the outage and crash tests do by hand is refused.
        op.kill()?;
        let message = refused(&client, &names[0], json!({ENFORCE: "privileged"}), "lowering enforce").await?;
        ensure!(
            message.contains(&format!("PodSecurityProfile {}", declared[0].profile))
                && message.contains("change the PodSecurityProfile instead"),
            "{message}"
        );
        refused(&client, &names[1], json!({ENFORCE: null}), "removing enforce").await?;
        refused(&client, &names[2], json!({WARN: "privileged"}), "lowering warn").await?;
        let unmark = Api::<Namespace>::all(client.clone())
            .patch(
                &names[0],
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {ANNOTATION: null}}})),
            )
            .await;
        ensure!(unmark.is_err(), "the ledger removed with the guard installed");
        // The next operator finds everything as it was: nothing to repair.
        let mut next = OperatorProc::start(env, &format!("{tag}-two"), Some(&tag))?;
        next.wait_ready().await?;
        check::converged(&client, &next, &tag, &declared, PATIENCE).await?;
        ensure!(
            !our_events(&client, &tag).await?.contains_key("LabelDriftRepaired"),
            "nothing to repair"
        );
        // Its own writes pass the guard: the profile raised, the labels follow.
        Api::<PodSecurityProfile>::all(client.clone())
            .patch(
                &declared[0].profile,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"enforce": {"level": "restricted"}}})),
            )
            .await?;
        for ns in &names {
            wait_label(&client, ns, ENFORCE, "restricted").await?;
        }
        // Break-glass: the binding deleted, a lowering goes through (and is repaired as drift).
        let out = crate::harness::kubectl(
            env.cluster,
            &["delete", "validatingadmissionpolicybinding", "pss-operator-guard"],
            "",
        )
        .await?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        eventually("the guard lifted", PATIENCE, || async {
            Ok(merge_labels(&client, &names[0], json!({ENFORCE: "privileged"}))
                .await
                .is_ok()
                .then_some(()))
        })
        .await?;
        wait_label(&client, &names[0], ENFORCE, "restricted").await?;
        eventually("the break-glass lowering repaired as drift", PATIENCE, || async {
            Ok((!notes(&client, &names[0], "LabelDriftRepaired").await?.is_empty()).then_some(()))
        })
        .await?;
        eprintln!("faults: with config/guard installed: lowering, removing, unmarking by hand refused ({message}); the operator's writes passed; break-glass lifted it");
        next.check_alive()?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    // Whatever happened, the guard goes: the other fault tests lower labels by hand.
    guard(env, "delete").await?;
    result?;
    check::cleanup(&client, &tag, &[&declared[0].profile]).await;
    Ok(())
}
