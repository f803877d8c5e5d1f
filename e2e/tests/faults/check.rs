//! "Every label, status and metric matches the cluster": the cluster as it is now, evaluated afresh
//! with our evaluator, compared with the namespace labels (and who owns them), each profile's
//! status and the operator's /metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use pss_operator::operator::crd::{PodSecurityProfile, PodSecurityProfileSpec};
use pss_operator::pss::{self, Level, LevelVersion, Version};

use crate::harness::eventually;
use crate::procs::OperatorProc;
use crate::support::{MANAGER, TEST_LABEL};

/// The label that says which of a test's profiles selects a namespace.
pub const TIER: &str = "e2e.pss-operator.io/tier";
const PSA: &str = "pod-security.kubernetes.io/";
const MODES: [&str; 3] = ["enforce", "audit", "warn"];

/// One profile of a test: selects the test's namespaces labelled `TIER=<tier>`.
#[derive(Clone, Debug)]
pub struct Declared {
    pub profile: String,
    pub tier: String,
    /// Level per mode (enforce, audit, warn), always at version latest.
    pub levels: [Option<Level>; 3],
}

impl Declared {
    pub fn new(profile: &str, tier: &str, levels: [Option<Level>; 3]) -> Self {
        Declared {
            profile: profile.to_owned(),
            tier: tier.to_owned(),
            levels,
        }
    }

    pub fn spec(&self, tag: &str, extra: Value) -> Result<PodSecurityProfileSpec> {
        let mut spec = json!({
            "namespaceSelector": {"matchLabels": {TEST_LABEL: tag, TIER: self.tier}},
        });
        for (mode, level) in MODES.iter().zip(self.levels) {
            if let Some(level) = level {
                spec[*mode] = json!({"level": level.to_string()});
            }
        }
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        Ok(serde_json::from_value(spec)?)
    }

    pub async fn create(&self, client: &Client, tag: &str) -> Result<()> {
        let profile = PodSecurityProfile::new(&self.profile, self.spec(tag, json!({}))?);
        Api::<PodSecurityProfile>::all(client.clone())
            .create(&PostParams::default(), &profile)
            .await
            .with_context(|| format!("creating profile {}", self.profile))?;
        Ok(())
    }

    /// The PSA labels this profile writes, exactly.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (mode, level) in MODES.iter().zip(self.levels) {
            if let Some(level) = level {
                out.insert(format!("{PSA}{mode}"), level.to_string());
                out.insert(format!("{PSA}{mode}-version"), "latest".to_owned());
            }
        }
        out
    }
}

/// What a converged check saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub namespaces: usize,
    pub pods: usize,
    /// Violating Pods per (profile, mode).
    pub violating: BTreeMap<(String, String), i32>,
}

/// Per mode: violating Pods and their count per check.
type ModeTotals = BTreeMap<&'static str, (i32, BTreeMap<String, i32>)>;

#[derive(Default)]
struct Expected {
    /// per mode: violating count and per check
    modes: BTreeMap<&'static str, (i32, BTreeMap<String, i32>)>,
    privileged: i32,
}

/// Waits (generously) until labels, statuses and metrics all equal a fresh evaluation of the
/// cluster; fails with the last differences otherwise.
pub async fn converged(
    client: &Client,
    op: &OperatorProc,
    tag: &str,
    declared: &[Declared],
    limit: Duration,
) -> Result<Summary> {
    let last = Mutex::new(String::new());
    let last = &last;
    let result = eventually(
        "labels, statuses and metrics to equal a fresh evaluation",
        limit,
        || async move {
            let (summary, diff) = compare(client, op, tag, declared).await?;
            let done = diff.is_empty();
            *last.lock().unwrap_or_else(|p| p.into_inner()) = diff;
            Ok(done.then_some(summary))
        },
    )
    .await;
    result.with_context(|| {
        format!(
            "differences left:\n{}",
            last.lock().unwrap_or_else(|p| p.into_inner())
        )
    })
}

