//! Namespace labels: applied to selected namespaces only (server-side apply, one field manager,
//! nothing else touched), drift put back (Event, metric, status), `allowStricter` both ways, and
//! namespaces that start matching later.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use pss_operator::operator::record::{ANNOTATION, Record};

use super::support::{
    AUDIT, AUDIT_VERSION, ENFORCE, ENFORCE_VERSION, MANAGER, OpTest, TEST_LABEL, WARN,
    WARN_VERSION, manager_entries, run_test,
};
use crate::harness::eventually;

fn condition<'a>(
    p: &'a pss_operator::operator::crd::PodSecurityProfile,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn is_true(p: &pss_operator::operator::crd::PodSecurityProfile, type_: &str) -> bool {
    condition(p, type_).is_some_and(|c| c.status == "True")
}

pub fn reason<'a>(p: &'a pss_operator::operator::crd::PodSecurityProfile, type_: &str) -> &'a str {
    condition(p, type_).map_or("", |c| c.reason.as_str())
}

pub fn message<'a>(p: &'a pss_operator::operator::crd::PodSecurityProfile, type_: &str) -> &'a str {
    condition(p, type_).map_or("", |c| c.message.as_str())
}

fn status_num(
    p: &pss_operator::operator::crd::PodSecurityProfile,
    f: impl Fn(&pss_operator::operator::crd::PodSecurityProfileStatus) -> i64,
) -> i64 {
    p.status.as_ref().map_or(-1, f)
}

