//! `pss-operator plan` and the kubectl plugin (`kubectl pss status|plan|check`) against the real
//! control plane, run as a ServiceAccount bound to exactly `plugins/rbac/pss-reader.yaml` (get and
//! list, nothing else): what plan says is what the API server then refuses, byte for byte, and it
//! changes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use super::labels::is_true;
use super::support::{
    ENFORCE, ENFORCE_VERSION, OpTest, TEST_LABEL, baseline_pod, kubectl_sync, privileged_container,
    restricted_pod, run_test, token_kubeconfig,
};
use crate::harness::{self, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_pss-operator");

/// A kubeconfig for a new ServiceAccount of `ns` bound to the shipped `pss-reader` ClusterRole
/// (and nothing else); returns it with the binding's name (for deletion).
fn reader(t: &OpTest, ns: &str, dir: &Path) -> Result<(PathBuf, String)> {
    let cluster = t.op.cluster;
    let role = harness::repo_root().join("plugins/rbac/pss-reader.yaml");
    kubectl_sync(
        cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &role.to_string_lossy(),
        ],
    )?;
    let sa = "reader";
    kubectl_sync(cluster, &["create", "serviceaccount", sa, "-n", ns])?;
    let binding = t.name("reader");
    kubectl_sync(
        cluster,
        &[
            "create",
            "clusterrolebinding",
            &binding,
            "--clusterrole=pss-reader",
            &format!("--serviceaccount={ns}:{sa}"),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        match kubectl_sync(cluster, &["create", "token", sa, "-n", ns]) {
            Ok(t) => break t.trim().to_owned(),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let path = dir.join("reader.kubeconfig");
    std::fs::write(&path, token_kubeconfig(cluster, &token)?)?;
    Ok((path, binding))
}

fn run(
    program: &Path,
    args: &[&str],
    kubeconfig: &Path,
    path_env: Option<&Path>,
) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null());
    if let Some(dir) = path_env {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.to_owned()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs)?);
    }
    cmd.output()
        .with_context(|| format!("running {} {}", program.display(), args.join(" ")))
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn profile_file(t: &OpTest, dir: &Path, name: &str, level: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    let yaml = format!(
        "apiVersion: pss-operator.io/v1alpha1\nkind: PodSecurityProfile\nmetadata:\n  name: {name}\nspec:\n  namespaceSelector:\n    matchLabels:\n      {TEST_LABEL}: {}\n  enforce:\n    level: {level}\n",
        t.tag
    );
    std::fs::write(&path, yaml)?;
    Ok(path)
}

fn deployment(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    })
}

