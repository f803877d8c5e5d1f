//! Profile status, built from the plan and the Pod index. Pure, bounded and
//! deterministic: sorted everywhere, capped everywhere, and timestamps carried over from the
//! previous status unless a condition really changed, so the same cluster gives the same status.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::crd::{
    ModeStatus, NamespaceViolations, OwnerViolations, PendingNamespace, PodSecurityProfile,
    PodSecurityProfileStatus, ProfileMode, SampleViolation, WorkloadViolation,
};
use super::desired::{LabelsByNamespace, NamespacePlan, Plans, ProfileView};
use super::index::{Evaluate, PodIndex, Tally};
use super::workloads::TemplateIndex;
use crate::pss::{CheckSet, Mode, NEWEST_KNOWN_MINOR};

pub const MAX_NAMESPACES: usize = 100;
pub const MAX_SAMPLES: usize = 20;
pub const MAX_PENDING: usize = 20;
pub const MAX_PENDING_PODS: usize = 10;
/// Workloads listed with the violating Pods they own, per mode.
pub const MAX_OWNERS: usize = 20;
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The compact JSON status is trimmed below this: the promise is 64 KiB, and the rest leaves room
/// for pretty-printed output, the spec and metadata.
pub const MAX_STATUS_BYTES: usize = 48 * 1024;
const MAX_NAMES_IN_MESSAGE: usize = 10;

/// Everything a status or metric is built from, observed in one pass.
pub struct Observed<'a, P> {
    pub plans: &'a Plans,
    /// Namespace labels as observed.
    pub labels: &'a LabelsByNamespace,
    pub index: &'a PodIndex<P>,
    /// The templates of the reported workloads.
    pub templates: &'a TemplateIndex<P>,
    /// Drift corrections per profile since it was created.
    pub drift: &'a HashMap<String, i64>,
    /// Namespaces whose labels could not be applied, and why.
    pub apply_errors: &'a BTreeMap<String, String>,
}

impl<P: Evaluate> Observed<'_, P> {
    fn governed_by<'b>(&'b self, profile: &'b str) -> impl Iterator<Item = &'b NamespacePlan> {
        self.plans
            .values()
            .map(|p| &**p)
            .filter(move |p| p.governed_by.iter().any(|g| g == profile))
    }

    fn converged(&self, plan: &NamespacePlan) -> bool {
        self.labels
            .get(&plan.name)
            .is_some_and(|l| plan.converged(l))
    }
}

