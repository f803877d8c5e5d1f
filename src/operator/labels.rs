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
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
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
    pub owned: &'a HashMap<String, Arc<Owned>>,
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
        let owned = cluster.owned.get(&plan.name).map_or(&nothing, |o| &**o);
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
            profiles: plan.governed_by.to_vec(),
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
                && cluster.owned.get(&plan.name).is_some_and(|o| o.any())
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
mod tests;