/// One comparison: the summary and a description of every difference (empty when converged).
pub async fn compare(
    client: &Client,
    op: &OperatorProc,
    tag: &str,
    declared: &[Declared],
) -> Result<(Summary, String)> {
    let mut diff = String::new();
    let mut summary = Summary::default();
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{TEST_LABEL}={tag}")))
        .await?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut pods_by_ns: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &pods {
        pods_by_ns
            .entry(p.namespace().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let metrics = op.metrics().await?;
    let mut per_profile: BTreeMap<&str, (i32, ModeTotals)> = BTreeMap::new();

    for ns in &namespaces {
        let name = ns.name_any();
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = ns.labels();
        let Some(d) = labels
            .get(TIER)
            .and_then(|t| declared.iter().find(|d| &d.tier == t))
        else {
            continue;
        };
        summary.namespaces += 1;
        // Labels: exactly the profile's PSA labels.
        let psa: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| k.starts_with(PSA))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if psa != d.labels() {
            let _ = writeln!(diff, "{name}: PSA labels {psa:?}, want {:?}", d.labels());
        }
        // Owners: only our field manager, by server-side apply, owns PSA labels.
        for f in ns.metadata.managed_fields.iter().flatten() {
            let owns_psa = f
                .fields_v1
                .as_ref()
                .and_then(|v| v.0.get("f:metadata")?.get("f:labels")?.as_object().cloned())
                .is_some_and(|l| l.keys().any(|k| k.starts_with(&format!("f:{PSA}"))));
            let ours =
                f.manager.as_deref() == Some(MANAGER) && f.operation.as_deref() == Some("Apply");
            if owns_psa && !ours {
                let _ = writeln!(
                    diff,
                    "{name}: PSA labels also owned by {:?} ({:?})",
                    f.manager, f.operation
                );
            }
        }
        // A fresh evaluation of its Pods.
        let mut expected = Expected::default();
        for pod in pods_by_ns.get(&name).into_iter().flatten() {
            let finished = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if finished {
                continue;
            }
            summary.pods += 1;
            let model: pss::model::Pod = serde_json::from_value(serde_json::to_value(pod)?)
                .with_context(|| {
                    format!("the evaluator cannot read pod {name}/{}", pod.name_any())
                })?;
            expected.privileged += model.spec.privileged_containers() as i32;
            for (mode, level) in MODES.iter().zip(d.levels) {
                let Some(level) = level else { continue };
                let eval = pss::evaluate(
                    &model.metadata,
                    &model.spec,
                    LevelVersion::new(level, Version::Latest),
                );
                let entry = expected.modes.entry(mode).or_default();
                if !eval.allowed() {
                    entry.0 += 1;
                    for c in eval.failed_checks() {
                        *entry.1.entry(c.to_string()).or_default() += 1;
                    }
                }
            }
        }
        let profile_entry = per_profile.entry(d.profile.as_str()).or_default();
        profile_entry.0 += 1;
        for (mode, level) in MODES.iter().zip(d.levels) {
            let Some(level) = level else { continue };
            let (n, checks) = expected.modes.get(mode).cloned().unwrap_or_default();
            let totals = profile_entry.1.entry(mode).or_default();
            totals.0 += n;
            for (c, k) in &checks {
                *totals.1.entry(c.clone()).or_default() += k;
            }
            let base = [("namespace", name.as_str()), ("mode", *mode)];
            let got = metrics.value(
                "pss_violating_pods",
                &[base[0], base[1], ("profile", &d.profile)],
            );
            if got != Some(f64::from(n)) {
                let _ = writeln!(
                    diff,
                    "{name}: pss_violating_pods{{mode={mode}}} {got:?}, want {n}"
                );
            }
            let got_checks: BTreeMap<String, i32> = metrics
                .find("pss_pod_violations", &base)
                .into_iter()
                .map(|s| {
                    (
                        s.labels.get("check").cloned().unwrap_or_default(),
                        s.value as i32,
                    )
                })
                .collect();
            if got_checks != checks {
                let _ = writeln!(
                    diff,
                    "{name}: pss_pod_violations{{mode={mode}}} {got_checks:?}, want {checks:?}"
                );
            }
            let level_series = metrics.value(
                "pss_namespace_level",
                &[base[0], base[1], ("level", &level.to_string())],
            );
            if level_series != Some(1.0) {
                let _ = writeln!(
                    diff,
                    "{name}: pss_namespace_level{{mode={mode}}} {level_series:?}"
                );
            }
        }
        let got = metrics.value("pss_privileged_containers", &[("namespace", &name)]);
        if got.unwrap_or(0.0) != f64::from(expected.privileged) {
            let _ = writeln!(
                diff,
                "{name}: pss_privileged_containers {got:?}, want {}",
                expected.privileged
            );
        }
    }

    // Each profile's status.
    for d in declared {
        let p = Api::<PodSecurityProfile>::all(client.clone())
            .get(&d.profile)
            .await
            .with_context(|| format!("reading profile {}", d.profile))?;
        let (count, modes) = per_profile.remove(d.profile.as_str()).unwrap_or_default();
        let Some(status) = p.status.as_ref() else {
            let _ = writeln!(diff, "profile {}: no status", d.profile);
            continue;
        };
        if status.observed_generation != p.metadata.generation {
            let _ = writeln!(diff, "profile {}: status of an older generation", d.profile);
        }
        if status.matched_namespaces != count || status.enforced_namespaces != count {
            let _ = writeln!(
                diff,
                "profile {}: matched {} enforced {}, want {count}",
                d.profile, status.matched_namespaces, status.enforced_namespaces
            );
        }
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            let _ = writeln!(
                diff,
                "profile {}: not Ready: {:?}",
                d.profile, status.conditions
            );
        }
        for (mode, level) in MODES.iter().zip(d.levels) {
            if level.is_none() {
                continue;
            }
            let (n, checks) = modes.get(mode).cloned().unwrap_or_default();
            summary
                .violating
                .insert((d.profile.clone(), mode.to_string()), n);
            let got = match *mode {
                "enforce" => status.enforce.as_ref(),
                "audit" => status.audit.as_ref(),
                _ => status.warn.as_ref(),
            };
            let (got_n, got_checks) = got
                .map(|m| (m.violating_pods, m.by_check.clone()))
                .unwrap_or_default();
            if got_n != n || got_checks != checks {
                let _ = writeln!(
                    diff,
                    "profile {} {mode}: {got_n} violating {got_checks:?}, want {n} {checks:?}",
                    d.profile
                );
            }
        }
    }
    Ok((summary, diff))
}

