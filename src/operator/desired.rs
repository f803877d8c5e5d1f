//! Which profile governs each namespace, and which PSA labels it should carry. Pure: profiles and
//! namespaces in, a plan out; the caller applies it.
//!
//! Rules, in order:
//! - excluded namespaces (operator-wide flag + the operator's own namespace) are never touched;
//! - among the profiles whose selector matches, the highest `priority` governs; at equal priority
//!   every tied profile governs together: per mode the most restrictive level wins, labels are
//!   written if any of them is in `Enforce` mode, `WhenCompliant` holds if any asks for it, and a
//!   stricter existing value is kept only if all of them `allowStricter` (the safe reading of each);
//! - `WhenCompliant`: `enforce` is raised only when no running Pod violates the target; until then
//!   the namespace keeps its current `enforce` labels and audit/warn are raised to the target;
//! - a namespace no profile governs whose enforce level is privileged (or unset) is unprotected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::core::{Selector, SelectorExt};

use super::crd::{PodSecurityProfile, ProfileMode, Rollout};
use super::interned;
use crate::pss::{Admission, Level, LevelVersion, Mode, Policy, Version};

pub type Labels = BTreeMap<String, String>;

/// Per PSA label: the value a namespace had before the operator first took it over (`None`:
/// absent).
pub type Prior = BTreeMap<String, Option<String>>;

/// Plans by namespace, each shared: the picture a pass hands the reporter holds the same plans
/// as the pass's cache (at 10,000 namespaces a deep copy per pass was ~15 MB, several alive).
pub type Plans = BTreeMap<String, Arc<NamespacePlan>>;

/// Observed labels by namespace, shared between the pass's cache and its pictures likewise.
pub type LabelsByNamespace = BTreeMap<String, Arc<Labels>>;

/// Each namespace's labels behind its own `Arc`.
pub fn shared_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a Labels)>,
) -> LabelsByNamespace {
    labels
        .into_iter()
        .map(|(ns, l)| (ns.clone(), Arc::new(l.clone())))
        .collect()
}

/// A profile, validated and compiled: what the planner needs and nothing else.
#[derive(Debug, Clone)]
pub struct ProfileView {
    pub name: String,
    pub selector: Selector,
    /// The declared level per mode, indexed like [`Mode::ALL`]; `None` leaves the mode alone.
    pub levels: [Option<LevelVersion>; 3],
    pub priority: i32,
    pub allow_stricter: bool,
    pub mode: ProfileMode,
    pub rollout: Rollout,
}

impl ProfileView {
    /// Validates a profile as the API server should have; objects stored before a schema change
    /// (or with a selector the API server accepted but we cannot compile) are refused here.
    pub fn from_profile(p: &PodSecurityProfile) -> Result<ProfileView, String> {
        let name = p.metadata.name.clone().ok_or("profile without a name")?;
        let selector = Selector::try_from(p.spec.namespace_selector.clone())
            .map_err(|e| format!("invalid namespaceSelector: {e}"))?;
        let mut levels = [None; 3];
        for (slot, (mode, spec)) in levels.iter_mut().zip([
            (Mode::Enforce, &p.spec.enforce),
            (Mode::Audit, &p.spec.audit),
            (Mode::Warn, &p.spec.warn),
        ]) {
            if let Some(spec) = spec {
                *slot = spec
                    .level_version()
                    .map_err(|e| format!("invalid {mode}: {e}"))?;
            }
        }
        if levels.iter().all(Option::is_none) {
            return Err("set at least one of enforce, audit, warn".to_owned());
        }
        Ok(ProfileView {
            name,
            selector,
            levels,
            priority: p.spec.priority,
            allow_stricter: p.spec.allow_stricter,
            mode: p.spec.mode,
            rollout: p.spec.rollout,
        })
    }

    pub fn level(&self, mode: Mode) -> Option<LevelVersion> {
        self.levels[mode.index()]
    }
}

/// A namespace as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    /// Shared with the namespace store.
    pub labels: Arc<Labels>,
}

/// `enforce` waiting for running Pods that violate the target to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub target: LevelVersion,
    /// Sorted names of the Pods that violate `target`.
    pub blocking: Vec<String>,
}

/// What one namespace should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespacePlan {
    pub name: String,
    pub excluded: bool,
    /// The admission configuration exempts it: the server evaluates none of its Pods.
    pub exempt: bool,
    /// Every profile whose selector matches, sorted by name.
    pub matched_by: Arc<Vec<String>>,
    /// The profiles in force: the highest priority among `matched_by`, sorted by name. More than
    /// one means a conflict.
    pub governed_by: Arc<Vec<String>>,
    /// Whether the labels are written (some governing profile is in `Enforce` mode).
    pub write: bool,
    /// The PSA labels the governing profiles want (written, or only reported in `Audit` mode).
    /// Label sets and name lists are [interned]: thousands of namespaces share a few.
    pub desired: Arc<Labels>,
    /// The labels the governing profiles declare, before a stricter value is kept or a
    /// `WhenCompliant` rollout holds `enforce`: while this stays the same, an observed label that
    /// no longer matches `desired` was changed by someone else (drift).
    pub declared: Arc<Labels>,
    /// The policy to evaluate Pods against: the observed labels with `desired` laid over them,
    /// the admission defaults for what neither sets (privileged everywhere if exempt).
    pub policy: Policy,
    pub pending: Option<Pending>,
    pub unprotected: bool,
}