/// The label keys in a managedFields `fieldsV1` under `f:metadata.f:labels`.
fn label_fields(fields: &Value) -> Vec<String> {
    fields["f:metadata"]["f:labels"]
        .as_object()
        .map(|o| {
            o.keys()
                .filter_map(|k| k.strip_prefix("f:"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

const ALL_SIX: [&str; 6] = [
    ENFORCE,
    ENFORCE_VERSION,
    AUDIT,
    AUDIT_VERSION,
    WARN,
    WARN_VERSION,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_applied_to_selected_namespaces_only_and_nothing_else_is_touched() -> Result<()>
{
    run_test("labels-selected", async |t: &OpTest| {
        let other = t.namespace("other", &[("keep", "me")]).await?;
        let selected = t
            .namespace("sel", &[("team", "apps"), ("keep", "me")])
            .await?;
        // Something of the namespace the operator must leave alone: an annotation.
        t.namespaces()
            .patch(
                &selected,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {"owner": "platform"}}})),
            )
            .await?;
        let before = t.namespaces().get(&selected).await?;
        // The operator has seen `other`: no profile selects it and it has no enforce label.
        t.wait_metrics("the unselected namespace is reported unprotected", |m| {
            m.value("pss_unprotected_namespace", &[("namespace", &other)]) == Some(1.0)
        })
        .await?;

        let profile = t
            .profile(
                "p",
                t.spec(
                    &[("team", "apps")],
                    json!({
                        "enforce": {"level": "baseline"},
                        "audit": {"level": "restricted", "version": "v1.30"},
                        "warn": {"level": "restricted", "version": "latest"},
                    }),
                )?,
            )
            .await?;
        let want = [
            (ENFORCE, "baseline"),
            (ENFORCE_VERSION, "latest"),
            (AUDIT, "restricted"),
            (AUDIT_VERSION, "v1.30"),
            (WARN, "restricted"),
            (WARN_VERSION, "latest"),
        ];
        let labels = t.wait_labels(&selected, &want, &[]).await?;

        // Exactly the namespace's own labels plus the six PSA labels.
        let mut expected: BTreeMap<String, String> =
            before.metadata.labels.clone().unwrap_or_default();
        expected.extend(want.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(labels, expected, "labels of {selected}");
        let after = t.namespaces().get(&selected).await?;
        // Its annotations untouched, plus the operator's ledger: what it applied, for which
        // profile, and that none of these labels existed before.
        let mut annotations = after.metadata.annotations.clone().unwrap_or_default();
        let ledger = annotations
            .remove(ANNOTATION)
            .context("the ledger annotation")?;
        assert_eq!(
            Some(annotations),
            before.metadata.annotations,
            "annotations untouched"
        );
        let record = Record::decode(&ledger).map_err(|e| anyhow::anyhow!("{e}: {ledger}"))?;
        assert_eq!(record.profile, profile);
        let applied: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(*record.labels, applied);
        assert_eq!(record.declared.as_deref(), Some(&applied));
        assert!(
            record.prior.len() == 6 && record.prior.values().all(Option::is_none),
            "none existed before: {ledger}"
        );
        // One server-side apply entry of our field manager, owning exactly the six labels and
        // the ledger annotation.
        let ours: Vec<(String, String, Value)> = manager_entries(&after)
            .into_iter()
            .filter(|(m, _, _)| m == MANAGER)
            .collect();
        assert_eq!(
            ours.len(),
            1,
            "one managedFields entry of {MANAGER}: {ours:?}"
        );
        assert_eq!(ours[0].1, "Apply", "written by server-side apply");
        let mut owned = label_fields(&ours[0].2);
        owned.sort();
        let mut six: Vec<String> = ALL_SIX.iter().map(|s| s.to_string()).collect();
        six.sort();
        assert_eq!(owned, six, "the operator owns exactly the PSA labels");
        assert_eq!(
            ours[0]
                .2
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["f:metadata".to_owned()]),
            "only metadata: {}",
            ours[0].2
        );
        assert_eq!(
            ours[0].2["f:metadata"]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["f:annotations".to_owned(), "f:labels".to_owned()]),
            "only labels and the ledger: {}",
            ours[0].2
        );
        assert_eq!(
            ours[0].2["f:metadata"]["f:annotations"],
            json!({ format!("f:{ANNOTATION}"): {} }),
            "of the annotations only the ledger"
        );

        // Status: one namespace matched and labelled as declared.
        let p = t
            .wait_status(&profile, "Ready, 1 matched and enforced", |p| {
                is_true(p, "Ready")
                    && status_num(p, |s| s.matched_namespaces.into()) == 1
                    && status_num(p, |s| s.enforced_namespaces.into()) == 1
            })
            .await?;
        assert_eq!(reason(&p, "Ready"), "Reconciled");
        assert!(!is_true(&p, "Conflicted") && !is_true(&p, "Degraded"));
        // A Normal Event on the namespace says what was applied.
        let applied = eventually(
            "LabelsApplied event",
            super::support::EVENTUALLY,
            || async {
                let events = t.events(&selected, "LabelsApplied").await?;
                Ok((!events.is_empty()).then_some(events))
            },
        )
        .await?;
        assert_eq!(applied[0].type_.as_deref(), Some("Normal"));
        let note = applied[0].note.clone().unwrap_or_default();
        assert!(
            note.contains(&profile) && note.contains("pod-security.kubernetes.io/enforce=baseline"),
            "{note}"
        );
        // Metrics: the level in force per mode.
        let m = t
            .wait_metrics("pss_namespace_level of the selected namespace", |m| {
                m.value(
                    "pss_namespace_level",
                    &[
                        ("namespace", &selected),
                        ("profile", &profile),
                        ("mode", "audit"),
                        ("level", "restricted"),
                        ("version", "v1.30"),
                    ],
                ) == Some(1.0)
            })
            .await?;
        assert_eq!(
            m.find("pss_namespace_level", &[("namespace", &selected)])
                .len(),
            3,
            "one series per mode"
        );
        assert_eq!(
            m.value("pss_unprotected_namespace", &[("namespace", &selected)]),
            None
        );

        // The unselected namespace: untouched, still unprotected.
        let other_ns: Namespace = t.namespaces().get(&other).await?;
        let other_labels = other_ns.metadata.labels.clone().unwrap_or_default();
        assert!(
            !other_labels
                .keys()
                .any(|k| k.starts_with("pod-security.kubernetes.io/")),
            "{other} must not be labelled: {other_labels:?}"
        );
        assert!(
            !manager_entries(&other_ns)
                .iter()
                .any(|(m, _, _)| m == MANAGER),
            "the operator never wrote {other}"
        );
        assert_eq!(
            m.value("pss_unprotected_namespace", &[("namespace", &other)]),
            Some(1.0)
        );
        assert!(
            m.find("pss_namespace_level", &[("namespace", &other)])
                .is_empty()
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_restored_with_a_warning_event_a_metric_and_a_status_count() -> Result<()> {
    run_test("drift", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[],
                    json!({
                        "enforce": {"level": "baseline"},
                        "audit": {"level": "restricted"},
                        "warn": {"level": "restricted"},
                    }),
                )?,
            )
            .await?;
        let want = [
            (ENFORCE, "baseline"),
            (ENFORCE_VERSION, "latest"),
            (AUDIT, "restricted"),
            (WARN, "restricted"),
        ];
        t.wait_labels(&ns, &want, &[]).await?;
        t.wait_status(&profile, "Ready", |p| is_true(p, "Ready"))
            .await?;

        // 1. Someone removes the enforce label.
        t.edit_labels(&ns, &[(ENFORCE, None)]).await?;
        t.wait_labels(&ns, &want, &[]).await?;
        let note = drift_event(t, &ns, ENFORCE).await?;
        assert_eq!(
            note,
            format!("label {ENFORCE} was <removed>, restored to \"baseline\" (profile {profile})")
        );
        let drift = |label: &'static str| {
            let (ns, profile) = (ns.clone(), profile.clone());
            move |m: &super::support::Metrics| {
                m.value(
                    "pss_label_drift_total",
                    &[("namespace", &ns), ("profile", &profile), ("label", label)],
                )
            }
        };
        t.wait_metrics("pss_label_drift_total for enforce = 1", |m| {
            drift(ENFORCE)(m) == Some(1.0)
        })
        .await?;
        t.wait_status(&profile, "driftCorrections = 1", |p| {
            status_num(p, |s| s.drift_corrections) == 1
        })
        .await?;

        // 2. Someone lowers warn to privileged.
        t.edit_labels(&ns, &[(WARN, Some("privileged"))]).await?;
        t.wait_labels(&ns, &want, &[]).await?;
        let note = drift_event(t, &ns, WARN).await?;
        assert_eq!(
            note,
            format!(
                "label {WARN} was \"privileged\", restored to \"restricted\" (profile {profile})"
            )
        );
        let m = t
            .wait_metrics("pss_label_drift_total for warn = 1", |m| {
                drift(WARN)(m) == Some(1.0)
            })
            .await?;
        assert_eq!(drift(ENFORCE)(&m), Some(1.0), "enforce counted once");
        assert_eq!(drift(AUDIT)(&m), None, "audit never drifted");
        // The pass that repaired reported the labels it found; a later one shows them as declared.
        t.wait_status(&profile, "Ready with driftCorrections = 2", |p| {
            is_true(p, "Ready") && status_num(p, |s| s.drift_corrections) == 2
        })
        .await?;
        Ok(())
    })
    .await
}

/// Waits for the Warning `LabelDriftRepaired` Event about `label` on `ns`; returns its note.
async fn drift_event(t: &OpTest, ns: &str, label: &str) -> Result<String> {
    let needle = format!("label {label} was ");
    let event = eventually(
        &format!("Warning LabelDriftRepaired event about {label} on {ns}"),
        super::support::EVENTUALLY,
        || async {
            let events = t.events(ns, "LabelDriftRepaired").await?;
            Ok(events
                .into_iter()
                .find(|e| e.note.as_deref().is_some_and(|n| n.starts_with(&needle))))
        },
    )
    .await?;
    ensure!(
        event.type_.as_deref() == Some("Warning"),
        "drift events are Warnings: {event:?}"
    );
    Ok(event.note.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_stricter_keeps_a_stricter_level_when_true_and_reverts_it_when_false() -> Result<()> {
    run_test("allow-stricter", async |t: &OpTest| {
        let floor = [("stricter", "true")];
        let exact = [("stricter", "false")];
        // Found stricter before the profile exists (restricted at v1.36 refuses all that
        // baseline:latest refuses, on v1.37 and on v1.31 servers alike).
        let keep = t
            .namespace(
                "keep",
                &[
                    floor[0],
                    (ENFORCE, "restricted"),
                    (ENFORCE_VERSION, "v1.36"),
                ],
            )
            .await?;
        // Found at a stricter level but an older version: restricted:v1.30 admits host probes
        // (refused from v1.34), so on a server that checks them it is raised to the floor.
        let older = t
            .namespace(
                "older",
                &[
                    floor[0],
                    (ENFORCE, "restricted"),
                    (ENFORCE_VERSION, "v1.30"),
                ],
            )
            .await?;
        // Found below the floor.
        let low = t
            .namespace("low", &[floor[0], (ENFORCE, "privileged")])
            .await?;
        let revert = t
            .namespace("revert", &[exact[0], (ENFORCE, "restricted")])
            .await?;
        let spec = |allow: bool| {
            json!({
                "enforce": {"level": "baseline"},
                "warn": {"level": "baseline"},
                "allowStricter": allow,
            })
        };
        let p_true = t.profile("true", t.spec(&floor, spec(true))?).await?;
        let p_false = t.profile("false", t.spec(&exact, spec(false))?).await?;

        // Below the floor: raised. allowStricter false: the stricter value is reverted.
        t.wait_labels(
            &low,
            &[(ENFORCE, "baseline"), (ENFORCE_VERSION, "latest")],
            &[],
        )
        .await?;
        t.wait_labels(
            &revert,
            &[(ENFORCE, "baseline"), (ENFORCE_VERSION, "latest")],
            &[],
        )
        .await?;
        // Stricter with allowStricter: once the operator wrote warn there, enforce is still
        // restricted at the version found.
        let labels = t
            .wait_labels(&keep, &[(WARN, "baseline"), (WARN_VERSION, "latest")], &[])
            .await?;
        assert_eq!(labels.get(ENFORCE).map(String::as_str), Some("restricted"));
        assert_eq!(
            labels.get(ENFORCE_VERSION).map(String::as_str),
            Some("v1.36")
        );
        let kube = crate::harness::server_version(&t.client).await?;
        let older_wanted = if kube.minor >= 34 {
            [(ENFORCE, "baseline"), (ENFORCE_VERSION, "latest")]
        } else {
            // v1.31 has no host probe check: restricted:v1.30 refuses all baseline:latest does.
            [(ENFORCE, "restricted"), (ENFORCE_VERSION, "v1.30")]
        };
        t.wait_labels(
            &older,
            &[(WARN, "baseline"), older_wanted[0], older_wanted[1]],
            &[],
        )
        .await?;
        let p = t
            .wait_status(&p_true, "its three namespaces as declared", |p| {
                is_true(p, "Ready") && status_num(p, |s| s.enforced_namespaces.into()) == 3
            })
            .await?;
        assert_eq!(
            status_num(&p, |s| s.drift_corrections),
            0,
            "a kept value is no drift"
        );

        // Later, by hand: enforce raised to restricted, and warn removed (which the operator
        // must put back: once it has, it has judged the raised enforce too).
        let by_hand = [(ENFORCE, Some("restricted")), (WARN, None)];
        t.edit_labels(&low, &by_hand).await?;
        t.edit_labels(&revert, &by_hand).await?;
        let labels = t.wait_labels(&low, &[(WARN, "baseline")], &[]).await?;
        assert_eq!(
            labels.get(ENFORCE).map(String::as_str),
            Some("restricted"),
            "allowStricter: true keeps the raised level"
        );
        t.wait_labels(&revert, &[(WARN, "baseline"), (ENFORCE, "baseline")], &[])
            .await?;
        t.wait_status(&p_true, "Ready with one drift (warn)", |p| {
            is_true(p, "Ready") && status_num(p, |s| s.drift_corrections) == 1
        })
        .await?;
        t.wait_status(&p_false, "two drifts (enforce and warn)", |p| {
            status_num(p, |s| s.drift_corrections) == 2
        })
        .await?;
        let raised = drift_event(t, &revert, ENFORCE).await?;
        assert_eq!(
            raised,
            format!(
                "label {ENFORCE} was \"restricted\", restored to \"baseline\" (profile {p_false})"
            )
        );
        ensure!(
            t.events(&low, "LabelDriftRepaired")
                .await?
                .iter()
                .all(|e| !e.note.as_deref().unwrap_or_default().contains(ENFORCE)),
            "a stricter enforce under allowStricter is not drift"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_namespaces_labelled_at_once_are_announced_by_one_event_on_the_profile() -> Result<()>
{
    run_test("labels-bulk", async |t: &OpTest| {
        // More than the 20 namespaces a profile labels in one pass with an Event each.
        let mut names = Vec::new();
        for i in 0..25 {
            names.push(
                t.namespace(&format!("b{i:02}"), &[("team", "bulk")])
                    .await?,
            );
        }
        // Every one seen before the profile comes: one pass labels them all.
        let last = names.last().context("namespaces")?.clone();
        t.wait_metrics("the last namespace reported unprotected", |m| {
            m.value("pss_unprotected_namespace", &[("namespace", &last)]) == Some(1.0)
        })
        .await?;
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[("team", "bulk")],
                    json!({"enforce": {"level": "baseline"}}),
                )?,
            )
            .await?;
        for ns in &names {
            t.wait_labels(ns, &[(ENFORCE, "baseline")], &[]).await?;
        }
        let events = eventually(
            "a LabelsApplied event on the profile",
            super::support::EVENTUALLY,
            || async {
                let events = t.profile_events(&profile, "LabelsApplied").await?;
                Ok((!events.is_empty()).then_some(events))
            },
        )
        .await?;
        ensure!(events.len() == 1, "{events:?}");
        let event = &events[0];
        ensure!(event.type_.as_deref() == Some("Normal"), "{event:?}");
        let note = event.note.clone().unwrap_or_default();
        ensure!(
            note.starts_with(&format!(
                "profile {profile} applied labels to 25 namespaces, among them {}: ",
                names[..5].join(", ")
            )) && note.contains("pod-security.kubernetes.io/enforce=baseline"),
            "{note}"
        );
        // `kubectl describe` finds it by the profile's uid.
        let uid = t.profiles().get(&profile).await?.metadata.uid;
        ensure!(
            event.regarding.as_ref().and_then(|r| r.uid.clone()) == uid,
            "{event:?}"
        );
        // Instead of an Event per namespace, not beside them.
        for ns in &names {
            ensure!(t.events(ns, "LabelsApplied").await?.is_empty(), "{ns}");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_starts_matching_gets_the_labels() -> Result<()> {
    run_test("new-namespace", async |t: &OpTest| {
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[("team", "late")],
                    json!({"enforce": {"level": "baseline"}}),
                )?,
            )
            .await?;
        t.wait_status(&profile, "Ready with nothing matched", |p| {
            is_true(p, "Ready") && status_num(p, |s| s.matched_namespaces.into()) == 0
        })
        .await?;
        // A namespace created matching.
        let created = t.namespace("created", &[("team", "late")]).await?;
        t.wait_labels(
            &created,
            &[(ENFORCE, "baseline"), (ENFORCE_VERSION, "latest")],
            &[],
        )
        .await?;
        // A namespace that matches once someone labels it.
        let relabelled = t.namespace("relabelled", &[]).await?;
        t.wait_metrics("the unmatched namespace reported unprotected", |m| {
            m.value("pss_unprotected_namespace", &[("namespace", &relabelled)]) == Some(1.0)
        })
        .await?;
        let labels = t.labels(&relabelled).await?;
        assert!(!labels.contains_key(ENFORCE), "{labels:?}");
        t.edit_labels(&relabelled, &[("team", Some("late"))])
            .await?;
        t.wait_labels(
            &relabelled,
            &[
                (ENFORCE, "baseline"),
                (ENFORCE_VERSION, "latest"),
                (TEST_LABEL, &t.tag),
            ],
            &[],
        )
        .await?;
        t.wait_status(&profile, "2 matched and enforced", |p| {
            is_true(p, "Ready")
                && status_num(p, |s| s.matched_namespaces.into()) == 2
                && status_num(p, |s| s.enforced_namespaces.into()) == 2
        })
        .await?;
        t.wait_metrics("no longer unprotected", |m| {
            m.value("pss_unprotected_namespace", &[("namespace", &relabelled)])
                .is_none()
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_change_is_applied_and_a_dropped_mode_takes_its_labels_off() -> Result<()> {
    run_test("profile-change", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[],
                    json!({"enforce": {"level": "baseline"}, "warn": {"level": "restricted"}}),
                )?,
            )
            .await?;
        t.wait_labels(&ns, &[(ENFORCE, "baseline"), (WARN, "restricted")], &[])
            .await?;
        // enforce raised, warn dropped: the namespace follows, and that is no drift.
        t.patch_spec(
            &profile,
            json!({"enforce": {"level": "restricted", "version": "v1.33"}, "warn": null}),
        )
        .await?;
        t.wait_labels(
            &ns,
            &[(ENFORCE, "restricted"), (ENFORCE_VERSION, "v1.33")],
            &[WARN, WARN_VERSION],
        )
        .await?;
        let p = t
            .wait_status(&profile, "Ready at generation 2", |p| {
                is_true(p, "Ready") && p.metadata.generation == Some(2)
            })
            .await?;
        assert_eq!(status_num(&p, |s| s.drift_corrections), 0);
        assert!(t.events(&ns, "LabelDriftRepaired").await?.is_empty());
        let namespace = t.namespaces().get(&ns).await?;
        let ours: Vec<(String, String, Value)> = manager_entries(&namespace)
            .into_iter()
            .filter(|(m, _, _)| m == MANAGER)
            .collect();
        assert_eq!(ours.len(), 1, "{ours:?}");
        let mut owned = label_fields(&ours[0].2);
        owned.sort();
        assert_eq!(
            owned,
            [ENFORCE, ENFORCE_VERSION],
            "we own only what is declared"
        );
        t.wait_metrics("the level series follow the profile", |m| {
            m.value(
                "pss_namespace_level",
                &[
                    ("namespace", &ns),
                    ("mode", "enforce"),
                    ("level", "restricted"),
                    ("version", "v1.33"),
                ],
            ) == Some(1.0)
                && m.find(
                    "pss_namespace_level",
                    &[("namespace", &ns), ("level", "baseline")],
                )
                .is_empty()
        })
        .await?;
        Ok(())
    })
    .await
}
