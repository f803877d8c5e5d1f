//! The metric values of one pass, computed from what the pass observed: what the gauges of
//! [`super::Metrics`] are set to. Pure.

use crate::operator::index::Evaluate;
use crate::operator::status::{Observed, count};
use crate::operator::workloads::WorkloadKind;
use crate::pss::{Mode, Version};

/// Metric values of one pass; the exporter replaces every gauge with these, so series of deleted
/// namespaces and profiles disappear.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetricValues {
    /// (namespace, profile, mode, level, version) for each written namespace and mode.
    pub namespace_level: Vec<[String; 5]>,
    /// (namespace, profile, mode) → violating Pods; every governed namespace and mode, and other
    /// namespaces when not zero (profile `""`).
    pub violating_pods: Vec<([String; 3], i32)>,
    /// (namespace, profile, mode, check) → violating Pods, when not zero.
    pub pod_violations: Vec<([String; 4], i32)>,
    /// Every namespace, excluded ones too.
    pub privileged_containers: Vec<(String, i32)>,
    pub unprotected: Vec<String>,
    pub conflicted: Vec<String>,
    /// (namespace, profile) → blocking Pods.
    pub rollout_pending: Vec<([String; 2], i32)>,
    /// (namespace, profile, mode, kind) → workloads whose template violates the mode's level,
    /// when not zero.
    pub violating_workloads: Vec<([String; 4], i32)>,
    /// (namespace, profile, kind) → workloads whose template violates the enforce level, when
    /// not zero.
    pub blocked_workloads: Vec<([String; 3], i32)>,
    /// The API server's version → 1 when newer than the newest policy version this build knows.
    pub apiserver_version: Vec<(String, i32)>,
    /// Existing namespaces the operator leaves alone.
    pub excluded: Vec<String>,
    /// Existing namespaces the admission configuration exempts.
    pub exempt: Vec<String>,
    /// (namespace, profile, mode) → Pods violating what an Audit-mode profile declares (not in
    /// force: the namespace's labels are not written).
    pub would_violate_pods: Vec<([String; 3], i32)>,
}

impl MetricValues {
    /// The values of everything observed in one pass.
    pub fn of<P: Evaluate>(obs: &Observed<'_, P>) -> MetricValues {
        let mut m = MetricValues::default();
        let kube = obs.index.admission().kube;
        m.apiserver_version
            .push((kube.to_string(), i32::from(!kube.is_known())));
        for plan in obs.plans.values() {
            let ns = &plan.name;
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
            let profile = plan.primary().unwrap_or_default().to_owned();
            if let Some(pending) = &plan.pending {
                m.rollout_pending
                    .push(([ns.clone(), profile.clone()], count(pending.blocking.len())));
            }
            // An Audit-mode profile's levels are not in force: its namespaces are evaluated
            // against them and reported apart, so that no alert on what is enforced fires.
            if !plan.write && !plan.governed_by.is_empty() {
                for mode in Mode::ALL {
                    let tally = obs.index.tally(ns, mode);
                    m.would_violate_pods
                        .push(([ns.clone(), profile.clone(), mode.to_string()], tally.pods));
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
                    m.namespace_level.push([
                        ns.clone(),
                        profile.clone(),
                        mode.to_string(),
                        lv.level.to_string(),
                        version,
                    ]);
                }
                let tally = obs.index.tally(ns, mode);
                if tally.pods > 0 || !plan.governed_by.is_empty() {
                    m.violating_pods
                        .push(([ns.clone(), profile.clone(), mode.to_string()], tally.pods));
                }
                for (kind, t) in WorkloadKind::ALL.iter().zip(obs.templates.tally(ns, mode)) {
                    if t.pods == 0 {
                        continue;
                    }
                    let kind = kind.as_str().to_owned();
                    if mode == Mode::Enforce {
                        m.blocked_workloads
                            .push(([ns.clone(), profile.clone(), kind.clone()], t.pods));
                    }
                    m.violating_workloads.push((
                        [ns.clone(), profile.clone(), mode.to_string(), kind],
                        t.pods,
                    ));
                }
                for (check, n) in tally.by_check {
                    m.pod_violations.push((
                        [
                            ns.clone(),
                            profile.clone(),
                            mode.to_string(),
                            check.to_owned(),
                        ],
                        n,
                    ));
                }
            }
        }
        m
    }
}