/// Pod specs of the fault tests: one passing restricted, one passing only baseline, one
/// privileged (rejected once `enforce=baseline` is on its namespace).
pub fn pod_spec(kind: usize) -> Value {
    match kind % 3 {
        0 => json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app", "image": "busybox:1.37",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        }),
        1 => json!({"containers": [{"name": "app", "image": "busybox:1.37"}]}),
        _ => json!({"containers": [
            {"name": "app", "image": "busybox:1.37"},
            {"name": "priv", "image": "busybox:1.37", "securityContext": {"privileged": true}},
        ]}),
    }
}

pub fn pod(ns: &str, name: &str, kind: usize) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": pod_spec(kind),
    }))?)
}

/// A small deterministic generator (xorshift), so load patterns are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Creates `n` namespaces `<tag>-<prefix>-<i>` labelled with the test tag and `TIER=<tier(i)>`,
/// 16 at a time; waits for their `default` ServiceAccount when `pods` is true (Pods need it).
pub async fn namespaces(
    client: &Client,
    tag: &str,
    prefix: &str,
    n: usize,
    tier: impl Fn(usize) -> String,
    pods: bool,
) -> Result<Vec<String>> {
    use futures::StreamExt as _;
    let names: Vec<(String, String)> = (0..n)
        .map(|i| (format!("{tag}-{prefix}-{i}"), tier(i)))
        .collect();
    let results: Vec<Result<()>> = futures::stream::iter(names.clone())
        .map(|(name, tier)| async move {
            crate::harness::create_namespace(client, &name, &[(TEST_LABEL, tag), (TIER, &tier)])
                .await?;
            if pods {
                crate::harness::wait_for_default_service_account(client, &name).await?;
            }
            Ok(())
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(names.into_iter().map(|(n, _)| n).collect())
}

/// Pods created, refused by admission (403: PodSecurity) and failed otherwise.
#[derive(Debug, Default, Clone, Copy)]
pub struct Created {
    pub created: usize,
    pub forbidden: usize,
    pub failed: usize,
}

/// Creates the Pods `(namespace, name, kind)`, `parallel` at a time, counting the outcomes.
pub async fn create_pods(
    client: &Client,
    pods: Vec<(String, String, usize)>,
    parallel: usize,
) -> Result<Created> {
    use futures::StreamExt as _;
    let outcomes: Vec<Result<std::result::Result<(), u16>>> = futures::stream::iter(pods)
        .map(|(ns, name, kind)| async move {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match api
                .create(&PostParams::default(), &pod(&ns, &name, kind)?)
                .await
            {
                Ok(_) => Ok(Ok(())),
                Err(kube::Error::Api(s)) => Ok(Err(s.code)),
                Err(_) => Ok(Err(0)),
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut c = Created::default();
    for o in outcomes {
        match o? {
            Ok(()) => c.created += 1,
            Err(403) => c.forbidden += 1,
            Err(_) => c.failed += 1,
        }
    }
    Ok(c)
}

/// Deletes what a test created (best effort: the control plane goes with the test binary).
/// Waits until no namespace is terminating: the namespaces earlier tests deleted (hundreds, by
/// `cleanup`, which does not wait) are gone, and kube-controller-manager's namespace controller
/// is idle. For a test whose own deletions must finish within its deadline. The time it waited.
pub async fn no_namespace_terminating(client: &Client, limit: Duration) -> Result<Duration> {
    let started = std::time::Instant::now();
    let ns: Api<Namespace> = Api::all(client.clone());
    eventually(
        "no namespace terminating (earlier tests' deletions done)",
        limit,
        || {
            let ns = ns.clone();
            async move {
                let terminating = ns
                    .list_metadata(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|n| n.metadata.deletion_timestamp.is_some())
                    .count();
                Ok((terminating == 0).then_some(()))
            }
        },
    )
    .await?;
    Ok(started.elapsed())
}

pub async fn cleanup(client: &Client, tag: &str, profiles: &[&str]) {
    let api: Api<PodSecurityProfile> = Api::all(client.clone());
    for p in profiles {
        let _ = api.delete(p, &Default::default()).await;
    }
    let ns: Api<Namespace> = Api::all(client.clone());
    if let Ok(list) = ns
        .list_metadata(&ListParams::default().labels(&format!("{TEST_LABEL}={tag}")))
        .await
    {
        for n in list.items {
            let _ = ns.delete(&n.name_any(), &Default::default()).await;
        }
    }
}
