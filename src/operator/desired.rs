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

use kube::core::{Selector, SelectorExt};

use super::crd::{PodSecurityProfile, ProfileMode, Rollout};
use crate::pss::{Level, LevelVersion, Mode, Policy, Version, policy_from_labels};

pub type Labels = BTreeMap<String, String>;

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
    pub labels: Labels,
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
    /// Every profile whose selector matches, sorted by name.
    pub matched_by: Vec<String>,
    /// The profiles in force: the highest priority among `matched_by`, sorted by name. More than
    /// one means a conflict.
    pub governed_by: Vec<String>,
    /// Whether the labels are written (some governing profile is in `Enforce` mode).
    pub write: bool,
    /// The PSA labels the governing profiles want (written, or only reported in `Audit` mode).
    pub desired: Labels,
    /// The labels the governing profiles declare, before a stricter value is kept or a
    /// `WhenCompliant` rollout holds `enforce`: while this stays the same, an observed label that
    /// no longer matches `desired` was changed by someone else (drift).
    pub declared: Labels,
    /// The policy to evaluate Pods against: the observed labels with `desired` laid over them.
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

/// Namespaces left alone whatever the profiles say.
#[derive(Debug, Clone, Default)]
pub struct Exclusions(BTreeSet<String>);

impl Exclusions {
    pub const DEFAULT: [&'static str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

    pub fn new(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Exclusions(
            names
                .into_iter()
                .map(Into::into)
                .filter(|n: &String| !n.is_empty())
                .collect(),
        )
    }

    pub fn contains(&self, ns: &str) -> bool {
        self.0.contains(ns)
    }
}

/// Plans every namespace. `blocking(ns, level)` lists (sorted) the running Pods of `ns` that
/// violate `level`; it is only asked for `WhenCompliant` namespaces.
pub fn plan(
    profiles: &[ProfileView],
    namespaces: &[NamespaceView],
    exclusions: &Exclusions,
    blocking: &dyn Fn(&str, LevelVersion) -> Vec<String>,
) -> BTreeMap<String, NamespacePlan> {
    namespaces
        .iter()
        .map(|ns| {
            (
                ns.name.clone(),
                plan_namespace(profiles, ns, exclusions, blocking),
            )
        })
        .collect()
}

fn observed_policy(labels: &Labels) -> Policy {
    policy_from_labels(|k| labels.get(k).map(String::as_str), Policy::DEFAULT).0
}

pub fn plan_namespace(
    profiles: &[ProfileView],
    ns: &NamespaceView,
    exclusions: &Exclusions,
    blocking: &dyn Fn(&str, LevelVersion) -> Vec<String>,
) -> NamespacePlan {
    let observed = observed_policy(&ns.labels);
    let mut plan = NamespacePlan {
        name: ns.name.clone(),
        excluded: exclusions.contains(&ns.name),
        matched_by: Vec::new(),
        governed_by: Vec::new(),
        write: false,
        desired: Labels::new(),
        declared: Labels::new(),
        policy: observed,
        pending: None,
        unprotected: false,
    };
    if plan.excluded {
        return plan;
    }
    let mut matched: Vec<&ProfileView> = profiles
        .iter()
        .filter(|p| p.selector.matches(&ns.labels))
        .collect();
    matched.sort_by(|a, b| a.name.cmp(&b.name));
    plan.matched_by = matched.iter().map(|p| p.name.clone()).collect();
    let Some(top) = matched.iter().map(|p| p.priority).max() else {
        plan.unprotected = observed.enforce.level == Level::Privileged;
        return plan;
    };
    let governing: Vec<&ProfileView> = matched.into_iter().filter(|p| p.priority == top).collect();
    plan.governed_by = governing.iter().map(|p| p.name.clone()).collect();
    plan.write = governing.iter().any(|p| p.mode == ProfileMode::Enforce);
    let allow_stricter = governing.iter().all(|p| p.allow_stricter);
    let when_compliant = governing
        .iter()
        .any(|p| p.rollout == Rollout::WhenCompliant);

    let mut targets = [None; 3];
    for mode in Mode::ALL {
        targets[mode.index()] = governing
            .iter()
            .filter_map(|p| p.level(mode))
            .max_by(|a, b| strictness(*a).cmp(&strictness(*b)));
    }

    for mode in Mode::ALL {
        let Some(target) = targets[mode.index()] else {
            continue;
        };
        let (level_key, version_key) = mode.label_keys();
        plan.declared
            .insert(level_key.to_owned(), target.level.to_string());
        plan.declared
            .insert(version_key.to_owned(), target.version.to_string());
        let kept = allow_stricter
            .then(|| stricter_observed(&ns.labels, mode, target))
            .flatten();
        let value = kept.unwrap_or_else(|| (target.level.to_string(), target.version.to_string()));
        plan.desired.insert(level_key.to_owned(), value.0);
        plan.desired.insert(version_key.to_owned(), value.1);
    }

    if when_compliant && let Some(target) = targets[Mode::Enforce.index()] {
        let (level_key, version_key) = Mode::Enforce.label_keys();
        let already = observed_level(&ns.labels, Mode::Enforce).is_some_and(|l| l >= target.level);
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
                    Some(v) => plan.desired.insert(key.to_owned(), v.clone()),
                    None => plan.desired.remove(key),
                };
            }
            for mode in [Mode::Audit, Mode::Warn] {
                let current = targets[mode.index()];
                if current.is_none_or(|c| strictness(c) < strictness(target)) {
                    let (l, v) = mode.label_keys();
                    plan.desired.insert(l.to_owned(), target.level.to_string());
                    plan.desired
                        .insert(v.to_owned(), target.version.to_string());
                }
            }
            plan.pending = Some(Pending {
                target,
                blocking: blockers,
            });
        }
    }

    let mut effective = ns.labels.clone();
    effective.extend(plan.desired.iter().map(|(k, v)| (k.clone(), v.clone())));
    plan.policy = observed_policy(&effective);
    plan
}

