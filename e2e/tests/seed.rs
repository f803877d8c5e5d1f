//! The seed article, replayed against a real kube-apiserver + kube-controller-manager:
//! a namespace labelled enforce=baseline / audit=restricted / warn=restricted, a privileged nginx
//! Deployment applied with kubectl. The warning is printed, the Deployment exists, but PodSecurity
//! rejects every Pod its ReplicaSet tries to create. With `privileged: false` the Pod is created.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::ListParams;

use crate::harness::{TestEnv, eventually, repo_file};

const SEED_DIR: &str = "examples/seed";
const HANG_GUARD: Duration = Duration::from_secs(120);
const SELECTOR: &str = "app.kubernetes.io/name=nginx";

/// The `pod-security.kubernetes.io/*` labels of the seed namespace manifest.
fn seed_namespace_labels() -> Result<Vec<(String, String)>> {
    let ns: Namespace =
        serde_yaml_ng::from_str(&repo_file(&format!("{SEED_DIR}/namespace-app.yaml"))?)?;
    let labels = ns.metadata.labels.unwrap_or_default();
    ensure!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str)
            == Some("baseline"),
        "examples/seed/namespace-app.yaml should enforce baseline, has {labels:?}"
    );
    Ok(labels.into_iter().collect())
}

/// The seed Deployment moved into `namespace`, optionally with `privileged` changed, as YAML.
fn seed_deployment(namespace: &str, privileged: bool) -> Result<String> {
    let text = repo_file(&format!("{SEED_DIR}/deployment-privileged.yaml"))?;
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    doc["metadata"]["namespace"] = namespace.into();
    let security_context = doc["spec"]["template"]["spec"]["containers"][0]
        .get_mut("securityContext")
        .ok_or_else(|| anyhow!("seed deployment has no containers[0].securityContext"))?;
    ensure!(
        security_context["privileged"] == serde_yaml_ng::Value::Bool(true),
        "seed deployment is expected to be privileged"
    );
    security_context["privileged"] = privileged.into();
    Ok(serde_yaml_ng::to_string(&doc)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_privileged_deployment_is_warned_and_its_pods_rejected() -> Result<()> {
    let labels = seed_namespace_labels()?;
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let env = TestEnv::new("seed", &labels).await?;
    let ns = env.namespace.as_str();
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);

    // 1. kubectl apply prints exactly the article's warning (warn=restricted).
    let applied = env
        .kubectl(&["apply", "-f", "-"], &seed_deployment(ns, true)?)
        .await?;
    let stdout = String::from_utf8_lossy(&applied.stdout);
    let stderr = String::from_utf8_lossy(&applied.stderr);
    ensure!(applied.status.success(), "kubectl apply failed: {stderr}");
    assert_eq!(stdout.trim(), "deployment.apps/nginx created");
    let expected_warning = repo_file(&format!("{SEED_DIR}/expected-warning.txt"))?;
    assert_eq!(
        stderr, expected_warning,
        "kubectl apply's stderr should be exactly examples/seed/expected-warning.txt"
    );

    // 2. The ReplicaSet's Pods are rejected by enforce=baseline: condition ReplicaFailure/FailedCreate.
    let (rs_name, failure) = eventually("ReplicaSet condition ReplicaFailure", HANG_GUARD, || {
        let replica_sets = replica_sets.clone();
        async move {
            for rs in replica_sets
                .list(&ListParams::default().labels(SELECTOR))
                .await?
            {
                let conditions = rs.status.and_then(|s| s.conditions).unwrap_or_default();
                if let Some(c) = conditions
                    .into_iter()
                    .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))
                {
                    return Ok(Some((rs.metadata.name.unwrap_or_default(), c)));
                }
            }
            Ok(None)
        }
    })
    .await?;
    assert_eq!(failure.status.as_deref(), Some("True"));
    assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));
    let message = failure.message.unwrap_or_default();
    let denial = r#"violates PodSecurity "baseline:latest": privileged (container "nginx" must not set securityContext.privileged=true)"#;
    assert!(
        message.contains(denial),
        "ReplicaSet {rs_name} FailedCreate message {message:?} should contain {denial:?}"
    );
    assert!(
        message.starts_with(&format!("pods \"{rs_name}-")) && message.ends_with(denial),
        "unexpected FailedCreate message shape: {message:?}"
    );

    // 3. The Deployment exists with 0 ready replicas and no Pod was created. The controller has
    // already tried (and failed) to create one, so an empty list is not a race.
    let deployment = deployments.get("nginx").await?;
    let status = deployment.status.unwrap_or_default();
    assert_eq!(status.ready_replicas.unwrap_or(0), 0, "{status:?}");
    assert_eq!(status.available_replicas.unwrap_or(0), 0, "{status:?}");
    let created = pods.list(&ListParams::default()).await?;
    assert!(
        created.items.is_empty(),
        "no Pod may exist, found {:?}",
        created
            .items
            .iter()
            .map(|p| &p.metadata.name)
            .collect::<Vec<_>>()
    );

    // 4. With privileged: false the new ReplicaSet's Pod passes baseline and is created (it stays
    // Pending: this control plane has no scheduler or kubelet). Restricted still warns.
    let applied = env
        .kubectl(&["apply", "-f", "-"], &seed_deployment(ns, false)?)
        .await?;
    let stderr = String::from_utf8_lossy(&applied.stderr);
    ensure!(applied.status.success(), "kubectl apply failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&applied.stdout).trim(),
        "deployment.apps/nginx configured"
    );
    assert!(
        stderr.starts_with(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "the restricted warning should remain, without the privileged check: {stderr}"
    );
    let pod = eventually("a Pod of the unprivileged Deployment", HANG_GUARD, || {
        let pods = pods.clone();
        async move {
            Ok(pods
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .next())
        }
    })
    .await?;
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .context("created Pod has no container")?;
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|sc| sc.privileged),
        Some(false)
    );
    assert_eq!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "no scheduler/kubelet: the Pod must be Pending"
    );

    env.cleanup().await
}