/// The status of one profile; `view` is the validated profile or why it is invalid.
pub fn profile_status<P: Evaluate>(
    profile: &PodSecurityProfile,
    view: Result<&ProfileView, &str>,
    obs: &Observed<'_, P>,
    now: &Time,
) -> PodSecurityProfileStatus {
    let name = profile.metadata.name.as_deref().unwrap_or_default();
    let generation = profile.metadata.generation;
    let previous = profile
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let drift_corrections = obs.drift.get(name).copied().unwrap_or(0);

    let view = match view {
        Ok(view) => view,
        Err(why) => {
            return PodSecurityProfileStatus {
                observed_generation: generation,
                conditions: vec![
                    condition("Ready", false, "InvalidSpec", why.to_owned()),
                    condition("Conflicted", false, "InvalidSpec", "not evaluated".into()),
                    condition(
                        "Degraded",
                        true,
                        "InvalidSpec",
                        format!("{why}; fix the spec, other profiles are unaffected"),
                    ),
                ],
                drift_corrections,
                ..Default::default()
            };
        }
    };

    let matched = obs
        .plans
        .values()
        .filter(|p| p.matched_by.iter().any(|m| m == name))
        .count();
    let governed: Vec<&NamespacePlan> = obs.governed_by(name).collect();
    let writes = view.mode == ProfileMode::Enforce;
    let pending: Vec<&NamespacePlan> = governed
        .iter()
        .copied()
        .filter(|p| p.pending.is_some())
        .collect();
    let conflicted: Vec<&NamespacePlan> = governed
        .iter()
        .copied()
        .filter(|p| p.conflicted())
        .collect();
    let enforced = governed
        .iter()
        .filter(|p| writes && p.pending.is_none() && obs.converged(p))
        .count();
    let failed: Vec<(&str, &str)> = governed
        .iter()
        .filter_map(|p| {
            obs.apply_errors
                .get(&p.name)
                .map(|e| (p.name.as_str(), e.as_str()))
        })
        .collect();

    let ready = if !writes {
        condition(
            "Ready",
            true,
            "AuditOnly",
            format!(
                "mode Audit: {} namespaces would be labelled, none is written",
                governed.len()
            ),
        )
    } else if !failed.is_empty() {
        condition(
            "Ready",
            false,
            "ApplyFailed",
            format!(
                "labels could not be applied to {}",
                name_list(failed.iter().map(|(n, _)| *n))
            ),
        )
    } else if !pending.is_empty() {
        condition(
            "Ready",
            false,
            "RolloutPending",
            format!(
                "enforce waits for violating Pods to go in {}",
                name_list(pending.iter().map(|p| p.name.as_str()))
            ),
        )
    } else if enforced < governed.len() {
        condition(
            "Ready",
            false,
            "Progressing",
            format!(
                "{enforced} of {} namespaces labelled as declared",
                governed.len()
            ),
        )
    } else {
        condition(
            "Ready",
            true,
            "Reconciled",
            format!("{enforced} namespaces labelled as declared"),
        )
    };
    let conflict = if conflicted.is_empty() {
        condition(
            "Conflicted",
            false,
            "NoConflict",
            "no other profile of equal priority selects these namespaces".into(),
        )
    } else {
        let mut others: Vec<&str> = conflicted
            .iter()
            .flat_map(|p| p.governed_by.iter().map(String::as_str))
            .filter(|g| *g != name)
            .collect();
        others.sort_unstable();
        others.dedup();
        condition(
            "Conflicted",
            true,
            "EqualPriority",
            format!(
                "profiles {} have the same priority {} on namespaces {}; the most restrictive level per mode applies",
                name_list(others.into_iter()),
                view.priority,
                name_list(conflicted.iter().map(|p| p.name.as_str()))
            ),
        )
    };
    let kube = obs.index.admission().kube;
    let degraded = match failed.first() {
        Some((ns, why)) => condition(
            "Degraded",
            true,
            "ApplyFailed",
            truncate(&format!("namespace {ns}: {why}"), MAX_MESSAGE_BYTES),
        ),
        None if !kube.is_known() => condition(
            "Degraded",
            true,
            "ServerNewerThanOperator",
            format!(
                "kube-apiserver is {kube}, newer than the newest Pod Security policy version this pss-operator knows (v1.{NEWEST_KNOWN_MINOR}): Pods are evaluated with v1.{NEWEST_KNOWN_MINOR}'s checks and may miss checks added since; upgrade pss-operator"
            ),
        ),
        None => condition("Degraded", false, "AsExpected", "".into()),
    };

    let mut status = PodSecurityProfileStatus {
        observed_generation: generation,
        conditions: vec![ready, conflict, degraded],
        matched_namespaces: count(matched),
        enforced_namespaces: count(enforced),
        pending_namespaces: count(pending.len()),
        conflicted_namespaces: count(conflicted.len()),
        exempt_namespaces: count(governed.iter().filter(|p| p.exempt).count()),
        kubernetes_version: Some(kube.to_string()),
        drift_corrections,
        blocked_workloads: 0,
        pending: pending
            .iter()
            .take(MAX_PENDING)
            .filter_map(|p| {
                let pending = p.pending.as_ref()?;
                Some(PendingNamespace {
                    namespace: p.name.clone(),
                    target: pending.target.to_string(),
                    blocking_pods: count(pending.blocking.len()),
                    pods: pending
                        .blocking
                        .iter()
                        .take(MAX_PENDING_PODS)
                        .cloned()
                        .collect(),
                })
            })
            .collect(),
        enforce: Some(mode_status(view, Mode::Enforce, &governed, obs)),
        audit: Some(mode_status(view, Mode::Audit, &governed, obs)),
        warn: Some(mode_status(view, Mode::Warn, &governed, obs)),
    };
    status.blocked_workloads = status.enforce.as_ref().map_or(0, |e| e.violating_workloads);
    fit(&mut status);
    status
}

