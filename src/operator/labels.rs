//! The label rules, pure: which label writes a pass makes, which of them repair drift, which PSA
//! labels our field manager owns, and what a deleted `deletionPolicy: Remove` profile takes off.
//! The controller writes what [`plan_writes`] returns and books the answers in the [`Ledger`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::core::{Selector, SelectorExt};

use super::MANAGER;
use super::crd::PodSecurityProfile;
use super::desired::{Exclusions, LabelChange, Labels, NamespacePlan, label_changes};
use super::ledger::Ledger;
use crate::pss::level::labels::PREFIX as PSA_PREFIX;

/// One label write: a server-side apply of a namespace's PSA labels under [`MANAGER`].
#[derive(Debug, Clone, PartialEq)]
pub enum LabelWrite {
    Apply {
        ns: String,
        desired: Labels,
        /// `None` while a `WhenCompliant` rollout holds `enforce`: the labels do not carry the
        /// declaration yet, so raising `enforce` later is not drift.
        declared: Option<Labels>,
        changes: Vec<LabelChange>,
        /// Whether the write puts back labels someone else changed (see [`is_drift`]).
        drift: bool,
        profiles: Vec<String>,
    },
    /// Applies no labels, so that the ones only we own go.
    Release { ns: String },
}

impl LabelWrite {
    pub fn namespace(&self) -> &str {
        match self {
            LabelWrite::Apply { ns, .. } | LabelWrite::Release { ns } => ns,
        }
    }

    /// The labels the apply carries.
    pub fn labels(&self) -> Labels {
        match self {
            LabelWrite::Apply { desired, .. } => desired.clone(),
            LabelWrite::Release { .. } => Labels::new(),
        }
    }
}

/// What the label rules read of one pass.
pub struct Cluster<'a> {
    pub plans: &'a BTreeMap<String, NamespacePlan>,
    /// The namespaces' labels as observed.
    pub labels: &'a BTreeMap<String, Labels>,
    /// The PSA labels our field manager owns, per namespace (see [`owned_labels`]).
    pub owned: &'a HashMap<String, BTreeSet<String>>,
    pub profiles: &'a [Arc<PodSecurityProfile>],
    pub exclusions: &'a Exclusions,
}

/// The label writes of a pass: applies where the labels differ from the plan or carry labels we
/// own and no longer want, releases for deleted `Remove` profiles. Namespaces `skip` names are
/// left for a later pass. Converged namespaces are confirmed in the ledger.
pub fn plan_writes(
    ledger: &mut Ledger,
    cluster: &Cluster<'_>,
    skip: &dyn Fn(&str) -> bool,
) -> Vec<LabelWrite> {
    let mut writes = Vec::new();
    let empty = Labels::new();
    for plan in cluster.plans.values().filter(|p| p.write && !skip(&p.name)) {
        let found = cluster.labels.get(&plan.name).unwrap_or(&empty);
        let changes = label_changes(found, &plan.desired);
        let dropped = drops_owned(ledger, cluster, plan);
        if changes.is_empty() && !dropped {
            ledger.confirm(plan);
            continue;
        }
        writes.push(LabelWrite::Apply {
            ns: plan.name.clone(),
            desired: plan.desired.clone(),
            declared: plan.pending.is_none().then(|| plan.declared.clone()),
            drift: is_drift(ledger, plan, &changes),
            changes,
            profiles: plan.governed_by.clone(),
        });
    }
    for p in cluster.profiles.iter().filter(|p| p.releasing()) {
        for ns in release_targets(p, cluster) {
            if !skip(ns)
                && !writes
                    .iter()
                    .any(|w| matches!(w, LabelWrite::Release { ns: n } if n == ns))
            {
                writes.push(LabelWrite::Release { ns: ns.to_owned() });
            }
        }
    }
    writes
}

