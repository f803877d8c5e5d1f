//! The in-memory index of running Pods and their verdicts, fed by the Pod watch (`apply`,
//! `delete`, `reset`) and by the planner (`set_policy`). Pure and synchronous: no I/O, no clocks.
//!
//! Only projections are kept: whatever type `P` the caller chooses (the evaluator's slim pod model
//! in the operator, small fakes in tests), plus the failing check ids per mode. Messages are
//! recomputed on demand for the few samples a status shows.

use std::collections::{BTreeMap, HashMap};

use crate::pss::{LevelVersion, Mode, Policy};

/// The outcome of evaluating one Pod at one level.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Failing check ids, in the evaluator's order; empty when allowed.
    pub checks: Vec<&'static str>,
    /// kube-apiserver's denial message; empty when allowed.
    pub message: String,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.checks.is_empty()
    }
}

/// What the index needs from a pod projection.
pub trait Evaluate {
    fn evaluate(&self, level: LevelVersion) -> Verdict;
    /// Only the failing check ids: what the index keeps for every Pod, without rendering a
    /// message it would drop (messages are rendered on demand for the few samples).
    fn failing_checks(&self, level: LevelVersion) -> Vec<&'static str> {
        self.evaluate(level).checks
    }
    fn privileged_containers(&self) -> usize;
}

#[derive(Debug, Clone)]
struct Entry<P> {
    pod: P,
    privileged: usize,
    /// Failing checks per mode (indexed like `Mode::ALL`) against the namespace policy.
    checks: [Vec<&'static str>; 3],
}

#[derive(Debug, Clone)]
pub struct PodIndex<P> {
    pods: BTreeMap<String, BTreeMap<String, Entry<P>>>,
    policies: HashMap<String, Policy>,
}

impl<P> Default for PodIndex<P> {
    fn default() -> Self {
        PodIndex {
            pods: BTreeMap::new(),
            policies: HashMap::new(),
        }
    }
}

/// A violating Pod in one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violator<'a> {
    pub pod: &'a str,
    pub checks: &'a [&'static str],
    pub privileged: usize,
}

fn evaluate_all<P: Evaluate>(pod: &P, policy: &Policy) -> [Vec<&'static str>; 3] {
    Mode::ALL.map(|mode| pod.failing_checks(policy.get(mode)))
}

impl<P: Evaluate> PodIndex<P> {
    pub fn policy(&self, ns: &str) -> Policy {
        self.policies.get(ns).copied().unwrap_or(Policy::DEFAULT)
    }

    /// Adds or replaces a running Pod. Returns whether anything the index reports changed: most
    /// Pod updates are status changes that leave the projection as it was.
    pub fn apply(&mut self, ns: &str, name: &str, pod: P) -> bool
    where
        P: PartialEq,
    {
        let pods = self.pods.entry(ns.to_owned()).or_default();
        if pods.get(name).is_some_and(|e| e.pod == pod) {
            return false;
        }
        let policy = self.policies.get(ns).copied().unwrap_or(Policy::DEFAULT);
        let entry = Entry {
            privileged: pod.privileged_containers(),
            checks: evaluate_all(&pod, &policy),
            pod,
        };
        let changed = pods
            .get(name)
            .is_none_or(|old| old.checks != entry.checks || old.privileged != entry.privileged);
        pods.insert(name.to_owned(), entry);
        changed
    }

    /// Returns whether the Pod was there.
    pub fn delete(&mut self, ns: &str, name: &str) -> bool {
        let Some(pods) = self.pods.get_mut(ns) else {
            return false;
        };
        let removed = pods.remove(name).is_some();
        if pods.is_empty() {
            self.pods.remove(ns);
        }
        removed
    }

    /// Replaces every Pod (after a relist); policies are kept.
    pub fn reset(&mut self, pods: impl IntoIterator<Item = (String, String, P)>)
    where
        P: PartialEq,
    {
        self.pods.clear();
        for (ns, name, pod) in pods {
            self.apply(&ns, &name, pod);
        }
    }

    /// Sets the policy Pods of `ns` are checked against, re-evaluating them when it changed.
    /// Returns whether it changed.
    pub fn set_policy(&mut self, ns: &str, policy: Policy) -> bool {
        if self.policy(ns) == policy {
            return false;
        }
        self.policies.insert(ns.to_owned(), policy);
        if let Some(pods) = self.pods.get_mut(ns) {
            for entry in pods.values_mut() {
                entry.checks = evaluate_all(&entry.pod, &policy);
            }
        }
        true
    }

    /// Forgets policies of namespaces that are gone.
    pub fn retain_policies(&mut self, keep: impl Fn(&str) -> bool) {
        self.policies.retain(|ns, _| keep(ns));
    }

    /// Sorted names of the Pods in `ns` that violate `level` (whatever the namespace policy).
    pub fn blocking(&self, ns: &str, level: LevelVersion) -> Vec<String> {
        self.pods
            .get(ns)
            .into_iter()
            .flatten()
            .filter(|(_, e)| !e.pod.failing_checks(level).is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Pods of `ns` violating the namespace policy in `mode`, sorted by name.
    pub fn violators(&self, ns: &str, mode: Mode) -> impl Iterator<Item = Violator<'_>> {
        let slot = super::desired::mode_index(mode);
        self.pods
            .get(ns)
            .into_iter()
            .flatten()
            .filter(move |(_, e)| !e.checks[slot].is_empty())
            .map(move |(name, e)| Violator {
                pod: name,
                checks: &e.checks[slot],
                privileged: e.privileged,
            })
    }

    /// The admission message for one Pod in `mode`, recomputed (only samples need it).
    pub fn message(&self, ns: &str, pod: &str, mode: Mode) -> Option<String> {
        let entry = self.pods.get(ns)?.get(pod)?;
        let verdict = entry.pod.evaluate(self.policy(ns).get(mode));
        (!verdict.allowed()).then_some(verdict.message)
    }

    pub fn privileged_containers(&self, ns: &str) -> usize {
        self.pods
            .get(ns)
            .into_iter()
            .flatten()
            .map(|(_, e)| e.privileged)
            .sum()
    }

    pub fn pod_count(&self, ns: &str) -> usize {
        self.pods.get(ns).map_or(0, BTreeMap::len)
    }

    /// Namespaces that hold Pods, sorted.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.pods.keys().map(String::as_str)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pss::Level;

    /// A fake pod: the strictest level it passes, and how many privileged containers it has.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct FakePod {
        pub passes: Level,
        pub privileged: usize,
    }

    pub(crate) fn mk_pod(passes: Level, privileged: usize) -> FakePod {
        FakePod { passes, privileged }
    }

    impl Evaluate for FakePod {
        fn evaluate(&self, lv: LevelVersion) -> Verdict {
            if lv.level <= self.passes {
                return Verdict::default();
            }
            let checks = if self.privileged > 0 {
                vec!["privileged"]
            } else {
                vec!["runAsNonRoot"]
            };
            Verdict {
                message: format!("violates PodSecurity \"{lv}\": {}", checks.join(", ")),
                checks,
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
    fn policies_of_deleted_namespaces_are_forgotten() {
        let mut index: PodIndex<FakePod> = PodIndex::default();
        let strict = policy(
            "restricted:latest",
            "restricted:latest",
            "restricted:latest",
        );
        index.set_policy("gone", strict);
        index.set_policy("kept", strict);
        index.retain_policies(|ns| ns == "kept");
        assert_eq!(index.policy("gone"), Policy::DEFAULT);
        assert_eq!(index.policy("kept"), strict);
    }
}
