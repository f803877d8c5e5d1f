//! Policy reports (`--reports`) on the real control plane, with the OpenReports CRD of
//! config/reports installed: a Report per governed namespace appears with the exact results,
//! follows a Pod change, is not rewritten while nothing changes (nor by a restarted operator), and
//! disappears when the namespace is no longer governed. The RBAC to write reports is granted only
//! by config/reports.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
use kube::api::{Api, DynamicObject};
use serde_json::json;

use pss_operator::operator::reports::{Format, REPORT_NAME};
use pss_operator::pss::Level;

use super::support::{
    ENFORCE, EVENTUALLY, Metrics, OPERATOR_NAMESPACE, OpTest, SERVICE_ACCOUNT, apply_crd,
    baseline_pod, evaluate_stored, http_get, kubectl_sync, privileged_container,
    run_exclusive_test, spawn_operator,
};
use crate::harness::{self, eventually};

/// A second operator writing reports, SIGKILLed when dropped.
struct Reporter {
    child: Child,
    addr: String,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Reporter {
    fn start(t: &OpTest, log: &Path) -> Result<Reporter> {
        let spawned = spawn_operator(
            &t.op.kubeconfig,
            log,
            &format!("{}-reporter", t.tag),
            &["--reports=auto"],
            None,
        )?;
        Ok(Reporter {
            child: spawned.child,
            addr: spawned.metrics_addr,
        })
    }

    async fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http_get(&self.addr, "/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}");
        Metrics::parse(&body)
    }

    async fn writes(&self, operation: &str) -> Result<f64> {
        Ok(self
            .metrics()
            .await?
            .value("pss_report_writes_total", &[("operation", operation)])
            .unwrap_or(0.0))
    }
}

fn can_i(t: &OpTest, verb: &str, resource: &str, ns: &str) -> Result<bool> {
    let out = Command::new(&t.op.cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&t.op.cluster.kubeconfig)
        .args([
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            ns,
            &format!("--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"),
        ])
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
}