/// Orders levels by how much they forbid: the level first, then the policy version (`latest`
/// newest).
fn strictness(lv: LevelVersion) -> (Level, Version) {
    (lv.level, lv.version)
}

fn observed_level(labels: &Labels, mode: Mode) -> Option<Level> {
    labels.get(mode.label_keys().0)?.parse().ok()
}

/// The observed (level, version) labels of `mode` when the level is stricter than `target`.
fn stricter_observed(
    labels: &Labels,
    mode: Mode,
    target: LevelVersion,
) -> Option<(String, String)> {
    let level = observed_level(labels, mode).filter(|l| *l > target.level)?;
    let version = labels
        .get(mode.label_keys().1)
        .filter(|v| v.parse::<Version>().is_ok())
        .cloned()
        .unwrap_or_else(|| target.version.to_string());
    Some((level.to_string(), version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::LevelSpec;
    use crate::operator::testing;
    use crate::pss::level::labels as psa;

    fn lv(s: &str) -> LevelVersion {
        s.parse().expect("level:version")
    }

    fn level_spec(s: &str) -> Option<LevelSpec> {
        Some(testing::level_spec(s))
    }

    /// A profile selecting `team=<team>` (or everything for `""`).
    fn mk_profile(name: &str, team: &str, enforce: &str) -> PodSecurityProfile {
        testing::profile(name).team(team).enforce(enforce).build()
    }

    fn view(p: &PodSecurityProfile) -> ProfileView {
        ProfileView::from_profile(p).expect("valid profile")
    }

    fn mk_ns(name: &str, labels: &[(&str, &str)]) -> NamespaceView {
        NamespaceView {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn no_pods(_: &str, _: LevelVersion) -> Vec<String> {
        Vec::new()
    }

    fn plan_one(profiles: &[ProfileView], ns: &NamespaceView) -> NamespacePlan {
        plan_namespace(
            profiles,
            ns,
            &Exclusions::new(Exclusions::DEFAULT),
            &no_pods,
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selected_namespaces_get_the_profile_labels_others_nothing() {
        let mut p = mk_profile("apps", "apps", "baseline");
        p.spec.audit = level_spec("restricted");
        p.spec.warn = level_spec("restricted:v1.30");
        let profiles = [view(&p)];
        let plans = plan(
            &profiles,
            &[mk_ns("app", &[("team", "apps")]), mk_ns("other", &[])],
            &Exclusions::new(Exclusions::DEFAULT),
            &no_pods,
        );
        let app = &plans["app"];
        assert!(app.write);
        assert_eq!(app.governed_by, ["apps"]);
        assert_eq!(
            app.desired,
            labels(&[
                (psa::ENFORCE, "baseline"),
                (psa::ENFORCE_VERSION, "latest"),
                (psa::AUDIT, "restricted"),
                (psa::AUDIT_VERSION, "latest"),
                (psa::WARN, "restricted"),
                (psa::WARN_VERSION, "v1.30"),
            ])
        );
        assert_eq!(app.policy.enforce, lv("baseline:latest"));
        assert_eq!(app.policy.warn, lv("restricted:v1.30"));
        let other = &plans["other"];
        assert!(other.desired.is_empty() && other.governed_by.is_empty());
        assert!(other.unprotected, "no profile and no enforce label");
    }

    #[test]
    fn unset_modes_are_left_alone() {
        let profiles = [view(&mk_profile("p", "", "restricted"))];
        let plan = plan_one(&profiles, &mk_ns("a", &[(psa::AUDIT, "baseline")]));
        assert_eq!(
            plan.desired.keys().collect::<Vec<_>>(),
            [psa::ENFORCE, psa::ENFORCE_VERSION]
        );
        // PSA's own rule: an unset warn follows a stricter enforce.
        assert_eq!(plan.policy.warn.level, Level::Restricted);
        assert_eq!(plan.policy.audit.level, Level::Baseline);
    }

    #[test]
    fn excluded_namespaces_are_never_planned() {
        let profiles = [view(&mk_profile("all", "", "restricted"))];
        let excl = Exclusions::new(Exclusions::DEFAULT.into_iter().chain(["pss-system"]));
        for name in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "pss-system",
        ] {
            let plan = plan_namespace(&profiles, &mk_ns(name, &[]), &excl, &no_pods);
            assert!(plan.excluded, "{name}");
            assert!(plan.desired.is_empty() && plan.matched_by.is_empty());
            assert!(!plan.unprotected, "excluded namespaces are not reported");
        }
    }

    #[test]
    fn unprotected_means_no_profile_and_privileged_or_unset_enforce() {
        let none: [ProfileView; 0] = [];
        assert!(plan_one(&none, &mk_ns("a", &[])).unprotected);
        assert!(plan_one(&none, &mk_ns("a", &[(psa::ENFORCE, "privileged")])).unprotected);
        assert!(!plan_one(&none, &mk_ns("a", &[(psa::ENFORCE, "baseline")])).unprotected);
        // An invalid enforce label fails closed in PSA, so the namespace is protected.
        assert!(!plan_one(&none, &mk_ns("a", &[(psa::ENFORCE, "bogus")])).unprotected);
        let profiles = [view(&mk_profile("p", "", "privileged"))];
        assert!(!plan_one(&profiles, &mk_ns("a", &[])).unprotected);
    }

    #[test]
    fn the_highest_priority_wins() {
        let low = mk_profile("low", "", "restricted");
        let mut high = mk_profile("high", "", "baseline");
        high.spec.priority = 10;
        let plan = plan_one(&[view(&low), view(&high)], &mk_ns("a", &[]));
        assert_eq!(plan.matched_by, ["high", "low"]);
        assert_eq!(plan.governed_by, ["high"]);
        assert!(!plan.conflicted());
        assert_eq!(plan.desired[psa::ENFORCE], "baseline");
    }

    #[test]
    fn equal_priority_takes_the_most_restrictive_per_mode_and_conflicts() {
        let mut a = mk_profile("a", "", "baseline");
        a.spec.audit = level_spec("restricted:v1.25");
        let mut b = mk_profile("b", "", "restricted:v1.20");
        b.spec.audit = level_spec("restricted");
        b.spec.warn = level_spec("baseline");
        let plan = plan_one(&[view(&b), view(&a)], &mk_ns("x", &[]));
        assert!(plan.conflicted());
        assert_eq!(plan.governed_by, ["a", "b"]);
        assert_eq!(plan.primary(), Some("a"));
        assert_eq!(plan.desired[psa::ENFORCE], "restricted");
        assert_eq!(plan.desired[psa::ENFORCE_VERSION], "v1.20");
        assert_eq!(plan.desired[psa::AUDIT_VERSION], "latest");
        assert_eq!(plan.desired[psa::WARN], "baseline");
    }

    #[test]
    fn allow_stricter_keeps_a_stricter_value_and_only_that() {
        let mut p = mk_profile("p", "", "baseline");
        p.spec.allow_stricter = true;
        let profiles = [view(&p)];
        let stricter = mk_ns(
            "a",
            &[
                (psa::ENFORCE, "restricted"),
                (psa::ENFORCE_VERSION, "v1.30"),
            ],
        );
        let plan = plan_one(&profiles, &stricter);
        assert_eq!(plan.desired[psa::ENFORCE], "restricted");
        assert_eq!(plan.desired[psa::ENFORCE_VERSION], "v1.30");
        assert!(
            plan.converged(&stricter.labels),
            "a stricter value is not drift"
        );
        // A looser value is raised back to the floor.
        let looser = mk_ns("a", &[(psa::ENFORCE, "privileged")]);
        let plan = plan_one(&profiles, &looser);
        assert_eq!(plan.desired[psa::ENFORCE], "baseline");
        assert!(!plan.converged(&looser.labels));
        // Without allowStricter the profile's value is exact.
        p.spec.allow_stricter = false;
        let plan = plan_one(&[view(&p)], &stricter);
        assert_eq!(plan.desired[psa::ENFORCE], "baseline");
        assert_eq!(
            label_changes(&stricter.labels, &plan.desired),
            [
                LabelChange {
                    label: psa::ENFORCE.into(),
                    found: Some("restricted".into()),
                    want: "baseline".into()
                },
                LabelChange {
                    label: psa::ENFORCE_VERSION.into(),
                    found: Some("v1.30".into()),
                    want: "latest".into()
                },
            ]
        );
    }

    #[test]
    fn audit_mode_plans_but_does_not_write() {
        let mut p = mk_profile("p", "", "restricted");
        p.spec.mode = ProfileMode::Audit;
        let plan = plan_one(&[view(&p)], &mk_ns("a", &[]));
        assert!(!plan.write);
        assert_eq!(plan.desired[psa::ENFORCE], "restricted");
        assert_eq!(
            plan.policy.enforce.level,
            Level::Restricted,
            "reports what it would enforce"
        );
        assert!(!plan.unprotected);
    }

    #[test]
    fn when_compliant_holds_enforce_while_pods_violate_it() {
        let mut p = mk_profile("p", "", "baseline");
        p.spec.rollout = Rollout::WhenCompliant;
        p.spec.audit = level_spec("privileged");
        let profiles = [view(&p)];
        let ns = mk_ns("app", &[(psa::ENFORCE, "privileged")]);
        let blocked = |n: &str, target: LevelVersion| {
            assert_eq!((n, target), ("app", lv("baseline:latest")));
            vec!["nginx-1".to_owned()]
        };
        let plan = plan_namespace(&profiles, &ns, &Exclusions::default(), &blocked);
        let pending = plan.pending.as_ref().expect("pending");
        assert_eq!(pending.blocking, ["nginx-1"]);
        assert_eq!(
            plan.desired[psa::ENFORCE],
            "privileged",
            "enforce kept as found"
        );
        assert!(!plan.desired.contains_key(psa::ENFORCE_VERSION));
        assert_eq!(
            plan.desired[psa::AUDIT],
            "baseline",
            "audit raised to the target"
        );
        assert_eq!(plan.desired[psa::WARN], "baseline");
        assert_eq!(plan.policy.enforce.level, Level::Privileged);

        // Once the Pod is gone, enforce is raised.
        let plan = plan_namespace(&profiles, &ns, &Exclusions::default(), &no_pods);
        assert!(plan.pending.is_none());
        assert_eq!(plan.desired[psa::ENFORCE], "baseline");
        assert_eq!(plan.desired[psa::AUDIT], "privileged");

        // Once enforced, violating Pods (created before) do not lower it again.
        let enforced = mk_ns("app", &[(psa::ENFORCE, "baseline")]);
        let always = |_: &str, _: LevelVersion| vec!["old".to_owned()];
        let plan = plan_namespace(&profiles, &enforced, &Exclusions::default(), &always);
        assert!(plan.pending.is_none());
        assert_eq!(plan.desired[psa::ENFORCE], "baseline");
    }

    #[test]
    fn immediate_rollout_never_asks_about_pods() {
        let profiles = [view(&mk_profile("p", "", "restricted"))];
        let panics = |_: &str, _: LevelVersion| -> Vec<String> { panic!("not asked") };
        let plan = plan_namespace(&profiles, &mk_ns("a", &[]), &Exclusions::default(), &panics);
        assert_eq!(plan.desired[psa::ENFORCE], "restricted");
    }

    #[test]
    fn bad_profiles_are_refused_not_planned() {
        let mut p = mk_profile("p", "", "baseline");
        p.spec.enforce = Some(LevelSpec {
            level: None,
            version: Some("v1.2".into()),
        });
        assert_eq!(
            ProfileView::from_profile(&p).map(|_| ()),
            Err("invalid enforce: version requires level".to_owned())
        );
        let mut p = mk_profile("p", "", "baseline");
        p.spec.namespace_selector.match_expressions = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "team".into(),
                operator: "Bogus".into(),
                values: None,
            },
        ]);
        assert!(
            ProfileView::from_profile(&p)
                .map(|_| ())
                .is_err_and(|e| e.starts_with("invalid namespaceSelector"))
        );
        let mut p = mk_profile("p", "", "baseline");
        p.spec.enforce = None;
        assert!(ProfileView::from_profile(&p).is_err());
    }

    #[test]
    fn empty_selector_selects_every_namespace() {
        let profiles = [view(&mk_profile("all", "", "baseline"))];
        for ns in [mk_ns("a", &[]), mk_ns("b", &[("x", "y")])] {
            assert_eq!(plan_one(&profiles, &ns).governed_by, ["all"]);
        }
    }
}
