//! Our evaluator against the real PodSecurity admission plugin, byte for byte.
//!
//! 1. Pods: every upstream conformance fixture (tests/fixtures/pss/{baseline,restricted}/v1.N/{pass,fail})
//!    and a few hundred generated pods mixing every checked field are dry-run created
//!    (`?dryRun=All`: full admission, nothing stored) in namespaces labelled `enforce=<level>`,
//!    `enforce-version=<version>`. The API server's verdict and denial message must equal
//!    `pss::evaluate`'s on the pod after `apply_api_server_defaults`.
//! 2. Templates: the generated pods as the templates of every workload kind (Deployment,
//!    ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController, in turn), dry-run
//!    created in namespaces labelled `warn=<level>`; the `would violate PodSecurity ...` warning
//!    must equal the evaluator's verdict on the workload as the manifest reader
//!    (`pss-operator check`) reads it.
//!
//! Objects the API server rejects as invalid (422: validation runs before validating admission)
//! never reach PodSecurity; they are counted and reported, not compared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use kube::Client;
use kube::api::PostParams;
use serde_json::{Value, json};

use pss_operator::pss::{self, KubeVersion, Level, LevelVersion, Version};

use crate::harness::{
    TestEnv, create_namespace, repo_root, unique_name, wait_for_default_service_account,
};
use crate::podgen;

/// Where the main branch keeps the upstream fixtures (k8s.io/pod-security-admission v0.37.2
/// test/testdata). `PSS_E2E_FIXTURES_DIR` points elsewhere, e.g. at the Go module cache.
const FIXTURES_DIR: &str = "tests/fixtures/pss";
const UPSTREAM_FIXTURE_COUNT: usize = 4537;
const GENERATED_PODS: usize = 400;
/// The seed the parity runs have always used, so their pods stay the same.
const PODGEN_SEED: u64 = 0x5EED_0000_0000_0003;
const IN_FLIGHT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// An upstream fixture, with the verdict upstream expects.
    Fixture {
        expect_allowed: bool,
    },
    Generated,
}

struct Case {
    /// Fixture path relative to the fixtures folder, or `generated/<pod name>`.
    id: String,
    source: Source,
    level: Level,
    version: String,
    pod: Value,
    /// For template cases: which of `WORKLOAD_KINDS` holds the pod.
    kind: usize,
}

enum Outcome {
    Compared {
        source: Source,
        /// The API server denied (or, for templates, warned).
        flagged: bool,
        mismatch: Option<String>,
    },
    /// 422 Invalid: rejected by validation before PodSecurity ran.
    Invalid { id: String, message: String },
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("PSS_E2E_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(FIXTURES_DIR))
}

/// Every `<level>/<version>/<pass|fail>/<name>.yaml` under `root`, sorted.
fn fixture_cases(root: &Path) -> Result<Vec<Case>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| {
            format!(
                "reading {} (the conformance fixtures; set PSS_E2E_FIXTURES_DIR to use another copy)",
                dir.display()
            )
        })?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let parts: Vec<&str> = rel.split('/').collect();
            let [level, version, verdict, _file] = parts[..] else {
                bail!(
                    "unexpected fixture path {rel} (want <level>/<version>/<pass|fail>/<name>.yaml)"
                );
            };
            let expect_allowed = match verdict {
                "pass" => true,
                "fail" => false,
                other => bail!("unexpected fixture verdict folder {other:?} in {rel}"),
            };
            let text = std::fs::read_to_string(&path)?;
            let pod: Value = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            Ok(Case {
                id: rel.clone(),
                source: Source::Fixture { expect_allowed },
                level: level.parse().map_err(|e| anyhow!("{rel}: {e}"))?,
                version: version.to_string(),
                pod,
                kind: 0,
            })
        })
        .collect()
}

/// What is dry-run created, and which PodSecurity mode answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The Pod itself in an `enforce=<level>` namespace: the denial message.
    PodEnforce,
    /// A Deployment with the pod as its template in a `warn=<level>` namespace: the
    /// `would violate PodSecurity ...` warning, checked against the evaluator's reading of the
    /// Deployment manifest (template defaulting, as `pss-operator check` does).
    DeploymentWarn,
}

