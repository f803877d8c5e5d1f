//! The operator works with only the RBAC of `config/rbac`, as its ServiceAccount.
//!
//! The shared operator of these tests (see `support.rs`) runs with a kubeconfig holding a
//! TokenRequest token of `pss-system/pss-operator`, bound by `kubectl apply -k config/rbac` and
//! nothing else. This test shows that identity is really what it runs as, that it does its job
//! (labels applied, status written, no 403 ever counted) and that it cannot read Secrets.

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use super::labels::is_true;
use super::support::{
    ENFORCE, MANAGER, OPERATOR_NAMESPACE, OpTest, SERVICE_ACCOUNT, manager_entries, run_test,
};

async fn client_for(path: &std::path::Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: ns.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("SelfSubjectAccessReview")?;
    Ok(answer.status.map(|s| s.allowed).unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_only_the_rbac_of_config_rbac_as_its_service_account() -> Result<()>
{
    run_test("rbac", async |t: &OpTest| {
        let sa = client_for(&t.op.kubeconfig).await?;
        // Who the operator's kubeconfig authenticates as.
        let me = Api::<SelfSubjectReview>::all(sa.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .context("SelfSubjectReview")?;
        let user = me
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .ok_or_else(|| anyhow!("no username in the SelfSubjectReview"))?;
        assert_eq!(
            user,
            format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}")
        );

        // It cannot read Secrets: not by review, not for real.
        for verb in ["get", "list", "watch"] {
            assert!(
                !can(&sa, verb, "", "secrets", None).await?,
                "{verb} secrets must be denied"
            );
            assert!(
                !can(&sa, verb, "", "secrets", Some(OPERATOR_NAMESPACE)).await?,
                "{verb} secrets in {OPERATOR_NAMESPACE} must be denied"
            );
        }
        let secrets: Api<Secret> = Api::namespaced(sa.clone(), OPERATOR_NAMESPACE);
        match secrets.get("anything").await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!("GET of a Secret must be 403, got {other:?}"),
        }
        match Api::<Secret>::all(sa.clone())
            .list(&Default::default())
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!(
                "LIST of Secrets must be 403, got {:?}",
                other.map(|l| l.items.len())
            ),
        }
        // ... nor write Pods, nor anything it does not use (spot checks of the least privilege).
        assert!(!can(&sa, "create", "", "pods", Some("default")).await?);
        assert!(!can(&sa, "delete", "", "namespaces", None).await?);
        assert!(!can(&sa, "update", "", "namespaces", None).await?);
        // ... and the review says yes to what it does use (so the "no"s above mean something).
        assert!(can(&sa, "patch", "", "namespaces", None).await?);
        assert!(can(&sa, "patch", "pss-operator.io", "podsecurityprofiles", None).await?);

        // It works with that: labels applied, status written, by its field manager.
        let ns = t.namespace("ns", &[]).await?;
        let profile = t
            .profile(
                "p",
                t.spec(&[], json!({"enforce": {"level": "restricted"}}))?,
            )
            .await?;
        t.wait_labels(&ns, &[(ENFORCE, "restricted")], &[]).await?;
        let p = t
            .wait_status(&profile, "Ready", |p| is_true(p, "Ready"))
            .await?;
        assert!(
            p.metadata
                .managed_fields
                .iter()
                .flatten()
                .any(|f| f.manager.as_deref() == Some(MANAGER)
                    && f.subresource.as_deref() == Some("status")),
            "status written by {MANAGER}"
        );
        let namespace = t.namespaces().get(&ns).await?;
        assert!(
            manager_entries(&namespace)
                .iter()
                .any(|(m, op, _)| m == MANAGER && op == "Apply")
        );
        // It never met a 403 in any of its calls (all tests so far included).
        let m = t.op.metrics().await?;
        let forbidden = m.find("pss_reconcile_errors_total", &[("error", "forbidden")]);
        assert!(forbidden.is_empty(), "the operator hit 403s: {forbidden:?}");
        let log = t.op.log_lines_with("403", 20);
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "403 in the operator log:\n{log}"
        );
        Ok(())
    })
    .await
}
