//! The optional admission guard (`config/guard/`), on the real kube-apiserver: a user with
//! namespace `patch` rights (and an admin too) is refused lowering, removing or adding a
//! `pod-security.kubernetes.io/*` label on a namespace the operator governs, and removing or
//! changing the operator's ledger annotation, with the policy's message; the operator's own writes
//! pass; an ungoverned namespace can be relabelled; deleting the binding (the break-glass) lifts it.
//!
//! The policy applied is `config/guard/policy.yaml` as shipped. Its binding is the shipped one
//! scoped to this test's namespaces (the shared cluster's other tests lower labels by hand on
//! purpose); the shipped kustomization itself is checked by a server-side dry run.

use std::process::Output;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use pss_operator::operator::record::{ANNOTATION, Record};

use super::support::{ENFORCE, ENFORCE_VERSION, EVENTUALLY, OpTest, TEST_LABEL, WARN, run_test};
use crate::harness::{eventually, repo_file, repo_root};

const POLICY: &str = "pss-operator-guard";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// kubectl as the admin, failing unless it succeeds.
async fn admin(t: &OpTest, args: &[&str], stdin: &str) -> Result<String> {
    let out = t.op_kubectl(args, stdin).await?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        stderr(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kubectl as `user` (impersonated by the admin).
async fn as_user(t: &OpTest, user: &str, args: &[&str]) -> Result<Output> {
    let mut all = vec![format!("--as={user}")];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    t.op_kubectl(&all, "").await
}

/// A refusal by the guard, with its message.
fn refused(out: &Output, what: &str) -> Result<String> {
    let err = stderr(out);
    ensure!(
        !out.status.success(),
        "{what}: allowed, but the guard must refuse it"
    );
    ensure!(
        err.contains(&format!("ValidatingAdmissionPolicy '{POLICY}'")),
        "{what}: refused, but not by the guard: {err}"
    );
    Ok(err)
}

async fn labels_of(t: &OpTest, ns: &str) -> Result<std::collections::BTreeMap<String, String>> {
    t.labels(ns).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_changing_governed_labels_except_to_the_operator_and_breaks_glass()
-> Result<()> {
    run_test("guard", async |t: &OpTest| {
        let guard_dir = repo_root().join("config/guard");
        let guard_dir = guard_dir.to_string_lossy();
        // The shipped kustomization, exactly: accepted by this API server (a server-side dry
        // run validates both objects and compiles their CEL).
        admin(t, &["apply", "-k", &guard_dir, "--dry-run=server"], "").await?;

        // A person allowed to edit namespaces (get/patch), nothing more.
        let editor = t.name("editor");
        let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": editor},
             "rules": [{"apiGroups": [""], "resources": ["namespaces"],
                        "verbs": ["get", "list", "patch", "update"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": editor},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": editor},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": editor}]},
        ]});
        admin(t, &["apply", "-f", "-"], &rbac.to_string()).await?;

        let gov = t.namespace("gov", &[("guard", "on")]).await?;
        let free = t.namespace("free", &[]).await?;
        let profile = t
            .profile(
                "p",
                t.spec(
                    &[("guard", "on")],
                    json!({"enforce": {"level": "baseline"}, "warn": {"level": "restricted"}}),
                )?,
            )
            .await?;
        t.wait_labels(&gov, &[(ENFORCE, "baseline"), (WARN, "restricted")], &[])
            .await?;
        eventually("the ledger on the governed namespace", EVENTUALLY, || async {
            t.ledger(&gov).await
        })
        .await?;

        // The policy as shipped; the shipped binding, scoped to this test's namespaces.
        admin(t, &["apply", "-f", &format!("{guard_dir}/policy.yaml")], "").await?;
        let mut binding: Value = serde_yaml_ng::from_str(&repo_file("config/guard/binding.yaml")?)?;
        let binding_name = t.name("guard");
        binding["metadata"]["name"] = json!(binding_name);
        binding["spec"]["matchResources"] =
            json!({"namespaceSelector": {"matchLabels": {TEST_LABEL: t.tag}}});
        admin(t, &["apply", "-f", "-"], &binding.to_string()).await?;
        // Its CEL type-checks without a warning on this server.
        let status = eventually("the policy type-checked", EVENTUALLY, || async {
            let out = admin(t, &["get", "validatingadmissionpolicy", POLICY, "-o", "json"], "").await?;
            let p: Value = serde_json::from_str(&out)?;
            let checked = p["status"]["observedGeneration"] == p["metadata"]["generation"];
            Ok(checked.then(|| p["status"].clone()))
        })
        .await?;
        ensure!(
            status["typeChecking"]["expressionWarnings"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "type-checking warnings: {status}"
        );

        // In force once the API server's policy informer has it (a dry run changes nothing).
        let lower = |user: Option<&str>, dry: bool| {
            let mut args = vec![
                "label".to_owned(),
                "--overwrite".to_owned(),
                format!("namespace/{gov}"),
                format!("{ENFORCE}=privileged"),
            ];
            if dry {
                args.push("--dry-run=server".to_owned());
            }
            if let Some(u) = user {
                args.insert(0, format!("--as={u}"));
            }
            args
        };
        let run = |args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            t.op_kubectl(&args, "").await
        };
        eventually("the guard in force", EVENTUALLY, || async {
            let out = run(lower(Some(&editor), true)).await?;
            Ok((!out.status.success()).then_some(()))
        })
        .await?;

        // 1. Lowering enforce: refused, with a message naming the profile and what to do.
        let out = run(lower(Some(&editor), false)).await?;
        let message = refused(&out, "lowering enforce")?;
        ensure!(
            message.contains(&format!(
                "are kept by PodSecurityProfile {profile} (pss-operator): change the PodSecurityProfile instead"
            )) && message.contains(&gov),
            "the message: {message}"
        );
        eprintln!("e2e: the guard's answer to lowering enforce: {}", message.trim());
        // 2. Removing a label, adding one, changing a version: refused.
        let attempts = [
            (format!("{WARN}-"), "removing warn"),
            (
                "pod-security.kubernetes.io/audit=privileged".to_owned(),
                "adding audit",
            ),
            (format!("{ENFORCE_VERSION}=v1.20"), "changing enforce-version"),
        ];
        for (change, what) in attempts {
            let out = as_user(
                t,
                &editor,
                &["label", "--overwrite", &format!("namespace/{gov}"), &change],
            )
            .await?;
            refused(&out, what)?;
        }
        // 3. Removing or editing the ledger: refused.
        let out = as_user(
            t,
            &editor,
            &["annotate", &format!("namespace/{gov}"), &format!("{ANNOTATION}-")],
        )
        .await?;
        let message = refused(&out, "removing the ledger")?;
        ensure!(
            message.contains(&format!("PodSecurityProfile {profile}"))
                && message.contains("only the operator changes or removes it"),
            "{message}"
        );
        let out = as_user(
            t,
            &editor,
            &[
                "annotate",
                "--overwrite",
                &format!("namespace/{gov}"),
                &format!("{ANNOTATION}={{}}"),
            ],
        )
        .await?;
        refused(&out, "editing the ledger")?;
        // 4. The cluster admin is refused too (the break-glass is deleting the binding).
        let out = run(lower(None, false)).await?;
        refused(&out, "an admin lowering enforce")?;
        let labels = labels_of(t, &gov).await?;
        assert_eq!(labels.get(ENFORCE).map(String::as_str), Some("baseline"));
        assert_eq!(labels.get(WARN).map(String::as_str), Some("restricted"));
        // 5. Everything else of the namespace stays editable.
        let out = as_user(
            t,
            &editor,
            &["label", "--overwrite", &format!("namespace/{gov}"), "team=apps"],
        )
        .await?;
        ensure!(out.status.success(), "other labels: {}", stderr(&out));
        let out = as_user(
            t,
            &editor,
            &["annotate", "--overwrite", &format!("namespace/{gov}"), "owner=apps"],
        )
        .await?;
        ensure!(out.status.success(), "other annotations: {}", stderr(&out));

        // 6. The operator's own writes pass: the profile raised, the labels and ledger follow.
        t.patch_spec(&profile, json!({"enforce": {"level": "restricted"}}))
            .await?;
        t.wait_labels(&gov, &[(ENFORCE, "restricted")], &[]).await?;
        eventually("the ledger rewritten by the operator", EVENTUALLY, || async {
            Ok(t.ledger(&gov)
                .await?
                .and_then(|l| Record::decode(&l).ok())
                .filter(|r| r.labels.get(ENFORCE).map(String::as_str) == Some("restricted")))
        })
        .await?;

        // 7. A namespace the operator does not govern: relabelled freely.
        let out = as_user(
            t,
            &editor,
            &[
                "label",
                "--overwrite",
                &format!("namespace/{free}"),
                &format!("{ENFORCE}=privileged"),
            ],
        )
        .await?;
        ensure!(out.status.success(), "ungoverned: {}", stderr(&out));

        // 8. Break-glass: the binding deleted, the label can be lowered (and the operator,
        // still running, puts it back as drift).
        admin(t, &["delete", "validatingadmissionpolicybinding", &binding_name], "").await?;
        eventually("the guard lifted", EVENTUALLY, || async {
            let out = run(lower(Some(&editor), true)).await?;
            Ok(out.status.success().then_some(()))
        })
        .await?;
        let out = run(lower(Some(&editor), false)).await?;
        ensure!(out.status.success(), "break-glass: {}", stderr(&out));
        t.wait_labels(&gov, &[(ENFORCE, "restricted")], &[]).await?;
        eventually("the lowering repaired as drift", EVENTUALLY, || async {
            Ok((!t.events(&gov, "LabelDriftRepaired").await?.is_empty()).then_some(()))
        })
        .await?;

        admin(t, &["delete", "validatingadmissionpolicy", POLICY], "").await?;
        admin(t, &["delete", "-f", "-"], &rbac.to_string())
            .await
            .context("removing the editor's RBAC")?;
        Ok(())
    })
    .await
}
