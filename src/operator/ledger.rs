//! What the operator remembers between passes, per namespace: the labels it last applied and what
//! the profiles declared then (the reference for drift, see [`super::labels`]), the values each
//! label had before the operator first took it over, why a label write failed, and what it has
//! announced by Event; and the drift corrections per profile. Pure: the controller keeps one
//! `Ledger` and books into it what passes see and writes return.
//!
//! What must survive a restart is also kept on each governed namespace (see [`super::record`]):
//! a namespace's persisted record is [adopted](Ledger::adopt) the first time a pass meets it, so
//! a new leader judges the labels it finds against what the last one applied, restores what
//! was there before on `deletionPolicy: Remove`, and does not announce again what was announced.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use std::sync::Arc;

use super::desired::{LabelChange, Labels, NamespacePlan, Prior};
use super::interned;
use super::record::{Announced, Digest, Record};
use crate::pss::LevelVersion;

#[derive(Debug, Default)]
pub struct Ledger {
    /// The labels last applied (or found already as desired): keys in here that are no longer
    /// desired are removed by the next apply.
    applied: HashMap<String, Arc<Labels>>,
    /// What the governing profiles declared when the labels were last as desired: an observed
    /// change while the declaration stays the same is drift (a stricter value kept under
    /// `allowStricter` and later lowered below the floor is drift too).
    declared: HashMap<String, Arc<Labels>>,
    /// Per label applied: the value the namespace had before the operator first took it over.
    prior: HashMap<String, Arc<Prior>>,
    /// Namespaces whose persisted record was adopted.
    adopted: HashSet<String>,
    /// Namespaces whose last label write failed, and why.
    apply_errors: BTreeMap<String, String>,
    /// Digests of what was last announced by Event, to announce changes only.
    announced_pending: HashMap<String, Digest>,
    announced_conflicts: HashMap<String, Digest>,
    /// Blocked workloads (`Kind/name`) last announced, per namespace.
    announced_blocked: HashMap<String, Blocked>,
    /// Unreadable ledger annotations already reported (a digest of the value), per namespace.
    invalid_reported: HashMap<String, Digest>,
    /// Drift corrections per profile, seeded from the stored status.
    drift: HashMap<String, i64>,
}

/// The blocked workloads last announced in a namespace: known by name, or only by the digest a
/// persisted record kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blocked {
    Known(BTreeSet<String>),
    Digest(Digest),
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

fn pending_digest(target: LevelVersion, blocking: &[String]) -> Digest {
    Digest::of(std::iter::once(target.to_string()).chain(blocking.iter().cloned()))
}

