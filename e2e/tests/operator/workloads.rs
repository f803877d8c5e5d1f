//! Workloads, not only Pods, on the real control plane (kube-controller-manager runs the
//! Deployment, ReplicaSet, Job and CronJob controllers): the seed's Deployment applied after
//! enforcement is blocked (no Pod, the app is down) and reported with kube-apiserver's own
//! warning; every kind with a Pod template is reported once, a Deployment's ReplicaSets folded
//! into it; a `WhenCompliant` rollout waits for a CronJob's template.

use anyhow::{Context, Result, anyhow, ensure};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use pss_operator::operator::crd::PodSecurityProfile;
use serde_json::{Value, json};

use super::support::{ENFORCE, EVENTUALLY, OpTest, privileged_container, run_test};
use crate::harness::eventually;

/// Applies a manifest with kubectl (as the admin) and returns the PodSecurity warning it printed.
async fn apply(t: &OpTest, manifest: &Value) -> Result<Option<String>> {
    let out = t
        .op_kubectl(&["apply", "-f", "-"], &manifest.to_string())
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "kubectl apply: {stderr}");
    Ok(stderr
        .lines()
        .find_map(|l| l.strip_prefix("Warning: "))
        .filter(|w| w.starts_with("would violate PodSecurity"))
        .map(str::to_owned))
}

fn seed_deployment(ns: &str, name: &str, privileged: bool, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                         "securityContext": {"privileged": privileged}}]},
            },
        },
    })
}

fn enforce_of(p: &PodSecurityProfile) -> Option<&pss_operator::operator::crd::ModeStatus> {
    p.status.as_ref()?.enforce.as_ref()
}

/// A namespace of the test with a profile that enforces baseline on it, labelled.
async fn enforcing_baseline(t: &OpTest, suffix: &str) -> Result<(String, String)> {
    let ns = t.namespace(suffix, &[]).await?;
    let profile = t
        .profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
        .await?;
    t.wait_labels(&ns, &[(ENFORCE, "baseline")], &[]).await?;
    Ok((ns, profile))
}

fn blocked(p: &PodSecurityProfile) -> i32 {
    p.status.as_ref().map_or(-1, |s| s.blocked_workloads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_deployment_applied_after_enforcement_is_blocked_with_the_api_servers_warning()
-> Result<()> {
    run_test("blocked-deployment", async |t: &OpTest| {
        let (ns, profile) = enforcing_baseline(t, "app").await?;

        // The article: the privileged nginx Deployment, applied once the namespace enforces
        // baseline. kube-apiserver only warns; its ReplicaSet's Pods are refused.
        let warning = apply(t, &seed_deployment(&ns, "nginx", true, 2))
            .await?
            .ok_or_else(|| anyhow!("kube-apiserver gave no PodSecurity warning"))?;
        assert_eq!(
            warning,
            r#"would violate PodSecurity "baseline:latest": privileged (container "nginx" must not set securityContext.privileged=true)"#
        );
        let p = t
            .wait_status(&profile, "the Deployment reported blocked", |p| {
                blocked(p) == 1
                    && enforce_of(p).is_some_and(|e| e.workload_samples.len() == 1)
            })
            .await?;
        let enforce = enforce_of(&p).ok_or_else(|| anyhow!("no enforce status"))?;
        let sample = &enforce.workload_samples[0];
        assert_eq!(
            (sample.kind.as_str(), sample.namespace.as_str(), sample.name.as_str()),
            ("Deployment", ns.as_str(), "nginx")
        );
        assert_eq!(sample.checks, ["privileged"]);
        assert_eq!(sample.replicas, Some(2));
        assert_eq!(sample.message, warning, "status vs kube-apiserver's warning");
        // Its ReplicaSet is folded into it: one workload, not two.
        assert_eq!(enforce.violating_workloads, 1);
        assert_eq!(
            enforce.workloads_by_kind,
            [("Deployment".to_owned(), 1)].into()
        );
        // The seed's situation: no Pod runs, the app is down, and no Pod violates anything.
        let pods = t.pods(&ns).list(&Default::default()).await?;
        ensure!(pods.items.is_empty(), "Pods were admitted: {:?}", pods.items.len());
        assert_eq!(enforce.violating_pods, 0);
        t.wait_metrics("pss_blocked_workloads of the Deployment", |m| {
            m.value(
                "pss_blocked_workloads",
                &[("namespace", &ns), ("profile", &profile), ("kind", "Deployment")],
            ) == Some(1.0)
                && m.value(
                    "pss_violating_workloads",
                    &[
                        ("namespace", &ns),
                        ("profile", &profile),
                        ("mode", "enforce"),
                        ("kind", "Deployment"),
                    ],
                ) == Some(1.0)
        })
        .await?;

        // A Warning Event on the Deployment itself, naming the profile, the level and the message.
        let events: Api<Event> = Api::namespaced(t.client.clone(), &ns);
        let note = eventually("a PodSecurityBlocked Event on the Deployment", EVENTUALLY, || {
            let events = events.clone();
            async move {
                Ok(events
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("PodSecurityBlocked")
                            && e.regarding.as_ref().is_some_and(|r| {
                                r.kind.as_deref() == Some("Deployment")
                                    && r.name.as_deref() == Some("nginx")
                            })
                    })
                    .and_then(|e| e.note))
            }
        })
        .await?;
        assert_eq!(
            note,
            format!(
                "the Pod template breaks enforce=baseline:latest of namespace {ns} (profile {profile}): the API server refuses its next Pod: {warning}"
            )
        );

        // The fix: privileged off. No longer blocked, the series goes.
        let fixed = apply(t, &seed_deployment(&ns, "nginx", false, 2)).await?;
        ensure!(fixed.is_none(), "still a warning: {fixed:?}");
        t.wait_status(&profile, "the Deployment no longer blocked", |p| {
            blocked(p) == 0
        })
        .await?;
        t.wait_metrics("no pss_blocked_workloads series", |m| {
            m.find("pss_blocked_workloads", &[("namespace", &ns)]).is_empty()
        })
        .await?;
        Ok(())
    })
    .await
}

