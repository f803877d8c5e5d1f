//! Unit tests of the planner (`super`).

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

use crate::operator::testing::namespace_view as mk_ns;

fn no_pods(_: &str, _: LevelVersion) -> Vec<String> {
    Vec::new()
}

fn plan_one(profiles: &[ProfileView], ns: &NamespaceView) -> NamespacePlan {
    plan_namespace(
        profiles,
        ns,
        &Exclusions::new(Exclusions::DEFAULT),
        &Admission::default(),
        &no_pods,
    )
}

use crate::operator::testing::labels;

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
        &Admission::default(),
        &no_pods,
    );
    let app = &plans["app"];
    assert!(app.write);
    assert_eq!(*app.governed_by, ["apps"]);
    assert_eq!(
        *app.desired,
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
        let plan = plan_namespace(
            &profiles,
            &mk_ns(name, &[]),
            &excl,
            &Admission::default(),
            &no_pods,
        );
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
    assert_eq!(*plan.matched_by, ["high", "low"]);
    assert_eq!(*plan.governed_by, ["high"]);
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
    assert_eq!(*plan.governed_by, ["a", "b"]);
    assert_eq!(plan.primary(), Some("a"));
    // restricted:v1.20 and baseline:latest each refuse what the other admits (host probes,
    // v1.34): the strictest level at the newest version refuses both.
    assert_eq!(plan.desired[psa::ENFORCE], "restricted");
    assert_eq!(plan.desired[psa::ENFORCE_VERSION], "latest");
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
    // restricted:v1.30 is not stricter than baseline:latest: it admits host probes (v1.34).
    let plan = plan_one(&profiles, &stricter);
    assert_eq!(plan.desired[psa::ENFORCE], "baseline");
    assert_eq!(plan.desired[psa::ENFORCE_VERSION], "latest");
    let stricter = mk_ns(
        "a",
        &[
            (psa::ENFORCE, "restricted"),
            (psa::ENFORCE_VERSION, "v1.36"),
        ],
    );
    let plan = plan_one(&profiles, &stricter);
    assert_eq!(plan.desired[psa::ENFORCE], "restricted");
    assert_eq!(plan.desired[psa::ENFORCE_VERSION], "v1.36");
    assert!(
        plan.converged(&stricter.labels),
        "a stricter value is not drift"
    );
    // A missing version label is latest, as PSA reads it.
    let plan = plan_one(&profiles, &mk_ns("a", &[(psa::ENFORCE, "restricted")]));
    assert_eq!(plan.desired[psa::ENFORCE], "restricted");
    assert_eq!(plan.desired[psa::ENFORCE_VERSION], "latest");
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
                found: Some("v1.36".into()),
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
    assert!(
        plan.unprotected,
        "nothing is written: the namespace enforces nothing"
    );
    let labelled = mk_ns("a", &[(psa::ENFORCE, "baseline")]);
    assert!(!plan_one(&[view(&p)], &labelled).unprotected);
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
    let plan = plan_namespace(
        &profiles,
        &ns,
        &Exclusions::default(),
        &Admission::default(),
        &blocked,
    );
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
    let plan = plan_namespace(
        &profiles,
        &ns,
        &Exclusions::default(),
        &Admission::default(),
        &no_pods,
    );
    assert!(plan.pending.is_none());
    assert_eq!(plan.desired[psa::ENFORCE], "baseline");
    assert_eq!(plan.desired[psa::AUDIT], "privileged");

    // Once enforced, violating Pods (created before) do not lower it again.
    let enforced = mk_ns("app", &[(psa::ENFORCE, "baseline")]);
    let always = |_: &str, _: LevelVersion| vec!["old".to_owned()];
    let plan = plan_namespace(
        &profiles,
        &enforced,
        &Exclusions::default(),
        &Admission::default(),
        &always,
    );
    assert!(plan.pending.is_none());
    assert_eq!(plan.desired[psa::ENFORCE], "baseline");
}