impl Ledger {
    /// Forgets the namespaces `keep` says are gone (drift counts are per profile and stay).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.applied.retain(|ns, _| keep(ns));
        self.declared.retain(|ns, _| keep(ns));
        self.prior.retain(|ns, _| keep(ns));
        self.adopted.retain(|ns| keep(ns));
        self.apply_errors.retain(|ns, _| keep(ns));
        self.announced_pending.retain(|ns, _| keep(ns));
        self.announced_conflicts.retain(|ns, _| keep(ns));
        self.announced_blocked.retain(|ns, _| keep(ns));
        self.invalid_reported.retain(|ns, _| keep(ns));
    }

    /// Takes over what a namespace's persisted record says, the first time a pass meets it:
    /// what this process does not know yet (it started, or became leader, after the record was
    /// written). What it knows already wins.
    pub fn adopt(&mut self, ns: &str, record: &Record) {
        if !self.adopted.insert(ns.to_owned()) {
            return;
        }
        if !self.applied.contains_key(ns) {
            self.applied.insert(ns.to_owned(), record.labels.clone());
            match &record.declared {
                Some(d) => self.declared.insert(ns.to_owned(), d.clone()),
                None => self.declared.remove(ns),
            };
        }
        self.prior
            .entry(ns.to_owned())
            .or_insert_with(|| record.prior.clone());
        if let Some(d) = record.announced.pending {
            self.announced_pending.entry(ns.to_owned()).or_insert(d);
        }
        if let Some(d) = record.announced.conflict {
            self.announced_conflicts.entry(ns.to_owned()).or_insert(d);
        }
        if let Some(d) = record.announced.blocked {
            self.announced_blocked
                .entry(ns.to_owned())
                .or_insert(Blocked::Digest(d));
        }
    }

    /// The workloads of `ns` blocked now (`Kind/name`) that were not blocked when last announced
    /// (all of them when only a persisted digest is known and the set differs from it).
    pub fn newly_blocked(&mut self, ns: &str, blocked: BTreeSet<String>) -> Vec<String> {
        let new: Vec<String> = match self.announced_blocked.get(ns) {
            None => blocked.iter().cloned().collect(),
            Some(Blocked::Known(before)) => blocked.difference(before).cloned().collect(),
            Some(Blocked::Digest(d)) if *d == Digest::of(&blocked) => Vec::new(),
            Some(Blocked::Digest(_)) => blocked.iter().cloned().collect(),
        };
        if blocked.is_empty() {
            self.announced_blocked.remove(ns);
        } else if self.announced_blocked.get(ns) != Some(&Blocked::Known(blocked.clone())) {
            self.announced_blocked
                .insert(ns.to_owned(), Blocked::Known(blocked));
        }
        new
    }

    pub fn last_applied(&self, ns: &str) -> Option<&Labels> {
        self.applied.get(ns).map(|l| &**l)
    }

    pub fn last_declared(&self, ns: &str) -> Option<&Labels> {
        self.declared.get(ns).map(|l| &**l)
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

    /// An apply of `record`'s labels (and of the record) landed.
    pub fn applied(&mut self, ns: &str, record: &Record) {
        self.applied.insert(ns.to_owned(), record.labels.clone());
        match &record.declared {
            Some(d) => self.declared.insert(ns.to_owned(), d.clone()),
            None => self.declared.remove(ns),
        };
        self.prior.insert(ns.to_owned(), record.prior.clone());
    }

    /// Our labels (and record) were taken off the namespace, or only the record: what was
    /// applied there and what was there before are no longer ours to remember.
    pub fn released(&mut self, ns: &str) {
        self.applied.remove(ns);
        self.declared.remove(ns);
        self.prior.remove(ns);
        self.adopted.remove(ns);
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

    /// Whether an unreadable ledger annotation `value` on `ns` is to be reported (once per
    /// value and namespace).
    pub fn invalid_record(&mut self, ns: &str, value: &str) -> bool {
        let d = Digest::of([value]);
        self.invalid_reported.insert(ns.to_owned(), d) != Some(d)
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

    /// The labels among `changes` that someone else changed: the declaration of that label is
    /// the same as when it was last applied or confirmed, and the value found differs from
    /// the value applied then. A policy change that meets untouched labels (`allowStricter`
    /// turned off, a `WhenCompliant` rollout completing, a profile edited while no operator ran)
    /// is not drift.
    pub fn drifted(&self, plan: &NamespacePlan, changes: &[LabelChange]) -> Vec<String> {
        let (Some(declared), Some(applied)) =
            (self.declared.get(&plan.name), self.applied.get(&plan.name))
        else {
            return Vec::new();
        };
        changes
            .iter()
            .filter(|c| {
                declared.get(&c.label) == plan.declared.get(&c.label)
                    && applied.get(&c.label) != c.found.as_ref()
            })
            .map(|c| c.label.clone())
            .collect()
    }

    /// The value `label` had before the operator first took it over: remembered, else (a first
    /// takeover) the value found now, unless our field manager owns it already (set before a
    /// ledger was kept: what was there before is not known, and it counts as absent).
    fn prior_of(
        &self,
        ns: &str,
        label: &str,
        found: &Labels,
        owned: &BTreeSet<String>,
    ) -> Option<String> {
        match self.prior.get(ns).and_then(|p| p.get(label)) {
            Some(v) => v.clone(),
            None if owned.contains(label) => None,
            None => found.get(label).cloned(),
        }
    }

    /// The digests of what is announced now about `ns`.
    pub fn announced(&self, ns: &str) -> Announced {
        Announced {
            pending: self.announced_pending.get(ns).copied(),
            conflict: self.announced_conflicts.get(ns).copied(),
            blocked: self.announced_blocked.get(ns).map(|b| match b {
                Blocked::Known(set) => Digest::of(set),
                Blocked::Digest(d) => *d,
            }),
        }
    }

    /// The record a namespace should carry for `plan` (labels `found`, PSA labels `owned` by
    /// our field manager, the governing profile at `generation`).
    pub fn record(
        &self,
        plan: &NamespacePlan,
        found: &Labels,
        owned: &BTreeSet<String>,
        generation: Option<i64>,
    ) -> Record {
        Record {
            profile: plan.primary().unwrap_or_default().to_owned(),
            generation,
            labels: plan.desired.clone(),
            declared: plan.pending.is_none().then(|| plan.declared.clone()),
            prior: interned::prior(
                plan.desired
                    .keys()
                    .map(|k| (k.clone(), self.prior_of(&plan.name, k, found, owned)))
                    .collect(),
            ),
            announced: self.announced(&plan.name),
        }
    }

    /// Whether `stored` already says what [`Ledger::record`] would (the generation aside),
    /// without building it: every pass asks this of every governed namespace.
    pub fn record_current(
        &self,
        plan: &NamespacePlan,
        stored: &Record,
        found: &Labels,
        owned: &BTreeSet<String>,
    ) -> bool {
        Some(stored.profile.as_str()) == plan.primary()
            && stored.labels == plan.desired
            && stored.declared.as_ref() == plan.pending.is_none().then_some(&plan.declared)
            && stored.prior.len() == plan.desired.len()
            && plan
                .desired
                .keys()
                .all(|k| stored.prior.get(k) == Some(&self.prior_of(&plan.name, k, found, owned)))
            && stored.announced == self.announced(&plan.name)
    }

    /// What `plan` says that was not announced yet (each state once; announced again only after
    /// it changed).
    pub fn announcements(&mut self, plan: &NamespacePlan) -> Vec<Announcement> {
        let mut out = Vec::new();
        match &plan.pending {
            Some(p) => {
                let d = pending_digest(p.target, &p.blocking);
                if self.announced_pending.get(&plan.name) != Some(&d) {
                    self.announced_pending.insert(plan.name.clone(), d);
                    out.push(Announcement::RolloutPending {
                        ns: plan.name.clone(),
                        target: p.target,
                        blocking: p.blocking.clone(),
                    });
                }
            }
            None => {
                self.announced_pending.remove(&plan.name);
            }
        }
        if plan.conflicted() {
            let d = Digest::of(plan.governed_by.iter());
            if self.announced_conflicts.get(&plan.name) != Some(&d) {
                self.announced_conflicts.insert(plan.name.clone(), d);
                out.push(Announcement::Conflict {
                    ns: plan.name.clone(),
                    profiles: plan.governed_by.to_vec(),
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
    use crate::pss::level::labels as psa;

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
            labels: Default::default(),
        }];
        let blocking: Vec<String> = blocking.iter().map(|s| s.to_string()).collect();
        let plans = plan(
            &views,
            &ns,
            &Exclusions::default(),
            &Admission::default(),
            &|_, _| blocking.clone(),
        );
        (*plans["app"]).clone()
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
        ledger.applied("app", &Record::default());
        ledger.write_failed("app", "refused".into());
        ledger.retain(|_| false);
        assert_eq!(ledger.last_applied("app"), None);
        assert_eq!(ledger.last_declared("app"), None);
        assert!(ledger.apply_errors().is_empty());
        assert_eq!(ledger.drift()["p"], 7);
    }

    fn enforcing(profile: &str, level: &str) -> NamespacePlan {
        let p = profile_enforcing(profile, level);
        let view = ProfileView::from_profile(&p).expect("valid");
        let ns = [NamespaceView {
            name: "app".into(),
            labels: Default::default(),
        }];
        let plans = plan(
            &[view],
            &ns,
            &Exclusions::default(),
            &Admission::default(),
            &|_, _| Vec::new(),
        );
        (*plans["app"]).clone()
    }

    fn profile_enforcing(name: &str, level: &str) -> crate::operator::crd::PodSecurityProfile {
        profile(name).enforce(level).build()
    }

    use crate::operator::testing::labels;

    #[test]
    fn a_persisted_record_is_adopted_once_and_what_is_known_wins() {
        let plan = enforcing("p", "baseline");
        let mut record = Record {
            profile: "p".into(),
            labels: plan.desired.clone(),
            declared: Some(plan.declared.clone()),
            prior: Arc::new(
                plan.desired
                    .keys()
                    .map(|k| (k.clone(), Some("restricted".to_owned())))
                    .collect(),
            ),
            announced: Announced {
                conflict: Some(Digest::of(["p", "q"])),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut ledger = Ledger::default();
        ledger.adopt("app", &record);
        assert_eq!(ledger.last_applied("app"), Some(&*plan.desired));
        assert_eq!(ledger.last_declared("app"), Some(&*plan.declared));
        assert_eq!(ledger.announced("app"), record.announced);
        // Adopted once: a record edited later (by hand) changes nothing remembered.
        Arc::make_mut(&mut record.labels).clear();
        ledger.adopt("app", &record);
        assert_eq!(ledger.last_applied("app"), Some(&*plan.desired));
        // What a pass would write is what the first record said: nothing to rewrite.
        let found = plan.desired.clone();
        let owned = plan.desired.keys().cloned().collect();
        let mut first = ledger.record(&plan, &found, &owned, Some(7));
        assert_eq!(first.generation, Some(7));
        first.generation = None;
        record.labels = plan.desired.clone();
        assert!(first.same_as(&record));
        assert!(ledger.record_current(&plan, &record, &found, &owned));
        // Released: forgotten, and a later record is adopted again.
        ledger.released("app");
        assert_eq!(ledger.last_applied("app"), None);
        ledger.adopt("app", &record);
        assert_eq!(ledger.last_applied("app"), Some(&*plan.desired));
    }

    #[test]
    fn the_value_before_a_takeover_is_what_was_found_unless_we_set_it_before_keeping_a_ledger() {
        let plan = enforcing("p", "baseline");
        let ledger = Ledger::default();
        let found = labels(&[(psa::ENFORCE, "restricted")]);
        let none = BTreeSet::new();
        let r = ledger.record(&plan, &found, &none, None);
        assert_eq!(r.prior[psa::ENFORCE], Some("restricted".to_owned()));
        assert_eq!(r.prior[psa::ENFORCE_VERSION], None, "absent before");
        // Ours already (per managedFields) but not in any ledger: not known, counts as absent.
        let owned = BTreeSet::from([psa::ENFORCE.to_owned()]);
        let r = ledger.record(&plan, &found, &owned, None);
        assert_eq!(r.prior[psa::ENFORCE], None);
        // Once applied, the value before stays what it was, whatever is found later.
        let mut ledger = Ledger::default();
        let first = ledger.record(&plan, &found, &none, None);
        ledger.applied("app", &first);
        let later = ledger.record(&plan, &plan.desired, &owned, None);
        assert_eq!(later.prior, first.prior);
        assert!(ledger.record_current(&plan, &first, &plan.desired, &owned));
        // A record that names another profile or other values is not current.
        let mut other = first.clone();
        other.profile = "q".into();
        assert!(!ledger.record_current(&plan, &other, &plan.desired, &owned));
        let mut other = first.clone();
        Arc::make_mut(&mut other.prior).insert(psa::ENFORCE.into(), None);
        assert!(!ledger.record_current(&plan, &other, &plan.desired, &owned));
    }

    #[test]
    fn drift_is_per_label_against_what_was_applied_under_the_same_declaration() {
        let plan = enforcing("p", "baseline");
        let mut ledger = Ledger::default();
        let change = |label: &str, found: Option<&str>, want: &str| LabelChange {
            label: label.into(),
            found: found.map(str::to_owned),
            want: want.into(),
        };
        let lowered = [change(psa::ENFORCE, Some("privileged"), "baseline")];
        // Nothing known: a first application, not drift.
        assert!(ledger.drifted(&plan, &lowered).is_empty());
        ledger.adopt(
            "app",
            &Record {
                profile: "p".into(),
                labels: plan.desired.clone(),
                declared: Some(plan.declared.clone()),
                ..Default::default()
            },
        );
        // Known from the persisted record (a restart): the lowered label is drift.
        assert_eq!(ledger.drifted(&plan, &lowered), [psa::ENFORCE]);
        // The profile now declares restricted (edited while no operator ran): an application.
        let raised = enforcing("p", "restricted");
        let both = [change(psa::ENFORCE, Some("privileged"), "restricted")];
        assert!(ledger.drifted(&raised, &both).is_empty());
        // A held rollout declares nothing yet: nothing is drift.
        let held = Record {
            labels: plan.desired.clone(),
            ..Default::default()
        };
        let mut ledger = Ledger::default();
        ledger.adopt("app", &held);
        assert!(ledger.drifted(&plan, &lowered).is_empty());
    }

    #[test]
    fn announcements_persisted_by_digest_are_not_repeated_after_a_restart() {
        let mut before = Ledger::default();
        let held = plan_of(&["a"], &["old"]);
        assert_eq!(before.announcements(&held).len(), 1);
        let tied = plan_of(&["a", "b"], &["old"]);
        assert_eq!(before.announcements(&tied).len(), 1, "the conflict");
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            before.newly_blocked("app", set(&["Deployment/web"])).len(),
            1
        );
        let record = Record {
            announced: before.announced("app"),
            ..Default::default()
        };
        assert!(record.announced.pending.is_some());
        assert!(record.announced.conflict.is_some());
        assert!(record.announced.blocked.is_some());
        // A new process adopts the record: the same states are not announced again.
        let mut after = Ledger::default();
        after.adopt("app", &record);
        assert!(after.announcements(&tied).is_empty());
        assert!(
            after
                .newly_blocked("app", set(&["Deployment/web"]))
                .is_empty()
        );
        assert_eq!(after.announced("app"), record.announced);
        // What changed while it was down is announced; only the digest being known, every
        // workload blocked now is.
        let mut changed = Ledger::default();
        changed.adopt("app", &record);
        assert_eq!(
            changed.newly_blocked("app", set(&["CronJob/nightly", "Deployment/web"])),
            ["CronJob/nightly", "Deployment/web"]
        );
        let more = plan_of(&["a", "b"], &["old", "older"]);
        assert!(matches!(
            changed.announcements(&more)[..],
            [Announcement::RolloutPending { .. }]
        ));
    }

    #[test]
    fn an_unreadable_annotation_is_reported_once_per_value() {
        let mut ledger = Ledger::default();
        assert!(ledger.invalid_record("app", "{"));
        assert!(!ledger.invalid_record("app", "{"));
        assert!(ledger.invalid_record("app", "[]"));
        assert!(ledger.invalid_record("other", "[]"));
        ledger.retain(|ns| ns != "app");
        assert!(ledger.invalid_record("app", "[]"));
    }
}
