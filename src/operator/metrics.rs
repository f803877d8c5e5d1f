//! Prometheus metrics. Gauges are replaced wholesale from [`MetricValues`] after every pass, so the
//! series of deleted namespaces and profiles disappear; drift counters are pruned the same way.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::error::{Error, Result};
use super::status::MetricValues;

pub struct Metrics {
    registry: Registry,
    namespace_level: IntGaugeVec,
    violating_pods: IntGaugeVec,
    pod_violations: IntGaugeVec,
    privileged_containers: IntGaugeVec,
    unprotected: IntGaugeVec,
    conflict: IntGaugeVec,
    rollout_pending: IntGaugeVec,
    label_drift: IntCounterVec,
    drift_series: Mutex<BTreeSet<[String; 3]>>,
    /// The label values of every gauge series the last pass set, per gauge (in `gauges()`
    /// order): the next pass updates these in place and removes only those that are gone.
    /// (Resetting and re-creating every series made the `prometheus` crate rebuild a
    /// descriptor per series per pass: half the CPU of a pass at 2,000 namespaces.)
    gauge_series: Mutex<[HashSet<Vec<String>>; 7]>,
    reconcile_duration: HistogramVec,
    reconcile_errors: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).map_err(Error::Metrics)?;
    registry
        .register(Box::new(g.clone()))
        .map_err(Error::Metrics)?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(Error::Metrics)?;
    registry
        .register(Box::new(c.clone()))
        .map_err(Error::Metrics)?;
    Ok(c)
}

fn int(n: i32) -> i64 {
    i64::from(n)
}

