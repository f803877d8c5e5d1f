//! How profiles decide: priorities and ties, Audit mode, WhenCompliant rollouts, and what happens
//! to the labels when a profile is deleted.

use anyhow::{Result, ensure};
use kube::api::DeleteParams;
use serde_json::json;

use super::labels::{is_true, message, reason};
use super::support::{
    AUDIT, AUDIT_VERSION, ENFORCE, ENFORCE_VERSION, EVENTUALLY, MANAGER, OPERATOR_NAMESPACE,
    OpTest, WARN, WARN_VERSION, baseline_pod, manager_entries, run_test,
};
use crate::harness::eventually;
use pss_operator::operator::record::{ANNOTATION, Record};

const PSA_PREFIX: &str = "pod-security.kubernetes.io/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_wins_and_a_tie_takes_the_most_restrictive_level_and_reports_a_conflict()
-> Result<()> {
    run_test("priority", async |t: &OpTest| {
        let prio = t.namespace("prio", &[("prio", "yes")]).await?;
        let tie = t.namespace("tie", &[("tie", "yes")]).await?;
        // Matches both namespaces at priority 0.
        let low = t
            .profile(
                "low",
                t.spec(
                    &[],
                    json!({"enforce": {"level": "restricted"}, "priority": 0}),
                )?,
            )
            .await?;
        let high = t
            .profile(
                "high",
                t.spec(
                    &[("prio", "yes")],
                    json!({"enforce": {"level": "baseline"}, "priority": 10}),
                )?,
            )
            .await?;
        let tie1 = t
            .profile(
                "tie1",
                t.spec(
                    &[("tie", "yes")],
                    json!({
                        "enforce": {"level": "restricted"},
                        "audit": {"level": "baseline"},
                        "priority": 5,
                    }),
                )?,
            )
            .await?;
        let tie2 = t
            .profile(
                "tie2",
                t.spec(
                    &[("tie", "yes")],
                    json!({
                        "enforce": {"level": "baseline"},
                        "audit": {"level": "restricted"},
                        "warn": {"level": "baseline", "version": "v1.29"},
                        "priority": 5,
                    }),
                )?,
            )
            .await?;

        // Priority 10 beats priority 0: baseline, although `low` asks for restricted.
        t.wait_labels(
            &prio,
            &[(ENFORCE, "baseline"), (ENFORCE_VERSION, "latest")],
            &[],
        )
        .await?;
        // Tie at 5 (over `low`'s 0): the most restrictive per mode, each mode on its own.
        let labels = t
            .wait_labels(
                &tie,
                &[
                    (ENFORCE, "restricted"),
                    (ENFORCE_VERSION, "latest"),
                    (AUDIT, "restricted"),
                    (AUDIT_VERSION, "latest"),
                    (WARN, "baseline"),
                    (WARN_VERSION, "v1.29"),
                ],
                &[],
            )
            .await?;
        assert_eq!(
            labels.keys().filter(|k| k.starts_with(PSA_PREFIX)).count(),
            6,
            "{labels:?}"
        );

        // Both tied profiles are Conflicted, naming the namespace and each other.
        for (me, other) in [(&tie1, &tie2), (&tie2, &tie1)] {
            let p = t
                .wait_status(me, "Conflicted", |p| {
                    is_true(p, "Conflicted")
                        && p.status
                            .as_ref()
                            .is_some_and(|s| s.conflicted_namespaces == 1)
                })
                .await?;
            assert_eq!(reason(&p, "Conflicted"), "EqualPriority");
            let text = message(&p, "Conflicted");
            assert!(
                text.starts_with(&format!(
                    "profiles {other} have the same priority 5 on namespaces {tie};"
                )),
                "{me}: {text}"
            );
        }
        // The winner by priority is not conflicted; the loser governs nothing.
        let p = t
            .wait_status(&high, "Ready", |p| is_true(p, "Ready"))
            .await?;
        assert!(!is_true(&p, "Conflicted"), "{:?}", p.status);
        assert_eq!(p.status.as_ref().map(|s| s.enforced_namespaces), Some(1));
        let p = t
            .wait_status(&low, "2 matched, none enforced", |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.matched_namespaces == 2 && s.enforced_namespaces == 0)
            })
            .await?;
        assert!(!is_true(&p, "Conflicted"), "{:?}", p.status);

        let m = t
            .wait_metrics("pss_namespace_conflict for the tied namespace", |m| {
                m.value("pss_namespace_conflict", &[("namespace", &tie)]) == Some(1.0)
            })
            .await?;
        assert_eq!(
            m.value("pss_namespace_conflict", &[("namespace", &prio)]),
            None
        );
        let event = eventually("ProfileConflict event", EVENTUALLY, || async {
            Ok(t.events(&tie, "ProfileConflict").await?.into_iter().next())
        })
        .await?;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        let note = event.note.unwrap_or_default();
        assert!(note.contains(&tie1) && note.contains(&tie2), "{note}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_writes_nothing_but_reports() -> Result<()> {
    run_test("audit-mode", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        let pod = t.pod(&ns, "legacy", baseline_pod()).await?;
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[],
                    json!({
                        "enforce": {"level": "restricted"},
                        "warn": {"level": "restricted"},
                        "mode": "Audit",
                    }),
                )?,
            )
            .await?;
        // Reported: what it would write, and the Pod that would break it.
        let p = t
            .wait_status(&profile, "AuditOnly with the violating pod", |p| {
                is_true(p, "Ready")
                    && p.status.as_ref().is_some_and(|s| {
                        s.matched_namespaces == 1
                            && s.enforce.as_ref().is_some_and(|e| e.violating_pods == 1)
                    })
            })
            .await?;
        assert_eq!(reason(&p, "Ready"), "AuditOnly");
        assert!(message(&p, "Ready").contains("1 namespaces would be labelled"));
        let status = p.status.clone().unwrap_or_default();
        assert_eq!(status.enforced_namespaces, 0, "nothing enforced");
        let sample = &status
            .enforce
            .as_ref()
            .map(|e| e.samples.clone())
            .unwrap_or_default();
        ensure!(
            sample.len() == 1 && sample[0].namespace == ns && sample[0].pod == pod,
            "one sample, the legacy pod: {sample:?}"
        );
        // What the profile would enforce, apart from what is in force (nothing here): the
        // enforce alert, on pss_violating_pods, stays silent.
        t.wait_metrics(
            "would-violate pods reported for the audited namespace",
            |m| {
                m.value(
                    "pss_would_violate_pods",
                    &[
                        ("namespace", &ns),
                        ("profile", &profile),
                        ("mode", "enforce"),
                    ],
                ) == Some(1.0)
                    && m.find("pss_violating_pods", &[("namespace", &ns)])
                        .is_empty()
                    && m.value("pss_unprotected_namespace", &[("namespace", &ns)]) == Some(1.0)
            },
        )
        .await?;

        // Written: nothing. The status above was computed in a pass that would have written.
        let namespace = t.namespaces().get(&ns).await?;
        let labels = namespace.metadata.labels.clone().unwrap_or_default();
        assert!(
            !labels.keys().any(|k| k.starts_with(PSA_PREFIX)),
            "Audit mode must not label: {labels:?}"
        );
        assert!(
            !manager_entries(&namespace)
                .iter()
                .any(|(m, _, _)| m == MANAGER),
            "the operator never wrote the namespace"
        );
        assert!(t.events(&ns, "LabelsApplied").await?.is_empty());
        let m = t.op.metrics().await?;
        assert!(
            m.find("pss_namespace_level", &[("namespace", &ns)])
                .is_empty(),
            "no level in force is claimed"
        );
        // The Pod is still there to be reported (nothing enforced rejected anything).
        assert!(t.pods(&ns).get_opt(&pod).await?.is_some());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_compliant_holds_enforce_until_the_offending_pod_is_gone() -> Result<()> {
    run_test("when-compliant", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        // Created before any enforcement: breaks restricted.
        let pod = t.pod(&ns, "legacy", baseline_pod()).await?;
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[],
                    json!({"enforce": {"level": "restricted"}, "rollout": "WhenCompliant"}),
                )?,
            )
            .await?;
        // Pending: audit and warn at the target, enforce not set.
        t.wait_labels(
            &ns,
            &[
                (AUDIT, "restricted"),
                (AUDIT_VERSION, "latest"),
                (WARN, "restricted"),
                (WARN_VERSION, "latest"),
            ],
            &[ENFORCE, ENFORCE_VERSION],
        )
        .await?;
        let p = t
            .wait_status(&profile, "pending on the legacy pod", |p| {
                p.status.as_ref().is_some_and(|s| s.pending_namespaces == 1)
            })
            .await?;
        let status = p.status.clone().unwrap_or_default();
        assert_eq!(status.pending.len(), 1, "{:?}", status.pending);
        let pending = &status.pending[0];
        assert_eq!(pending.namespace, ns);
        assert_eq!(pending.target, "restricted:latest");
        assert_eq!(pending.blocking_pods, 1);
        assert_eq!(pending.pods, [pod.as_str()]);
        assert!(!is_true(&p, "Ready"));
        assert_eq!(reason(&p, "Ready"), "RolloutPending");
        t.wait_metrics("pss_rollout_pending = 1", |m| {
            m.value(
                "pss_rollout_pending",
                &[("namespace", &ns), ("profile", &profile)],
            ) == Some(1.0)
        })
        .await?;
        let event = eventually("RolloutPending event", EVENTUALLY, || async {
            Ok(t.events(&ns, "RolloutPending").await?.into_iter().next())
        })
        .await?;
        let note = event.note.unwrap_or_default();
        assert!(note.contains(&pod) && note.contains("restricted"), "{note}");
        // Still held (the status above came from a pass that saw the Pod).
        let labels = t.labels(&ns).await?;
        assert!(
            !labels.contains_key(ENFORCE),
            "enforce must wait: {labels:?}"
        );

        // The offending Pod goes: enforce is raised, and the labels become what the profile
        // declares (the interim audit/warn were the operator's and go with the rollout).
        t.pods(&ns)
            .delete(&pod, &DeleteParams::default().grace_period(0))
            .await?;
        t.wait_labels(
            &ns,
            &[(ENFORCE, "restricted"), (ENFORCE_VERSION, "latest")],
            &[AUDIT, AUDIT_VERSION, WARN, WARN_VERSION],
        )
        .await?;
        let p = t
            .wait_status(&profile, "Ready, nothing pending", |p| {
                is_true(p, "Ready")
                    && p.status
                        .as_ref()
                        .is_some_and(|s| s.pending_namespaces == 0 && s.enforced_namespaces == 1)
            })
            .await?;
        assert_eq!(
            p.status.as_ref().map(|s| s.drift_corrections),
            Some(0),
            "completing a rollout is not drift"
        );
        t.wait_metrics("pss_rollout_pending gone", |m| {
            m.value("pss_rollout_pending", &[("namespace", &ns)])
                .is_none()
        })
        .await?;
        Ok(())
    })
    .await
}

