//! Unit tests of the Pod index (`super`); `FakePod` is shared with the status and property tests.

use super::*;
use crate::pss::{CheckId, Level};

/// A fake pod: the strictest level it passes, and how many privileged containers it has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FakePod {
    pub passes: Level,
    pub privileged: usize,
}

pub(crate) fn mk_pod(passes: Level, privileged: usize) -> FakePod {
    FakePod { passes, privileged }
}

impl Evaluate for FakePod {
    fn evaluate(&self, lv: LevelVersion, _: KubeVersion) -> Verdict {
        if lv.level <= self.passes {
            return Verdict::default();
        }
        let check = if self.privileged > 0 {
            CheckId::Privileged
        } else {
            CheckId::RunAsNonRoot
        };
        Verdict {
            message: format!("violates PodSecurity \"{lv}\": {check}"),
            checks: [check].into_iter().collect(),
        }
    }
    fn privileged_containers(&self) -> usize {
        self.privileged
    }
}

fn policy(enforce: &str, audit: &str, warn: &str) -> Policy {
    let p = |s: &str| s.parse::<LevelVersion>().expect("level:version");
    Policy {
        enforce: p(enforce),
        audit: p(audit),
        warn: p(warn),
    }
}

fn names(index: &PodIndex<FakePod>, ns: &str, mode: Mode) -> Vec<String> {
    index
        .violators(ns, mode)
        .map(|v| v.pod.to_owned())
        .collect()
}

#[test]
fn pods_are_judged_against_their_namespace_policy() {
    let mut index = PodIndex::default();
    index.set_policy(
        "app",
        policy("baseline:latest", "restricted:latest", "restricted:latest"),
    );
    index.apply("app", "priv", mk_pod(Level::Privileged, 1));
    index.apply("app", "base", mk_pod(Level::Baseline, 0));
    index.apply("app", "good", mk_pod(Level::Restricted, 0));
    index.apply("other", "priv", mk_pod(Level::Privileged, 2));
    assert_eq!(names(&index, "app", Mode::Enforce), ["priv"]);
    assert_eq!(names(&index, "app", Mode::Audit), ["base", "priv"]);
    assert_eq!(
        names(&index, "other", Mode::Enforce),
        Vec::<String>::new(),
        "default policy is privileged"
    );
    assert_eq!(index.privileged_containers("app"), 1);
    assert_eq!(index.privileged_containers("other"), 2);
    assert_eq!(
        index.message("app", "priv", Mode::Enforce).as_deref(),
        Some("violates PodSecurity \"baseline:latest\": privileged")
    );
    assert_eq!(index.message("app", "good", Mode::Enforce), None);
}

#[test]
fn pods_carry_their_owner_shared_and_an_owner_change_is_a_change() {
    let mut index = PodIndex::default();
    index.set_policy(
        "app",
        policy("baseline:latest", "baseline:latest", "baseline:latest"),
    );
    let priv_pod = || mk_pod(Level::Privileged, 1);
    assert!(index.apply_owned("app", "web-1", priv_pod(), Some("ReplicaSet/web-7d9")));
    assert!(!index.apply_owned("app", "web-1", priv_pod(), Some("ReplicaSet/web-7d9")));
    index.apply_owned("app", "web-2", priv_pod(), Some("ReplicaSet/web-7d9"));
    assert_eq!(index.owners.len(), 1, "one allocation per owner");
    let owners: Vec<_> = index
        .violators("app", Mode::Enforce)
        .map(|v| v.owner)
        .collect();
    assert_eq!(
        owners,
        [Some("ReplicaSet/web-7d9"), Some("ReplicaSet/web-7d9")]
    );
    assert!(index.apply_owned("app", "web-1", priv_pod(), None));
    index.delete("app", "web-2");
    assert!(index.owners.is_empty(), "released with its last Pod");
}

#[test]
fn a_policy_change_re_evaluates_the_namespace() {
    let mut index = PodIndex::default();
    index.apply("app", "priv", mk_pod(Level::Privileged, 1));
    assert!(names(&index, "app", Mode::Enforce).is_empty());
    assert!(index.set_policy(
        "app",
        policy("baseline:latest", "privileged:latest", "privileged:latest")
    ));
    assert_eq!(names(&index, "app", Mode::Enforce), ["priv"]);
    assert!(!index.set_policy(
        "app",
        policy("baseline:latest", "privileged:latest", "privileged:latest")
    ));
    // Pods that arrive later use the namespace policy too.
    index.apply("app", "later", mk_pod(Level::Privileged, 0));
    assert_eq!(names(&index, "app", Mode::Enforce), ["later", "priv"]);
}