impl NamespacePlan {
    pub fn conflicted(&self) -> bool {
        self.governed_by.len() > 1
    }

    /// The profile named in metrics and events for this namespace: the first governing one.
    pub fn primary(&self) -> Option<&str> {
        self.governed_by.first().map(String::as_str)
    }

    /// Whether the observed labels already carry every desired label.
    pub fn converged(&self, observed: &Labels) -> bool {
        label_changes(observed, &self.desired).is_empty()
    }
}

/// A desired label whose observed value differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelChange {
    pub label: String,
    pub found: Option<String>,
    pub want: String,
}

pub fn label_changes(observed: &Labels, desired: &Labels) -> Vec<LabelChange> {
    desired
        .iter()
        .filter(|(k, v)| observed.get(*k) != Some(*v))
        .map(|(k, v)| LabelChange {
            label: k.clone(),
            found: observed.get(k).cloned(),
            want: v.clone(),
        })
        .collect()
}

/// Namespaces left alone whatever the profiles say: the system namespaces always, and those the
/// operator is told (`--exclude-namespaces`, its own namespace) on top.
#[derive(Debug, Clone)]
pub struct Exclusions(BTreeSet<String>);

impl Default for Exclusions {
    fn default() -> Self {
        Exclusions::new(std::iter::empty::<String>())
    }
}

