//! The label rules, pure: which label writes a pass makes, which of their changes repair drift,
//! which PSA labels (and ledger record) our field manager owns, and what a deleted
//! `deletionPolicy: Remove` profile puts back and takes off. The controller writes what
//! [`plan_writes`] returns and books the answers in the [`Ledger`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::core::{Selector, SelectorExt};
use serde_json::{Value, json};

use super::MANAGER;
use super::crd::PodSecurityProfile;
use super::desired::{
    Exclusions, LabelChange, Labels, LabelsByNamespace, NamespacePlan, Plans, label_changes,
};
use super::ledger::Ledger;
use super::record::{ANNOTATION, Record};
use crate::pss::level::labels::PREFIX as PSA_PREFIX;

/// One label write: a server-side apply of a namespace's PSA labels under [`MANAGER`], or the
/// merge patch of a release.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelWrite {
    /// Applies the record's labels and the record itself, in one server-side apply.
    Apply {
        ns: String,
        changes: Vec<LabelChange>,
        /// The labels among `changes` that someone else changed (see [`Ledger::drifted`]).
        drifted: Vec<String>,
        profiles: Vec<String>,
        record: Box<Record>,
    },
    /// The namespace is no longer governed (its profile deleted with `Retain`, or no longer
    /// selecting it): applies the labels we own as they are, without the record, so only the
    /// record goes (and the admission guard no longer protects the namespace).
    Unmark { ns: String, keep: Labels },
    /// A deleted `Remove` profile's namespace: puts back the values found before the takeover
    /// and takes off the labels that were not there (see [`restore`], planned from the
    /// namespace as read just before the write).
    Release { ns: String },
}

impl LabelWrite {
    pub fn namespace(&self) -> &str {
        match self {
            LabelWrite::Apply { ns, .. }
            | LabelWrite::Unmark { ns, .. }
            | LabelWrite::Release { ns } => ns,
        }
    }

    /// Whether the write puts back labels someone else changed.
    pub fn repairs(&self) -> bool {
        matches!(self, LabelWrite::Apply { drifted, .. } if !drifted.is_empty())
    }
}

/// What our field manager's server-side apply owns on a namespace (from its managedFields, so
/// it survives restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// The PSA labels.
    pub labels: BTreeSet<String>,
    /// The ledger record annotation.
    pub record: bool,
}

impl Owned {
    pub fn any(&self) -> bool {
        self.record || !self.labels.is_empty()
    }
}

/// What the label rules read of one pass.
pub struct Cluster<'a> {
    pub plans: &'a Plans,
    /// The namespaces' labels as observed.
    pub labels: &'a LabelsByNamespace,
    /// What our field manager owns, per namespace (see [`owned`]).
    pub owned: &'a HashMap<String, Owned>,
    /// The readable ledger records on the namespaces (see [`super::record`]).
    pub records: &'a HashMap<String, Record>,
    pub profiles: &'a [Arc<PodSecurityProfile>],
    pub exclusions: &'a Exclusions,
}

/// Whether the operator writes the labels of the namespace `plan` is for.
pub fn governs(plan: &NamespacePlan) -> bool {
    plan.write && !plan.governed_by.is_empty() && !plan.excluded
}