impl Mode {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Mode::PodEnforce => (
                "pod-security.kubernetes.io/enforce",
                "pod-security.kubernetes.io/enforce-version",
            ),
            Mode::DeploymentWarn => (
                "pod-security.kubernetes.io/warn",
                "pod-security.kubernetes.io/warn-version",
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluator_matches_apiserver_on_every_fixture_and_generated_pod() -> Result<()> {
    let root = fixtures_dir();
    let mut cases = fixture_cases(&root)?;
    let fixture_count = cases.len();
    ensure!(
        fixture_count == UPSTREAM_FIXTURE_COUNT,
        "expected all {UPSTREAM_FIXTURE_COUNT} upstream fixtures under {}, found {fixture_count}",
        root.display()
    );
    let generated = generated_cases(GENERATED_PODS);
    // The generated pods, one JSON per line, for reading what the generator covers.
    let listing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generated-pods.jsonl");
    let lines: Vec<String> = generated
        .iter()
        .filter(|c| c.level == Level::Baseline)
        .map(|c| c.pod.to_string())
        .collect();
    std::fs::write(&listing, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", listing.display()))?;
    cases.extend(generated);
    run_parity("parity", Mode::PodEnforce, cases).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluator_matches_apiserver_warnings_on_workload_templates() -> Result<()> {
    run_parity(
        "template-parity",
        Mode::DeploymentWarn,
        generated_cases(GENERATED_PODS),
    )
    .await
}

/// Dry-runs every case in one namespace per level/version pair (labelled for `mode`), compares
/// with the evaluator, prints a summary and writes the full report to CARGO_TARGET_TMPDIR.
async fn run_parity(test: &str, mode: Mode, cases: Vec<Case>) -> Result<()> {
    let env = TestEnv::new(test, &[]).await?;
    // `latest`, and versions newer than the server, mean the server's own version: the evaluator
    // is asked as that server (`K8S_VERSION=v1.31.13` runs the same cases on a v1.31 server).
    let kube = crate::harness::server_version(&env.client).await?;
    let pairs: BTreeSet<(Level, String)> =
        cases.iter().map(|c| (c.level, c.version.clone())).collect();
    let (level_label, version_label) = mode.labels();
    let mut namespaces = BTreeMap::new();
    for (level, version) in pairs {
        let name = unique_name(&format!("pss-{level}-{}", version.replace('.', "-")));
        create_namespace(
            &env.client,
            &name,
            &[(level_label, level.as_str()), (version_label, &version)],
        )
        .await?;
        namespaces.insert((level, version), name);
    }
    for ns in namespaces.values() {
        wait_for_default_service_account(&env.client, ns).await?;
    }

    let outcomes = run_all(&env.client, kube, mode, cases, &namespaces).await;
    // Dry-runs leave nothing behind worth inspecting: drop the namespaces whatever the outcome.
    for ns in namespaces.values() {
        crate::harness::delete_namespace(&env.client, ns).await?;
    }
    env.cleanup().await?;
    let outcomes = outcomes?;

    let mut compared = [0usize; 2]; // [fixtures, generated]
    let mut flagged_count = 0;
    let mut mismatches = Vec::new();
    let mut invalid = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Compared {
                source,
                flagged,
                mismatch,
            } => {
                compared[usize::from(source == Source::Generated)] += 1;
                flagged_count += usize::from(flagged);
                mismatches.extend(mismatch);
            }
            Outcome::Invalid { id, message } => invalid.push((id, message)),
        }
    }
    let total = compared[0] + compared[1];
    let (what, flagged_what) = match mode {
        Mode::PodEnforce => ("Pod dry-runs (enforce)", "denied"),
        Mode::DeploymentWarn => ("workload dry-runs (warn, 7 kinds)", "warned"),
    };
    let summary = format!(
        "{test} on kube-apiserver {kube}: compared {total} {what} with the evaluator ({} fixtures, {} generated; {flagged_count} {flagged_what}, {} allowed); {} matched, {} differed; {} rejected as invalid (422) before admission, not compared",
        compared[0],
        compared[1],
        total - flagged_count,
        total - mismatches.len(),
        mismatches.len(),
        invalid.len()
    );
    // The whole story goes to a file; the output shows the summary and the first few of each.
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-report.txt"));
    let mut text = format!("{summary}\n");
    for (id, message) in &invalid {
        text.push_str(&format!("INVALID {id}: {message}\n"));
    }
    for m in &mismatches {
        text.push_str(m);
        text.push('\n');
    }
    std::fs::write(&report, text).with_context(|| format!("writing {}", report.display()))?;
    println!("{summary}\nfull report: {}", report.display());
    for (id, message) in invalid.iter().take(10) {
        println!("  invalid: {id}: {message}");
    }
    if !mismatches.is_empty() {
        for m in mismatches.iter().take(30) {
            println!("{m}");
        }
        bail!(
            "{} of {total} verdicts differ between the evaluator and kube-apiserver (first 30 above, all in {})",
            mismatches.len(),
            report.display()
        );
    }
    ensure!(total > 0, "nothing was compared");
    Ok(())
}

async fn run_all(
    client: &Client,
    kube: KubeVersion,
    mode: Mode,
    cases: Vec<Case>,
    namespaces: &BTreeMap<(Level, String), String>,
) -> Result<Vec<Outcome>> {
    let cases = Arc::new(cases);
    let namespaces = Arc::new(namespaces.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (client, cases, namespaces, next) = (
            client.clone(),
            cases.clone(),
            namespaces.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else {
                    return Ok::<_, anyhow::Error>(outcomes);
                };
                let ns = &namespaces[&(case.level, case.version.clone())];
                let outcome = match mode {
                    Mode::PodEnforce => compare(&client, kube, ns, case).await,
                    Mode::DeploymentWarn => compare_template(&client, kube, ns, case).await,
                };
                outcomes.push(outcome.with_context(|| format!("case {}", case.id))?);
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = workers.join_next().await {
        outcomes.extend(done??);
    }
    Ok(outcomes)
}

/// The API server's verdict: `Ok(None)` allowed, `Ok(Some(message))` denied by PodSecurity with the
/// `pods "<name>" is forbidden: ` prefix removed, `Err(message)` rejected as invalid (422).
async fn apiserver_verdict(
    client: &Client,
    ns: &str,
    pod: &Value,
) -> Result<std::result::Result<Option<String>, String>> {
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods")).create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        serde_json::to_vec(pod)?,
    )?;
    match client.request::<Value>(request).await {
        Ok(_) => Ok(Ok(None)),
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(Err(status.message)),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let (_, denial) = status
                .message
                .split_once(" is forbidden: ")
                .ok_or_else(|| anyhow!("unexpected 403 message {:?}", status.message))?;
            ensure!(
                denial.starts_with("violates PodSecurity "),
                "403 not from PodSecurity: {:?}",
                status.message
            );
            Ok(Ok(Some(denial.to_string())))
        }
        Err(e) => Err(e).context("dry-run create"),
    }
}

async fn compare(client: &Client, kube: KubeVersion, ns: &str, case: &Case) -> Result<Outcome> {
    let mut pod = case.pod.clone();
    pod["metadata"]["namespace"] = ns.into();
    // Upstream fixture names such as `capabilities_baseline0` are not valid object names; the name
    // only appears in the stripped `pods "<name>" is forbidden: ` prefix, never in PSA's message.
    if let Some(name) = pod["metadata"]["name"].as_str() {
        pod["metadata"]["name"] = name.replace('_', "-").into();
    }
    let api = match apiserver_verdict(client, ns, &pod).await? {
        Ok(verdict) => verdict,
        Err(message) => {
            return Ok(Outcome::Invalid {
                id: case.id.clone(),
                message,
            });
        }
    };
    let mut model: pss::model::Pod = serde_json::from_value(pod.clone())
        .with_context(|| format!("the evaluator's Pod model cannot read {}", case.id))?;
    let mut submitted = model.clone();
    submitted.apply_api_server_defaults();
    model.apply_api_server_defaults_on(kube);
    // The fixtures' expectations are those of the newest version's library: they hold where the
    // server selects the same checks (an older server runs its own checks for newer versions)
    // and sees the same Pod (an older server drops fields its default feature gates disable).
    let fixture_version: Option<Version> = case.version.parse().ok();
    let same_checks = fixture_version
        .is_some_and(|v| v.effective_minor(kube) == v.effective_minor(KubeVersion::NEWEST_KNOWN));
    if let Source::Fixture { expect_allowed } = case.source
        && same_checks
        && submitted == model
    {
        ensure!(
            api.is_none() == expect_allowed,
            "kube-apiserver disagrees with the upstream fixture's expectation (allowed={expect_allowed}): {api:?}"
        );
    }

    let version: Version = case
        .version
        .parse()
        .map_err(|e| anyhow!("version {}: {e}", case.version))?;
    let eval = pss::evaluate_on(
        kube,
        &model.metadata,
        &model.spec,
        LevelVersion::new(case.level, version),
    );
    let ours = (!eval.allowed()).then(|| eval.denial_message());

    let mismatch = (ours != api).then(|| {
        format!(
            "MISMATCH {} at {}:{}\n  pod:       {}\n  apiserver: {}\n  evaluator: {}",
            case.id,
            case.level,
            case.version,
            serde_json::to_string(&case.pod).unwrap_or_default(),
            api.as_deref().unwrap_or("(allowed)"),
            ours.as_deref().unwrap_or("(allowed)"),
        )
    });
    Ok(Outcome::Compared {
        source: case.source,
        flagged: api.is_some(),
        mismatch,
    })
}

/// The workload kinds with a Pod template, each with its collection path: case `i` goes into a
/// workload of kind `i % 7`, so every kind meets every sort of generated pod.
const WORKLOAD_KINDS: [(&str, &str, &str); 7] = [
    ("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "ReplicaSet", "replicasets"),
    ("apps/v1", "StatefulSet", "statefulsets"),
    ("apps/v1", "DaemonSet", "daemonsets"),
    ("batch/v1", "Job", "jobs"),
    ("batch/v1", "CronJob", "cronjobs"),
    ("v1", "ReplicationController", "replicationcontrollers"),
];

/// The pod as the template of a workload of kind `WORKLOAD_KINDS[k]` named after it, and the
/// path to create it at.
fn workload_for(k: usize, pod: &Value, ns: &str) -> (Value, String) {
    let (api_version, kind, plural) = WORKLOAD_KINDS[k % WORKLOAD_KINDS.len()];
    let name = pod["metadata"]["name"].clone();
    let mut template_meta = json!({"labels": {"app": name.clone()}});
    if let Some(annotations) = pod["metadata"].get("annotations") {
        template_meta["annotations"] = annotations.clone();
    }
    let mut spec = pod["spec"].clone();
    if matches!(kind, "Job" | "CronJob") {
        // Jobs refuse `Always` (the Pod default); the restart policy is no PodSecurity check.
        spec["restartPolicy"] = json!("Never");
    }
    let template = json!({"metadata": template_meta, "spec": spec});
    let selector = json!({"matchLabels": {"app": name.clone()}});
    let workload_spec = match kind {
        "Job" => json!({"template": template}),
        "CronJob" => {
            json!({"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": template}}})
        }
        "DaemonSet" => json!({"selector": selector, "template": template}),
        "StatefulSet" => {
            json!({"replicas": 1, "serviceName": name.clone(), "selector": selector, "template": template})
        }
        "ReplicationController" => {
            json!({"replicas": 1, "selector": {"app": name.clone()}, "template": template})
        }
        _ => json!({"replicas": 1, "selector": selector, "template": template}),
    };
    let workload = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": workload_spec,
    });
    let base = if api_version == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{api_version}")
    };
    (workload, format!("{base}/namespaces/{ns}/{plural}"))
}