/// The ledger annotation of a namespace, if any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_retain_keeps_the_labels_and_remove_restores_what_was_there_before()
-> Result<()> {
    run_test("deletion-policy", async |t: &OpTest| {
        let retain_ns = t
            .namespace("retain", &[("policy", "retain"), ("keep", "me")])
            .await?;
        // A team had set restricted (at v1.30) before any profile governed the namespace.
        let remove_ns = t
            .namespace(
                "remove",
                &[
                    ("policy", "remove"),
                    ("keep", "me"),
                    (ENFORCE, "restricted"),
                    (ENFORCE_VERSION, "v1.30"),
                ],
            )
            .await?;
        let spec = |policy: &str| {
            json!({
                "enforce": {"level": "baseline"},
                "warn": {"level": "restricted"},
                "deletionPolicy": policy,
            })
        };
        let retain = t
            .profile("retain", t.spec(&[("policy", "retain")], spec("Retain"))?)
            .await?;
        let remove = t
            .profile("remove", t.spec(&[("policy", "remove")], spec("Remove"))?)
            .await?;
        let want = [
            (ENFORCE, "baseline"),
            (ENFORCE_VERSION, "latest"),
            (WARN, "restricted"),
            (WARN_VERSION, "latest"),
        ];
        t.wait_labels(&retain_ns, &want, &[]).await?;
        t.wait_labels(&remove_ns, &want, &[]).await?;
        // The ledger says what was there before the takeover.
        let record = eventually("the ledger of the Remove namespace", EVENTUALLY, || async {
            Ok(t.ledger(&remove_ns)
                .await?
                .and_then(|l| Record::decode(&l).ok()))
        })
        .await?;
        assert_eq!(record.profile, remove);
        assert_eq!(
            record.prior.get(ENFORCE).cloned().flatten().as_deref(),
            Some("restricted")
        );
        assert_eq!(
            record
                .prior
                .get(ENFORCE_VERSION)
                .cloned()
                .flatten()
                .as_deref(),
            Some("v1.30")
        );
        assert_eq!(record.prior.get(WARN), Some(&None), "warn was absent");
        // Remove holds the profile with a finalizer; Retain needs none.
        eventually("the Remove finalizer", EVENTUALLY, || async {
            let p = t.get_profile(&remove).await?;
            Ok(p.metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == "pss-operator.io/remove-labels")
                .then_some(()))
        })
        .await?;
        let p = t.get_profile(&retain).await?;
        assert!(
            p.metadata.finalizers.unwrap_or_default().is_empty(),
            "Retain needs no finalizer"
        );

        // Retain: the labels stay; the namespace is no longer governed, so the ledger goes.
        t.delete_profile(&retain).await?;
        t.wait_metrics("the retained namespace is no longer governed", |m| {
            m.find("pss_namespace_level", &[("namespace", &retain_ns)])
                .is_empty()
        })
        .await?;
        eventually(
            "the retained namespace's ledger gone",
            EVENTUALLY,
            || async { Ok(t.ledger(&retain_ns).await?.is_none().then_some(())) },
        )
        .await?;
        let labels = t.labels(&retain_ns).await?;
        for (k, v) in want {
            assert_eq!(
                labels.get(k).map(String::as_str),
                Some(v),
                "Retain keeps {k}"
            );
        }

        // Remove: the profile goes only after the namespace is back as it was: restricted at
        // v1.30 restored, warn (absent before) taken off, other labels kept, the ledger gone,
        // and nothing of it owned by the operator any more.
        t.delete_profile(&remove).await?;
        let namespace = t.namespaces().get(&remove_ns).await?;
        let labels = namespace.metadata.labels.clone().unwrap_or_default();
        let psa: Vec<(&str, &str)> = labels
            .iter()
            .filter(|(k, _)| k.starts_with(PSA_PREFIX))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            psa,
            [(ENFORCE, "restricted"), (ENFORCE_VERSION, "v1.30")],
            "Remove restores what was there before the takeover: {labels:?}"
        );
        assert_eq!(labels.get("keep").map(String::as_str), Some("me"));
        assert!(
            !namespace
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(ANNOTATION)),
            "the ledger goes"
        );
        assert!(
            !manager_entries(&namespace)
                .iter()
                .any(|(m, op, _)| m == MANAGER && op == "Apply"),
            "the operator owns nothing it restored: {:?}",
            manager_entries(&namespace)
        );
        let event = eventually("LabelsRemoved event", EVENTUALLY, || async {
            Ok(t.events(&remove_ns, "LabelsRemoved")
                .await?
                .into_iter()
                .next())
        })
        .await?;
        let note = event.note.unwrap_or_default();
        assert!(
            note.contains(&format!(
                "restored {ENFORCE}=restricted, {ENFORCE_VERSION}=v1.30"
            )) && note.contains(&format!("removed {WARN}, {WARN_VERSION}")),
            "{note}"
        );
        // Restricted again, by its own labels: not unprotected; its level series are gone.
        let m = t
            .wait_metrics("the released namespace is no longer governed", |m| {
                m.find("pss_namespace_level", &[("namespace", &remove_ns)])
                    .is_empty()
            })
            .await?;
        assert_eq!(
            m.value("pss_unprotected_namespace", &[("namespace", &remove_ns)]),
            None
        );
        assert!(
            m.find("pss_violating_pods", &[("profile", &remove)])
                .is_empty()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_namespaces_are_never_labelled_even_when_selected() -> Result<()> {
    run_test("exclusions", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        // Excluded by default, and the operator's own namespace (--operator-namespace).
        let excluded = ["kube-system", "kube-public", OPERATOR_NAMESPACE];
        let mut before = Vec::new();
        for name in excluded {
            before.push(t.namespaces().get(name).await?);
        }
        let mut names = vec![ns.clone()];
        names.extend(excluded.iter().map(|n| n.to_string()));
        let spec = serde_json::from_value(json!({
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names},
            ]},
            "enforce": {"level": "restricted"},
        }))?;
        let profile = t.profile("p", spec).await?;
        t.wait_labels(&ns, &[(ENFORCE, "restricted")], &[]).await?;
        let p = t
            .wait_status(&profile, "Ready, only the test namespace matched", |p| {
                is_true(p, "Ready")
                    && p.status
                        .as_ref()
                        .is_some_and(|s| s.matched_namespaces == 1 && s.enforced_namespaces == 1)
            })
            .await?;
        assert!(!is_true(&p, "Degraded"));
        let m = t.op.metrics().await?;
        for old in before {
            let name = old.metadata.name.clone().unwrap_or_default();
            let now = t.namespaces().get(&name).await?;
            assert_eq!(now.metadata.labels, old.metadata.labels, "{name} untouched");
            assert!(
                !manager_entries(&now).iter().any(|(m, _, _)| m == MANAGER),
                "the operator never wrote {name}"
            );
            assert!(
                m.find("pss_namespace_level", &[("namespace", &name)])
                    .is_empty()
            );
            assert_eq!(
                m.value("pss_unprotected_namespace", &[("namespace", &name)]),
                None,
                "excluded namespaces are not reported unprotected"
            );
        }
        Ok(())
    })
    .await
}
