//! Operator processes killed: SIGKILL in the middle of labelling 500 namespaces; the leader of two
//! replicas killed (and another paused past its lease); SIGTERM releasing the Lease.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use pss_operator::operator::crd::PodSecurityProfile;
use pss_operator::pss::Level;

use crate::check::{self, Declared};
use crate::harness::{eventually, unique_name};
use crate::procs::{Env, OperatorProc, env, line_time, now_secs, write_lines};
use crate::serial;
use crate::support::{ENFORCE, TEST_LABEL};

/// Events with `reason` in namespaces of this test, per namespace.
async fn events_by_namespace(
    client: &kube::Client,
    tag: &str,
    reason: &str,
) -> Result<BTreeMap<String, Vec<String>>> {
    let events: Api<Event> = Api::all(client.clone());
    let list = events
        .list(&ListParams::default().fields(&format!("reason={reason}")))
        .await?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in list.items {
        let ns = e.namespace().unwrap_or_default();
        if ns.starts_with(tag) {
            out.entry(ns)
                .or_default()
                .push(e.message.unwrap_or_default());
        }
    }
    Ok(out)
}

/// The notes of the `LabelsApplied` Events on profile `name`: bulk labellings, in `default`.
async fn profile_notes(client: &kube::Client, name: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events
        .list(&ListParams::default().fields("reason=LabelsApplied"))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("PodSecurityProfile")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .map(|e| e.message.unwrap_or_default())
        .collect())
}

