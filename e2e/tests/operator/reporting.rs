//! What the operator reports about running Pods: the privileged Pod of the seed in status and
//! metrics with the API server's exact message, and status and metrics telling the same story.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use pss_operator::operator::crd::{ModeStatus, NamespaceViolations};
use pss_operator::pss::Level;
use serde_json::json;

use super::labels::is_true;
use super::support::{
    ENFORCE, Metrics, OpTest, baseline_pod, evaluate_stored, privileged_container, restricted_pod,
    run_test,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privileged_pod_created_before_enforcement_shows_in_status_and_metrics() -> Result<()> {
    run_test("privileged-pod", async |t: &OpTest| {
        let ns = t.namespace("ns", &[]).await?;
        let spec = json!({"containers": [
            privileged_container("nginx"),
            privileged_container("sidecar"),
        ]});
        let pod = t.pod(&ns, "nginx", spec.clone()).await?;
        // Counted everywhere, before any profile governs the namespace.
        t.wait_metrics("pss_privileged_containers = 2 in the unmanaged namespace", |m| {
            m.value("pss_privileged_containers", &[("namespace", &ns)]) == Some(2.0)
        })
        .await?;

        let profile = t
            .profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
            .await?;
        t.wait_labels(&ns, &[(ENFORCE, "baseline")], &[]).await?;
        let p = t
            .wait_status(&profile, "the privileged pod reported", |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.enforce.as_ref())
                    .is_some_and(|e| e.violating_pods == 1 && e.samples.len() == 1)
            })
            .await?;
        let enforce = p
            .status
            .as_ref()
            .and_then(|s| s.enforce.clone())
            .ok_or_else(|| anyhow!("no enforce status"))?;
        assert_eq!(enforce.level.as_deref(), Some("baseline:latest"));
        assert_eq!(enforce.by_check, BTreeMap::from([("privileged".to_owned(), 1)]));
        assert_eq!(
            enforce.namespaces,
            [NamespaceViolations {
                namespace: ns.clone(),
                violating_pods: 1
            }]
        );
        let sample = &enforce.samples[0];
        assert_eq!((sample.namespace.as_str(), sample.pod.as_str()), (ns.as_str(), pod.as_str()));
        assert_eq!(sample.checks, ["privileged"]);

        // The message is exactly what kube-apiserver answers now that enforce=baseline is set
        // (a dry-run create of the same Pod), and what our evaluator says of the stored Pod.
        let upstream = apiserver_denial(t, &ns, &spec).await?;
        let (checks, ours) = evaluate_stored(t, &ns, &pod, Level::Baseline).await?;
        assert_eq!(
            upstream,
            r#"violates PodSecurity "baseline:latest": privileged (containers "nginx", "sidecar" must not set securityContext.privileged=true)"#
        );
        assert_eq!(sample.message, upstream, "status sample vs kube-apiserver");
        assert_eq!(sample.message, ours, "status sample vs our evaluator");
        assert_eq!(checks, sample.checks);
        assert!(!is_true(&p, "Degraded"));

        let m = t
            .wait_metrics("violation series of the privileged pod", |m| {
                m.value(
                    "pss_pod_violations",
                    &[
                        ("namespace", &ns),
                        ("profile", &profile),
                        ("mode", "enforce"),
                        ("check", "privileged"),
                    ],
                ) == Some(1.0)
            })
            .await?;
        assert_eq!(
            m.value("pss_privileged_containers", &[("namespace", &ns)]),
            Some(2.0)
        );
        assert_eq!(
            m.value(
                "pss_violating_pods",
                &[("namespace", &ns), ("profile", &profile), ("mode", "enforce")]
            ),
            Some(1.0)
        );

        // The namespace goes: its series go with it, and the status forgets it.
        crate::harness::delete_namespace(&t.client, &ns).await?;
        t.wait_metrics("no series left for the deleted namespace", |m| {
            m.0.iter()
                .all(|s| s.labels.get("namespace").map(String::as_str) != Some(ns.as_str()))
        })
        .await?;
        t.wait_status(&profile, "nothing matched, nothing violating", |p| {
            p.status.as_ref().is_some_and(|s| {
                s.matched_namespaces == 0
                    && s.enforce.as_ref().is_some_and(|e| e.violating_pods == 0)
            })
        })
        .await?;
        Ok(())
    })
    .await
}

/// kube-apiserver's PodSecurity denial for a dry-run create of `spec` in `ns`, without the
/// `pods "<name>" is forbidden: ` prefix.
async fn apiserver_denial(t: &OpTest, ns: &str, spec: &serde_json::Value) -> Result<String> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "dry-run", "namespace": ns},
        "spec": spec,
    }))?;
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match t.pods(ns).create(&params, &pod).await {
        Ok(_) => bail!("kube-apiserver admitted the privileged pod in {ns}"),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(status
            .message
            .split_once(" is forbidden: ")
            .map(|(_, m)| m.to_owned())
            .ok_or_else(|| anyhow!("unexpected 403: {}", status.message))?),
        Err(e) => Err(e.into()),
    }
}

