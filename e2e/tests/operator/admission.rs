//! What the cluster really enforces: a kube-apiserver started with a PodSecurity admission
//! configuration (defaults `enforce: baseline`, an exempt namespace, an exempt RuntimeClass) and
//! the operator given the same file. What the operator reports as unprotected, exempt and
//! violating must equal what that server enforces, asked by dry-run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::support::{
    ENFORCE, Metrics, http_get, install_as_service_account, kubectl_sync, privileged_container,
    spawn_operator,
};
use crate::harness::{self, eventually, unique_name, wait_for_default_service_account};
use pss_operator::operator::crd::PodSecurityProfile;

/// The same file kube-apiserver and the operator read (an AdmissionConfiguration, as a cluster
/// admin writes it).
const ADMISSION_CONFIG: &str = r#"apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
      enforce-version: latest
    exemptions:
      namespaces: [adm-legacy]
      runtimeClasses: [adm-kata]
"#;

fn privileged_pod(name: &str, runtime_class: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [privileged_container("app")]},
    });
    if let Some(rc) = runtime_class {
        pod["spec"]["runtimeClassName"] = json!(rc);
    }
    pod
}

/// The server's verdict on creating `pod` in `ns`, by dry-run: `None` admitted, else the denial.
async fn dry_run(client: &Client, ns: &str, pod: &Value) -> Result<Option<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod.clone())?;
    match pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("PodSecurity") => {
            Ok(Some(s.message))
        }
        Err(e) => Err(e).context("dry-run"),
    }
}