#[test]
fn immediate_rollout_never_asks_about_pods() {
    let profiles = [view(&mk_profile("p", "", "restricted"))];
    let panics = |_: &str, _: LevelVersion| -> Vec<String> { panic!("not asked") };
    let plan = plan_namespace(
        &profiles,
        &mk_ns("a", &[]),
        &Exclusions::default(),
        &Admission::default(),
        &panics,
    );
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
        assert_eq!(*plan_one(&profiles, &ns).governed_by, ["all"]);
    }
}

fn admission(yaml: &str, minor: u32) -> Admission {
    let config =
        crate::pss::AdmissionConfig::parse(yaml, std::path::Path::new("admission.yaml"), &|_| {
            Err("no files".into())
        })
        .expect("config");
    Admission {
        kube: crate::pss::KubeVersion { minor },
        config,
    }
}

const CONFIG: &str = "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  enforce: baseline\nexemptions:\n  namespaces: [legacy]\n";

#[test]
fn admission_defaults_protect_unlabelled_namespaces_and_exempt_ones_are_not_judged() {
    let a = admission(CONFIG, 37);
    let none: [ProfileView; 0] = [];
    let plan = |ns: &NamespaceView,
                profiles: &[ProfileView],
                blocking: &dyn Fn(&str, LevelVersion) -> Vec<String>| {
        plan_namespace(profiles, ns, &Exclusions::default(), &a, blocking)
    };
    let unlabelled = plan(&mk_ns("app", &[]), &none, &no_pods);
    assert!(
        !unlabelled.unprotected,
        "the server's default enforces baseline"
    );
    assert_eq!(unlabelled.policy.enforce, lv("baseline:latest"));
    let privileged = plan(
        &mk_ns("app", &[(psa::ENFORCE, "privileged")]),
        &none,
        &no_pods,
    );
    assert!(privileged.unprotected, "a label overrides the default");

    let legacy = plan(
        &mk_ns("legacy", &[(psa::ENFORCE, "restricted")]),
        &none,
        &no_pods,
    );
    assert!(legacy.exempt && !legacy.unprotected);
    assert_eq!(legacy.policy, Policy::DEFAULT, "no Pod of it is evaluated");
    // A WhenCompliant rollout never waits for Pods the server does not judge.
    let mut p = mk_profile("p", "", "restricted");
    p.spec.rollout = Rollout::WhenCompliant;
    let always = |_: &str, _: LevelVersion| vec!["old".to_owned()];
    let legacy = plan(&mk_ns("legacy", &[]), &[view(&p)], &always);
    assert!(legacy.pending.is_none());
    assert_eq!(legacy.desired[psa::ENFORCE], "restricted");
}

#[test]
fn when_compliant_guards_a_raise_of_the_version_alone() {
    let mut p = mk_profile("p", "", "baseline");
    p.spec.rollout = Rollout::WhenCompliant;
    let ns = mk_ns(
        "app",
        &[(psa::ENFORCE, "baseline"), (psa::ENFORCE_VERSION, "v1.20")],
    );
    let probes = |_: &str, _: LevelVersion| vec!["probe".to_owned()];
    let plan = plan_namespace(
        &[view(&p)],
        &ns,
        &Exclusions::default(),
        &Admission::default(),
        &probes,
    );
    assert_eq!(plan.pending.expect("pending").target, lv("baseline:latest"));
    assert_eq!(
        plan.desired[psa::ENFORCE_VERSION],
        "v1.20",
        "kept until compliant"
    );
    // On a v1.20 server, v1.20 and latest are the same checks: nothing to wait for.
    let old = admission(
        "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\n",
        20,
    );
    let plan = plan_namespace(&[view(&p)], &ns, &Exclusions::default(), &old, &probes);
    assert!(plan.pending.is_none());
    assert_eq!(plan.desired[psa::ENFORCE_VERSION], "latest");
}

#[test]
fn system_namespaces_stay_excluded_whatever_is_added() {
    let excl = Exclusions::new(["tools"]);
    for ns in ["kube-system", "kube-public", "kube-node-lease", "tools"] {
        assert!(excl.contains(ns), "{ns}");
    }
    assert!(!excl.contains("app"));
    assert!(Exclusions::default().contains("kube-system"));
}