/// The status of a profile whose stored spec no longer deserializes (e.g. stored before a schema
/// change): Degraded, nothing else claimed.
pub fn unreadable_status(
    generation: Option<i64>,
    error: &str,
    now: &Time,
) -> PodSecurityProfileStatus {
    let condition = |type_: &str, status: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: "Unreadable".to_owned(),
        message: truncate(&message, MAX_MESSAGE_BYTES),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    PodSecurityProfileStatus {
        observed_generation: generation,
        conditions: vec![
            condition("Ready", "False", "the spec cannot be read".into()),
            condition("Conflicted", "False", "not evaluated".into()),
            condition(
                "Degraded",
                "True",
                format!(
                    "the spec cannot be read ({error}); re-apply it with the current schema, other profiles are unaffected"
                ),
            ),
        ],
        ..Default::default()
    }
}

fn mode_status<P: Evaluate>(
    view: &ProfileView,
    mode: Mode,
    governed: &[&NamespacePlan],
    obs: &Observed<'_, P>,
) -> ModeStatus {
    let index = obs.index;
    let mut status = ModeStatus {
        level: view.level(mode).map(|lv| lv.to_string()),
        ..Default::default()
    };
    let mut namespaces = Vec::new();
    // (no privileged container, namespace, pod, checks): privileged containers first.
    let mut samples: Vec<(bool, &str, &str, CheckSet)> = Vec::new();
    let mut tally = Tally::default();
    // Violating Pods per (namespace, controller): few distinct controllers, folded into the
    // reported workload once at the end.
    let mut by_controller: HashMap<(&str, &str), i32> = HashMap::new();
    for plan in governed {
        let before = tally.pods;
        for v in index.violators(&plan.name, mode) {
            tally.add(&v);
            if let Some(owner) = v.owner {
                *by_controller.entry((&plan.name, owner)).or_default() += 1;
            }
            samples.push((v.privileged == 0, &plan.name, v.pod, v.checks));
        }
        let in_ns = tally.pods - before;
        if in_ns > 0 {
            namespaces.push(NamespaceViolations {
                namespace: plan.name.clone(),
                violating_pods: in_ns,
            });
        }
    }
    status.violating_pods = tally.pods;
    namespaces.sort_by(|a, b| {
        b.violating_pods
            .cmp(&a.violating_pods)
            .then_with(|| a.namespace.cmp(&b.namespace))
    });
    status.omitted_namespaces = count(namespaces.len().saturating_sub(MAX_NAMESPACES));
    namespaces.truncate(MAX_NAMESPACES);
    status.namespaces = namespaces;
    status.by_check = tally
        .by_check
        .into_iter()
        .map(|(check, n)| (check.to_owned(), n))
        .collect();
    status.samples = first_sorted(samples, MAX_SAMPLES)
        .into_iter()
        .map(|(_, ns, pod, checks)| SampleViolation {
            namespace: ns.to_owned(),
            pod: pod.to_owned(),
            checks: checks.ids().map(str::to_owned).collect(),
            message: truncate(
                &index.message(ns, pod, mode).unwrap_or_default(),
                MAX_MESSAGE_BYTES,
            ),
        })
        .collect();
    status.owners = owner_violations(by_controller, obs.templates);
    workload_status(&mut status, mode, governed, obs.templates);
    status
}

/// Violating Pods per reported workload (controllers folded into their owner), most first.
fn owner_violations<P>(
    by_controller: HashMap<(&str, &str), i32>,
    templates: &TemplateIndex<P>,
) -> Vec<OwnerViolations> {
    let mut by_owner: BTreeMap<(&str, String), i32> = BTreeMap::new();
    for ((ns, controller), n) in by_controller {
        *by_owner
            .entry((ns, templates.owner_of(ns, controller)))
            .or_default() += n;
    }
    let mut owners: Vec<OwnerViolations> = by_owner
        .into_iter()
        .map(|((ns, owner), n)| {
            let (kind, name) = owner.split_once('/').unwrap_or(("", &owner));
            OwnerViolations {
                namespace: ns.to_owned(),
                kind: kind.to_owned(),
                name: name.to_owned(),
                violating_pods: n,
            }
        })
        .collect();
    // Most Pods first; the map's order (namespace, owner) breaks ties.
    owners.sort_by_key(|o| std::cmp::Reverse(o.violating_pods));
    owners.truncate(MAX_OWNERS);
    owners
}