impl Metrics {
    pub fn new() -> Result<Metrics> {
        let r = Registry::new();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "pss_reconcile_duration_seconds",
                "Duration of reconcile passes",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["controller"],
        )
        .map_err(Error::Metrics)?;
        r.register(Box::new(reconcile_duration.clone()))
            .map_err(Error::Metrics)?;
        Ok(Metrics {
            namespace_level: gauge(
                &r,
                "pss_namespace_level",
                "1 per written namespace and mode, labelled with the level and version in force",
                &["namespace", "profile", "mode", "level", "version"],
            )?,
            violating_pods: gauge(
                &r,
                "pss_violating_pods",
                "Running Pods that violate the level of a mode in their namespace",
                &["namespace", "profile", "mode"],
            )?,
            pod_violations: gauge(
                &r,
                "pss_pod_violations",
                "Running Pods failing a check at the level of a mode in their namespace",
                &["namespace", "profile", "mode", "check"],
            )?,
            privileged_containers: gauge(
                &r,
                "pss_privileged_containers",
                "Containers of running Pods with securityContext.privileged=true, in every namespace",
                &["namespace"],
            )?,
            unprotected: gauge(
                &r,
                "pss_unprotected_namespace",
                "1 for a namespace no profile selects whose enforce level is privileged or unset",
                &["namespace"],
            )?,
            conflict: gauge(
                &r,
                "pss_namespace_conflict",
                "1 for a namespace selected by profiles of equal top priority",
                &["namespace"],
            )?,
            rollout_pending: gauge(
                &r,
                "pss_rollout_pending",
                "Pods blocking a WhenCompliant enforce rollout",
                &["namespace", "profile"],
            )?,
            label_drift: counter(
                &r,
                "pss_label_drift_total",
                "Managed labels found changed or removed and put back",
                &["namespace", "profile", "label"],
            )?,
            drift_series: Mutex::new(BTreeSet::new()),
            gauge_series: Mutex::new(Default::default()),
            reconcile_duration,
            reconcile_errors: counter(
                &r,
                "pss_reconcile_errors_total",
                "Failed reconcile steps",
                &["controller", "error"],
            )?,
            registry: r,
        })
    }

    /// Replaces every gauge with the values of the last pass; drops drift series of namespaces or
    /// profiles that are gone.
    pub fn publish(&self, v: &MetricValues, alive: impl Fn(&str, &str) -> bool) {
        let mut previous = self
            .gauge_series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let [
            level,
            violating,
            violations,
            privileged,
            unprotected,
            conflict,
            pending,
        ] = &mut *previous;
        replace(
            &self.namespace_level,
            level,
            v.namespace_level.iter().map(|l| (&l[..], 1)),
        );
        replace(
            &self.violating_pods,
            violating,
            v.violating_pods.iter().map(|(l, n)| (&l[..], int(*n))),
        );
        replace(
            &self.pod_violations,
            violations,
            v.pod_violations.iter().map(|(l, n)| (&l[..], int(*n))),
        );
        replace(
            &self.privileged_containers,
            privileged,
            v.privileged_containers
                .iter()
                .map(|(ns, n)| (std::slice::from_ref(ns), int(*n))),
        );
        replace(
            &self.unprotected,
            unprotected,
            v.unprotected.iter().map(|ns| (std::slice::from_ref(ns), 1)),
        );
        replace(
            &self.conflict,
            conflict,
            v.conflicted.iter().map(|ns| (std::slice::from_ref(ns), 1)),
        );
        replace(
            &self.rollout_pending,
            pending,
            v.rollout_pending.iter().map(|(l, n)| (&l[..], int(*n))),
        );
        drop(previous);
        let mut series = self
            .drift_series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        series.retain(|l| {
            let keep = alive(&l[0], &l[1]);
            if !keep {
                let _ = self.label_drift.remove_label_values(&[&l[0], &l[1], &l[2]]);
            }
            keep
        });
    }

    pub fn drift(&self, namespace: &str, profile: &str, label: &str) {
        self.label_drift
            .with_label_values(&[namespace, profile, label])
            .inc();
        self.drift_series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert([namespace.to_owned(), profile.to_owned(), label.to_owned()]);
    }

    pub fn error(&self, controller: &str, error: &Error) {
        self.reconcile_errors
            .with_label_values(&[controller, error.metric_label()])
            .inc();
    }

    /// Records the duration of a reconcile step when dropped.
    pub fn timer(&self, controller: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Sets `gauge` to exactly `values`: series seen last time are updated in place, new ones
/// created, and those no longer present removed.
fn replace<'a>(
    gauge: &IntGaugeVec,
    previous: &mut HashSet<Vec<String>>,
    values: impl Iterator<Item = (&'a [String], i64)>,
) {
    let mut current = HashSet::with_capacity(previous.len());
    for (labels, value) in values {
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        gauge.with_label_values(&refs).set(value);
        if let Some(known) = previous.take(labels) {
            current.insert(known);
        } else {
            current.insert(labels.to_vec());
        }
    }
    for gone in previous.drain() {
        let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
        let _ = gauge.remove_label_values(&refs);
    }
    *previous = current;
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .with_label_values(&[self.controller])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(ns: &str) -> MetricValues {
        MetricValues {
            namespace_level: vec![[
                ns.into(),
                "apps".into(),
                "enforce".into(),
                "baseline".into(),
                "latest".into(),
            ]],
            violating_pods: vec![([ns.into(), "apps".into(), "enforce".into()], 2)],
            pod_violations: vec![(
                [
                    ns.into(),
                    "apps".into(),
                    "enforce".into(),
                    "privileged".into(),
                ],
                2,
            )],
            privileged_containers: vec![(ns.into(), 3)],
            unprotected: vec![],
            conflicted: vec![ns.into()],
            rollout_pending: vec![([ns.into(), "apps".into()], 1)],
        }
    }

    #[test]
    fn series_follow_the_last_pass_and_deleted_ones_disappear() {
        let m = Metrics::new().expect("metrics");
        m.publish(&values("app"), |_, _| true);
        m.drift("app", "apps", "pod-security.kubernetes.io/enforce");
        let text = m.render();
        for line in [
            r#"pss_namespace_level{level="baseline",mode="enforce",namespace="app",profile="apps",version="latest"} 1"#,
            r#"pss_violating_pods{mode="enforce",namespace="app",profile="apps"} 2"#,
            r#"pss_pod_violations{check="privileged",mode="enforce",namespace="app",profile="apps"} 2"#,
            r#"pss_privileged_containers{namespace="app"} 3"#,
            r#"pss_namespace_conflict{namespace="app"} 1"#,
            r#"pss_rollout_pending{namespace="app",profile="apps"} 1"#,
            r#"pss_label_drift_total{label="pod-security.kubernetes.io/enforce",namespace="app",profile="apps"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.publish(&values("other"), |ns, _| ns != "app");
        let text = m.render();
        assert!(!text.contains(r#"namespace="app""#), "{text}");
        assert!(text.contains(r#"pss_privileged_containers{namespace="other"} 3"#));
    }

    #[test]
    fn errors_and_durations_are_recorded() {
        let m = Metrics::new().expect("metrics");
        m.error("namespace", &Error::LeadershipLost);
        drop(m.timer("namespace"));
        let text = m.render();
        assert!(text.contains(
            r#"pss_reconcile_errors_total{controller="namespace",error="leadership_lost"} 1"#
        ));
        assert!(text.contains(r#"pss_reconcile_duration_seconds_count{controller="namespace"} 1"#));
    }
}
