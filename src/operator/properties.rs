//! Property tests over random clusters: the planner, the index, the status and the metrics agree
//! with each other and with their own rules, whatever the profiles, namespaces and Pods.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::crd::{PodSecurityProfile, ProfileMode, Rollout};
use super::desired::{Exclusions, Labels, LabelsByNamespace, NamespaceView, ProfileView, plan};
use super::index::PodIndex;
use super::index::tests::{FakePod, mk_pod};
use super::metrics::{Gauges, MetricValues, Metrics};
use super::status::{MAX_STATUS_BYTES, Observed, profile_status};
use super::testing::profile;
use super::workloads::TemplateIndex;
use crate::pss::level::labels as psa;
use crate::pss::{Admission, Level, Mode};
use std::sync::Arc;

const TEAMS: [&str; 3] = ["a", "b", "c"];
const LEVELS: [&str; 3] = ["privileged", "baseline", "restricted"];
const PASSES: [Level; 3] = [Level::Privileged, Level::Baseline, Level::Restricted];

#[derive(Debug, Clone)]
struct GenProfile {
    team: Option<usize>,
    levels: [Option<usize>; 3],
    priority: i32,
    allow_stricter: bool,
    audit_mode: bool,
    when_compliant: bool,
}

fn gen_profile() -> impl Strategy<Value = GenProfile> {
    (
        prop::option::of(0..TEAMS.len()),
        [
            prop::option::of(0..3usize),
            prop::option::of(0..3usize),
            prop::option::of(0..3usize),
        ],
        0..3i32,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(team, levels, priority, allow_stricter, audit_mode, when_compliant)| GenProfile {
                team,
                levels,
                priority,
                allow_stricter,
                audit_mode,
                when_compliant,
            },
        )
}

fn to_profile(i: usize, g: &GenProfile) -> PodSecurityProfile {
    let mut p = profile(&format!("p{i}"))
        .team(g.team.map_or("", |t| TEAMS[t]))
        .priority(g.priority)
        .allow_stricter(g.allow_stricter)
        .mode(if g.audit_mode {
            ProfileMode::Audit
        } else {
            ProfileMode::Enforce
        })
        .rollout(if g.when_compliant {
            Rollout::WhenCompliant
        } else {
            Rollout::Immediate
        });
    for (mode, level) in Mode::ALL.into_iter().zip(g.levels) {
        if let Some(l) = level {
            p = p.level(mode, LEVELS[l]);
        }
    }
    p.build()
}

/// (team, enforce label level) per namespace; pods as (namespace, passes, privileged).
type GenNamespaces = Vec<(Option<usize>, Option<usize>)>;
type GenPods = Vec<(usize, usize, usize)>;

fn world() -> impl Strategy<Value = (Vec<GenProfile>, GenNamespaces, GenPods)> {
    (
        prop::collection::vec(gen_profile(), 0..4),
        prop::collection::vec(
            (
                prop::option::of(0..TEAMS.len()),
                prop::option::of(0..3usize),
            ),
            1..6,
        ),
    )
        .prop_flat_map(|(profiles, namespaces)| {
            let n = namespaces.len();
            (
                Just(profiles),
                Just(namespaces),
                prop::collection::vec((0..n, 0..3usize, 0..3usize), 0..20),
            )
        })
}