async fn metrics(addr: &str) -> Result<Metrics> {
    let (code, text) = http_get(addr, "/metrics").await?;
    ensure!(code == 200, "/metrics answered {code}");
    Metrics::parse(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reports_what_a_server_with_an_admission_configuration_enforces() -> Result<()>
{
    let cluster = tokio::task::spawn_blocking(|| harness::admission_cluster(ADMISSION_CONFIG))
        .await
        .map_err(|e| anyhow!("starting the control plane panicked: {e}"))?;
    let client = harness::client(cluster).await?;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_name("admission-operator"));
    let kubeconfig = tokio::task::block_in_place(|| install_as_service_account(cluster, &dir))?;
    let config_file = dir.join("admission.yaml");
    std::fs::write(&config_file, ADMISSION_CONFIG)?;
    // The RuntimeClass the exemption names must exist for the RuntimeClass admission plugin.
    let runtime_class = dir.join("runtimeclass.yaml");
    std::fs::write(
        &runtime_class,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: adm-kata}\nhandler: kata\n",
    )?;
    kubectl_sync(cluster, &["apply", "-f", &runtime_class.to_string_lossy()])?;

    // Namespaces: unlabelled (the default enforces baseline), labelled privileged, exempt (its
    // restricted label means nothing), and one a profile governs.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels: [(&str, &[(&str, &str)]); 4] = [
        ("adm-default", &[]),
        ("adm-open", &[(ENFORCE, "privileged")]),
        ("adm-legacy", &[(ENFORCE, "restricted")]),
        ("adm-governed", &[("adm-team", "web")]),
    ];
    for (name, l) in labels {
        harness::create_namespace(&client, name, l).await?;
        wait_for_default_service_account(&client, name).await?;
    }

    // Running Pods the server admits although privileged: in the exempt namespace, and with the
    // exempt RuntimeClass in namespaces that enforce baseline.
    let create = |ns: &'static str, pod: Value| {
        let client = client.clone();
        async move {
            let pods: Api<Pod> = Api::namespaced(client, ns);
            pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
                .await
                .with_context(|| format!("creating a Pod in {ns}"))
        }
    };
    create("adm-legacy", privileged_pod("legacy", None)).await?;
    create("adm-default", privileged_pod("kata", Some("adm-kata"))).await?;
    create("adm-governed", privileged_pod("kata", Some("adm-kata"))).await?;

    // A WhenCompliant profile raising adm-governed to baseline: the exempt Pod does not hold it.
    let profile: PodSecurityProfile = serde_json::from_value(json!({
        "apiVersion": "pss-operator.io/v1alpha1", "kind": "PodSecurityProfile",
        "metadata": {"name": "adm-web"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"adm-team": "web"}},
            "enforce": {"level": "baseline"},
            "rollout": "WhenCompliant",
        },
    }))?;
    let profiles: Api<PodSecurityProfile> = Api::all(client.clone());
    profiles.create(&PostParams::default(), &profile).await?;

    let log = dir.join("operator.log");
    let spawned = spawn_operator(
        &kubeconfig,
        &log,
        "pss-operator-admission",
        &["--admission-config", &config_file.to_string_lossy()],
        Some(&kubeconfig),
    )?;
    let addr = spawned.metrics_addr.clone();
    let _child = ChildGuard(spawned.child);
    let log_tail = || std::fs::read_to_string(&log).unwrap_or_default();

    // The truth, by dry-run: a privileged Pod (no RuntimeClass) in each namespace.
    let mut enforced = BTreeMap::new();
    for (ns, _) in labels {
        enforced.insert(
            ns,
            dry_run(&client, ns, &privileged_pod("probe", None))
                .await?
                .is_some(),
        );
    }
    let kata_refused = dry_run(
        &client,
        "adm-default",
        &privileged_pod("probe", Some("adm-kata")),
    )
    .await?
    .is_some();
    assert_eq!(
        enforced,
        BTreeMap::from([
            ("adm-default", true),
            ("adm-governed", true),
            ("adm-legacy", false),
            ("adm-open", false),
        ]),
        "what the server enforces"
    );
    assert!(!kata_refused, "the exempt RuntimeClass is admitted");

    let last = std::sync::Mutex::new(String::new());
    let m = eventually(
        "the operator's report of the admission configuration",
        Duration::from_secs(90),
        || {
            let (addr, last, enforced) = (addr.clone(), &last, &enforced);
            async move {
                let Ok(m) = metrics(&addr).await else {
                    return Ok(None);
                };
                let unprotected = |ns: &str| {
                    m.value("pss_unprotected_namespace", &[("namespace", ns)]) == Some(1.0)
                };
                let exempt =
                    |ns: &str| m.value("pss_namespace_exempt", &[("namespace", ns)]) == Some(1.0);
                let mut problems = Vec::new();
                if m.value(
                    "pss_namespace_level",
                    &[("namespace", "adm-governed"), ("mode", "enforce")],
                )
                .is_none()
                {
                    problems.push("adm-governed not labelled yet".to_owned());
                }
                // Reported as protected exactly where the server refuses the privileged Pod.
                for (ns, refuses) in enforced {
                    if unprotected(ns) != (!refuses && !exempt(ns)) {
                        problems.push(format!(
                            "{ns}: unprotected={} exempt={} but the server refuses={refuses}",
                            unprotected(ns),
                            exempt(ns)
                        ));
                    }
                }
                if !exempt("adm-legacy") || exempt("adm-default") {
                    problems.push("exempt namespaces: want adm-legacy only".to_owned());
                }
                *last.lock().expect("lock") = problems.join("; ");
                Ok(problems.is_empty().then_some(m))
            }
        },
    )
    .await
    .with_context(|| {
        format!(
            "last: {}\noperator log:\n{}",
            last.lock().expect("lock"),
            log_tail()
        )
    })?;

    // The admitted privileged Pods violate nothing the server enforces (exempt namespace, exempt
    // RuntimeClass), though their containers are privileged.
    for ns in ["adm-default", "adm-legacy", "adm-governed"] {
        let violating = m
            .value(
                "pss_violating_pods",
                &[("namespace", ns), ("mode", "enforce")],
            )
            .unwrap_or(0.0);
        assert_eq!(violating, 0.0, "{ns}: violating Pods reported");
        assert_eq!(
            m.value("pss_privileged_containers", &[("namespace", ns)]),
            Some(1.0),
            "{ns}"
        );
    }
    // The rollout was not held by the exempt Pod: adm-governed enforces baseline. The metrics
    // show the planned level as soon as the pass made it; the label lands with the write a moment
    // later.
    eventually(
        "adm-governed labelled enforce=baseline",
        Duration::from_secs(30),
        || {
            let namespaces = namespaces.clone();
            async move {
                let ns = namespaces.get("adm-governed").await?;
                let labels = ns.metadata.labels.unwrap_or_default();
                Ok((labels.get(ENFORCE).map(String::as_str) == Some("baseline")).then_some(()))
            }
        },
    )
    .await
    .with_context(|| {
        format!(
            "operator log:
{}",
            log_tail()
        )
    })?;
    // The status comes from the reporter, a moment after the pass the metrics show.
    let status = eventually(
        "the status of profile adm-web",
        Duration::from_secs(60),
        || {
            let profiles = profiles.clone();
            async move {
                Ok(profiles
                    .get("adm-web")
                    .await?
                    .status
                    .filter(|s| s.kubernetes_version.is_some() && s.matched_namespaces == 1))
            }
        },
    )
    .await
    .with_context(|| format!("operator log:\n{}", log_tail()))?;
    assert_eq!(status.pending_namespaces, 0);
    let info = client.apiserver_version().await?;
    assert_eq!(
        status.kubernetes_version.as_deref(),
        Some(format!("v1.{}", info.minor.trim_end_matches('+')).as_str())
    );
    assert_eq!(m.value("pss_apiserver_version_unsupported", &[]), Some(0.0));
    Ok(())
}

/// Stops the operator when the test ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