/// What a profile's mode status and the metrics of its namespaces should show.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    violating: i32,
    by_check: BTreeMap<String, i32>,
    by_namespace: BTreeMap<String, i32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_agree() -> Result<()> {
    run_test("status-metrics", async |t: &OpTest| {
        let a = t.namespace("a", &[]).await?;
        let b = t.namespace("b", &[]).await?;
        let pods = [
            (
                a.clone(),
                "priv",
                json!({"containers": [privileged_container("c")]}),
            ),
            (a.clone(), "plain", baseline_pod()),
            (a.clone(), "good", restricted_pod()),
            (b.clone(), "plain1", baseline_pod()),
            (b.clone(), "plain2", baseline_pod()),
            (b.clone(), "good", restricted_pod()),
        ];
        for (ns, name, spec) in &pods {
            t.pod(ns, name, spec.clone()).await?;
        }
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

        // Expected from our evaluator on the stored Pods, per mode's level.
        let mut expected: BTreeMap<&str, Expected> = BTreeMap::new();
        for (mode, level) in [
            ("enforce", Level::Baseline),
            ("audit", Level::Restricted),
            ("warn", Level::Restricted),
        ] {
            let e = expected.entry(mode).or_default();
            for (ns, name, _) in &pods {
                let (checks, _) = evaluate_stored(t, ns, name, level).await?;
                if checks.is_empty() {
                    continue;
                }
                e.violating += 1;
                *e.by_namespace.entry(ns.clone()).or_default() += 1;
                for c in checks {
                    *e.by_check.entry(c).or_default() += 1;
                }
            }
        }
        ensure!(
            expected["enforce"].violating == 1 && expected["audit"].violating == 4,
            "the pods were meant to give 1 baseline and 4 restricted violators: {expected:?}"
        );

        let p = t
            .wait_status(&profile, "the expected counts", |p| {
                let Some(s) = p.status.as_ref() else {
                    return false;
                };
                [
                    ("enforce", &s.enforce),
                    ("audit", &s.audit),
                    ("warn", &s.warn),
                ]
                .iter()
                .all(|(mode, st)| st.as_ref().map(from_status).as_ref() == Some(&expected[mode]))
            })
            .await?;
        let status = p.status.clone().unwrap_or_default();
        assert_eq!(status.matched_namespaces, 2);
        // The breakdown is sorted: most violating Pods first.
        let audit = status.audit.clone().unwrap_or_default();
        assert_eq!(
            audit.namespaces,
            [
                NamespaceViolations {
                    namespace: a.clone(),
                    violating_pods: 2
                },
                NamespaceViolations {
                    namespace: b.clone(),
                    violating_pods: 2
                },
            ]
        );
        // Privileged containers first among samples, then by namespace and pod.
        let sampled: Vec<(&str, &str)> = audit
            .samples
            .iter()
            .map(|s| (s.namespace.as_str(), s.pod.as_str()))
            .collect();
        assert_eq!(
            sampled,
            [
                (a.as_str(), "priv"),
                (a.as_str(), "plain"),
                (b.as_str(), "plain1"),
                (b.as_str(), "plain2")
            ]
        );

        // The metrics of the same namespaces say the same, mode by mode.
        let m = t
            .wait_metrics("metrics agreeing with the status", |m| {
                ["enforce", "audit", "warn"]
                    .iter()
                    .all(|mode| from_metrics(m, &profile, mode) == expected[mode])
            })
            .await?;
        for (mode, st) in [
            ("enforce", &status.enforce),
            ("audit", &status.audit),
            ("warn", &status.warn),
        ] {
            let st = st.as_ref().ok_or_else(|| anyhow!("no {mode} status"))?;
            assert_eq!(from_metrics(&m, &profile, mode), from_status(st), "{mode}");
        }
        assert_eq!(
            m.value("pss_privileged_containers", &[("namespace", &a)]),
            Some(1.0)
        );
        assert_eq!(
            m.value("pss_privileged_containers", &[("namespace", &b)]),
            Some(0.0)
        );
        Ok(())
    })
    .await
}

fn from_status(s: &ModeStatus) -> Expected {
    Expected {
        violating: s.violating_pods,
        by_check: s.by_check.clone(),
        by_namespace: s
            .namespaces
            .iter()
            .map(|n| (n.namespace.clone(), n.violating_pods))
            .collect(),
    }
}

fn from_metrics(m: &Metrics, profile: &str, mode: &str) -> Expected {
    let mut e = Expected::default();
    for s in m.find(
        "pss_violating_pods",
        &[("profile", profile), ("mode", mode)],
    ) {
        let n = s.value as i32;
        e.violating += n;
        if n > 0 {
            e.by_namespace
                .insert(s.labels.get("namespace").cloned().unwrap_or_default(), n);
        }
    }
    for s in m.find(
        "pss_pod_violations",
        &[("profile", profile), ("mode", mode)],
    ) {
        *e.by_check
            .entry(s.labels.get("check").cloned().unwrap_or_default())
            .or_default() += s.value as i32;
    }
    e
}
