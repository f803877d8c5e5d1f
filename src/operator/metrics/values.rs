//! The metric values of one pass, computed from what the pass observed: what the gauges of
//! [`super::Metrics`] are set to. Pure.

use std::collections::HashMap;
use std::sync::Arc;

use crate::operator::index::Evaluate;
use crate::operator::status::{Observed, count};
use crate::operator::workloads::WorkloadKind;
use crate::pss::{Mode, Version};

/// A label value, shared: a namespace's name appears in ~20 series and a mode in most, so each
/// distinct value is allocated once per pass (as `String`s they were ~27 MB at 10,000
/// namespaces).
pub type Value = Arc<str>;

/// Metric values of one pass; the exporter replaces every gauge with these, so series of deleted
/// namespaces and profiles disappear.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetricValues {
    /// (namespace, profile, mode, level, version) for each written namespace and mode.
    pub namespace_level: Vec<[Value; 5]>,
    /// (namespace, profile, mode) → violating Pods; every governed namespace and mode, and other
    /// namespaces when not zero (profile `""`).
    pub violating_pods: Vec<([Value; 3], i32)>,
    /// (namespace, profile, mode, check) → violating Pods, when not zero.
    pub pod_violations: Vec<([Value; 4], i32)>,
    /// Every namespace, excluded ones too.
    pub privileged_containers: Vec<(Value, i32)>,
    pub unprotected: Vec<Value>,
    pub conflicted: Vec<Value>,
    /// (namespace, profile) → blocking Pods.
    pub rollout_pending: Vec<([Value; 2], i32)>,
    /// (namespace, profile, mode, kind) → workloads whose template violates the mode's level,
    /// when not zero.
    pub violating_workloads: Vec<([Value; 4], i32)>,
    /// (namespace, profile, kind) → workloads whose template violates the enforce level, when
    /// not zero.
    pub blocked_workloads: Vec<([Value; 3], i32)>,
    /// The API server's version → 1 when newer than the newest policy version this build knows.
    pub apiserver_version: Vec<(Value, i32)>,
    /// Existing namespaces the operator leaves alone.
    pub excluded: Vec<Value>,
    /// Existing namespaces the admission configuration exempts.
    pub exempt: Vec<Value>,
    /// (namespace, profile, mode) → Pods violating what an Audit-mode profile declares (not in
    /// force: the namespace's labels are not written).
    pub would_violate_pods: Vec<([Value; 3], i32)>,
}

/// Where the series of one pass go, family by family: [`MetricValues`] (what tests compare) or
/// the exposition's id tables directly ([`super::Gauges::of`]), so that a report never holds the
/// ~140,000 series of 10,000 namespaces as shared strings (~15 MB) on the way to the tables.
pub trait Sink {
    /// Room for this many namespaces and `pss_pod_violations` series (upper bounds).
    fn reserve(&mut self, namespaces: usize, check_series: usize);
    fn apiserver_version(&mut self, version: &str, unsupported: i32);
    fn privileged_containers(&mut self, ns: &str, n: i32);
    fn excluded(&mut self, ns: &str);
    fn exempt(&mut self, ns: &str);
    fn unprotected(&mut self, ns: &str);
    fn conflicted(&mut self, ns: &str);
    fn rollout_pending(&mut self, ns: &str, profile: &str, n: i32);
    fn would_violate_pods(&mut self, ns: &str, profile: &str, mode: &str, n: i32);
    fn namespace_level(&mut self, ns: &str, profile: &str, mode: &str, level: &str, version: &str);
    fn violating_pods(&mut self, ns: &str, profile: &str, mode: &str, n: i32);
    fn blocked_workloads(&mut self, ns: &str, profile: &str, kind: &str, n: i32);
    fn violating_workloads(&mut self, ns: &str, profile: &str, mode: &str, kind: &str, n: i32);
    fn pod_violations(&mut self, ns: &str, profile: &str, mode: &str, check: &str, n: i32);
}

