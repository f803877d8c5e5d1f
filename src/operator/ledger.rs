//! What the operator remembers between passes, per namespace: the labels it last applied and what
//! the profiles declared then (the reference for drift, see [`super::labels`]), why a label write
//! failed, and what it has announced by Event; and the drift corrections per profile. Pure: the
//! controller keeps one `Ledger` and books into it what passes see and writes return.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::desired::{Labels, NamespacePlan};
use crate::pss::LevelVersion;

#[derive(Debug, Default)]
pub struct Ledger {
    /// The labels last applied (or found already as desired): keys in here that are no longer
    /// desired are removed by the next apply.
    applied: HashMap<String, Labels>,
    /// What the governing profiles declared when the labels were last as desired: an observed
    /// change while the declaration stays the same is drift (a stricter value kept under
    /// `allowStricter` and later lowered below the floor is drift too).
    declared: HashMap<String, Labels>,
    /// Namespaces whose last label write failed, and why.
    apply_errors: BTreeMap<String, String>,
    /// What was last announced by Event, to announce changes only.
    announced_pending: HashMap<String, Vec<String>>,
    announced_conflicts: HashMap<String, Vec<String>>,
    /// Blocked workloads (`Kind/name`) last announced, per namespace.
    announced_blocked: HashMap<String, BTreeSet<String>>,
    /// Drift corrections per profile, seeded from the stored status.
    drift: HashMap<String, i64>,
}

/// Something a namespace's plan says that was not announced yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// A `WhenCompliant` rollout holds `enforce` until these Pods go.
    RolloutPending {
        ns: String,
        target: LevelVersion,
        blocking: Vec<String>,
    },
    /// Profiles of equal priority select the namespace.
    Conflict { ns: String, profiles: Vec<String> },
}