/// The kinds with a Pod template, sorted.
const KINDS: [&str; 7] = [
    "CronJob",
    "DaemonSet",
    "Deployment",
    "Job",
    "ReplicaSet",
    "ReplicationController",
    "StatefulSet",
];

/// Every kind with a Pod template, each violating baseline, created before any profile.
fn one_of_each_kind(ns: &str) -> Vec<Value> {
    let template = |name: &str, restart: &str| {
        json!({
            "metadata": {"labels": {"app": name}},
            "spec": {"restartPolicy": restart, "containers": [privileged_container("c")]},
        })
    };
    let selector = |name: &str| json!({"matchLabels": {"app": name}});
    vec![
        // Scaled to 0: nothing runs, and the next scale-up breaks.
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "deploy", "namespace": ns},
               "spec": {"replicas": 0, "selector": selector("deploy"),
                        "template": template("deploy", "Always")}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": "rs", "namespace": ns},
               "spec": {"replicas": 0, "selector": selector("rs"),
                        "template": template("rs", "Always")}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "sts", "namespace": ns},
               "spec": {"replicas": 0, "serviceName": "sts", "selector": selector("sts"),
                        "template": template("sts", "Always")}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
               "metadata": {"name": "ds", "namespace": ns},
               "spec": {"selector": selector("ds"), "template": template("ds", "Always")}}),
        json!({"apiVersion": "v1", "kind": "ReplicationController",
               "metadata": {"name": "rc", "namespace": ns},
               "spec": {"replicas": 0, "selector": {"app": "rc"},
                        "template": template("rc", "Always")}}),
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "job", "namespace": ns},
               "spec": {"suspend": true, "template": template("job", "Never")}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob",
               "metadata": {"name": "cron", "namespace": ns},
               "spec": {"schedule": "0 3 * * *", "suspend": true,
                        "jobTemplate": {"spec": {"template": template("cron", "Never")}}}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_kind_is_reported_once_even_scaled_to_zero() -> Result<()> {
    run_test("every-kind", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        for w in one_of_each_kind(&ns) {
            apply(t, &w)
                .await
                .with_context(|| format!("{}", w["kind"]))?;
        }
        let profile = t
            .profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
            .await?;
        let p = t
            .wait_status(&profile, "seven blocked workloads", |p| blocked(p) == 7)
            .await?;
        let enforce = enforce_of(&p).ok_or_else(|| anyhow!("no enforce status"))?;
        assert_eq!(
            enforce.workloads_by_kind,
            KINDS.iter().map(|k| (k.to_string(), 1)).collect()
        );
        for s in &enforce.workload_samples {
            assert!(
                s.message
                    .starts_with(r#"would violate PodSecurity "baseline:latest": privileged"#),
                "{s:?}"
            );
            // Scaled to 0 where the kind has replicas: blocked all the same.
            let want = matches!(
                s.kind.as_str(),
                "Deployment" | "ReplicaSet" | "StatefulSet" | "ReplicationController"
            )
            .then_some(0);
            assert_eq!(s.replicas, want, "{s:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_when_compliant_rollout_waits_for_a_cron_job_template() -> Result<()> {
    run_test("rollout-cronjob", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": ns},
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "hostNetwork": true,
                "containers": [{"name": "job", "image": "busybox:1.37"}]}}}}}});
        apply(t, &cron).await?;
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[],
                    json!({"enforce": {"level": "baseline"}, "rollout": "WhenCompliant"}),
                )?,
            )
            .await?;
        // No Pod runs, but the CronJob's next run would be refused: enforce is held.
        let p = t
            .wait_status(&profile, "pending on the CronJob", |p| {
                p.status.as_ref().is_some_and(|s| {
                    s.pending
                        .iter()
                        .any(|n| n.namespace == ns && n.pods == ["CronJob/nightly"])
                })
            })
            .await?;
        assert_eq!(p.status.as_ref().map(|s| s.pending_namespaces), Some(1));
        let labels = t.labels(&ns).await?;
        ensure!(!labels.contains_key(ENFORCE), "enforce raised: {labels:?}");
        // The CronJob goes: enforce is raised.
        t.op_kubectl(&["delete", "cronjob", "nightly", "-n", &ns], "")
            .await?;
        t.wait_labels(&ns, &[(ENFORCE, "baseline")], &[]).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_the_cluster_shows_are_reported_with_the_api_servers_words_for_each_kind()
