//! Unit tests of the profile status: worlds of profiles, namespaces and Pods, planned and
//! reported as a pass would.

use super::*;
use crate::operator::crd::LevelSpec;
use crate::operator::desired::{Exclusions, LabelsByNamespace, NamespaceView, plan};
use crate::operator::index::tests::{FakePod, mk_pod};
use crate::operator::metrics::MetricValues;
use crate::operator::testing::profile;
use crate::operator::workloads::WorkloadKind;
use crate::pss::{Admission, Level};
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("timestamp"))
}

fn mk_profile(name: &str, enforce: &str) -> PodSecurityProfile {
    profile(name).enforce(enforce).generation(3).build()
}

struct World {
    profiles: Vec<PodSecurityProfile>,
    namespaces: Vec<NamespaceView>,
    index: PodIndex<FakePod>,
    templates: TemplateIndex<FakePod>,
    drift: HashMap<String, i64>,
    errors: BTreeMap<String, String>,
}

impl World {
    fn new(profiles: Vec<PodSecurityProfile>, namespaces: &[&str]) -> World {
        World {
            profiles,
            namespaces: namespaces
                .iter()
                .map(|n| NamespaceView {
                    name: n.to_string(),
                    labels: Default::default(),
                })
                .collect(),
            index: PodIndex::default(),
            templates: TemplateIndex::default(),
            drift: HashMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Plans, applies the plan to the index and to the labels (as a converged cluster), and
    /// returns statuses and metrics.
    fn run(&mut self, converge: bool) -> (Vec<PodSecurityProfileStatus>, MetricValues) {
        let views: Vec<ProfileView> = self
            .profiles
            .iter()
            .filter_map(|p| ProfileView::from_profile(p).ok())
            .collect();
        let index = &self.index;
        let plans = plan(
            &views,
            &self.namespaces,
            &Exclusions::new(Exclusions::DEFAULT),
            &Admission::default(),
            &|ns, lv| index.blocking(ns, lv),
        );
        for p in plans.values() {
            self.index.set_policy(&p.name, p.policy);
            self.templates.set_policy(&p.name, p.policy);
        }
        if converge {
            for ns in &mut self.namespaces {
                if plans[&ns.name].write {
                    Arc::make_mut(&mut ns.labels).extend(plans[&ns.name].desired.as_ref().clone());
                }
            }
        }
        let labels: LabelsByNamespace = self
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.labels.clone()))
            .collect();
        let obs = Observed {
            plans: &plans,
            labels: &labels,
            index: &self.index,
            templates: &self.templates,
            drift: &self.drift,
            apply_errors: &self.errors,
        };
        let statuses = self
            .profiles
            .iter()
            .map(|p| {
                let view = ProfileView::from_profile(p);
                profile_status(p, view.as_ref().map_err(String::as_str), &obs, &time(100))
            })
            .collect();
        (statuses, MetricValues::of(&obs))
    }
}

fn cond<'a>(s: &'a PodSecurityProfileStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition present")
}

#[test]
fn a_privileged_pod_created_before_enforcement_shows_in_status_and_metrics() {
    let mut w = World::new(vec![mk_profile("apps", "baseline")], &["app"]);
    w.index
        .apply("app", "nginx-1", mk_pod(Level::Privileged, 1));
    w.index.apply("app", "ok", mk_pod(Level::Restricted, 0));
    w.index
        .apply("kube-system", "proxy", mk_pod(Level::Privileged, 1));
    w.namespaces.push(NamespaceView {
        name: "kube-system".into(),
        labels: Default::default(),
    });
    let (statuses, metrics) = w.run(true);
    let s = &statuses[0];
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!((s.matched_namespaces, s.enforced_namespaces), (1, 1));
    let enforce = s.enforce.as_ref().expect("enforce");
    assert_eq!(enforce.level.as_deref(), Some("baseline:latest"));
    assert_eq!(enforce.violating_pods, 1);
    assert_eq!(enforce.by_check, [("privileged".to_owned(), 1)].into());
    assert_eq!(
        enforce.samples,
        [SampleViolation {
            namespace: "app".into(),
            pod: "nginx-1".into(),
            checks: vec!["privileged".into()],
            message: "violates PodSecurity \"baseline:latest\": privileged".into(),
        }]
    );
    assert_eq!(cond(s, "Ready").status, "True");
    assert_eq!(cond(s, "Ready").last_transition_time, time(100));
    // Metrics agree with the status, and privileged containers are counted everywhere.
    assert!(metrics.violating_pods.contains(&(
        ["app".into(), "apps".into(), "enforce".into()],
        enforce.violating_pods
    )));
    assert!(metrics.pod_violations.contains(&(
        [
            "app".into(),
            "apps".into(),
            "enforce".into(),
            "privileged".into()
        ],
        1
    )));
    assert!(
        metrics
            .privileged_containers
            .contains(&("kube-system".into(), 1))
    );
    assert!(metrics.privileged_containers.contains(&("app".into(), 1)));
    assert!(metrics.namespace_level.contains(&[
        "app".into(),
        "apps".into(),
        "enforce".into(),
        "baseline".into(),
        "latest".into()
    ]));
    assert!(metrics.unprotected.is_empty(), "kube-system is excluded");
}