fn namespace_entry<'a>(plan: &'a Value, ns: &str) -> Result<&'a Value> {
    plan["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == ns)
        .with_context(|| format!("namespace {ns} not in the plan: {plan:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_label_changes_and_what_the_api_server_would_refuse_with_get_and_list_only()
-> Result<()> {
    run_test("plan", async |t: &OpTest| {
        let dir = tempfile::tempdir()?;
        let ns = t.namespace("apps", &[(ENFORCE, "baseline")]).await?;
        t.pod(&ns, "web", baseline_pod()).await?;
        t.pod(&ns, "fine", restricted_pod()).await?;
        let out = t
            .op_kubectl(&["apply", "-f", "-"], &deployment(&ns, "api", baseline_pod()).to_string())
            .await?;
        ensure!(out.status.success(), "{}", text(&out));
        // The Deployment's Pod (through its ReplicaSet) is there: plan shows it at the Deployment.
        let pods = t.pods(&ns);
        let api_pod = eventually("the Deployment's Pod", super::support::EVENTUALLY, || async {
            Ok(pods
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .find(|n| n.starts_with("api-")))
        })
        .await?;
        let (kubeconfig, binding) = reader(t, &ns, dir.path())?;

        // The account can get and list, and do nothing else.
        let cluster = t.op.cluster;
        for (verb, resource, allowed) in [
            ("list", "pods", true),
            ("list", "podsecurityprofiles.pss-operator.io", true),
            ("watch", "pods", false),
            ("patch", "namespaces", false),
            ("create", "pods", false),
        ] {
            let out = run(
                &cluster.kubectl,
                &["auth", "can-i", verb, resource, "--all-namespaces"],
                &kubeconfig,
                None,
            )?;
            let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            ensure!(
                said == if allowed { "yes" } else { "no" },
                "can-i {verb} {resource}: {said}"
            );
        }

        let strict = profile_file(t, dir.path(), &t.name("strict"), "restricted")?;
        let strict = strict.to_string_lossy();
        let out = run(
            Path::new(BINARY),
            &["plan", "-f", &strict, "--only-files", "-o", "json"],
            &kubeconfig,
            None,
        )?;
        ensure!(out.status.code() == Some(1), "exit 1 when something is refused: {}", text(&out));
        let plan: Value = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
        let entry = namespace_entry(&plan, &ns)?;
        assert_eq!(
            entry["labelChanges"],
            json!([
                {"label": ENFORCE, "from": "baseline", "to": "restricted"},
                {"label": ENFORCE_VERSION, "from": null, "to": "latest"},
            ]),
            "{entry:#}"
        );
        assert_eq!(entry["enforceNow"], "baseline:latest");
        assert_eq!(entry["enforceAfter"], "restricted:latest");
        let refused: Vec<(String, String, Option<String>)> = entry["refused"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap_or_default().to_owned(),
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["owner"].as_str().map(str::to_owned),
                )
            })
            .collect();
        let mut pods_first = vec![
            ("Pod".to_owned(), api_pod.clone(), Some("Deployment/api".to_owned())),
            ("Pod".to_owned(), "web".to_owned(), None),
        ];
        pods_first.sort();
        pods_first.push(("Deployment".to_owned(), "api".to_owned(), None));
        assert_eq!(refused, pods_first, "{entry:#}");

        // Read-only: the namespace is as it was.
        let labels = t.labels(&ns).await?;
        assert_eq!(labels.get(ENFORCE).map(String::as_str), Some("baseline"));
        assert!(!labels.contains_key(ENFORCE_VERSION));

        // What plan says is what the API server answers once the level is raised: a namespace
        // enforcing restricted refuses the same Pod with the same message.
        let probe = t.namespace("probe", &[(ENFORCE, "restricted")]).await?;
        let web = entry["refused"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == "web")
            .context("web refused")?;
        let manifest = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": probe}, "spec": baseline_pod()});
        let out = t
            .op_kubectl(&["create", "--dry-run=server", "-f", "-"], &manifest.to_string())
            .await?;
        let server = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let ours = web["message"].as_str().context("message")?;
        assert_eq!(server, format!("Error from server (Forbidden): error when creating \"STDIN\": pods \"web\" is forbidden: {ours}"));
        // The Deployment's template: the API server's warning, word for word.
        let deployment_message = entry["refused"][2]["message"].as_str().context("message")?;
        let out = t
            .op_kubectl(
                &["apply", "--dry-run=server", "-f", "-"],
                &deployment(&probe, "api", baseline_pod()).to_string(),
            )
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().any(|l| l == format!("Warning: {deployment_message}")),
            "{stderr}\nvs {deployment_message}"
        );

        // The text form says the same.
        let out = run(Path::new(BINARY), &["plan", "-f", &strict, "--only-files"], &kubeconfig, None)?;
        let shown = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(shown.contains(&format!("label {ENFORCE}: baseline -> restricted")), "{shown}");
        assert!(shown.contains(&format!("    Pod web: {ours}\n")), "{shown}");
        assert!(shown.contains(&format!("    Pod {api_pod} (of Deployment/api): ")), "{shown}");

        // Nothing refused at baseline: exit 0.
        let base = profile_file(t, dir.path(), &t.name("base"), "baseline")?;
        let out = run(
            Path::new(BINARY),
            &["plan", "-f", &base.to_string_lossy(), "--only-files", "-o", "json"],
            &kubeconfig,
            None,
        )?;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let plan: Value = serde_json::from_slice(&out.stdout)?;
        let entry = namespace_entry(&plan, &ns)?;
        assert_eq!(entry["refused"], json!([]));
        assert_eq!(entry["labelChanges"], json!([{"label": ENFORCE_VERSION, "from": null, "to": "latest"}]));

        // A bad file is named, before the cluster is asked anything.
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")?;
        let out = run(Path::new(BINARY), &["plan", "-f", &bad.to_string_lossy()], &kubeconfig, None)?;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("bad.yaml (document 1, line 1): expected a PodSecurityProfile"), "{}", text(&out));

        kubectl_sync(cluster, &["delete", "clusterrolebinding", &binding])?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_pss_status_plan_and_check_run_through_the_real_kubectl() -> Result<()> {
    run_test("kubectl-pss", async |t: &OpTest| {
        let dir = tempfile::tempdir()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin)?;
        std::os::unix::fs::symlink(BINARY, bin.join("kubectl-pss"))?;
        let ns = t.namespace("apps", &[]).await?;
        t.pod(
            &ns,
            "root",
            json!({"containers": [privileged_container("c")]}),
        )
        .await?;
        let profile = t
            .profile("p", t.spec(&[], json!({"enforce": {"level": "baseline"}}))?)
            .await?;
        t.wait_labels(&ns, &[(ENFORCE, "baseline")], &[]).await?;
        t.wait_status(&profile, "Ready with the privileged Pod counted", |p| {
            is_true(p, "Ready")
                && p.status
                    .as_ref()
                    .and_then(|s| s.enforce.as_ref())
                    .is_some_and(|e| e.violating_pods == 1)
        })
        .await?;
        let (kubeconfig, binding) = reader(t, &ns, dir.path())?;
        let kubectl = &t.op.cluster.kubectl;

        let out = run(kubectl, &["plugin", "list"], &kubeconfig, Some(&bin))?;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("kubectl-pss"),
            "{}",
            text(&out)
        );

        let out = run(
            kubectl,
            &["pss", "status", "--profile", &profile],
            &kubeconfig,
            Some(&bin),
        )?;
        assert!(out.status.success(), "{}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        let row = shown
            .lines()
            .find(|l| l.starts_with(&profile))
            .with_context(|| text(&out))?;
        let cells: Vec<&str> = row.split_whitespace().collect();
        // PROFILE MODE ENFORCE AUDIT WARN MATCHED ENFORCED PENDING CONFLICTED VIOLATING-PODS BLOCKED READY
        assert_eq!(
            cells,
            [
                profile.as_str(),
                "Enforce",
                "baseline:latest",
                "-",
                "-",
                "1",
                "1",
                "0",
                "0",
                "1",
                "0",
                "True"
            ],
            "{shown}"
        );
        assert!(
            shown
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [profile.as_str(), "enforce", ns.as_str(), "1"]),
            "{shown}"
        );

        // The cluster's profiles as they stand: the privileged Pod is refused already.
        let out = run(
            kubectl,
            &["pss", "plan", "-o", "json"],
            &kubeconfig,
            Some(&bin),
        )?;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let plan: Value = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
        let entry = namespace_entry(&plan, &ns)?;
        assert_eq!(entry["governedBy"], json!([profile]));
        assert_eq!(
            entry["labelChanges"],
            json!([]),
            "the operator applied them already"
        );
        assert_eq!(entry["refused"][0]["name"], "root");
        assert_eq!(entry["refused"][0]["new"], false);

        let manifest = dir.path().join("pod.yaml");
        std::fs::write(
            &manifest,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                   "spec": {"containers": [privileged_container("c")]}})
            .to_string(),
        )?;
        let out = run(
            kubectl,
            &[
                "pss",
                "check",
                "--level",
                "baseline",
                &manifest.to_string_lossy(),
            ],
            &kubeconfig,
            Some(&bin),
        )?;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("violates PodSecurity \"baseline:latest\"")
        );

        let out = run(kubectl, &["pss", "--version"], &kubeconfig, Some(&bin))?;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(pss_operator::cli::COMMIT),
            "{}",
            text(&out)
        );
        kubectl_sync(t.op.cluster, &["delete", "clusterrolebinding", &binding])?;
        Ok(())
    })
    .await
}