/// The label writes of a pass: applies where the labels differ from the plan, carry labels we
/// own and no longer want, or the namespace's record is not what it should be; the record taken
/// off namespaces no longer governed; releases for deleted `Remove` profiles. Namespaces `skip`
/// names are left for a later pass. Converged namespaces are confirmed in the ledger.
pub fn plan_writes(
    ledger: &mut Ledger,
    cluster: &Cluster<'_>,
    skip: &dyn Fn(&str) -> bool,
) -> Vec<LabelWrite> {
    let mut writes = Vec::new();
    let empty = Labels::new();
    let nothing = Owned::default();
    let mut released = BTreeSet::new();
    for p in cluster.profiles.iter().filter(|p| p.releasing()) {
        released.extend(release_targets(p, cluster));
    }
    for plan in cluster.plans.values().filter(|p| !skip(&p.name)) {
        let found = cluster.labels.get(&plan.name).map_or(&empty, |l| &**l);
        let owned = cluster.owned.get(&plan.name).unwrap_or(&nothing);
        if !governs(plan) {
            if owned.record && !plan.excluded && !released.contains(plan.name.as_str()) {
                let keep = owned
                    .labels
                    .iter()
                    .filter_map(|k| Some((k.clone(), found.get(k)?.clone())))
                    .collect();
                writes.push(LabelWrite::Unmark {
                    ns: plan.name.clone(),
                    keep,
                });
            }
            continue;
        }
        let changes = label_changes(found, &plan.desired);
        let dropped = drops_owned(ledger, owned, plan);
        let current = cluster
            .records
            .get(&plan.name)
            .is_some_and(|r| ledger.record_current(plan, r, found, &owned.labels));
        if changes.is_empty() && !dropped && current {
            ledger.confirm(plan);
            continue;
        }
        let generation = plan.primary().and_then(|name| {
            cluster
                .profiles
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .and_then(|p| p.metadata.generation)
        });
        writes.push(LabelWrite::Apply {
            ns: plan.name.clone(),
            drifted: ledger.drifted(plan, &changes),
            changes,
            profiles: plan.governed_by.clone(),
            record: Box::new(ledger.record(plan, found, &owned.labels, generation)),
        });
    }
    for ns in released.into_iter().filter(|ns| !skip(ns)) {
        writes.push(LabelWrite::Release { ns: ns.to_owned() });
    }
    writes
}

/// Whether the namespace carries labels we own (per managedFields, so it survives restarts) or
/// last applied that the plan no longer wants (a mode dropped from the profile): an apply
/// without them removes them.
fn drops_owned(ledger: &Ledger, owned: &Owned, plan: &NamespacePlan) -> bool {
    owned
        .labels
        .iter()
        .chain(
            ledger
                .last_applied(&plan.name)
                .into_iter()
                .flat_map(|l| l.keys()),
        )
        .any(|k| !plan.desired.contains_key(k))
}

/// Whether a managedFields entry is our field manager's server-side apply.
pub fn is_our_apply(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(MANAGER) && entry.operation.as_deref() == Some("Apply")
}

/// The `f:`-keys of `f:metadata.f:<field>` in a managedFields entry.
fn fields<'a>(entry: &'a ManagedFieldsEntry, field: &str) -> impl Iterator<Item = &'a str> {
    entry
        .fields_v1
        .as_ref()
        .and_then(|f| f.0.get("f:metadata")?.get(field)?.as_object())
        .into_iter()
        .flat_map(|m| m.keys())
        .filter_map(|k| k.strip_prefix("f:"))
}

/// The PSA labels and the record our field manager owns by server-side apply, from a namespace's
/// managedFields.
pub fn owned(entries: &Option<Vec<ManagedFieldsEntry>>) -> Owned {
    let mut owned = Owned::default();
    for entry in entries.iter().flatten().filter(|f| is_our_apply(f)) {
        owned.labels.extend(
            fields(entry, "f:labels")
                .filter(|k| k.starts_with(PSA_PREFIX))
                .map(str::to_owned),
        );
        owned.record |= fields(entry, "f:annotations").any(|k| k == ANNOTATION);
    }
    owned
}

/// The namespaces a deleted `Remove` profile selects that no profile governs any more and where
/// our field manager still owns labels or the record.
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
                && cluster.owned.get(&plan.name).is_some_and(Owned::any)
                && cluster
                    .labels
                    .get(&plan.name)
                    .is_some_and(|labels| selector.matches(labels))
        })
        .map(|plan| plan.name.as_str())
        .collect()
}

/// What a release does to one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    /// Labels put back to the value they had before the operator took them over.
    pub restored: Labels,
    /// Labels taken off: they were not there before (or, without a ledger, only we set them).
    pub removed: Vec<String>,
    /// Why the namespace's record could not be read (the release then proceeds as without one).
    pub record_error: Option<String>,
    /// The JSON merge patch that does it, or `None` when there is nothing left to do.
    pub patch: Option<Value>,
}