impl Ledger {
    /// Forgets the namespaces `keep` says are gone (drift counts are per profile and stay).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.applied.retain(|ns, _| keep(ns));
        self.declared.retain(|ns, _| keep(ns));
        self.apply_errors.retain(|ns, _| keep(ns));
        self.announced_pending.retain(|ns, _| keep(ns));
        self.announced_conflicts.retain(|ns, _| keep(ns));
        self.announced_blocked.retain(|ns, _| keep(ns));
    }

    /// The workloads of `ns` blocked now (`Kind/name`) that were not blocked when last announced.
    pub fn newly_blocked(&mut self, ns: &str, blocked: BTreeSet<String>) -> Vec<String> {
        let before = self.announced_blocked.get(ns);
        let new: Vec<String> = blocked
            .iter()
            .filter(|w| before.is_none_or(|b| !b.contains(*w)))
            .cloned()
            .collect();
        if blocked.is_empty() {
            self.announced_blocked.remove(ns);
        } else if before != Some(&blocked) {
            self.announced_blocked.insert(ns.to_owned(), blocked);
        }
        new
    }

    pub fn last_applied(&self, ns: &str) -> Option<&Labels> {
        self.applied.get(ns)
    }

    pub fn last_declared(&self, ns: &str) -> Option<&Labels> {
        self.declared.get(ns)
    }

    /// The namespace already carries what its plan wants.
    pub fn confirm(&mut self, plan: &NamespacePlan) {
        // Copied only when it changed: every pass meets ~all namespaces converged, and two
        // label-map copies per namespace per pass were most of a pass's allocations.
        if self.applied.get(&plan.name) != Some(&plan.desired) {
            self.applied.insert(plan.name.clone(), plan.desired.clone());
        }
        if plan.pending.is_none() {
            if self.declared.get(&plan.name) != Some(&plan.declared) {
                self.declared
                    .insert(plan.name.clone(), plan.declared.clone());
            }
        } else {
            self.declared.remove(&plan.name);
        }
    }

    /// An apply of `desired` landed; `declared` is `None` while a rollout holds `enforce`.
    pub fn applied(&mut self, ns: &str, desired: Labels, declared: Option<Labels>) {
        self.applied.insert(ns.to_owned(), desired);
        match declared {
            Some(d) => self.declared.insert(ns.to_owned(), d),
            None => self.declared.remove(ns),
        };
    }

    /// Our labels were taken off the namespace.
    pub fn released(&mut self, ns: &str) {
        self.applied.remove(ns);
    }

    pub fn write_failed(&mut self, ns: &str, error: String) {
        self.apply_errors.insert(ns.to_owned(), error);
    }

    pub fn write_landed(&mut self, ns: &str) {
        self.apply_errors.remove(ns);
    }

    pub fn apply_errors(&self) -> &BTreeMap<String, String> {
        &self.apply_errors
    }

    /// Starts a profile's drift count from its stored status (once; later counts add to it).
    pub fn seed_drift(&mut self, profile: &str, stored: i64) {
        if !self.drift.contains_key(profile) {
            self.drift.insert(profile.to_owned(), stored);
        }
    }

    /// `labels` labels were put back on a namespace the `profiles` govern.
    pub fn count_drift(&mut self, profiles: &[String], labels: usize) {
        for p in profiles {
            *self.drift.entry(p.clone()).or_default() += labels as i64;
        }
    }

    pub fn drift(&self) -> &HashMap<String, i64> {
        &self.drift
    }

    /// What `plan` says that was not announced yet (each state once; announced again only after
    /// it changed).
    pub fn announcements(&mut self, plan: &NamespacePlan) -> Vec<Announcement> {
        let mut out = Vec::new();
        match &plan.pending {
            Some(p) if self.announced_pending.get(&plan.name) != Some(&p.blocking) => {
                self.announced_pending
                    .insert(plan.name.clone(), p.blocking.clone());
                out.push(Announcement::RolloutPending {
                    ns: plan.name.clone(),
                    target: p.target,
                    blocking: p.blocking.clone(),
                });
            }
            Some(_) => {}
            None => {
                self.announced_pending.remove(&plan.name);
            }
        }
        if plan.conflicted() {
            if self.announced_conflicts.get(&plan.name) != Some(&plan.governed_by) {
                self.announced_conflicts
                    .insert(plan.name.clone(), plan.governed_by.clone());
                out.push(Announcement::Conflict {
                    ns: plan.name.clone(),
                    profiles: plan.governed_by.clone(),
                });
            }
        } else {
            self.announced_conflicts.remove(&plan.name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::Rollout;
    use crate::operator::desired::ProfileView;
    use crate::operator::desired::{Exclusions, NamespaceView, plan};
    use crate::operator::testing::profile;
    use crate::pss::Admission;

    fn plan_of(profiles: &[&str], blocking: &[&str]) -> NamespacePlan {
        let views: Vec<ProfileView> = profiles
            .iter()
            .map(|name| {
                let p = profile(name)
                    .enforce("baseline")
                    .rollout(Rollout::WhenCompliant)
                    .build();
                ProfileView::from_profile(&p).expect("valid")
            })
            .collect();
        let ns = [NamespaceView {
            name: "app".into(),
            labels: Labels::new(),
        }];
        let blocking: Vec<String> = blocking.iter().map(|s| s.to_string()).collect();
        let plans = plan(
            &views,
            &ns,
            &Exclusions::default(),
            &Admission::default(),
            &|_, _| blocking.clone(),
        );
        plans["app"].clone()
    }

    #[test]
    fn each_rollout_state_and_conflict_is_announced_once() {
        let mut ledger = Ledger::default();
        let held = plan_of(&["a"], &["old"]);
        assert!(matches!(
            ledger.announcements(&held)[..],
            [Announcement::RolloutPending { .. }]
        ));
        assert!(ledger.announcements(&held).is_empty(), "already announced");
        // Another Pod blocks: announced again.
        let more = plan_of(&["a"], &["old", "older"]);
        assert_eq!(ledger.announcements(&more).len(), 1);
        // Two profiles of equal priority: a conflict, once.
        let tied = plan_of(&["a", "b"], &[]);
        assert!(matches!(
            ledger.announcements(&tied)[..],
            [Announcement::Conflict { .. }]
        ));
        assert!(ledger.announcements(&tied).is_empty());
        // Resolved, then back: announced anew.
        assert!(ledger.announcements(&plan_of(&["a"], &[])).is_empty());
        assert_eq!(ledger.announcements(&tied).len(), 1);
    }

    #[test]
    fn a_workload_is_announced_blocked_once_and_again_after_it_was_fixed() {
        let mut ledger = Ledger::default();
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            ledger.newly_blocked("app", set(&["Deployment/web"])),
            ["Deployment/web"]
        );
        assert!(
            ledger
                .newly_blocked("app", set(&["Deployment/web"]))
                .is_empty()
        );
        assert_eq!(
            ledger.newly_blocked("app", set(&["CronJob/nightly", "Deployment/web"])),
            ["CronJob/nightly"]
        );
        assert!(ledger.newly_blocked("app", set(&[])).is_empty());
        assert_eq!(
            ledger.newly_blocked("app", set(&["Deployment/web"])),
            ["Deployment/web"]
        );
    }

    #[test]
    fn forgetting_a_namespace_keeps_the_drift_counts() {
        let mut ledger = Ledger::default();
        ledger.seed_drift("p", 5);
        ledger.seed_drift("p", 0);
        ledger.count_drift(&["p".into()], 2);
        ledger.applied("app", Labels::new(), Some(Labels::new()));
        ledger.write_failed("app", "refused".into());
        ledger.retain(|_| false);
        assert_eq!(ledger.last_applied("app"), None);
        assert_eq!(ledger.last_declared("app"), None);
        assert!(ledger.apply_errors().is_empty());
        assert_eq!(ledger.drift()["p"], 7);
    }
}