fn level_of(i: usize) -> &'static str {
    PASSES[i].as_str()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn plan_index_status_and_metrics_agree((gen_profiles, gen_ns, gen_pods) in world()) {
        let profiles: Vec<PodSecurityProfile> =
            gen_profiles.iter().enumerate().map(|(i, g)| to_profile(i, g)).collect();
        let views: Vec<ProfileView> = profiles
            .iter()
            .filter_map(|p| ProfileView::from_profile(p).ok())
            .collect();
        let namespaces: Vec<NamespaceView> = gen_ns
            .iter()
            .enumerate()
            .map(|(i, (team, enforce))| {
                let mut labels = Labels::new();
                if let Some(t) = team {
                    labels.insert("team".into(), TEAMS[*t].into());
                }
                if let Some(e) = enforce {
                    labels.insert(psa::ENFORCE.into(), level_of(*e).into());
                }
                NamespaceView { name: format!("ns{i}"), labels: Arc::new(labels) }
            })
            .collect();
        let mut index: PodIndex<FakePod> = PodIndex::default();
        for (i, (ns, passes, privileged)) in gen_pods.iter().enumerate() {
            index.apply(&format!("ns{ns}"), &format!("pod{i}"), mk_pod(PASSES[*passes], *privileged));
        }
        let exclusions = Exclusions::new(["ns0"]);
        let plans = {
            let idx = &index;
            plan(&views, &namespaces, &exclusions, &Admission::default(), &|ns, lv| idx.blocking(ns, lv))
        };
        for p in plans.values() {
            index.set_policy(&p.name, p.policy);
        }

        for (name, p) in &plans {
            // Governing profiles are exactly the top-priority matches.
            let top = views
                .iter()
                .filter(|v| p.matched_by.contains(&v.name))
                .map(|v| v.priority)
                .max();
            for g in p.governed_by.iter() {
                let v = views.iter().find(|v| &v.name == g).expect("governing profile exists");
                prop_assert_eq!(Some(v.priority), top);
            }
            prop_assert_eq!(p.governed_by.is_empty(), p.matched_by.is_empty());
            if p.excluded {
                prop_assert!(name == "ns0" && p.desired.is_empty() && !p.unprotected);
            }
            if p.governed_by.is_empty() {
                prop_assert_eq!(
                    p.unprotected,
                    !p.excluded && p.policy.enforce.level == Level::Privileged
                );
            } else if p.write {
                // Namespaces an Enforce-mode profile governs are protected by its declaration;
                // Audit-mode ones are as protected as the labels they carry.
                prop_assert!(!p.unprotected);
            }
            // Only PSA labels are ever desired, always level and version together.
            if p.pending.is_none() {
                for mode in Mode::ALL {
                    let (l, v) = mode.label_keys();
                    prop_assert_eq!(p.desired.contains_key(l), p.desired.contains_key(v));
                }
            }
            prop_assert!(p.desired.keys().all(|k| k.starts_with(psa::PREFIX)));
            // Pending only when a Pod really blocks the target.
            if let Some(pending) = &p.pending {
                prop_assert!(!pending.blocking.is_empty());
                prop_assert_eq!(&pending.blocking, &index.blocking(name, pending.target));
            }
        }

        let labels: LabelsByNamespace =
            namespaces.iter().map(|n| (n.name.clone(), n.labels.clone())).collect();
        let drift = HashMap::new();
        let errors = BTreeMap::new();
        let templates = TemplateIndex::default();
        let obs = Observed { plans: &plans, labels: &labels, index: &index, templates: &templates, drift: &drift, apply_errors: &errors };
        let metrics = MetricValues::of(&obs);
        // The reporter's path (straight into the exposition's tables) writes what the values do.
        let (direct, collected) = (Metrics::new().expect("metrics"), Metrics::new().expect("metrics"));
        direct.publish(Gauges::of(&obs), |_, _| true);
        collected.publish(&metrics, |_, _| true);
        prop_assert_eq!(direct.render(), collected.render());
        let now = Time(Timestamp::from_second(1_000).expect("time"));
        for p in &profiles {
            let view = ProfileView::from_profile(p);
            let status = profile_status(p, view.as_ref().map_err(String::as_str), &obs, &now);
            let bytes = serde_json::to_vec(&status).expect("json").len();
            prop_assert!(bytes <= MAX_STATUS_BYTES);
            // Deterministic: the stored status reproduces itself.
            let mut stored = p.clone();
            stored.status = Some(status.clone());
            let again = profile_status(&stored, view.as_ref().map_err(String::as_str), &obs, &Time(Timestamp::from_second(2_000).expect("time")));
            prop_assert_eq!(&again, &status);
            // Status and metrics agree where this profile is the one metrics name.
            let name = p.metadata.name.clone().unwrap_or_default();
            for (mode, mode_status) in [(Mode::Enforce, &status.enforce), (Mode::Audit, &status.audit), (Mode::Warn, &status.warn)] {
                let Some(mode_status) = mode_status else { continue };
                let governed: Vec<&String> = plans.values().filter(|pl| pl.governed_by.contains(&name)).map(|pl| &pl.name).collect();
                // In force, or (Audit mode) what the profile would enforce: one or the other.
                let from_metrics: i32 = metrics
                    .violating_pods
                    .iter()
                    .chain(&metrics.would_violate_pods)
                    .filter(|(l, _)| governed.iter().any(|g| **g == *l[0]) && &*l[2] == mode.as_str())
                    .map(|(_, n)| *n)
                    .sum();
                prop_assert_eq!(mode_status.violating_pods, from_metrics);
                let by_check: i32 = mode_status.by_check.values().sum();
                prop_assert!(by_check >= mode_status.violating_pods);
            }
        }
        // Privileged containers are counted in every namespace, excluded ones too.
        let total: i32 = metrics.privileged_containers.iter().map(|(_, n)| *n).sum();
        let expected: usize = gen_pods.iter().map(|(_, _, p)| *p).sum();
        prop_assert_eq!(total as usize, expected);
    }
}