#[test]
fn updates_that_change_nothing_reported_say_so() {
    let mut index = PodIndex::default();
    index.set_policy(
        "a",
        policy("baseline:latest", "baseline:latest", "baseline:latest"),
    );
    assert!(
        index.apply("a", "p", mk_pod(Level::Privileged, 1)),
        "new pod"
    );
    assert!(
        !index.apply("a", "p", mk_pod(Level::Privileged, 1)),
        "same projection"
    );
    assert!(
        index.apply("a", "p", mk_pod(Level::Baseline, 0)),
        "now allowed"
    );
    assert!(
        !index.apply("a", "p", mk_pod(Level::Restricted, 0)),
        "still allowed at baseline: nothing reported changed"
    );
    assert!(index.delete("a", "p"));
    assert!(!index.delete("a", "p"));
}

#[test]
fn delete_and_reset() {
    let mut index = PodIndex::default();
    index.apply("a", "p1", mk_pod(Level::Privileged, 1));
    index.apply("a", "p2", mk_pod(Level::Privileged, 1));
    index.delete("a", "p1");
    index.delete("a", "missing");
    index.delete("nowhere", "p");
    assert_eq!(index.privileged_containers("a"), 1);
    index.delete("a", "p2");
    assert_eq!(index.namespaces().count(), 0);
    index.apply("a", "stale", mk_pod(Level::Privileged, 1));
    index.reset([("b".to_owned(), "p".to_owned(), mk_pod(Level::Baseline, 0))]);
    assert_eq!(index.namespaces().collect::<Vec<_>>(), ["b"]);
    assert_eq!(index.pod_count("a"), 0);
    assert_eq!(index.pod_count("b"), 1);
}

#[test]
fn blocking_checks_any_level_not_just_the_policy() {
    let mut index = PodIndex::default();
    index.apply("a", "z", mk_pod(Level::Privileged, 1));
    index.apply("a", "m", mk_pod(Level::Baseline, 0));
    let restricted = "restricted:latest".parse().expect("lv");
    let baseline = "baseline:latest".parse().expect("lv");
    assert_eq!(index.blocking("a", restricted), ["m", "z"]);
    assert_eq!(index.blocking("a", baseline), ["z"]);
    assert!(index.blocking("empty", baseline).is_empty());
}

#[test]
fn a_shared_policy_table_replaces_the_policies_and_reevaluates_what_changed() {
    let mut index: PodIndex<FakePod> = PodIndex::default();
    let strict = policy(
        "restricted:latest",
        "restricted:latest",
        "restricted:latest",
    );
    index.set_policy("gone", strict);
    index.set_policy("kept", strict);
    index.apply("kept", "web", mk_pod(Level::Baseline, 0));
    index.apply("other", "web", mk_pod(Level::Baseline, 0));
    assert_eq!(index.tally("kept", Mode::Enforce).pods, 1);
    assert_eq!(index.tally("other", Mode::Enforce).pods, 0);
    // The table a pass hands every index: "gone" forgotten, "other" now strict, "kept" lax.
    let mut table = Arc::clone(index.policies());
    let t = Arc::make_mut(&mut table);
    t.retain(|ns, _| ns != "gone");
    t.insert("other".into(), strict);
    t.insert("kept".into(), Policy::DEFAULT);
    index.set_policies(Arc::clone(&table));
    assert!(Arc::ptr_eq(index.policies(), &table));
    assert_eq!(index.policy("gone"), Policy::DEFAULT);
    assert_eq!(index.policy("other"), strict);
    assert_eq!(index.tally("kept", Mode::Enforce).pods, 0);
    assert_eq!(index.tally("other", Mode::Enforce).pods, 1);
}

#[test]
fn equal_projections_share_one_allocation_and_go_with_their_last_pod() {
    let mut index = PodIndex::default();
    index.set_policy(
        "a",
        policy("baseline:latest", "restricted:latest", "restricted:latest"),
    );
    for i in 0..10 {
        index.apply("a", &format!("web-{i}"), mk_pod(Level::Baseline, 0));
        index.apply("b", &format!("web-{i}"), mk_pod(Level::Baseline, 0));
    }
    index.apply("a", "priv", mk_pod(Level::Privileged, 1));
    assert_eq!(index.shared_projections(), 2);
    assert_eq!(
        index.violators("a", Mode::Audit).count(),
        11,
        "each Pod still has its own verdict"
    );
    // An update to another projection releases the old one only with its last Pod.
    index.apply("a", "priv", mk_pod(Level::Restricted, 0));
    assert_eq!(
        index.shared_projections(),
        2,
        "priv's old projection is gone"
    );
    for i in 0..10 {
        index.delete("a", &format!("web-{i}"));
    }
    assert_eq!(index.shared_projections(), 2, "b still uses it");
    for i in 0..10 {
        index.delete("b", &format!("web-{i}"));
    }
    index.delete("a", "priv");
    assert_eq!(index.shared_projections(), 0);
}

