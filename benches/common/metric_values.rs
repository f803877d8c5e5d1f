//! Metric values shaped like a pass over 2,000 namespaces (the scale of the "performance at
//! scale" issue): four tiers of namespaces as in `e2e/bench/scale.py`, every namespace with
//! violating Pods in each mode and a few failing checks.

use pss_operator::operator::metrics::MetricValues;

const MODES: [&str; 3] = ["enforce", "audit", "warn"];

pub fn values(namespaces: usize) -> MetricValues {
    let mut m = MetricValues::default();
    for i in 0..namespaces {
        let ns: std::sync::Arc<str> = format!("bench-{i:04}").into();
        let (profile, levels, selected) = match i % 10 {
            0..=4 => ("web", ["baseline", "restricted", "restricted"], true),
            5..=7 => ("batch", ["privileged", "baseline", "restricted"], true),
            8 => ("strict", ["restricted", "restricted", "restricted"], true),
            _ => ("", ["privileged", "privileged", "privileged"], false),
        };
        m.privileged_containers.push((ns.clone(), (i % 4) as i32));
        if !selected {
            m.unprotected.push(ns.clone());
        }
        if i % 100 == 7 {
            m.conflicted.push(ns.clone());
        }
        if profile == "strict" {
            m.rollout_pending.push(([ns.clone(), profile.into()], 19));
        }
        for (mode, level) in MODES.iter().zip(levels) {
            if selected {
                m.namespace_level.push([
                    ns.clone(),
                    profile.into(),
                    (*mode).into(),
                    level.into(),
                    "latest".into(),
                ]);
            }
            let violating = if level == "restricted" { 19 } else { 6 };
            m.violating_pods
                .push(([ns.clone(), profile.into(), (*mode).into()], violating));
            if *mode == "enforce" {
                continue;
            }
            for check in [
                "allowPrivilegeEscalation",
                "runAsNonRoot",
                "seccompProfile_restricted",
            ] {
                m.pod_violations.push((
                    [ns.clone(), profile.into(), (*mode).into(), check.into()],
                    violating,
                ));
            }
        }
    }
    m
}