/// The release of a namespace, from its metadata as read just before (labels, the record,
/// every managedFields entry):
/// - with a record, each label the operator applied is put back to its value before the
///   takeover, or taken off if it was absent then, unless another field manager owns it now;
/// - without a (readable) record, the PSA labels only our field manager owns are taken off;
/// - the record goes, and so does our field manager's entry, so that nothing restored is
///   owned by us afterwards (a profile governing the namespace later must not take it off).
///
/// One merge patch with the namespace's resourceVersion as precondition: a namespace changed
/// meanwhile fails it with a conflict and is released again by a later pass.
pub fn restore(meta: &ObjectMeta) -> Restore {
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotation = meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION));
    let (record, record_error) = match annotation.map(|a| Record::decode(a)) {
        Some(Ok(r)) => (Some(r), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let entries = meta.managed_fields.as_deref().unwrap_or_default();
    let ours = owned(&meta.managed_fields);
    let others: BTreeSet<&str> = entries
        .iter()
        .filter(|e| !is_our_apply(e))
        .flat_map(|e| fields(e, "f:labels"))
        .collect();
    let mut restored = Labels::new();
    let mut removed = Vec::new();
    if let Some(r) = &record {
        for k in r.labels.keys() {
            match r.prior.get(k).cloned().flatten() {
                Some(v) if labels.get(k) != Some(&v) => {
                    restored.insert(k.clone(), v);
                }
                Some(_) => {}
                None if labels.contains_key(k) && !others.contains(k.as_str()) => {
                    removed.push(k.clone());
                }
                None => {}
            }
        }
    }
    // Labels only we own that no record speaks of (set before a ledger was kept, or the record
    // is unreadable): taken off, as they were put there by us.
    for k in &ours.labels {
        let known = record.as_ref().is_some_and(|r| r.labels.contains_key(k));
        if !known && labels.contains_key(k) && !others.contains(k.as_str()) {
            removed.push(k.clone());
        }
    }
    let our_entry = entries.iter().any(is_our_apply);
    let patch = (!restored.is_empty() || !removed.is_empty() || annotation.is_some() || our_entry)
        .then(|| {
            let mut label_patch = serde_json::Map::new();
            for (k, v) in &restored {
                label_patch.insert(k.clone(), json!(v));
            }
            for k in &removed {
                label_patch.insert(k.clone(), Value::Null);
            }
            let mut metadata = json!({ "resourceVersion": meta.resource_version });
            if !label_patch.is_empty() {
                metadata["labels"] = Value::Object(label_patch);
            }
            if annotation.is_some() {
                metadata["annotations"] = json!({ ANNOTATION: null });
            }
            if our_entry {
                let rest: Vec<&ManagedFieldsEntry> =
                    entries.iter().filter(|e| !is_our_apply(e)).collect();
                // An empty list would leave managedFields as they are; one empty entry resets
                // them (ours was the only one).
                metadata["managedFields"] = if rest.is_empty() {
                    json!([{}])
                } else {
                    json!(rest)
                };
            }
            json!({ "metadata": metadata })
        });
    Restore {
        restored,
        removed,
        record_error,
        patch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{DeletionPolicy, Rollout};
    use crate::operator::desired::{NamespaceView, ProfileView, plan, shared_labels};
    use crate::operator::testing::profile;
    use crate::pss::Admission;
    use crate::pss::level::labels as psa;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

    fn baseline(name: &str, policy: DeletionPolicy, deleting: bool) -> Arc<PodSecurityProfile> {
        let p = profile(name).enforce("baseline").deletion_policy(policy);
        Arc::new(if deleting { p.deleting() } else { p }.build())
    }

    fn plans_for(profiles: &[Arc<PodSecurityProfile>], ns: &[(&str, Labels)]) -> Plans {
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

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One namespace `app` through passes: its labels, what our field manager owns and the
    /// record on it, as the API server would keep them.
    struct World {
        profiles: Vec<Arc<PodSecurityProfile>>,
        labels: BTreeMap<String, Labels>,
        owned: HashMap<String, Owned>,
        records: HashMap<String, Record>,
        exclusions: Exclusions,
    }

    impl World {
        fn new(profiles: Vec<Arc<PodSecurityProfile>>, app: Labels) -> Self {
            World {
                profiles,
                labels: [("app".to_owned(), app)].into(),
                owned: HashMap::new(),
                records: HashMap::new(),
                exclusions: Exclusions::new(Exclusions::DEFAULT),
            }
        }

        fn plans(&self) -> Plans {
            let ns: Vec<(&str, Labels)> = self
                .labels
                .iter()
                .map(|(n, l)| (n.as_str(), l.clone()))
                .collect();
            plans_for(&self.profiles, &ns)
        }

        /// The writes of one pass (adopting records first, as the controller does).
        fn pass(&self, ledger: &mut Ledger, skip: &dyn Fn(&str) -> bool) -> Vec<LabelWrite> {
            let plans = self.plans();
            for plan in plans.values().filter(|p| governs(p)) {
                if let Some(r) = self.records.get(&plan.name) {
                    ledger.adopt(&plan.name, r);
                }
            }
            let labels = shared_labels(&self.labels);
            let cluster = Cluster {
                plans: &plans,
                labels: &labels,
                owned: &self.owned,
                records: &self.records,
                profiles: &self.profiles,
                exclusions: &self.exclusions,
            };
            plan_writes(ledger, &cluster, skip)
        }

        /// The API server's answer to the applies: labels set (ours only), record kept, ours
        /// owned; booked in the ledger.
        fn land(&mut self, ledger: &mut Ledger, writes: &[LabelWrite]) {
            for w in writes {
                let ns = w.namespace().to_owned();
                let labels = self.labels.entry(ns.clone()).or_default();
                let owned = self.owned.entry(ns.clone()).or_default();
                match w {
                    LabelWrite::Apply { record, .. } => {
                        for k in owned.labels.iter() {
                            if !record.labels.contains_key(k) {
                                labels.remove(k);
                            }
                        }
                        labels.extend(record.labels.clone());
                        owned.labels = record.labels.keys().cloned().collect();
                        owned.record = true;
                        self.records.insert(ns.clone(), (**record).clone());
                        ledger.applied(&ns, record);
                    }
                    LabelWrite::Unmark { .. } => {
                        owned.record = false;
                        self.records.remove(&ns);
                        ledger.released(&ns);
                    }
                    LabelWrite::Release { .. } => unreachable!("not landed in these tests"),
                }
            }
        }

        fn set(&mut self, label: &str, value: Option<&str>) {
            let labels = self.labels.get_mut("app").expect("app");
            match value {
                Some(v) => labels.insert(label.to_owned(), v.to_owned()),
                None => labels.remove(label),
            };
            // A person's edit takes the field from every other manager.
            if let Some(o) = self.owned.get_mut("app") {
                o.labels.remove(label);
            }
        }
    }

    fn none(_: &str) -> bool {
        false
    }

    /// (namespace, label changes, drifted labels) of each apply.
    fn applies(writes: &[LabelWrite]) -> Vec<(&str, usize, Vec<String>)> {
        writes
            .iter()
            .filter_map(|w| match w {
                LabelWrite::Apply {
                    ns,
                    changes,
                    drifted,
                    ..
                } => Some((ns.as_str(), changes.len(), drifted.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_application_is_not_drift_a_later_change_is() {
        let mut world = World::new(
            vec![baseline("p", DeletionPolicy::Retain, false)],
            Labels::new(),
        );
        let mut ledger = Ledger::default();
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", 2, vec![])]);
        let LabelWrite::Apply { record, .. } = &writes[0] else {
            unreachable!("an apply")
        };
        assert_eq!(record.profile, "p");
        assert_eq!(record.generation, Some(1));
        assert_eq!(record.prior[psa::ENFORCE], None, "absent before");
        world.land(&mut ledger, &writes);

        // The namespace store has not caught up with our write yet: left alone.
        assert!(world.pass(&mut ledger, &|ns| ns == "app").is_empty());
        // Converged, the record current: nothing to write.
        assert!(world.pass(&mut ledger, &none).is_empty());

        // Someone removes the enforce label: drift.
        world.set(psa::ENFORCE, None);
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(
            applies(&writes),
            [("app", 1, vec![psa::ENFORCE.to_owned()])]
        );
        assert!(writes[0].repairs());
        let LabelWrite::Apply { changes, .. } = &writes[0] else {
            unreachable!("an apply")
        };
        assert_eq!(changes[0].found, None);
    }

    #[test]
    fn drift_made_while_no_operator_ran_is_drift_for_the_next_one() {
        let profiles = vec![baseline("p", DeletionPolicy::Retain, false)];
        let mut world = World::new(profiles, Labels::new());
        let mut first = Ledger::default();
        let writes = world.pass(&mut first, &none);
        world.land(&mut first, &writes);

        // The operator stops; a restart without changes writes nothing at all.
        let mut restarted = Ledger::default();
        assert!(world.pass(&mut restarted, &none).is_empty());

        // Stopped again, enforce lowered by hand; the next operator knows only the record.
        world.set(psa::ENFORCE, Some("privileged"));
        let mut next = Ledger::default();
        let writes = world.pass(&mut next, &none);
        assert_eq!(
            applies(&writes),
            [("app", 1, vec![psa::ENFORCE.to_owned()])]
        );
        // Without a record the same change would have been a first application.
        world.records.clear();
        let mut amnesiac = Ledger::default();
        assert_eq!(
            applies(&world.pass(&mut amnesiac, &none)),
            [("app", 1, vec![])]
        );
    }

    #[test]
    fn a_converged_namespace_without_a_record_gets_one_once_and_what_it_had_is_kept() {
        let profiles = vec![baseline("p", DeletionPolicy::Remove, false)];
        let team = labels(&[(psa::ENFORCE, "baseline"), (psa::ENFORCE_VERSION, "latest")]);
        let mut world = World::new(profiles, team);
        let mut ledger = Ledger::default();
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", 0, vec![])], "the record only");
        let LabelWrite::Apply { record, .. } = &writes[0] else {
            unreachable!("an apply")
        };
        assert_eq!(record.prior[psa::ENFORCE].as_deref(), Some("baseline"));
        world.land(&mut ledger, &writes);
        assert!(world.pass(&mut ledger, &none).is_empty());
    }

    #[test]
    fn a_kept_stricter_value_lowered_below_the_floor_is_drift() {
        let p = profile("p")
            .enforce("baseline")
            .allow_stricter(true)
            .build();
        let stricter = labels(&[
            (psa::ENFORCE, "restricted"),
            (psa::ENFORCE_VERSION, "latest"),
        ]);
        let mut world = World::new(vec![Arc::new(p)], stricter);
        let mut ledger = Ledger::default();
        // Someone raised it to restricted: kept, only the record is written.
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", 0, vec![])]);
        world.land(&mut ledger, &writes);
        assert!(world.pass(&mut ledger, &none).is_empty());
        // Then lowered to privileged: below the floor, and the profile did not change: drift.
        world.set(psa::ENFORCE, Some("privileged"));
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(
            applies(&writes),
            [("app", 1, vec![psa::ENFORCE.to_owned()])]
        );
    }

    #[test]
    fn turning_allow_stricter_off_is_an_application_not_drift() {
        let allowing = profile("p").enforce("baseline").allow_stricter(true);
        let stricter = labels(&[
            (psa::ENFORCE, "restricted"),
            (psa::ENFORCE_VERSION, "latest"),
        ]);
        let mut world = World::new(vec![Arc::new(allowing.build())], stricter);
        let mut ledger = Ledger::default();
        let writes = world.pass(&mut ledger, &none);
        world.land(&mut ledger, &writes);
        // The profile stops allowing it; nobody touched the namespace: lowered, not repaired.
        world.profiles = vec![baseline("p", DeletionPolicy::Retain, false)];
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", 1, vec![])]);
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
        let profiles = vec![Arc::new(p)];
        // Audit and warn already at the target, enforce held.
        let labels: LabelsByNamespace =
            [("app".to_owned(), Arc::new(blocked["app"].desired.clone()))].into();
        let owned = HashMap::new();
        let mut records = HashMap::new();
        let cluster = |plans: &Plans, records: &HashMap<String, Record>, ledger: &mut Ledger| {
            plan_writes(
                ledger,
                &Cluster {
                    plans,
                    labels: &labels,
                    owned: &owned,
                    records,
                    profiles: &profiles,
                    exclusions: &excl,
                },
                &none,
            )
        };
        // Pending, nothing to label: only the record, which says the rollout is held.
        let w = cluster(&blocked, &records, &mut ledger);
        let [
            LabelWrite::Apply {
                record, changes, ..
            },
        ] = &w[..]
        else {
            panic!("the record: {w:?}")
        };
        assert!(changes.is_empty());
        assert_eq!(record.declared, None, "held");
        ledger.applied("app", record);
        records.insert("app".to_owned(), (**record).clone());
        let again = cluster(&blocked, &records, &mut ledger);
        assert!(again.is_empty(), "{again:?}");
        // The blocking Pod goes: enforce is raised, as an application, not a repair.
        let free = plan(
            std::slice::from_ref(&view),
            &ns,
            &excl,
            &Admission::default(),
            &|_, _| Vec::new(),
        );
        let w = cluster(&free, &records, &mut ledger);
        assert_eq!(applies(&w), [("app", 2, vec![])]);
    }

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_v1: Some(FieldsV1(json!({ "f:metadata": fields }))),
            ..Default::default()
        }
    }

    fn label_entry(manager: &str, operation: &str, label: &str) -> ManagedFieldsEntry {
        entry(
            manager,
            operation,
            json!({"f:labels": {format!("f:{label}"): {}}}),
        )
    }

    #[test]
    fn what_we_own_comes_from_our_apply_entry_only() {
        let entries = Some(vec![
            entry(
                MANAGER,
                "Apply",
                json!({"f:labels": {format!("f:{}", psa::WARN): {}, "f:team": {}},
                       "f:annotations": {format!("f:{ANNOTATION}"): {}}}),
            ),
            label_entry("kubectl-label", "Update", psa::ENFORCE),
            label_entry(MANAGER, "Update", psa::AUDIT),
        ]);
        assert_eq!(
            owned(&entries),
            Owned {
                labels: BTreeSet::from([psa::WARN.to_owned()]),
                record: true
            }
        );
        assert_eq!(owned(&None), Owned::default());
        assert!(!owned(&None).any());
    }

    #[test]
    fn labels_we_own_but_no_longer_want_are_released_even_after_a_restart() {
        let profiles = vec![baseline("p", DeletionPolicy::Retain, false)];
        let mut app = plans_for(&profiles, &[("app", Labels::new())])["app"]
            .desired
            .clone();
        app.insert(psa::WARN.into(), "restricted".into());
        let mut world = World::new(profiles, app);
        // Someone else's warn label: left alone (only the record is written).
        let mut ledger = Ledger::default();
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", 0, vec![])]);
        let LabelWrite::Apply { record, .. } = &writes[0] else {
            unreachable!("an apply")
        };
        assert!(!record.labels.contains_key(psa::WARN));
        world.land(&mut ledger, &writes);
        assert!(world.pass(&mut ledger, &none).is_empty());
        // Ours (per managedFields), with no memory of earlier writes: applied away.
        world
            .owned
            .get_mut("app")
            .expect("owned")
            .labels
            .insert(psa::WARN.to_owned());
        let mut ledger = Ledger::default();
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(applies(&writes), [("app", 0, vec![])]);
    }

    #[test]
    fn deleted_remove_profiles_release_namespaces_nobody_else_governs() {
        let profiles = vec![
            baseline("gone", DeletionPolicy::Remove, true),
            baseline("kept-retain", DeletionPolicy::Retain, true),
        ];
        let ns = [("app", Labels::new()), ("kube-system", Labels::new())];
        let plans = plans_for(&profiles, &ns);
        let observed: BTreeMap<String, Labels> =
            ns.iter().map(|(n, l)| (n.to_string(), l.clone())).collect();
        let ours = || Owned {
            labels: BTreeSet::from([psa::ENFORCE.to_owned()]),
            record: false,
        };
        let owned = HashMap::from([
            ("app".to_owned(), ours()),
            ("kube-system".to_owned(), ours()),
        ]);
        let records = HashMap::new();
        let excl = Exclusions::new(Exclusions::DEFAULT);
        let writes_of = |profiles: &[Arc<PodSecurityProfile>],
                         plans: &Plans,
                         owned: &HashMap<String, Owned>| {
            plan_writes(
                &mut Ledger::default(),
                &Cluster {
                    plans,
                    labels: &shared_labels(&observed),
                    owned,
                    records: &records,
                    profiles,
                    exclusions: &excl,
                },
                &none,
            )
        };
        let writes = writes_of(&profiles, &plans, &owned);
        assert_eq!(
            writes,
            [LabelWrite::Release { ns: "app".into() }],
            "excluded namespaces are never touched"
        );
        // Where we own nothing there is nothing to release; only the record is enough.
        assert!(writes_of(&profiles, &plans, &HashMap::new()).is_empty());
        let marked = HashMap::from([(
            "app".to_owned(),
            Owned {
                labels: BTreeSet::new(),
                record: true,
            },
        )]);
        assert_eq!(
            writes_of(&profiles, &plans, &marked),
            [LabelWrite::Release { ns: "app".into() }]
        );

        // If another live profile governs the namespace, its labels follow that one instead.
        let mut with_other = profiles.clone();
        with_other.push(baseline("other", DeletionPolicy::Retain, false));
        let plans = plans_for(&with_other, &ns);
        let writes = writes_of(&with_other, &plans, &owned);
        assert_eq!(applies(&writes), [("app", 2, vec![])]);
        assert!(
            !writes
                .iter()
                .any(|w| matches!(w, LabelWrite::Release { .. }))
        );
    }

    #[test]
    fn a_namespace_no_longer_governed_loses_the_record_and_keeps_its_labels() {
        let mut world = World::new(
            vec![baseline("p", DeletionPolicy::Retain, false)],
            labels(&[("team", "x")]),
        );
        world.labels.insert("kube-system".into(), Labels::new());
        world.owned.insert(
            "kube-system".into(),
            Owned {
                labels: BTreeSet::new(),
                record: true,
            },
        );
        let mut ledger = Ledger::default();
        let writes = world.pass(&mut ledger, &none);
        world.land(&mut ledger, &writes);
        // Someone changed enforce-version by hand meanwhile (theirs now); the profile is deleted
        // (Retain).
        world.set(psa::ENFORCE_VERSION, Some("v1.30"));
        world.profiles = vec![baseline("p", DeletionPolicy::Retain, true)];
        let writes = world.pass(&mut ledger, &none);
        assert_eq!(
            writes,
            [LabelWrite::Unmark {
                ns: "app".into(),
                keep: labels(&[(psa::ENFORCE, "baseline")]),
            }],
            "only ours, as they are; never an excluded namespace"
        );
        world.land(&mut ledger, &writes);
        assert!(world.pass(&mut ledger, &none).is_empty());
        // A record someone else put there is not ours to take off.
        world.records.insert("app".into(), Record::default());
        assert!(world.pass(&mut ledger, &none).is_empty());
    }

    fn meta(
        labels: &[(&str, &str)],
        record: Option<&Record>,
        entries: Vec<ManagedFieldsEntry>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some("app".into()),
            resource_version: Some("42".into()),
            labels: Some(self::labels(labels)),
            annotations: record.map(|r| [(ANNOTATION.to_owned(), r.encode())].into()),
            managed_fields: Some(entries),
            ..Default::default()
        }
    }

    fn ours(labels: &[&str]) -> ManagedFieldsEntry {
        let mut fields = serde_json::Map::new();
        for l in labels {
            fields.insert(format!("f:{l}"), json!({}));
        }
        entry(
            MANAGER,
            "Apply",
            json!({"f:labels": fields, "f:annotations": {format!("f:{ANNOTATION}"): {}}}),
        )
    }

    #[test]
    fn a_release_restores_what_was_there_before_and_takes_off_what_was_not() {
        let record = Record {
            profile: "p".into(),
            labels: labels(&[
                (psa::ENFORCE, "baseline"),
                (psa::ENFORCE_VERSION, "latest"),
                (psa::WARN, "restricted"),
            ]),
            declared: None,
            prior: [
                (psa::ENFORCE.to_owned(), Some("restricted".to_owned())),
                (psa::ENFORCE_VERSION.to_owned(), Some("latest".to_owned())),
                (psa::WARN.to_owned(), None),
            ]
            .into(),
            ..Default::default()
        };
        let creator = label_entry("kubectl-create", "Update", "team");
        let m = meta(
            &[
                (psa::ENFORCE, "baseline"),
                (psa::ENFORCE_VERSION, "latest"),
                (psa::WARN, "restricted"),
                ("team", "x"),
            ],
            Some(&record),
            vec![
                creator.clone(),
                ours(&[psa::ENFORCE, psa::ENFORCE_VERSION, psa::WARN]),
            ],
        );
        let r = restore(&m);
        assert_eq!(r.restored, labels(&[(psa::ENFORCE, "restricted")]));
        assert_eq!(r.removed, [psa::WARN]);
        assert_eq!(r.record_error, None);
        assert_eq!(
            r.patch,
            Some(json!({"metadata": {
                "resourceVersion": "42",
                "labels": {psa::ENFORCE: "restricted", psa::WARN: null},
                "annotations": {ANNOTATION: null},
                "managedFields": [serde_json::to_value(&creator).expect("json")],
            }}))
        );
    }

    #[test]
    fn a_release_keeps_labels_others_own_and_without_a_record_takes_off_only_ours() {
        let record = Record {
            profile: "p".into(),
            labels: labels(&[(psa::WARN, "restricted")]),
            prior: [(psa::WARN.to_owned(), None)].into(),
            declared: None,
            ..Default::default()
        };
        // Someone set warn too since: theirs as well, it stays.
        let theirs = label_entry("kubectl-label", "Update", psa::WARN);
        let m = meta(
            &[(psa::WARN, "restricted")],
            Some(&record),
            vec![theirs.clone(), ours(&[psa::WARN])],
        );
        let r = restore(&m);
        assert!(r.removed.is_empty() && r.restored.is_empty());
        assert_eq!(
            r.patch.expect("the record and our entry go")["metadata"]["managedFields"],
            json!([serde_json::to_value(&theirs).expect("json")])
        );

        // An unreadable record: said, and treated as none: only what only we own goes.
        let mut m = meta(
            &[(psa::ENFORCE, "baseline"), (psa::WARN, "restricted")],
            None,
            vec![ours(&[psa::ENFORCE])],
        );
        m.annotations = Some([(ANNOTATION.to_owned(), "{\"v\":1".to_owned())].into());
        let r = restore(&m);
        assert_eq!(r.removed, [psa::ENFORCE]);
        assert!(r.record_error.expect("said").contains("not JSON"));
        let patch = r.patch.expect("a patch");
        // Ours was the only entry: managedFields reset.
        assert_eq!(patch["metadata"]["managedFields"], json!([{}]));
        assert_eq!(
            patch["metadata"]["annotations"],
            json!({ ANNOTATION: null })
        );

        // Nothing of ours left: nothing to do.
        let m = meta(
            &[("team", "x")],
            None,
            vec![label_entry("x", "Update", "team")],
        );
        assert_eq!(restore(&m).patch, None);
    }
}