/// The per-namespace totals reports read, recounted from the Pods.
fn recounted(index: &PodIndex<FakePod>, ns: &str) -> ([Tally; 3], usize) {
    let tallies = Mode::ALL.map(|mode| {
        let mut t = Tally::default();
        for v in index.violators(ns, mode) {
            t.add(&v);
        }
        t
    });
    let privileged = index
        .pods
        .get(ns)
        .into_iter()
        .flat_map(|n| n.entries())
        .map(|e| e.privileged as usize)
        .sum();
    (tallies, privileged)
}

#[test]
fn totals_follow_every_change_as_a_recount_gives_them() {
    let mut index = PodIndex::default();
    let levels = [Level::Privileged, Level::Baseline, Level::Restricted];
    // A deterministic mix of applies, replacements, deletes, policy changes and a relist.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let check = |index: &PodIndex<FakePod>| {
        for ns in ["a", "b", "c"] {
            let (tallies, privileged) = recounted(index, ns);
            for (mode, t) in Mode::ALL.iter().zip(tallies) {
                assert_eq!(index.tally(ns, *mode), t, "{ns} {mode}");
            }
            assert_eq!(index.privileged_containers(ns), privileged, "{ns}");
        }
    };
    for step in 0..3000 {
        let ns = ["a", "b", "c"][next(3) as usize];
        let name = format!("p{}", next(12));
        match next(10) {
            0..=5 => {
                let pod = mk_pod(levels[next(3) as usize], next(3) as usize);
                index.apply(ns, &name, pod);
            }
            6..=7 => {
                index.delete(ns, &name);
            }
            8 => {
                let l = |i: u64| LevelVersion::new(levels[i as usize], crate::pss::Version::Latest);
                index.set_policy(
                    ns,
                    Policy {
                        enforce: l(next(3)),
                        audit: l(next(3)),
                        warn: l(next(3)),
                    },
                );
            }
            _ if step % 500 == 9 => index.reset(
                (0..next(20))
                    .map(|i| ("b".to_owned(), format!("p{i}"), mk_pod(Level::Baseline, 1))),
            ),
            _ => {}
        }
        check(&index);
    }
}

#[test]
fn churn_does_not_grow_the_table() {
    let mut index = PodIndex::default();
    // Many short-lived distinct projections (a fake's privileged count makes it distinct).
    for i in 0..1000 {
        let name = format!("job-{}", i % 7);
        index.apply("a", &name, mk_pod(Level::Privileged, i));
        if i % 3 == 0 {
            index.delete("a", &name);
        }
        assert!(index.shared_projections() <= 7);
    }
    index.reset((0..5).map(|i| ("b".to_owned(), format!("p{i}"), mk_pod(Level::Baseline, 0))));
    assert_eq!(
        index.shared_projections(),
        1,
        "a relist drops what no Pod uses"
    );
    index.reset(Vec::<(String, String, FakePod)>::new());
    assert_eq!(index.shared_projections(), 0);
}

#[test]
fn reset_takes_projections_shared_by_another_table() {
    let mut interner = Interner::default();
    let listed: Vec<_> = (0..4)
        .map(|i| {
            (
                "a".to_owned(),
                format!("p{i}"),
                interner.intern(mk_pod(Level::Privileged, 1)),
            )
        })
        .collect();
    assert_eq!(interner.len(), 1);
    let mut index = PodIndex::default();
    index.apply("a", "old", mk_pod(Level::Privileged, 1));
    drop(interner);
    index.reset(listed);
    assert_eq!(index.shared_projections(), 1);
    assert_eq!(index.pod_count("a"), 4);
    assert_eq!(index.privileged_containers("a"), 4);
}

#[test]
fn pods_stay_sorted_by_name_and_a_list_keeps_the_last_of_a_name() {
    let mut index = PodIndex::default();
    index.set_policy(
        "app",
        policy("privileged:latest", "baseline:latest", "baseline:latest"),
    );
    // A list in no order, "b" twice: the later one (privileged) counts.
    index.reset(
        [
            ("c", Level::Privileged),
            ("b", Level::Restricted),
            ("a", Level::Privileged),
            ("b", Level::Privileged),
        ]
        .map(|(name, passes)| ("app".to_owned(), name.to_owned(), mk_pod(passes, 1))),
    );
    assert_eq!(index.pod_count("app"), 3);
    assert_eq!(names(&index, "app", Mode::Audit), ["a", "b", "c"]);
    assert_eq!(index.privileged_containers("app"), 3);
    // Applied Pods go to their place; deleted ones leave it.
    for name in ["d", "0", "bb"] {
        index.apply("app", name, mk_pod(Level::Privileged, 0));
    }
    index.delete("app", "c");
    assert_eq!(
        names(&index, "app", Mode::Audit),
        ["0", "a", "b", "bb", "d"]
    );
    assert_eq!(index.tally("app", Mode::Audit).pods, 5);
    assert_eq!(index.privileged_containers("app"), 2);
}