/// The workloads of the governed namespaces whose template violates the mode's level.
fn workload_status<P: Evaluate>(
    status: &mut ModeStatus,
    mode: Mode,
    governed: &[&NamespacePlan],
    templates: &TemplateIndex<P>,
) {
    // (no privileged container, kind, namespace, name, checks): privileged containers first.
    let mut samples = Vec::new();
    for plan in governed {
        for w in templates.violators(&plan.name, mode) {
            status.violating_workloads += 1;
            *status
                .workloads_by_kind
                .entry(w.kind.as_str().to_owned())
                .or_default() += 1;
            let v = w.violator;
            samples.push((
                v.privileged == 0,
                w.kind,
                plan.name.as_str(),
                v.pod,
                v.checks,
            ));
        }
    }
    status.workload_samples = first_sorted(samples, MAX_SAMPLES)
        .into_iter()
        .map(|(_, kind, ns, name, checks)| WorkloadViolation {
            kind: kind.as_str().to_owned(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            replicas: templates.replicas(kind, ns, name),
            checks: checks.ids().map(str::to_owned).collect(),
            message: truncate(
                &templates.message(kind, ns, name, mode).unwrap_or_default(),
                MAX_MESSAGE_BYTES,
            ),
            refused: templates
                .refusal(kind, ns, name)
                .map(|r| truncate(r, MAX_MESSAGE_BYTES)),
        })
        .collect();
}

/// The first `n` items in order, sorted: selected first, so that only those are sorted (a status
/// shows 20 of what may be 50,000 violations).
fn first_sorted<T: Ord>(mut items: Vec<T>, n: usize) -> Vec<T> {
    if items.len() > n {
        if n > 0 {
            items.select_nth_unstable(n - 1);
        }
        items.truncate(n);
    }
    items.sort_unstable();
    items
}

/// Trims samples, then namespace breakdowns, then pending lists, from the end, until the
/// serialized status fits [`MAX_STATUS_BYTES`]. Counts are never trimmed.
fn fit(status: &mut PodSecurityProfileStatus) {
    fn json_len<T: serde::Serialize>(v: &T) -> usize {
        serde_json::to_vec(v).map_or(usize::MAX, |v| v.len())
    }
    // Serializing the whole status after every removal would be quadratic: track an estimate
    // (each removal saves at least its own bytes) and re-measure only when it says "fits".
    let mut size = json_len(status);
    while size > MAX_STATUS_BYTES {
        let modes = [&mut status.enforce, &mut status.audit, &mut status.warn];
        let mut modes: Vec<&mut ModeStatus> = modes.into_iter().flatten().collect();
        let saved = if let Some(m) = modes
            .iter_mut()
            .filter(|m| !m.samples.is_empty() || !m.workload_samples.is_empty())
            .max_by_key(|m| m.samples.len().max(m.workload_samples.len()))
        {
            if m.samples.len() >= m.workload_samples.len() {
                m.samples.pop().map_or(0, |x| json_len(&x))
            } else {
                m.workload_samples.pop().map_or(0, |x| json_len(&x))
            }
        } else if let Some(m) = modes
            .iter_mut()
            .filter(|m| !m.owners.is_empty())
            .max_by_key(|m| m.owners.len())
        {
            m.owners.pop().map_or(0, |x| json_len(&x))
        } else if let Some(m) = modes
            .iter_mut()
            .filter(|m| !m.namespaces.is_empty())
            .max_by_key(|m| m.namespaces.len())
        {
            m.omitted_namespaces += 1;
            m.namespaces.pop().map_or(0, |x| json_len(&x))
        } else if let Some(x) = status.pending.pop() {
            json_len(&x)
        } else {
            break;
        };
        size = size.saturating_sub(saved);
        if size <= MAX_STATUS_BYTES {
            size = json_len(status);
        }
    }
}

pub(crate) fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn name_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    let mut out = names
        .iter()
        .take(MAX_NAMES_IN_MESSAGE)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_NAMES_IN_MESSAGE {
        out.push_str(&format!(" and {} more", names.len() - MAX_NAMES_IN_MESSAGE));
    }
    out
}

#[cfg(test)]
mod tests;