/// The text of one `Warning: 299 - "<text>"` header (RFC 7234 quoted-string).
fn warning_text(header: &str) -> Option<String> {
    let quoted = header.strip_prefix("299 - \"")?.strip_suffix('"')?;
    let mut text = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        text.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(text)
}

async fn compare_template(
    client: &Client,
    kube: KubeVersion,
    ns: &str,
    case: &Case,
) -> Result<Outcome> {
    let (deployment, path) = workload_for(case.kind, &case.pod, ns);
    let request = kube::core::Request::new(path).create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        serde_json::to_vec(&deployment)?,
    )?;
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .context("dry-run create of the workload")?;
    let status = response.status();
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().and_then(warning_text))
        .filter(|w| w.starts_with("would violate PodSecurity "))
        .collect();
    let body = response.into_body().collect_bytes().await?;
    if status.as_u16() == 422 {
        let status: kube::core::Status = serde_json::from_slice(&body)?;
        return Ok(Outcome::Invalid {
            id: case.id.clone(),
            message: status.message,
        });
    }
    ensure!(
        status.is_success(),
        "dry-run create returned {status}: {}",
        String::from_utf8_lossy(&body)
    );
    ensure!(
        warnings.len() <= 1,
        "several PodSecurity warnings: {warnings:?}"
    );
    let api = warnings.into_iter().next();

    // The evaluator reads the Deployment the way `pss-operator check` reads a manifest.
    let items = pss_operator::manifest::read_source("generated", &serde_json::to_vec(&deployment)?);
    let [pss_operator::manifest::Item::Workload(workload)] = &items[..] else {
        bail!("the manifest reader did not return one workload: {items:?}");
    };
    let version: Version = case
        .version
        .parse()
        .map_err(|e| anyhow!("version {}: {e}", case.version))?;
    let mut pod = workload.pod.clone();
    pod.apply_version_skew(kube, true);
    let eval = pss::evaluate_on(
        kube,
        &pod.metadata,
        &pod.spec,
        LevelVersion::new(case.level, version),
    );
    let ours = (!eval.allowed()).then(|| eval.warning_message());
    let mismatch = (ours != api).then(|| {
        format!(
            "MISMATCH {} (as a {} template) at {}:{}\n  workload:   {}\n  apiserver:  {}\n  evaluator:  {}",
            case.id,
            WORKLOAD_KINDS[case.kind % WORKLOAD_KINDS.len()].1,
            case.level,
            case.version,
            serde_json::to_string(&deployment).unwrap_or_default(),
            api.as_deref().unwrap_or("(no PodSecurity warning)"),
            ours.as_deref().unwrap_or("(no PodSecurity warning)"),
        )
    });
    Ok(Outcome::Compared {
        source: case.source,
        flagged: api.is_some(),
        mismatch,
    })
}

// ---- generated pods --------------------------------------------------------------------------------

/// Versions the generated pods are checked at: `latest` and every minor with fixtures.
fn generated_versions() -> Vec<String> {
    std::iter::once("latest".to_string())
        .chain((0..=37).rev().map(|m| format!("v1.{m}")))
        .collect()
}

/// `count` pods, each checked at baseline and restricted at a version cycling through
/// `generated_versions()`.
fn generated_cases(count: usize) -> Vec<Case> {
    let versions = generated_versions();
    let mut cases = Vec::new();
    for (i, pod) in podgen::generated_pods(count, PODGEN_SEED)
        .into_iter()
        .enumerate()
    {
        let version = &versions[i % versions.len()];
        for level in [Level::Baseline, Level::Restricted] {
            cases.push(Case {
                id: format!("generated/gen-{i:04}"),
                source: Source::Generated,
                level,
                version: version.clone(),
                pod: pod.clone(),
                kind: i,
            });
        }
    }
    cases
}