async fn labelled(client: &kube::Client, tag: &str) -> Result<usize> {
    Ok(Api::<Namespace>::all(client.clone())
        .list_metadata(
            &ListParams::default().labels(&format!("{TEST_LABEL}={tag},{ENFORCE}=baseline")),
        )
        .await?
        .items
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_labelling_500_namespaces_loses_nothing() -> Result<()> {
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let client = env.admin().await?;
    let tag = unique_name("sigkill");
    let declared = [Declared::new(
        &format!("{tag}-a"),
        "a",
        [Some(Level::Baseline), None, Some(Level::Restricted)],
    )];
    let started = Instant::now();
    check::namespaces(&client, &tag, "ns", 500, |_| "a".into(), false).await?;
    eprintln!(
        "faults: 500 namespaces created in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut first = OperatorProc::start(env, &format!("{tag}-first"), Some(&tag))?;
    first.wait_ready().await?;
    declared[0].create(&client, &tag).await?;
    // Kill it as soon as the first labels land: in the middle of the 500 writes.
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let n = labelled(&client, &tag).await?;
        if n > 0 {
            first.kill()?;
            break n;
        }
        first.check_alive()?;
        ensure!(Instant::now() < deadline, "no namespace labelled in 120s");
    };
    let after_kill = labelled(&client, &tag).await?;
    eprintln!(
        "faults: SIGKILL with {at_kill} of 500 namespaces seen labelled ({after_kill} once it was dead)"
    );
    ensure!(
        after_kill < 500,
        "the kill came too late to be mid-labelling ({after_kill} of 500 labelled)"
    );
    // While no operator runs, someone lowers enforce on a namespace the dead one had labelled:
    // its successor knows that from the ledger, and counts it as drift.
    let lowered = Api::<Namespace>::all(client.clone())
        .list_metadata(
            &ListParams::default().labels(&format!("{TEST_LABEL}={tag},{ENFORCE}=baseline")),
        )
        .await?
        .items
        .into_iter()
        .map(|n| n.name_any())
        .next()
        .context("a labelled namespace")?;
    lower_enforce(&client, &lowered).await?;

    // A new replica (a new Pod name, as a Deployment would start) takes over once the dead
    // one's Lease expires, and finishes the job.
    let mut second = OperatorProc::start(env, &format!("{tag}-second"), Some(&tag))?;
    second.wait_ready().await?;
    let summary = check::converged(&client, &second, &tag, &declared, Duration::from_secs(180))
        .await
        .with_context(|| format!("second replica log tail:\n{}", second.log_tail(30)))?;
    ensure!(summary.namespaces == 500, "{summary:?}");

    // Nothing labelled twice with different values: one LabelsApplied event at most per
    // namespace (none where the kill fell between the write and its event, or where the
    // namespace was labelled in bulk: announced once on the profile), all with the same labels,
    // and no label "repaired" but the one lowered while no operator ran.
    let profile = &declared[0].profile;
    let per_namespace = format!("profile {profile} applied ");
    let (applied, bulk) = eventually("LabelsApplied Events", Duration::from_secs(60), || async {
        let applied = events_by_namespace(&client, &tag, "LabelsApplied").await?;
        let bulk = profile_notes(&client, profile).await?;
        Ok((!applied.is_empty() || !bulk.is_empty()).then_some((applied, bulk)))
    })
    .await?;
    let label_sets: std::collections::BTreeSet<&str> = applied
        .values()
        .flatten()
        .map(|n| n.strip_prefix(&per_namespace).unwrap_or(n))
        // A bulk note ends with the label sets, after its last ": ".
        .chain(
            bulk.iter()
                .map(|n| n.rsplit_once(": ").map_or(n.as_str(), |(_, l)| l)),
        )
        .collect();
    for (ns, list) in &applied {
        ensure!(
            list.len() == 1,
            "{ns} labelled {} times: {list:?}",
            list.len()
        );
    }
    ensure!(
        label_sets.len() == 1,
        "different label values applied: {label_sets:?}"
    );
    let repaired = events_by_namespace(&client, &tag, "LabelDriftRepaired").await?;
    ensure!(
        repaired.keys().collect::<Vec<_>>() == [&lowered] && repaired[&lowered].len() == 1,
        "labels repaired after the restart: {repaired:?}, want only {lowered}'s enforce"
    );
    ensure!(
        repaired[&lowered][0].contains("was \"privileged\", restored to \"baseline\""),
        "{repaired:?}"
    );
    ensure!(
        !applied.contains_key(&lowered) || applied[&lowered].len() == 1,
        "the repair of {lowered} is not reported as a new application: {:?}",
        applied.get(&lowered)
    );
    // Counted: its earlier writes are not drift, the lowering made while it was dead is.
    let status = eventually("driftCorrections 1", Duration::from_secs(60), || async {
        let p = Api::<PodSecurityProfile>::all(client.clone())
            .get(&declared[0].profile)
            .await?;
        let status = p.status.unwrap_or_default();
        Ok((status.drift_corrections == 1).then_some(status))
    })
    .await?;
    let m = second.metrics().await?;
    ensure!(
        m.value(
            "pss_label_drift_total",
            &[("namespace", &lowered), ("label", ENFORCE)]
        ) == Some(1.0),
        "pss_label_drift_total for {lowered}"
    );
    eprintln!(
        "faults: after the restart: 500/500 labelled, {} LabelsApplied events on namespaces ({} namespaces have none: labelled in bulk, or killed between write and event) and {} on the profile (bulk), one field manager, status {}/{} enforced, the enforce lowered while no operator ran counted as drift (Event, metric, driftCorrections 1)",
        applied.values().map(Vec::len).sum::<usize>(),
        500 - applied.len(),
        bulk.len(),
        status.enforced_namespaces,
        status.matched_namespaces
    );
    second.check_alive()?;
    check::cleanup(&client, &tag, &[&declared[0].profile]).await;
    Ok(())
}

/// The current holder and the renew time (seconds since the epoch) of Lease `name`.
async fn holder(env: &Env, name: &str) -> Result<(Option<String>, Option<f64>, i32)> {
    let spec = env
        .lease(name)
        .await?
        .and_then(|l| l.spec)
        .unwrap_or_default();
    Ok((
        spec.holder_identity.filter(|h| !h.is_empty()),
        spec.renew_time
            .map(|t| t.0.as_millisecond() as f64 / 1000.0),
        spec.lease_duration_seconds.unwrap_or_default(),
    ))
}

async fn wait_holder(env: &Env, lease: &str, want: Option<&str>, limit: Duration) -> Result<f64> {
    eventually(
        &format!("lease {lease} held by {want:?}"),
        limit,
        || async {
            let (h, _, _) = holder(env, lease).await?;
            Ok((h.as_deref() == want).then(now_secs))
        },
    )
    .await
}

/// The writes (from its log) of a replica, with their times.
fn writes_of(op: &OperatorProc) -> Vec<(f64, String)> {
    write_lines(&op.log_text())
        .into_iter()
        .filter_map(|l| Some((line_time(l)?, l.to_owned())))
        .collect()
}

fn became_leader(op: &OperatorProc) -> Vec<f64> {
    op.log_text()
        .lines()
        .filter(|l| l.contains("became leader"))
        .filter_map(line_time)
        .collect()
}

async fn lower_enforce(client: &kube::Client, ns: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {ENFORCE: "privileged"}}})),
        )
        .await?;
    Ok(())
}