/// Whether the namespace carries labels we own (per managedFields, so it survives restarts) or
/// last applied that the plan no longer wants (a mode dropped from the profile): an apply
/// without them removes them.
fn drops_owned(ledger: &Ledger, cluster: &Cluster<'_>, plan: &NamespacePlan) -> bool {
    cluster
        .owned
        .get(&plan.name)
        .into_iter()
        .flatten()
        .chain(
            ledger
                .last_applied(&plan.name)
                .into_iter()
                .flat_map(|l| l.keys()),
        )
        .any(|k| !plan.desired.contains_key(k))
}

/// Drift: the declaration is unchanged and a label now differs from the value the namespace had
/// when we last applied or confirmed it. A policy change that meets untouched labels
/// (`allowStricter` turned off, a `WhenCompliant` rollout completing) is not.
pub fn is_drift(ledger: &Ledger, plan: &NamespacePlan, changes: &[LabelChange]) -> bool {
    ledger.last_declared(&plan.name) == Some(&plan.declared)
        && ledger.last_applied(&plan.name).is_some_and(|applied| {
            changes
                .iter()
                .any(|c| applied.get(&c.label) != c.found.as_ref())
        })
}

/// Whether a managedFields entry is our field manager's server-side apply.
pub fn is_our_apply(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(MANAGER) && entry.operation.as_deref() == Some("Apply")
}

/// The label keys our field manager owns by server-side apply, from a namespace's managedFields.
pub fn owned_labels(entries: &Option<Vec<ManagedFieldsEntry>>) -> BTreeSet<String> {
    entries
        .iter()
        .flatten()
        .filter(|f| is_our_apply(f))
        .filter_map(|f| {
            f.fields_v1
                .as_ref()?
                .0
                .get("f:metadata")?
                .get("f:labels")?
                .as_object()
        })
        .flat_map(|labels| labels.keys())
        .filter_map(|k| k.strip_prefix("f:"))
        .map(str::to_owned)
        .collect()
}

/// The namespaces a deleted `Remove` profile selects that no profile governs any more and where
/// we still own labels.
pub fn release_targets<'a>(p: &PodSecurityProfile, cluster: &Cluster<'a>) -> Vec<&'a str> {
    let Ok(selector) = Selector::try_from(p.spec.namespace_selector.clone()) else {
        return Vec::new();
    };
    cluster
        .plans
        .values()
        .filter(|plan| {
            plan.governed_by.is_empty()
                && !cluster.exclusions.contains(&plan.name)
                && cluster.owned.get(&plan.name).is_some_and(|o| !o.is_empty())
                && cluster
                    .labels
                    .get(&plan.name)
                    .is_some_and(|labels| selector.matches(labels))
        })
        .map(|plan| plan.name.as_str())
        .collect()
}

