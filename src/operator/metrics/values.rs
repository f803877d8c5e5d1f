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

impl MetricValues {
    /// The values of everything observed in one pass.
    pub fn of<P: Evaluate>(obs: &Observed<'_, P>) -> MetricValues {
        // Sized up front: at 10,000 namespaces these are ~140,000 series, and vectors grown by
        // doubling held up to twice that room (and three times while moving), the report's
        // peak. Upper bounds, cheap to count.
        let namespaces = obs.plans.len();
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
        let mut m = MetricValues {
            privileged_containers: Vec::with_capacity(namespaces),
            namespace_level: Vec::with_capacity(3 * namespaces),
            violating_pods: Vec::with_capacity(3 * namespaces),
            pod_violations: Vec::with_capacity(check_series),
            ..MetricValues::default()
        };
        let mut values = Values::default();
        let kube = obs.index.admission().kube;
        m.apiserver_version
            .push((values.get(&kube.to_string()), i32::from(!kube.is_known())));
        for plan in obs.plans.values() {
            let ns: Value = Arc::from(plan.name.as_str());
            let ns = &ns;
            m.privileged_containers
                .push((ns.clone(), count(obs.index.privileged_containers(ns))));
            if plan.excluded {
                m.excluded.push(ns.clone());
                continue;
            }
            if plan.exempt {
                m.exempt.push(ns.clone());
            }
            if plan.unprotected {
                m.unprotected.push(ns.clone());
            }
            if plan.conflicted() {
                m.conflicted.push(ns.clone());
            }
            let profile = values.get(plan.primary().unwrap_or_default());
            if let Some(pending) = &plan.pending {
                m.rollout_pending
                    .push(([ns.clone(), profile.clone()], count(pending.blocking.len())));
            }
            // An Audit-mode profile's levels are not in force: its namespaces are evaluated
            // against them and reported apart, so that no alert on what is enforced fires.
            if !plan.write && !plan.governed_by.is_empty() {
                for mode in Mode::ALL {
                    let tally = obs.index.tally(ns, mode);
                    m.would_violate_pods.push((
                        [ns.clone(), profile.clone(), values.get(mode.as_str())],
                        tally.pods,
                    ));
                }
                continue;
            }
            for mode in Mode::ALL {
                if plan.write {
                    let lv = plan.policy.get(mode);
                    let version = match lv.version {
                        Version::Latest => values.get("latest"),
                        v => values.get(&v.to_string()),
                    };
                    m.namespace_level.push([
                        ns.clone(),
                        profile.clone(),
                        values.get(mode.as_str()),
                        values.get(lv.level.as_str()),
                        version,
                    ]);
                }
                let tally = obs.index.tally(ns, mode);
                if tally.pods > 0 || !plan.governed_by.is_empty() {
                    m.violating_pods.push((
                        [ns.clone(), profile.clone(), values.get(mode.as_str())],
                        tally.pods,
                    ));
                }
                for (kind, t) in WorkloadKind::ALL.iter().zip(obs.templates.tally(ns, mode)) {
                    if t.pods == 0 {
                        continue;
                    }
                    let kind = values.get(kind.as_str());
                    if mode == Mode::Enforce {
                        m.blocked_workloads
                            .push(([ns.clone(), profile.clone(), kind.clone()], t.pods));
                    }
                    m.violating_workloads.push((
                        [ns.clone(), profile.clone(), values.get(mode.as_str()), kind],
                        t.pods,
                    ));
                }
                for (check, n) in tally.by_check {
                    m.pod_violations.push((
                        [
                            ns.clone(),
                            profile.clone(),
                            values.get(mode.as_str()),
                            values.get(check),
                        ],
                        n,
                    ));
                }
            }
        }
        m
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
