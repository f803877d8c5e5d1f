//! The operator's own security: as its ServiceAccount with only `config/rbac` it works, and it can
//! read no Secret and write nothing but namespaces (labels), its profiles' status and finalizer,
//! Events and its own Lease: a SubjectAccessReview matrix, then real calls answered 403. Its
//! Deployment passes `restricted` (`pss-operator check` on `config/`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use pss_operator::pss::Level;

use crate::check::{self, Declared};
use crate::harness::{self, unique_name};
use crate::procs::{OperatorProc, env};
use crate::serial;
use crate::support::{OPERATOR_NAMESPACE, SERVICE_ACCOUNT};

const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// (group, resource, subresource, namespace) probed for every verb.
const RESOURCES: &[(&str, &str, &str, &str)] = &[
    ("", "secrets", "", ""),
    ("", "secrets", "", OPERATOR_NAMESPACE),
    ("", "configmaps", "", OPERATOR_NAMESPACE),
    ("", "namespaces", "", ""),
    ("", "pods", "", "default"),
    ("", "pods", "exec", "default"),
    ("", "pods", "status", "default"),
    ("", "serviceaccounts", "token", OPERATOR_NAMESPACE),
    ("", "events", "", "default"),
    ("events.k8s.io", "events", "", "default"),
    ("pss-operator.io", "podsecurityprofiles", "", ""),
    ("pss-operator.io", "podsecurityprofiles", "status", ""),
    ("coordination.k8s.io", "leases", "", OPERATOR_NAMESPACE),
    ("coordination.k8s.io", "leases", "", "kube-system"),
    ("apps", "deployments", "", OPERATOR_NAMESPACE),
    ("apps", "statefulsets", "", "default"),
    ("apps", "daemonsets", "", "default"),
    ("apps", "replicasets", "", "default"),
    ("batch", "cronjobs", "", "default"),
    ("batch", "jobs", "", "default"),
    ("", "replicationcontrollers", "", "default"),
    ("rbac.authorization.k8s.io", "clusterroles", "", ""),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        "",
        OPERATOR_NAMESPACE,
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions", "", ""),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "",
        "",
    ),
    // The secure metrics port's reviews (create only: a review reads nothing stored).
    ("authentication.k8s.io", "tokenreviews", "", ""),
    ("authorization.k8s.io", "subjectaccessreviews", "", ""),
    (
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "",
        OPERATOR_NAMESPACE,
    ),
    ("", "serviceaccounts", "", OPERATOR_NAMESPACE),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
];

/// Non-resource URLs probed for `get` and `post`: the operator reads none of them (not even its
/// own /metrics: that is for whoever is bound to pss-operator-metrics-reader).
const URLS: &[&str] = &["/metrics", "/debug/pprof/", "/logs/"];

/// What config/rbac grants, as "group/resource[/sub]@ns:verb" (ns `*` = any).
fn granted() -> BTreeSet<String> {
    let mut g = BTreeSet::new();
    let mut add = |what: &str, ns: &str, verbs: &[&str]| {
        for v in verbs {
            g.insert(format!("{what}@{ns}:{v}"));
        }
    };
    add("/namespaces", "*", &["list", "watch", "patch"]);
    add("/pods", "*", &["list", "watch"]);
    add("/replicationcontrollers", "*", &["list", "watch"]);
    add("/events", "*", &["list", "watch"]);
    for workload in ["daemonsets", "deployments", "replicasets", "statefulsets"] {
        add(&format!("apps/{workload}"), "*", &["list", "watch"]);
    }
    for workload in ["cronjobs", "jobs"] {
        add(&format!("batch/{workload}"), "*", &["list", "watch"]);
    }
    add(
        "pss-operator.io/podsecurityprofiles",
        "*",
        &["list", "watch", "patch"],
    );
    add(
        "pss-operator.io/podsecurityprofiles/status",
        "*",
        &["patch"],
    );
    add("events.k8s.io/events", "*", &["create", "patch"]);
    add(
        "coordination.k8s.io/leases",
        OPERATOR_NAMESPACE,
        &["get", "create", "patch"],
    );
    add("authentication.k8s.io/tokenreviews", "*", &["create"]);
    add(
        "authorization.k8s.io/subjectaccessreviews",
        "*",
        &["create"],
    );
    g
}