/// The PSA labels `before` had that `after` has not.
pub fn removed_psa_labels(before: &Labels, after: &Labels) -> Vec<String> {
    before
        .keys()
        .filter(|k| k.starts_with(PSA_PREFIX) && !after.contains_key(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{DeletionPolicy, Rollout};
    use crate::operator::desired::{NamespaceView, ProfileView, plan};
    use crate::operator::testing::profile;
    use crate::pss::Admission;
    use crate::pss::level::labels as psa;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use serde_json::json;

    fn baseline(name: &str, policy: DeletionPolicy, deleting: bool) -> Arc<PodSecurityProfile> {
        let p = profile(name).enforce("baseline").deletion_policy(policy);
        Arc::new(if deleting { p.deleting() } else { p }.build())
    }

    fn plans_for(
        profiles: &[Arc<PodSecurityProfile>],
        ns: &[(&str, Labels)],
    ) -> BTreeMap<String, NamespacePlan> {
        let views: Vec<ProfileView> = profiles
            .iter()
            .filter(|p| !p.deleting())
            .filter_map(|p| ProfileView::from_profile(p).ok())
            .collect();
        let namespaces: Vec<NamespaceView> = ns
            .iter()
            .map(|(n, l)| NamespaceView {
                name: n.to_string(),
                labels: l.clone(),
            })
            .collect();
        plan(
            &views,
            &namespaces,
            &Exclusions::new(Exclusions::DEFAULT),
            &Admission::default(),
            &|_, _| Vec::new(),
        )
    }

    fn observed(ns: &[(&str, Labels)]) -> BTreeMap<String, Labels> {
        ns.iter().map(|(n, l)| (n.to_string(), l.clone())).collect()
    }

    /// The label writes of one pass over `profiles` and namespaces labelled as `labels`.
    struct Pass<'a> {
        plans: &'a BTreeMap<String, NamespacePlan>,
        labels: &'a BTreeMap<String, Labels>,
        profiles: &'a [Arc<PodSecurityProfile>],
        owned: HashMap<String, BTreeSet<String>>,
        exclusions: Exclusions,
    }

    impl<'a> Pass<'a> {
        fn new(
            plans: &'a BTreeMap<String, NamespacePlan>,
            labels: &'a BTreeMap<String, Labels>,
            profiles: &'a [Arc<PodSecurityProfile>],
        ) -> Self {
            Pass {
                plans,
                labels,
                profiles,
                owned: HashMap::new(),
                exclusions: Exclusions::new(Exclusions::DEFAULT),
            }
        }

        fn owning(mut self, owned: HashMap<String, BTreeSet<String>>) -> Self {
            self.owned = owned;
            self
        }

        fn writes(&self, ledger: &mut Ledger, skip: &dyn Fn(&str) -> bool) -> Vec<LabelWrite> {
            let cluster = Cluster {
                plans: self.plans,
                labels: self.labels,
                owned: &self.owned,
                profiles: self.profiles,
                exclusions: &self.exclusions,
            };
            plan_writes(ledger, &cluster, skip)
        }
    }

    fn none(_: &str) -> bool {
        false
    }

    fn applies(writes: &[LabelWrite]) -> Vec<(&str, bool)> {
        writes
            .iter()
            .filter_map(|w| match w {
                LabelWrite::Apply { ns, drift, .. } => Some((ns.as_str(), *drift)),
                LabelWrite::Release { .. } => None,
            })
            .collect()
    }

    #[test]
    fn first_application_is_not_drift_a_later_change_is() {
        let profiles = vec![baseline("p", DeletionPolicy::Retain, false)];
        let mut ledger = Ledger::default();
        let bare = [("app", Labels::new())];
        let plans = plans_for(&profiles, &bare);
        let labels = observed(&bare);
        let writes = Pass::new(&plans, &labels, &profiles).writes(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", false)]);
        // The apply succeeded: remembered.
        ledger.applied(
            "app",
            plans["app"].desired.clone(),
            Some(plans["app"].declared.clone()),
        );

        // The namespace store has not caught up with our write yet: its old labels are not drift.
        let stale = |ns: &str| ns == "app";
        assert!(
            Pass::new(&plans, &labels, &profiles)
                .writes(&mut ledger, &stale)
                .is_empty()
        );

        // Converged: nothing to write.
        let converged: BTreeMap<String, Labels> =
            [("app".to_owned(), plans["app"].desired.clone())].into();
        assert!(
            Pass::new(&plans, &converged, &profiles)
                .writes(&mut ledger, &none)
                .is_empty()
        );

        // Someone removes the enforce label: drift.
        let mut edited = plans["app"].desired.clone();
        edited.remove(psa::ENFORCE);
        let drifted: BTreeMap<String, Labels> = [("app".to_owned(), edited)].into();
        let writes = Pass::new(&plans, &drifted, &profiles).writes(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", true)]);
        let LabelWrite::Apply { changes, .. } = &writes[0] else {
            unreachable!("an apply")
        };
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].label, psa::ENFORCE);
        assert_eq!(changes[0].found, None);
    }

    fn enforcing(level: &str) -> [(&'static str, Labels); 1] {
        let labels: Labels = [
            (psa::ENFORCE.to_owned(), level.to_owned()),
            (psa::ENFORCE_VERSION.to_owned(), "latest".to_owned()),
        ]
        .into();
        [("app", labels)]
    }

    #[test]
    fn a_kept_stricter_value_lowered_below_the_floor_is_drift() {
        let p = profile("p")
            .enforce("baseline")
            .allow_stricter(true)
            .build();
        let profiles = vec![Arc::new(p)];
        let mut ledger = Ledger::default();
        // Someone raised it to restricted: kept, nothing to write, remembered.
        let stricter = enforcing("restricted");
        let (plans, labels) = (plans_for(&profiles, &stricter), observed(&stricter));
        let w = Pass::new(&plans, &labels, &profiles).writes(&mut ledger, &none);
        assert!(w.is_empty());
        // Then lowered to privileged: below the floor, and the profile did not change: drift.
        let lowered = enforcing("privileged");
        let (plans, labels) = (plans_for(&profiles, &lowered), observed(&lowered));
        let w = Pass::new(&plans, &labels, &profiles).writes(&mut ledger, &none);
        assert_eq!(applies(&w), [("app", true)]);
    }

    #[test]
    fn turning_allow_stricter_off_is_an_application_not_drift() {
        let mut ledger = Ledger::default();
        let stricter = enforcing("restricted");
        let labels = observed(&stricter);
        // A stricter value kept under allowStricter: nothing to write, remembered.
        let allowing = profile("p").enforce("baseline").allow_stricter(true);
        let profiles = vec![Arc::new(allowing.build())];
        let plans = plans_for(&profiles, &stricter);
        let w = Pass::new(&plans, &labels, &profiles).writes(&mut ledger, &none);
        assert!(w.is_empty());
        // The profile stops allowing it; nobody touched the namespace: lowered, not repaired.
        let profiles = vec![baseline("p", DeletionPolicy::Retain, false)];
        let plans = plans_for(&profiles, &stricter);
        let w = Pass::new(&plans, &labels, &profiles).writes(&mut ledger, &none);
        assert_eq!(applies(&w), [("app", false)]);
    }

    #[test]
    fn raising_enforce_when_a_rollout_completes_is_not_drift() {
        let p = profile("p")
            .enforce("baseline")
            .rollout(Rollout::WhenCompliant)
            .build();
        let view = ProfileView::from_profile(&p).expect("valid");
        let ns = [NamespaceView {
            name: "app".into(),
            labels: Labels::new(),
        }];
        let excl = Exclusions::new(Exclusions::DEFAULT);
        let blocked = plan(
            std::slice::from_ref(&view),
            &ns,
            &excl,
            &Admission::default(),
            &|_, _| vec!["old".into()],
        );
        let mut ledger = Ledger::default();
        // Pending, with audit/warn already at the target: nothing to write.
        let labels: BTreeMap<String, Labels> =
            [("app".to_owned(), blocked["app"].desired.clone())].into();
        let profiles = vec![Arc::new(p)];
        assert!(
            Pass::new(&blocked, &labels, &profiles)
                .writes(&mut ledger, &none)
                .is_empty()
        );
        // The blocking Pod goes: enforce is raised, as an application, not a repair.
        let free = plan(
            std::slice::from_ref(&view),
            &ns,
            &excl,
            &Admission::default(),
            &|_, _| Vec::new(),
        );
        let w = Pass::new(&free, &labels, &profiles).writes(&mut ledger, &none);
        assert_eq!(applies(&w), [("app", false)]);
    }

    #[test]
    fn owned_labels_come_from_our_apply_entry_only() {
        let entry = |manager: &str, operation: &str, label: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_v1: Some(FieldsV1(
                json!({"f:metadata": {"f:labels": {format!("f:{label}"): {}}}}),
            )),
            ..Default::default()
        };
        let entries = Some(vec![
            entry(MANAGER, "Apply", psa::WARN),
            entry("kubectl-label", "Update", psa::ENFORCE),
            entry(MANAGER, "Update", psa::AUDIT),
        ]);
        assert_eq!(
            owned_labels(&entries),
            BTreeSet::from([psa::WARN.to_owned()])
        );
        assert!(owned_labels(&None).is_empty());
    }

    #[test]
    fn labels_we_own_but_no_longer_want_are_released_even_after_a_restart() {
        let profiles = vec![baseline("p", DeletionPolicy::Retain, false)];
        let plans = plans_for(&profiles, &[("app", Labels::new())]);
        let mut labels = plans["app"].desired.clone();
        labels.insert(psa::WARN.into(), "restricted".into());
        let labels: BTreeMap<String, Labels> = [("app".to_owned(), labels)].into();
        // Someone else's warn label: left alone.
        let mut ledger = Ledger::default();
        assert!(
            Pass::new(&plans, &labels, &profiles)
                .writes(&mut ledger, &none)
                .is_empty()
        );
        // Ours (per managedFields), with no memory of earlier writes: applied away.
        let owned = HashMap::from([("app".to_owned(), BTreeSet::from([psa::WARN.to_owned()]))]);
        let mut ledger = Ledger::default();
        let writes = Pass::new(&plans, &labels, &profiles)
            .owning(owned)
            .writes(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", false)]);
    }

    #[test]
    fn deleted_remove_profiles_release_namespaces_nobody_else_governs() {
        let profiles = vec![
            baseline("gone", DeletionPolicy::Remove, true),
            baseline("kept-retain", DeletionPolicy::Retain, true),
        ];
        let ns = [("app", Labels::new()), ("kube-system", Labels::new())];
        let plans = plans_for(&profiles, &ns);
        let labels = observed(&ns);
        let mut ledger = Ledger::default();
        let ours = || BTreeSet::from([psa::ENFORCE.to_owned()]);
        let owned = HashMap::from([
            ("app".to_owned(), ours()),
            ("kube-system".to_owned(), ours()),
        ]);
        let writes = Pass::new(&plans, &labels, &profiles)
            .owning(owned.clone())
            .writes(&mut ledger, &none);
        let released: Vec<&str> = writes
            .iter()
            .filter_map(|w| match w {
                LabelWrite::Release { ns } => Some(ns.as_str()),
                LabelWrite::Apply { .. } => None,
            })
            .collect();
        assert_eq!(released, ["app"], "excluded namespaces are never touched");
        // Where we own nothing there is nothing to release.
        let writes = Pass::new(&plans, &labels, &profiles).writes(&mut ledger, &none);
        assert!(writes.is_empty());

        // If another live profile governs the namespace, its labels follow that one instead.
        let mut with_other = profiles.clone();
        with_other.push(baseline("other", DeletionPolicy::Retain, false));
        let plans = plans_for(&with_other, &ns);
        let writes = Pass::new(&plans, &labels, &with_other)
            .owning(owned)
            .writes(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", false)]);
        assert!(
            !writes
                .iter()
                .any(|w| matches!(w, LabelWrite::Release { .. }))
        );
    }

    #[test]
    fn a_release_names_the_psa_labels_that_went() {
        let before: Labels = [
            (psa::ENFORCE.to_owned(), "baseline".to_owned()),
            (psa::WARN.to_owned(), "restricted".to_owned()),
            ("team".to_owned(), "x".to_owned()),
        ]
        .into();
        let after: Labels = [(psa::WARN.to_owned(), "restricted".to_owned())].into();
        assert_eq!(removed_psa_labels(&before, &after), [psa::ENFORCE]);
        assert!(removed_psa_labels(&before, &before).is_empty());
    }
}