fn results(report: &DynamicObject) -> Vec<(String, String, String, String)> {
    report.data["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["policy"].as_str().unwrap_or_default().to_owned(),
                r["resources"][0]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["rule"].as_str().unwrap_or_default().to_owned(),
                r["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_appear_follow_the_pods_are_not_rewritten_and_disappear() -> Result<()> {
    run_exclusive_test("reports", async |t: &OpTest| {
        let cluster = t.op.cluster;
        let root = harness::repo_root().join("config/reports");
        let ns = t.namespace("apps", &[]).await?;
        // Without config/reports the operator may not write reports.
        assert!(!can_i(t, "patch", "reports.openreports.io", &ns)?);
        apply_crd(
            cluster,
            &root.join("crds/openreports.io_reports.yaml"),
            "reports.openreports.io",
        )?;
        for file in ["role.yaml", "role_binding.yaml"] {
            kubectl_sync(
                cluster,
                &["apply", "-f", &root.join(file).to_string_lossy()],
            )?;
        }
        let granted = async {
            for verb in ["list", "create", "patch", "delete"] {
                ensure!(
                    can_i(t, verb, "reports.openreports.io", &ns)?,
                    "{verb} reports"
                );
            }
            ensure!(!can_i(t, "get", "secrets", &ns)?);
            ensure!(
                !can_i(t, "update", "reports.openreports.io", &ns)?,
                "no more than it uses"
            );

            t.pod(
                &ns,
                "root",
                json!({"containers": [privileged_container("nginx")]}),
            )
            .await?;
            let profile = t
                .profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
                .await?;
            t.wait_labels(&ns, &[(ENFORCE, "baseline")], &[]).await?;

            let dir = tempfile::tempdir()?;
            let reporter = Reporter::start(t, &dir.path().join("reporter.log"))?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(t.client.clone(), &ns, &Format::OpenReports.api_resource());
            let report = eventually("the namespace's Report", EVENTUALLY, || async {
                Ok(api
                    .get_opt(REPORT_NAME)
                    .await?
                    .filter(|r| results(r).len() == 1))
            })
            .await
            .map_err(|e| {
                let log = std::fs::read_to_string(dir.path().join("reporter.log"));
                anyhow::anyhow!(
                    "{e:#}\nthe reporting operator's log:\n{}",
                    log.unwrap_or_default()
                )
            })?;
            assert_eq!(
                results(&report),
                [(
                    "pod-security-enforce".into(),
                    "root".into(),
                    "privileged".into(),
                    "fail".into()
                )]
            );
            let (_, message) = evaluate_stored(t, &ns, "root", Level::Baseline).await?;
            let r = &report.data["results"][0];
            assert_eq!(
                r["message"],
                json!(message),
                "kube-apiserver's denial, exact"
            );
            assert_eq!(r["severity"], "high");
            assert_eq!(r["source"], "pss-operator");
            assert_eq!(
                r["resources"][0],
                json!({"apiVersion": "v1", "kind": "Pod", "name": "root", "namespace": ns})
            );
            assert_eq!(
                report.data["summary"],
                json!({"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0})
            );
            assert_eq!(report.data["source"], "pss-operator");
            assert_eq!(
                report.data["scope"],
                json!({"apiVersion": "v1", "kind": "Namespace", "name": ns})
            );
            let managers: Vec<String> = report
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter_map(|f| Some(format!("{}:{}", f.manager.clone()?, f.operation.clone()?)))
                .collect();
            assert_eq!(
                managers,
                ["pss-operator:Apply"],
                "owned by the operator's field manager"
            );

            // A Pod change changes the report: the privileged Pod goes (the namespace enforces
            // baseline now, so no other can come).
            t.pods(&ns)
                .delete("root", &kube::api::DeleteParams::default().grace_period(0))
                .await?;
            let report = eventually("the Pod gone from the Report", EVENTUALLY, || async {
                Ok(api
                    .get_opt(REPORT_NAME)
                    .await?
                    .filter(|r| results(r).is_empty()))
            })
            .await?;
            assert_eq!(report.data["summary"]["fail"], 0);

            // Nothing changes: no write (passes keep running: a label edit elsewhere wakes them).
            let version = report.metadata.resource_version.clone();
            let applies = reporter.writes("apply").await?;
            let other = t.namespace("other", &[]).await?;
            t.wait_labels(&other, &[(ENFORCE, "baseline")], &[]).await?;
            let with_other = eventually("the other namespace's Report", EVENTUALLY, || async {
                Ok(Api::<DynamicObject>::namespaced_with(
                    t.client.clone(),
                    &other,
                    &Format::OpenReports.api_resource(),
                )
                .get_opt(REPORT_NAME)
                .await?)
            })
            .await?;
            assert_eq!(
                with_other.data["summary"]["fail"], 0,
                "a clean namespace has a report too"
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(
                reporter.writes("apply").await?,
                applies + 1.0,
                "one write: the new namespace's"
            );
            assert_eq!(
                api.get(REPORT_NAME).await?.metadata.resource_version,
                version
            );

            // A restarted operator reads what it wrote and writes nothing.
            drop(reporter);
            let reporter = Reporter::start(t, &dir.path().join("reporter2.log"))?;
            eventually("the restarted operator to be ready", EVENTUALLY, || async {
                Ok(matches!(http_get(&reporter.addr, "/readyz").await, Ok((200, _))).then_some(()))
            })
            .await?;
            eventually(
                "the restarted operator to read its reports",
                EVENTUALLY,
                || async {
                    let log = std::fs::read_to_string(dir.path().join("reporter2.log"))
                        .unwrap_or_default();
                    Ok(log.contains("writing policy reports").then_some(()))
                },
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(
                reporter.writes("apply").await?,
                0.0,
                "no write on an unchanged restart"
            );
            assert_eq!(
                api.get(REPORT_NAME).await?.metadata.resource_version,
                version
            );

            // No longer governed: the report goes.
            t.delete_profile(&profile).await?;
            eventually("the Report to be deleted", EVENTUALLY, || async {
                Ok(api.get_opt(REPORT_NAME).await?.is_none().then_some(()))
            })
            .await?;
            assert!(reporter.writes("delete").await? >= 1.0);
            drop(reporter);

            // The older format, with Kyverno's vendored PolicyReport CRD: a Pod that passes the
            // enforced baseline and fails the audited restricted level is a `warn` result.
            apply_crd(
                cluster,
                &root.join("crds/wgpolicyk8s.io_policyreports.yaml"),
                "policyreports.wgpolicyk8s.io",
            )?;
            t.pod(&ns, "plain", baseline_pod()).await?;
            t.profile(
                "audit",
                t.spec(
                    &[],
                    json!({"enforce": {"level": "baseline"}, "audit": {"level": "restricted"}}),
                )?,
            )
            .await?;
            let spawned = spawn_operator(
                &t.op.kubeconfig,
                &dir.path().join("reporter3.log"),
                &format!("{}-reporter3", t.tag),
                &["--reports=policyreport"],
                None,
            )?;
            let _reporter = Reporter {
                child: spawned.child,
                addr: spawned.metrics_addr,
            };
            let policy_reports: Api<DynamicObject> =
                Api::namespaced_with(t.client.clone(), &ns, &Format::PolicyReport.api_resource());
            let report = eventually("the namespace's PolicyReport", EVENTUALLY, || async {
                Ok(policy_reports
                    .get_opt(REPORT_NAME)
                    .await?
                    .filter(|r| !results(r).is_empty()))
            })
            .await
            .map_err(|e| {
                let log = std::fs::read_to_string(dir.path().join("reporter3.log"));
                anyhow::anyhow!(
                    "{e:#}\nthe reporting operator's log:\n{}",
                    log.unwrap_or_default()
                )
            })?;
            let (checks, message) = evaluate_stored(t, &ns, "plain", Level::Restricted).await?;
            let got = results(&report);
            assert_eq!(
                got.len(),
                checks.len(),
                "one result per failing check: {got:?}"
            );
            for ((policy, name, rule, result), check) in got.iter().zip(&checks) {
                assert_eq!(
                    (policy.as_str(), name.as_str(), result.as_str()),
                    ("pod-security-audit", "plain", "warn")
                );
                assert!(checks.contains(rule), "{rule} in {checks:?} ({check})");
            }
            assert_eq!(report.data["results"][0]["message"], json!(message));
            assert_eq!(report.data["results"][0]["severity"], "medium");
            assert_eq!(report.data["summary"]["warn"], json!(checks.len()));
            assert!(
                report.data.get("source").is_none(),
                "no report-level source in v1alpha2"
            );
            Ok(())
        }
        .await;
        // The operator's RBAC back to config/rbac alone, whatever happened.
        for file in ["role_binding.yaml", "role.yaml"] {
            kubectl_sync(
                cluster,
                &[
                    "delete",
                    "--ignore-not-found",
                    "-f",
                    &root.join(file).to_string_lossy(),
                ],
            )?;
        }
        granted
    })
    .await
}