/// Whether `user` (with `groups`) may `verb` the non-resource URL `path`.
pub async fn url_allowed(
    admin: &Client,
    user: &str,
    groups: &[String],
    verb: &str,
    path: &str,
) -> Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(path.to_owned()),
                verb: Some(verb.to_owned()),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("SubjectAccessReview")?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn allowed(
    admin: &Client,
    user: &str,
    groups: &[String],
    verb: &str,
    (group, resource, sub, ns): (&str, &str, &str, &str),
) -> Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: (!sub.is_empty()).then(|| sub.to_owned()),
                namespace: (!ns.is_empty()).then(|| ns.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("SubjectAccessReview")?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

fn forbidden<T: std::fmt::Debug>(what: &str, r: kube::Result<T>) -> Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        other => anyhow::bail!("{what}: expected 403, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_can_do_its_job_and_nothing_else() -> Result<()> {
    let _one_at_a_time = serial().await;
    let env = env().await?;
    let admin = env.admin().await?;
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}");
    let groups = vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{OPERATOR_NAMESPACE}"),
        "system:authenticated".to_owned(),
    ];

    // The matrix: every verb on every probed resource, allowed exactly where config/rbac says.
    let grants = granted();
    let mut wrong = Vec::new();
    let mut probed = 0;
    for &res in RESOURCES {
        let (group, resource, sub, ns) = res;
        let what = if sub.is_empty() {
            format!("{group}/{resource}")
        } else {
            format!("{group}/{resource}/{sub}")
        };
        for verb in VERBS {
            let want = grants.contains(&format!("{what}@*:{verb}"))
                || grants.contains(&format!("{what}@{ns}:{verb}"));
            let got = allowed(&admin, &user, &groups, verb, res).await?;
            probed += 1;
            if got != want {
                wrong.push(format!(
                    "{verb} {what} in {ns:?}: allowed={got}, want {want}"
                ));
            }
        }
    }
    for url in URLS {
        for verb in ["get", "post"] {
            probed += 1;
            if url_allowed(&admin, &user, &groups, verb, url).await? {
                wrong.push(format!("{verb} {url}: allowed, want denied"));
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "RBAC differs from config/rbac:\n{}",
        wrong.join("\n")
    );
    eprintln!(
        "faults: SubjectAccessReview matrix: {probed} (verb, resource) pairs, allowed exactly as config/rbac declares"
    );

    // Real calls as the ServiceAccount: 403.
    let sa = env.service_account().await?;
    forbidden(
        "get secret",
        Api::<Secret>::namespaced(sa.clone(), OPERATOR_NAMESPACE)
            .get("x")
            .await,
    )?;
    forbidden(
        "list secrets",
        Api::<Secret>::all(sa.clone())
            .list(&Default::default())
            .await,
    )?;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}}))?;
    forbidden(
        "create configmap",
        Api::<ConfigMap>::namespaced(sa.clone(), OPERATOR_NAMESPACE)
            .create(&PostParams::default(), &cm)
            .await,
    )?;
    forbidden(
        "delete namespace",
        Api::<Namespace>::all(sa.clone())
            .delete("default", &DeleteParams::default())
            .await,
    )?;
    forbidden(
        "get namespace",
        Api::<Namespace>::all(sa.clone()).get("default").await,
    )?;
    let pod: Pod = check::pod("default", "x", 0)?;
    forbidden(
        "create pod",
        Api::<Pod>::namespaced(sa.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await,
    )?;
    forbidden(
        "delete pods",
        Api::<Pod>::namespaced(sa.clone(), "default")
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await,
    )?;
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "stolen"}}))?;
    forbidden(
        "create lease in kube-system",
        Api::<Lease>::namespaced(sa.clone(), "kube-system")
            .create(&PostParams::default(), &lease)
            .await,
    )?;
    forbidden(
        "delete own lease",
        Api::<Lease>::namespaced(sa.clone(), OPERATOR_NAMESPACE)
            .delete("pss-operator-leader", &DeleteParams::default())
            .await,
    )?;
    forbidden(
        "patch the CRD",
        Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(sa.clone())
            .patch("podsecurityprofiles.pss-operator.io", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})))
            .await,
    )?;
    forbidden(
        "delete a profile",
        Api::<pss_operator::operator::crd::PodSecurityProfile>::all(sa.clone())
            .delete("anything", &DeleteParams::default())
            .await,
    )?;

    // And with exactly that it does its job (labels, status, events, lease): no 403 anywhere.
    let tag = unique_name("security");
    let declared = [Declared::new(
        &format!("{tag}-a"),
        "a",
        [Some(Level::Restricted), None, None],
    )];
    check::namespaces(&admin, &tag, "ns", 3, |_| "a".into(), true).await?;
    let mut op = OperatorProc::start(env, &format!("{tag}-op"), Some(&tag))?;
    op.wait_ready().await?;
    declared[0].create(&admin, &tag).await?;
    check::converged(&admin, &op, &tag, &declared, Duration::from_secs(90)).await?;
    let m = op.metrics().await?;
    let forbidden_errors = m.find("pss_reconcile_errors_total", &[("error", "forbidden")]);
    ensure!(forbidden_errors.is_empty(), "{forbidden_errors:?}");
    let log = op.log_text().to_lowercase();
    ensure!(
        !log.contains("forbidden") && !log.contains(" 403"),
        "{}",
        op.log_tail(40)
    );
    op.check_alive()?;
    check::cleanup(&admin, &tag, &[&declared[0].profile]).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_deployment_passes_restricted_read_only_and_unprivileged() -> Result<()> {
    let env = env().await?;
    let root = harness::repo_root();
    // What `kubectl apply -k config/default` installs, exactly, checked by our own CLI.
    let rendered = Command::new(&env.cluster.kubectl)
        .arg("kustomize")
        .arg(root.join("config/default"))
        .output()?;
    ensure!(
        rendered.status.success(),
        "kubectl kustomize config/default: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let mut check = Command::new(env!("CARGO_BIN_EXE_pss-operator"))
        .args(["check", "--level", "restricted", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        let mut stdin = check.stdin.take().context("stdin")?;
        stdin.write_all(&rendered.stdout)?;
    }
    let out = check.wait_with_output()?;
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "pss-operator check --level restricted on config/default failed ({}):\n{stdout}",
        out.status
    );
    ensure!(
        stdout.contains("Deployment/pss-operator in pss-system: allowed")
            && stdout.contains("1 allowed, 0 violating")
            && stdout.contains(" 0 errors"),
        "{stdout}"
    );
    let manager: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&harness::repo_file("config/manager/manager.yaml")?)?;
    let pod = &manager["spec"]["template"]["spec"];
    let container = &pod["containers"][0]["securityContext"];
    ensure!(container["readOnlyRootFilesystem"].as_bool() == Some(true));
    ensure!(container["allowPrivilegeEscalation"].as_bool() == Some(false));
    ensure!(container["privileged"].as_bool() != Some(true));
    ensure!(container["capabilities"]["drop"][0].as_str() == Some("ALL"));
    ensure!(container["capabilities"]["add"].is_null());
    ensure!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null());
    // Its only volume is the admission configuration: a ConfigMap, mounted read-only (no
    // hostPath, no writable volume).
    let volumes = pod["volumes"].as_sequence().context("volumes")?;
    ensure!(
        volumes.len() == 1
            && volumes[0]["configMap"]["name"].as_str() == Some("pss-operator-admission")
            && volumes[0]["hostPath"].is_null(),
        "volumes: {volumes:?}"
    );
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .context("volumeMounts")?;
    ensure!(
        mounts.iter().all(|m| m["readOnly"].as_bool() == Some(true)),
        "read-only mounts: {mounts:?}"
    );
    ensure!(
        pod["automountServiceAccountToken"].as_bool() != Some(false),
        "it needs its token"
    );
    eprintln!("faults: {}", stdout.lines().last().unwrap_or_default());
    Ok(())
}
