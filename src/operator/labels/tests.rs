//! Unit tests of the label writes, drift and ownership (`super`).

use super::*;
use crate::operator::crd::{DeletionPolicy, Rollout};
use crate::operator::desired::{NamespaceView, Prior, ProfileView, plan, shared_labels};
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
            labels: Arc::new(l.clone()),
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

use crate::operator::testing::labels;

/// One namespace `app` through passes: its labels, what our field manager owns and the
/// record on it, as the API server would keep them.
struct World {
    profiles: Vec<Arc<PodSecurityProfile>>,
    labels: BTreeMap<String, Labels>,
    owned: HashMap<String, Arc<Owned>>,
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
            let owned = Arc::make_mut(self.owned.entry(ns.clone()).or_default());
            match w {
                LabelWrite::Apply { record, .. } => {
                    for k in owned.labels.iter() {
                        if !record.labels.contains_key(k) {
                            labels.remove(k);
                        }
                    }
                    labels.extend(record.labels.as_ref().clone());
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
            Arc::make_mut(o).labels.remove(label);
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
        labels: Default::default(),
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
    let labels: LabelsByNamespace = [("app".to_owned(), blocked["app"].desired.clone())].into();
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
        .as_ref()
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
    Arc::make_mut(world.owned.get_mut("app").expect("owned"))
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
    let ours = || {
        Arc::new(Owned {
            labels: BTreeSet::from([psa::ENFORCE.to_owned()]),
            record: false,
        })
    };
    let owned = HashMap::from([
        ("app".to_owned(), ours()),
        ("kube-system".to_owned(), ours()),
    ]);
    let records = HashMap::new();
    let excl = Exclusions::new(Exclusions::DEFAULT);
    let writes_of = |profiles: &[Arc<PodSecurityProfile>],
                     plans: &Plans,
                     owned: &HashMap<String, Arc<Owned>>| {
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
        Arc::new(Owned {
            labels: BTreeSet::new(),
            record: true,
        }),
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
        Arc::new(Owned {
            labels: BTreeSet::new(),
            record: true,
        }),
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
        ])
        .into(),
        declared: None,
        prior: Arc::new(Prior::from([
            (psa::ENFORCE.to_owned(), Some("restricted".to_owned())),
            (psa::ENFORCE_VERSION.to_owned(), Some("latest".to_owned())),
            (psa::WARN.to_owned(), None),
        ])),
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
        labels: labels(&[(psa::WARN, "restricted")]).into(),
        prior: Arc::new(Prior::from([(psa::WARN.to_owned(), None)])),
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