async fn wait_restored(client: &kube::Client, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    eventually(
        &format!("{ns} enforce restored"),
        Duration::from_secs(90),
        || async {
            let n = api.get(ns).await?;
            Ok((n.labels().get(ENFORCE).map(String::as_str) == Some("baseline")).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_when_the_leader_dies_and_there_is_never_two_writers() -> Result<()>
{
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let client = env.admin().await?;
    let tag = unique_name("failover");
    let declared = [Declared::new(
        &format!("{tag}-a"),
        "a",
        [Some(Level::Baseline), Some(Level::Restricted), None],
    )];
    let names = check::namespaces(&client, &tag, "ns", 6, |_| "a".into(), true).await?;
    let pods = names
        .iter()
        .flat_map(|ns| (0..3).map(move |k| (ns.clone(), format!("p{k}"), k)))
        .collect();
    check::create_pods(&client, pods, 8).await?;

    let mut one = OperatorProc::start(env, &format!("{tag}-one"), Some(&tag))?;
    let mut two = OperatorProc::start(env, &format!("{tag}-two"), Some(&tag))?;
    one.wait_ready().await?;
    two.wait_ready().await?;
    let first_holder = eventually("a leader", Duration::from_secs(60), || async {
        Ok(holder(env, &tag).await?.0)
    })
    .await?;
    let (mut leader, standby) = if first_holder == one.identity {
        (one, two)
    } else {
        (two, one)
    };
    declared[0].create(&client, &tag).await?;
    check::converged(&client, &leader, &tag, &declared, Duration::from_secs(120)).await?;
    ensure!(
        writes_of(&standby).is_empty(),
        "the standby wrote while the other replica led:\n{:?}",
        writes_of(&standby)
    );

    // 1. The leader dies (SIGKILL: no chance to release the Lease).
    let (_, renewed, duration) = holder(env, &tag).await?;
    let killed_at = now_secs();
    leader.kill()?;
    // While no leader runs (the dead one's Lease has not expired yet), enforce is lowered.
    lower_enforce(&client, &names[3]).await?;
    let took_over =
        wait_holder(env, &tag, Some(&standby.identity), Duration::from_secs(120)).await?;
    let renewed = renewed.context("the lease has a renew time")?;
    let expiry = renewed + f64::from(duration);
    eprintln!(
        "faults: leader killed; {} took over {:.1}s after the kill, {:.1}s after the dead leader's lease expired (lease duration {duration}s, last renewed {:.1}s before the kill)",
        standby.identity,
        took_over - killed_at,
        took_over - expiry,
        killed_at - renewed
    );
    // Within the lease duration of the kill (the lease renewed at most 15 s before), plus 5 s of
    // slack for the lease manager's random back-off of up to 1 s, this poll and a loaded machine.
    ensure!(
        took_over - killed_at <= f64::from(duration) + 5.0,
        "takeover {:.1}s after the kill, lease duration {duration}s",
        took_over - killed_at
    );
    ensure!(
        writes_of(&leader)
            .iter()
            .all(|(t, _)| *t <= killed_at + 0.5),
        "the dead leader wrote after its death?"
    );
    let new_leader_since = eventually("the new leader's log", Duration::from_secs(30), || async {
        Ok(became_leader(&standby).first().copied())
    })
    .await?;
    let early: Vec<(f64, String)> = writes_of(&standby)
        .into_iter()
        .filter(|(t, _)| *t < new_leader_since)
        .collect();
    ensure!(
        early.is_empty(),
        "the standby wrote before it led: {early:?}"
    );
    // Once the new leader has made its first pass (it reports ready again), the label lowered
    // while no leader ran is put back, as drift (it knows from the ledger what was applied).
    let mut standby = standby;
    standby.wait_ready().await?;
    wait_restored(&client, &names[3]).await?;
    let repaired = eventually(
        "the lowering made while no leader ran repaired as drift",
        Duration::from_secs(30),
        || async {
            let events = events_by_namespace(&client, &tag, "LabelDriftRepaired").await?;
            Ok(events.get(&names[3]).cloned())
        },
    )
    .await?;
    ensure!(repaired.len() == 1, "{repaired:?}");
    eprintln!(
        "faults: enforce lowered on {} while no leader ran: repaired by the new leader as drift: {}",
        names[3], repaired[0]
    );
    // Once the new leader has made its first pass, a lowered enforce label is put back as drift
    // by it.
    lower_enforce(&client, &names[0]).await?;
    wait_restored(&client, &names[0]).await?;
    // The operator logs the repair when the API server's answer is booked, which may be just
    // after the restored label is visible.
    eventually(
        "repaired by the new leader",
        Duration::from_secs(10),
        || async { Ok(standby.log_text().contains("drift repaired").then_some(())) },
    )
    .await?;

    // 2. A paused leader (a long GC pause, a frozen VM): a third replica takes over after the
    // lease expires; when the paused one wakes up it must not write.
    let mut third = OperatorProc::start(env, &format!("{tag}-three"), Some(&tag))?;
    third.wait_ready().await?;
    let paused = standby;
    paused.signal("STOP")?;
    let stopped_at = now_secs();
    wait_holder(env, &tag, Some(&third.identity), Duration::from_secs(120)).await?;
    lower_enforce(&client, &names[1]).await?;
    wait_restored(&client, &names[1]).await?;
    let resumed_at = now_secs();
    paused.signal("CONT")?;
    // Whatever the woken replica does next, the leader keeps repairing, and the woken one stays
    // out: it steps down (exits to be restarted, as after any lost lease) without writing.
    lower_enforce(&client, &names[2]).await?;
    wait_restored(&client, &names[2]).await?;
    let mut paused = paused;
    let status = paused.wait_exit(Duration::from_secs(60)).await;
    let late: Vec<(f64, String)> = writes_of(&paused)
        .into_iter()
        .filter(|(t, _)| *t >= stopped_at)
        .collect();
    eprintln!(
        "faults: paused leader resumed after {:.1}s; exit: {status:?}; its writes after the pause: {}",
        resumed_at - stopped_at,
        late.len()
    );
    ensure!(
        late.is_empty(),
        "the paused leader wrote after losing its lease (two writers):\n{}",
        late.iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And from the API server's own audit log (every write of the ServiceAccount, with the
    // replica in the user agent): not one request of the paused replica arrived after the pause.
    let stray = env.audited_writes(&paused.identity, stopped_at)?;
    let third_writes = env.audited_writes(&third.identity, stopped_at)?;
    let refused = paused
        .log_text()
        .lines()
        .filter(|l| l.contains("lease is not confirmed") || l.contains("stood still"))
        .count();
    eprintln!(
        "faults: audit log: {} writes of the paused replica received after the pause; {} writes of the new leader; {refused} log lines of the paused one about refused writes or its standstill",
        stray.len(),
        third_writes.len()
    );
    ensure!(
        !third_writes.is_empty(),
        "the audit log shows no write of the new leader: it does not see the operator's writes"
    );
    ensure!(
        stray.is_empty(),
        "the paused leader's writes reached the API server after the pause:\n{stray:#?}"
    );
    status?;
    check::converged(&client, &third, &tag, &declared, Duration::from_secs(120)).await?;
    third.check_alive()?;
    check::cleanup(&client, &tag, &[&declared[0].profile]).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_and_releases_the_lease() -> Result<()> {
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let tag = unique_name("sigterm");
    let mut op = OperatorProc::start(env, &format!("{tag}-op"), Some(&tag))?;
    op.wait_ready().await?;
    wait_holder(env, &tag, Some(&op.identity), Duration::from_secs(60)).await?;
    op.signal("TERM")?;
    let exit = op.wait_exit(Duration::from_secs(15)).await?;
    ensure!(exit.success(), "exit status {exit}");
    let (h, _, _) = holder(env, &tag).await?;
    if let Some(h) = h {
        bail!("the lease is still held by {h} after a graceful shutdown");
    }
    let log = op.log_text();
    ensure!(
        log.contains("shutting down") && log.contains("leader lease released"),
        "log:\n{}",
        op.log_tail(20)
    );
    eprintln!("faults: SIGTERM: exit {exit}, lease holder cleared");
    Ok(())
}