#[test]
fn violating_pods_are_grouped_under_the_workload_that_owns_them() {
    let mut w = World::new(vec![mk_profile("apps", "baseline")], &["app"]);
    for i in 0..3 {
        w.index.apply_owned(
            "app",
            &format!("web-7d9-{i}"),
            mk_pod(Level::Privileged, 1),
            Some("ReplicaSet/web-7d9"),
        );
    }
    w.index.apply_owned(
        "app",
        "db-0",
        mk_pod(Level::Privileged, 1),
        Some("StatefulSet/db"),
    );
    w.index.apply("app", "bare", mk_pod(Level::Privileged, 1));
    w.templates.fold(
        WorkloadKind::ReplicaSet,
        "app",
        "web-7d9",
        Some("web".into()),
    );
    let (s, _) = w.run(true);
    let enforce = s[0].enforce.as_ref().expect("enforce");
    assert_eq!(enforce.violating_pods, 5);
    let owners: Vec<_> = enforce
        .owners
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str(), o.violating_pods))
        .collect();
    assert_eq!(owners, [("Deployment", "web", 3), ("StatefulSet", "db", 1)]);
}

#[test]
fn the_same_cluster_gives_the_same_status() {
    let mut w = World::new(vec![mk_profile("apps", "restricted")], &["b", "a"]);
    for (ns, pod) in [("b", "z"), ("a", "y"), ("b", "x"), ("a", "w")] {
        w.index.apply(ns, pod, mk_pod(Level::Baseline, 0));
    }
    let (first, _) = w.run(true);
    // The status now stored, a later pass (at another time) must produce an equal status.
    w.profiles[0].status = Some(first[0].clone());
    let views_later = w.run(true).0;
    let mut later = views_later[0].clone();
    assert_eq!(later, first[0]);
    let ns: Vec<_> = later
        .enforce
        .take()
        .expect("enforce")
        .namespaces
        .into_iter()
        .map(|n| (n.namespace, n.violating_pods))
        .collect();
    assert_eq!(ns, [("a".to_owned(), 2), ("b".to_owned(), 2)]);
}

#[test]
fn conditions_keep_their_transition_time_until_they_change() {
    let p = mk_profile("apps", "baseline");
    let mut w = World::new(vec![p], &["app"]);
    let (s, _) = w.run(false);
    assert_eq!(cond(&s[0], "Ready").reason, "Progressing");
    w.profiles[0].status = Some(s[0].clone());
    let (s2, _) = w.run(true);
    assert_eq!(cond(&s2[0], "Ready").status, "True");
    assert_eq!(
        cond(&s2[0], "Degraded").last_transition_time,
        cond(&s[0], "Degraded").last_transition_time
    );
}

#[test]
fn samples_put_privileged_containers_first_and_are_capped() {
    let mut w = World::new(vec![mk_profile("apps", "restricted")], &["app"]);
    for i in 0..50 {
        w.index
            .apply("app", &format!("pod-{i:02}"), mk_pod(Level::Baseline, 0));
    }
    w.index
        .apply("app", "zz-priv", mk_pod(Level::Privileged, 2));
    let (s, _) = w.run(true);
    let enforce = s[0].enforce.as_ref().expect("enforce");
    assert_eq!(enforce.violating_pods, 51);
    assert_eq!(enforce.samples.len(), MAX_SAMPLES);
    assert_eq!(enforce.samples[0].pod, "zz-priv");
    assert_eq!(enforce.samples[1].pod, "pod-00");
}