-> Result<()> {
    run_test("refused-kinds", async |t: &OpTest| {
        let (ns, profile) = enforcing_baseline(t, "ns").await?;
        // A Node for the DaemonSet to target (no kubelet: its Pod would stay Pending, were it
        // admitted). Named after the test; deleted at the end.
        let nodes: Api<Node> = Api::all(t.client.clone());
        let node = t.name("node");
        let node_object: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
        }))?;
        nodes.create(&PostParams::default(), &node_object).await?;
        // Applied after enforcement, each wanting a Pod now (the CronJob at its next minute):
        // their controllers' Pods are refused.
        for mut w in one_of_each_kind(&ns) {
            let kind = w["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Job" => w["spec"]["suspend"] = json!(false),
                "CronJob" => {
                    w["spec"]["suspend"] = json!(false);
                    w["spec"]["schedule"] = json!("* * * * *");
                }
                "DaemonSet" => {}
                _ => w["spec"]["replicas"] = json!(1),
            }
            apply(t, &w).await.with_context(|| kind.clone())?;
        }
        // The CronJob's first Job starts at the next full minute: wait longer than usual.
        let p = eventually(
            "seven blocked workloads, each refused",
            Duration::from_secs(180),
            || async {
                let p = t.get_profile(&profile).await?;
                let done = enforce_of(&p).is_some_and(|e| {
                    e.workload_samples.len() == 7
                        && e.workload_samples.iter().all(|s| s.refused.is_some())
                });
                Ok(done.then_some(p))
            },
        )
        .await;
        nodes.delete(&node, &DeleteParams::default()).await?;
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                let last = t.get_profile(&profile).await?;
                let shown = serde_json::to_string_pretty(&last.status).unwrap_or_default();
                return Err(e.context(format!("last status: {shown}")));
            }
        };
        let enforce = enforce_of(&p).ok_or_else(|| anyhow!("no enforce status"))?;
        for s in &enforce.workload_samples {
            let refused = s.refused.as_deref().unwrap_or_default();
            ensure!(
                refused.contains(r#"is forbidden: violates PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#),
                "{} {}: {refused}",
                s.kind,
                s.name
            );
        }
        // A Deployment's refusal is its ReplicaSet's, a CronJob's its Job's, reported at them;
        // the Job the CronJob made is folded into it, not a workload of its own.
        let mut kinds: Vec<&str> = enforce
            .workload_samples
            .iter()
            .map(|s| s.kind.as_str())
            .collect();
        kinds.sort_unstable();
        assert_eq!(kinds, KINDS);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_of_a_three_replica_deployment_are_one_thing_to_fix() -> Result<()> {
    run_test("owner-grouping", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        // Admitted before enforcement: three privileged Pods (Pending: no kubelet here).
        apply(t, &seed_deployment(&ns, "web", true, 3)).await?;
        let pods = t.pods(&ns);
        eventually("three Pods of the Deployment", EVENTUALLY, || {
            let pods = pods.clone();
            async move { Ok((pods.list(&ListParams::default()).await?.items.len() == 3).then_some(())) }
        })
        .await?;
        let profile = t
            .profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
            .await?;
        let p = t
            .wait_status(&profile, "three Pods grouped under the Deployment", |p| {
                enforce_of(p).is_some_and(|e| e.violating_pods == 3 && !e.owners.is_empty())
            })
            .await?;
        let enforce = enforce_of(&p).ok_or_else(|| anyhow!("no enforce status"))?;
        let owners: Vec<_> = enforce
            .owners
            .iter()
            .map(|o| (o.namespace.as_str(), o.kind.as_str(), o.name.as_str(), o.violating_pods))
            .collect();
        assert_eq!(owners, [(ns.as_str(), "Deployment", "web", 3)]);
        // Its template is what the next Pod comes from: blocked too.
        assert_eq!(blocked(&p), 1);
        Ok(())
    })
    .await
}