/// Hands every series of what one pass observed to `sink`.
pub fn emit<P: Evaluate>(obs: &Observed<'_, P>, sink: &mut impl Sink) {
    // Upper bounds, cheap to count: at 10,000 namespaces these are ~140,000 series, and vectors
    // grown by doubling held up to twice that room (three times while moving).
    let check_series: usize = obs
        .plans
        .keys()
        .map(|ns| {
            Mode::ALL
                .iter()
                .map(|m| obs.index.failing_check_count(ns, *m))
                .sum::<usize>()
        })
        .sum();
    sink.reserve(obs.plans.len(), check_series);
    let kube = obs.index.admission().kube;
    sink.apiserver_version(&kube.to_string(), i32::from(!kube.is_known()));
    for plan in obs.plans.values() {
        let ns = plan.name.as_str();
        sink.privileged_containers(ns, count(obs.index.privileged_containers(ns)));
        if plan.excluded {
            sink.excluded(ns);
            continue;
        }
        if plan.exempt {
            sink.exempt(ns);
        }
        if plan.unprotected {
            sink.unprotected(ns);
        }
        if plan.conflicted() {
            sink.conflicted(ns);
        }
        let profile = plan.primary().unwrap_or_default();
        if let Some(pending) = &plan.pending {
            sink.rollout_pending(ns, profile, count(pending.blocking.len()));
        }
        // An Audit-mode profile's levels are not in force: its namespaces are evaluated
        // against them and reported apart, so that no alert on what is enforced fires.
        if !plan.write && !plan.governed_by.is_empty() {
            for mode in Mode::ALL {
                let pods = obs.index.tally(ns, mode).pods;
                sink.would_violate_pods(ns, profile, mode.as_str(), pods);
            }
            continue;
        }
        for mode in Mode::ALL {
            if plan.write {
                let lv = plan.policy.get(mode);
                let version = match lv.version {
                    Version::Latest => "latest".to_owned(),
                    v => v.to_string(),
                };
                sink.namespace_level(ns, profile, mode.as_str(), lv.level.as_str(), &version);
            }
            let tally = obs.index.tally(ns, mode);
            if tally.pods > 0 || !plan.governed_by.is_empty() {
                sink.violating_pods(ns, profile, mode.as_str(), tally.pods);
            }
            for (kind, t) in WorkloadKind::ALL.iter().zip(obs.templates.tally(ns, mode)) {
                if t.pods == 0 {
                    continue;
                }
                if mode == Mode::Enforce {
                    sink.blocked_workloads(ns, profile, kind.as_str(), t.pods);
                }
                sink.violating_workloads(ns, profile, mode.as_str(), kind.as_str(), t.pods);
            }
            for (check, n) in tally.by_check {
                sink.pod_violations(ns, profile, mode.as_str(), check, n);
            }
        }
    }
}

impl MetricValues {
    /// The values of everything observed in one pass.
    pub fn of<P: Evaluate>(obs: &Observed<'_, P>) -> MetricValues {
        let mut sink = Collect::default();
        emit(obs, &mut sink);
        sink.values
    }

    /// Hands these values to `sink`, series by series, in the order they were collected.
    pub fn emit(&self, sink: &mut impl Sink) {
        for (version, n) in &self.apiserver_version {
            sink.apiserver_version(version, *n);
        }
        for (ns, n) in &self.privileged_containers {
            sink.privileged_containers(ns, *n);
        }
        for ns in &self.excluded {
            sink.excluded(ns);
        }
        for ns in &self.exempt {
            sink.exempt(ns);
        }
        for ns in &self.unprotected {
            sink.unprotected(ns);
        }
        for ns in &self.conflicted {
            sink.conflicted(ns);
        }
        for ([ns, profile], n) in &self.rollout_pending {
            sink.rollout_pending(ns, profile, *n);
        }
        for ([ns, profile, mode], n) in &self.would_violate_pods {
            sink.would_violate_pods(ns, profile, mode, *n);
        }
        for [ns, profile, mode, level, version] in &self.namespace_level {
            sink.namespace_level(ns, profile, mode, level, version);
        }
        for ([ns, profile, mode], n) in &self.violating_pods {
            sink.violating_pods(ns, profile, mode, *n);
        }
        for ([ns, profile, kind], n) in &self.blocked_workloads {
            sink.blocked_workloads(ns, profile, kind, *n);
        }
        for ([ns, profile, mode, kind], n) in &self.violating_workloads {
            sink.violating_workloads(ns, profile, mode, kind, *n);
        }
        for ([ns, profile, mode, check], n) in &self.pod_violations {
            sink.pod_violations(ns, profile, mode, check, *n);
        }
    }
}