#[test]
fn status_stays_under_64_kib_at_any_cluster_size() {
    let names: Vec<String> = (0..300)
        .map(|i| format!("{}-{i:03}", "n".repeat(58)))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut w = World::new(vec![mk_profile("apps", "restricted")], &refs);
    for ns in &names {
        for i in 0..5 {
            let pod = format!("{}-{i}", "p".repeat(250));
            w.index.apply(ns, &pod, mk_pod(Level::Privileged, 1));
        }
    }
    let (s, _) = w.run(true);
    let bytes = serde_json::to_vec(&s[0]).expect("json").len();
    assert!(bytes <= MAX_STATUS_BYTES, "{bytes} bytes");
    let enforce = s[0].enforce.as_ref().expect("enforce");
    assert_eq!(enforce.violating_pods, 1500, "counts are never trimmed");
    assert_eq!(
        enforce.namespaces.len() + enforce.omitted_namespaces as usize,
        300
    );
    assert!(enforce.namespaces.len() <= MAX_NAMESPACES);
}

#[test]
fn conflicts_are_reported_on_both_profiles() {
    let a = mk_profile("a", "baseline");
    let b = mk_profile("b", "restricted");
    let mut w = World::new(vec![a, b], &["x", "y"]);
    let (s, m) = w.run(true);
    for (status, other) in [(&s[0], "b"), (&s[1], "a")] {
        let c = cond(status, "Conflicted");
        assert_eq!(c.status, "True");
        assert!(
            c.message.contains(other) && c.message.contains("x, y"),
            "{}",
            c.message
        );
        assert_eq!(status.conflicted_namespaces, 2);
    }
    assert_eq!(m.conflicted, ["x".into(), "y".into()]);
    assert!(m.namespace_level.contains(&[
        "x".into(),
        "a".into(),
        "enforce".into(),
        "restricted".into(),
        "latest".into()
    ]));
}

#[test]
fn invalid_profiles_are_degraded_and_do_not_stop_others() {
    let mut bad = mk_profile("bad", "baseline");
    bad.spec.enforce = Some(LevelSpec {
        level: None,
        version: Some("v1.3".into()),
    });
    let good = mk_profile("good", "baseline");
    let mut w = World::new(vec![bad, good], &["x"]);
    let (s, _) = w.run(true);
    assert_eq!(cond(&s[0], "Degraded").status, "True");
    assert_eq!(cond(&s[0], "Ready").reason, "InvalidSpec");
    assert_eq!(cond(&s[1], "Ready").status, "True");
    assert_eq!(s[1].enforced_namespaces, 1);
}

#[test]
fn pending_rollouts_list_their_blocking_pods() {
    let mut p = mk_profile("apps", "baseline");
    p.spec.rollout = crate::operator::crd::Rollout::WhenCompliant;
    let mut w = World::new(vec![p], &["app"]);
    w.index.apply("app", "nginx", mk_pod(Level::Privileged, 1));
    let (s, m) = w.run(true);
    assert_eq!(s[0].pending_namespaces, 1);
    assert_eq!(s[0].enforced_namespaces, 0);
    assert_eq!(
        s[0].pending,
        [PendingNamespace {
            namespace: "app".into(),
            target: "baseline:latest".into(),
            blocking_pods: 1,
            pods: vec!["nginx".into()],
        }]
    );
    assert_eq!(cond(&s[0], "Ready").reason, "RolloutPending");
    assert_eq!(m.rollout_pending, [(["app".into(), "apps".into()], 1)]);
    // The Pod goes: enforce is raised, nothing pending.
    w.index.delete("app", "nginx");
    let (s, m) = w.run(true);
    assert_eq!(s[0].pending_namespaces, 0);
    assert_eq!(s[0].enforced_namespaces, 1);
    assert!(m.rollout_pending.is_empty());
}

#[test]
fn unprotected_namespaces_and_unmanaged_violations_in_metrics() {
    let mut w = World::new(vec![], &["open"]);
    w.index.apply("open", "p", mk_pod(Level::Privileged, 3));
    let (_, m) = w.run(true);
    assert_eq!(m.unprotected, ["open".into()]);
    assert_eq!(m.privileged_containers, [("open".into(), 3)]);
    assert!(
        m.violating_pods.is_empty(),
        "privileged policy: nothing violates"
    );
    assert!(m.namespace_level.is_empty());
}