impl Exclusions {
    /// Always excluded: changing their labels can break the cluster itself.
    pub const DEFAULT: [&'static str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

    /// The system namespaces plus `extra`.
    pub fn new(extra: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Exclusions(
            Self::DEFAULT
                .iter()
                .map(|n| (*n).to_owned())
                .chain(extra.into_iter().map(Into::into))
                .filter(|n: &String| !n.is_empty())
                .collect(),
        )
    }

    pub fn contains(&self, ns: &str) -> bool {
        self.0.contains(ns)
    }
}

/// Plans every namespace. `blocking(ns, level)` lists (sorted) the running Pods of `ns` that
/// violate `level`; it is only asked for `WhenCompliant` namespaces. `admission` is what the
/// server enforces beyond the labels: its version (what `latest` means, for the strictness
/// order), the defaults of unlabelled modes and the exempt namespaces.
pub fn plan(
    profiles: &[ProfileView],
    namespaces: &[NamespaceView],
    exclusions: &Exclusions,
    admission: &Admission,
    blocking: &dyn Fn(&str, LevelVersion) -> Vec<String>,
) -> Plans {
    namespaces
        .iter()
        .map(|ns| {
            (
                ns.name.clone(),
                Arc::new(plan_namespace(
                    profiles, ns, exclusions, admission, blocking,
                )),
            )
        })
        .collect()
}

pub fn plan_namespace(
    profiles: &[ProfileView],
    ns: &NamespaceView,
    exclusions: &Exclusions,
    admission: &Admission,
    blocking: &dyn Fn(&str, LevelVersion) -> Vec<String>,
) -> NamespacePlan {
    let observed = admission.policy(&ns.name, |k| ns.labels.get(k).map(String::as_str));
    let exempt = admission.config.exempt_namespace(&ns.name);
    let mut plan = NamespacePlan {
        name: ns.name.clone(),
        excluded: exclusions.contains(&ns.name),
        exempt,
        matched_by: Arc::default(),
        governed_by: Arc::default(),
        write: false,
        desired: Arc::default(),
        declared: Arc::default(),
        policy: observed,
        pending: None,
        unprotected: false,
    };
    if plan.excluded {
        return plan;
    }
    // What the server enforces right now: nothing in an exempt namespace.
    let unprotected_now = !exempt && observed.enforce.level == Level::Privileged;
    let mut matched: Vec<&ProfileView> = profiles
        .iter()
        .filter(|p| p.selector.matches(&ns.labels))
        .collect();
    matched.sort_by(|a, b| a.name.cmp(&b.name));
    plan.matched_by = interned::names(matched.iter().map(|p| p.name.clone()).collect());
    let Some(top) = matched.iter().map(|p| p.priority).max() else {
        plan.unprotected = unprotected_now;
        return plan;
    };
    let governing: Vec<&ProfileView> = matched.into_iter().filter(|p| p.priority == top).collect();
    plan.governed_by = interned::names(governing.iter().map(|p| p.name.clone()).collect());
    plan.write = governing.iter().any(|p| p.mode == ProfileMode::Enforce);
    // An Audit-mode profile writes nothing: the namespace is as protected as its labels.
    plan.unprotected = !plan.write && unprotected_now;
    let allow_stricter = governing.iter().all(|p| p.allow_stricter);
    let when_compliant = governing
        .iter()
        .any(|p| p.rollout == Rollout::WhenCompliant);

    let mut targets = [None; 3];
    for mode in Mode::ALL {
        let declared: Vec<LevelVersion> = governing.iter().filter_map(|p| p.level(mode)).collect();
        targets[mode.index()] = most_restrictive(&declared, admission);
    }

    let (mut desired, mut declared) = (Labels::new(), Labels::new());
    for mode in Mode::ALL {
        let Some(target) = targets[mode.index()] else {
            continue;
        };
        let (level_key, version_key) = mode.label_keys();
        declared.insert(level_key.to_owned(), target.level.to_string());
        declared.insert(version_key.to_owned(), target.version.to_string());
        let kept = allow_stricter
            .then(|| stricter_observed(&ns.labels, mode, target, admission))
            .flatten();
        let value = kept.unwrap_or_else(|| (target.level.to_string(), target.version.to_string()));
        desired.insert(level_key.to_owned(), value.0);
        desired.insert(version_key.to_owned(), value.1);
    }

    if when_compliant && let Some(target) = targets[Mode::Enforce.index()] {
        let (level_key, version_key) = Mode::Enforce.label_keys();
        // Nothing to wait for when what is in force already refuses all the target refuses,
        // or when the server does not evaluate this namespace at all.
        let already = exempt || admission.at_least_as_strict(observed.enforce, target);
        let blockers = if already {
            Vec::new()
        } else {
            blocking(&ns.name, target)
        };
        if !blockers.is_empty() {
            // Keep enforce as found (never lower it: it may be ours from an earlier target) and
            // let audit and warn show the target in the meantime.
            for key in [level_key, version_key] {
                match ns.labels.get(key) {
                    Some(v) => desired.insert(key.to_owned(), v.clone()),
                    None => desired.remove(key),
                };
            }
            for mode in [Mode::Audit, Mode::Warn] {
                let current = targets[mode.index()];
                if current.is_none_or(|c| !admission.at_least_as_strict(c, target)) {
                    let (l, v) = mode.label_keys();
                    desired.insert(l.to_owned(), target.level.to_string());
                    desired.insert(v.to_owned(), target.version.to_string());
                }
            }
            plan.pending = Some(Pending {
                target,
                blocking: blockers,
            });
        }
    }

    // The observed labels with the desired ones laid over them, read in place.
    plan.policy = admission.policy(&ns.name, |k| {
        desired
            .get(k)
            .or_else(|| ns.labels.get(k))
            .map(String::as_str)
    });
    plan.desired = interned::labels(desired);
    plan.declared = interned::labels(declared);
    plan
}

/// The most restrictive of tied profiles' levels for one mode: the one at least as strict as
/// every other on this server if there is one; otherwise (versions that relax different things,
/// e.g. `restricted:v1.20` and `baseline:latest`) the strictest level at the newest of their
/// versions, which refuses what each of them refuses except what upstream deliberately relaxed.
fn most_restrictive(declared: &[LevelVersion], admission: &Admission) -> Option<LevelVersion> {
    let strictest = declared.iter().find(|a| {
        declared
            .iter()
            .all(|b| admission.at_least_as_strict(**a, *b))
    });
    if let Some(lv) = strictest {
        return Some(*lv);
    }
    let level = declared.iter().map(|lv| lv.level).max()?;
    let version = declared.iter().map(|lv| lv.version).max()?;
    Some(LevelVersion::new(level, version))
}

/// The observed (level, version) labels of `mode` when they refuse everything `target` refuses
/// and more (a missing or invalid version label is `latest`, as PSA reads it).
fn stricter_observed(
    labels: &Labels,
    mode: Mode,
    target: LevelVersion,
    admission: &Admission,
) -> Option<(String, String)> {
    let (level_key, version_key) = mode.label_keys();
    let level: Level = labels.get(level_key)?.parse().ok()?;
    let version_text = labels
        .get(version_key)
        .filter(|v| v.parse::<Version>().is_ok());
    let version = version_text.map_or(Version::Latest, |v| v.parse().unwrap_or(Version::Latest));
    let found = LevelVersion::new(level, version);
    let stricter =
        admission.at_least_as_strict(found, target) && !admission.at_least_as_strict(target, found);
    stricter.then(|| {
        (
            level.to_string(),
            version_text.cloned().unwrap_or_else(|| "latest".to_owned()),
        )
    })
}

#[cfg(test)]
mod tests;