/// A [`Sink`] collecting [`MetricValues`].
#[derive(Default)]
struct Collect {
    values: MetricValues,
    strings: Values,
}

impl Collect {
    fn get<const N: usize>(&mut self, labels: [&str; N]) -> [Value; N] {
        labels.map(|l| self.strings.get(l))
    }
}

impl Sink for Collect {
    fn reserve(&mut self, namespaces: usize, check_series: usize) {
        let m = &mut self.values;
        m.privileged_containers.reserve(namespaces);
        m.namespace_level.reserve(3 * namespaces);
        m.violating_pods.reserve(3 * namespaces);
        m.pod_violations.reserve(check_series);
    }
    fn apiserver_version(&mut self, version: &str, unsupported: i32) {
        let [v] = self.get([version]);
        self.values.apiserver_version.push((v, unsupported));
    }
    fn privileged_containers(&mut self, ns: &str, n: i32) {
        let [ns] = self.get([ns]);
        self.values.privileged_containers.push((ns, n));
    }
    fn excluded(&mut self, ns: &str) {
        let [ns] = self.get([ns]);
        self.values.excluded.push(ns);
    }
    fn exempt(&mut self, ns: &str) {
        let [ns] = self.get([ns]);
        self.values.exempt.push(ns);
    }
    fn unprotected(&mut self, ns: &str) {
        let [ns] = self.get([ns]);
        self.values.unprotected.push(ns);
    }
    fn conflicted(&mut self, ns: &str) {
        let [ns] = self.get([ns]);
        self.values.conflicted.push(ns);
    }
    fn rollout_pending(&mut self, ns: &str, profile: &str, n: i32) {
        let labels = self.get([ns, profile]);
        self.values.rollout_pending.push((labels, n));
    }
    fn would_violate_pods(&mut self, ns: &str, profile: &str, mode: &str, n: i32) {
        let labels = self.get([ns, profile, mode]);
        self.values.would_violate_pods.push((labels, n));
    }
    fn namespace_level(&mut self, ns: &str, profile: &str, mode: &str, level: &str, version: &str) {
        let labels = self.get([ns, profile, mode, level, version]);
        self.values.namespace_level.push(labels);
    }
    fn violating_pods(&mut self, ns: &str, profile: &str, mode: &str, n: i32) {
        let labels = self.get([ns, profile, mode]);
        self.values.violating_pods.push((labels, n));
    }
    fn blocked_workloads(&mut self, ns: &str, profile: &str, kind: &str, n: i32) {
        let labels = self.get([ns, profile, kind]);
        self.values.blocked_workloads.push((labels, n));
    }
    fn violating_workloads(&mut self, ns: &str, profile: &str, mode: &str, kind: &str, n: i32) {
        let labels = self.get([ns, profile, mode, kind]);
        self.values.violating_workloads.push((labels, n));
    }
    fn pod_violations(&mut self, ns: &str, profile: &str, mode: &str, check: &str, n: i32) {
        let labels = self.get([ns, profile, mode, check]);
        self.values.pod_violations.push((labels, n));
    }
}

/// The label values of one computation, each allocated once.
#[derive(Default)]
struct Values(HashMap<Box<str>, Value>);

impl Values {
    fn get(&mut self, s: &str) -> Value {
        if let Some(v) = self.0.get(s) {
            return Arc::clone(v);
        }
        let v: Value = Arc::from(s);
        self.0.insert(s.into(), Arc::clone(&v));
        v
    }
}
