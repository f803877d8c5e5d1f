//! Prometheus metrics. The gauges are the values of the last pass ([`values`]), kept compact and
//! written to the text format on every scrape ([`exposition`]), so the series of deleted
//! namespaces and profiles disappear with the pass that no longer has them. Counters and the
//! duration histogram stay in a `prometheus` registry; drift series of deleted namespaces and
//! profiles are pruned from it. `benches/metrics_memory.rs` measures what the gauges hold.

mod exposition;
mod values;

pub use exposition::Gauges;
pub use values::{MetricValues, Sink, emit};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use prometheus::proto::MetricFamily;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::error::{Error, Result};
use exposition::{FAMILIES, estimated_len};

pub struct Metrics {
    registry: Registry,
    /// The gauges of the last pass: a scrape clones the `Arc` and renders without the lock.
    gauges: Mutex<Arc<Gauges>>,
    label_drift: IntCounterVec,
    drift_series: Mutex<BTreeSet<[String; 3]>>,
    reconcile_duration: HistogramVec,
    reconcile_errors: IntCounterVec,
    build_info: IntGaugeVec,
    report_writes: IntCounterVec,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(Error::Metrics)?;
    registry
        .register(Box::new(c.clone()))
        .map_err(Error::Metrics)?;
    Ok(c)
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
        let build_info = IntGaugeVec::new(
            Opts::new(
                "pss_build_info",
                "1, labelled with the version and git commit of the running pss-operator",
            ),
            &["commit", "version"],
        )
        .map_err(Error::Metrics)?;
        r.register(Box::new(build_info.clone()))
            .map_err(Error::Metrics)?;
        Ok(Metrics {
            build_info,
            report_writes: counter(
                &r,
                "pss_report_writes_total",
                "Policy reports applied or deleted (--reports): only when a report's content changed",
                &["operation"],
            )?,
            gauges: Mutex::new(Arc::default()),
            label_drift: counter(
                &r,
                "pss_label_drift_total",
                "Managed labels found changed or removed and put back",
                &["namespace", "profile", "label"],
            )?,
            drift_series: Mutex::new(BTreeSet::new()),
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

    /// Replaces every gauge with the values of the last pass ([`Gauges::of`], or
    /// [`MetricValues`]); drops drift series of namespaces or profiles that are gone.
    pub fn publish(&self, gauges: impl Into<Gauges>, alive: impl Fn(&str, &str) -> bool) {
        let gauges = Arc::new(gauges.into());
        // The lock is held for the swap only; the previous values are freed after it (or by the
        // last scrape still rendering them).
        let previous = std::mem::replace(&mut *lock(&self.gauges), gauges);
        drop(previous);
        lock(&self.drift_series).retain(|l| {
            let keep = alive(&l[0], &l[1]);
            if !keep {
                let _ = self.label_drift.remove_label_values(&[&l[0], &l[1], &l[2]]);
            }
            keep
        });
    }

    /// Sets `pss_build_info{version,commit} 1` (once, at start).
    pub fn build_info(&self, version: &str, commit: &str) {
        self.build_info.with_label_values(&[commit, version]).set(1);
    }

    /// Counts a policy report write (`apply` or `delete`).
    pub fn report_write(&self, operation: &str) {
        self.report_writes.with_label_values(&[operation]).inc();
    }

    pub fn drift(&self, namespace: &str, profile: &str, label: &str) {
        self.label_drift
            .with_label_values(&[namespace, profile, label])
            .inc();
        lock(&self.drift_series).insert([
            namespace.to_owned(),
            profile.to_owned(),
            label.to_owned(),
        ]);
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

    /// The text exposition format: the gauges and the registry's families, in name order.
    pub fn render(&self) -> String {
        let gauges = Arc::clone(&lock(&self.gauges));
        let others = self.registry.gather();
        let mut out = String::with_capacity(
            gauges.text_len + others.iter().map(estimated_len).sum::<usize>(),
        );
        let mut keep = |_: &mut String| Ok(());
        // Collecting into a String cannot fail.
        let _ = render_families(&gauges, &others, &mut out, &mut keep);
        out
    }

    /// The exposition in pieces of about `CHUNK` bytes, each handed to `sink` (e.g. a gzip
    /// encoder): at 10,000 namespaces the whole text is ~13 MB, which a gzip scrape then never
    /// holds at once.
    pub fn render_chunked(
        &self,
        sink: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let gauges = Arc::clone(&lock(&self.gauges));
        let others = self.registry.gather();
        let mut out = String::with_capacity(2 * CHUNK);
        let mut flush = |out: &mut String| {
            if out.len() >= CHUNK {
                sink(out)?;
                out.clear();
            }
            Ok(())
        };
        render_families(&gauges, &others, &mut out, &mut flush)?;
        sink(&out)
    }
}

/// Bytes of exposition text [`Metrics::render_chunked`] hands on at a time.
const CHUNK: usize = 64 * 1024;

/// Writes every family in name order (ours and the registry's interleaved) into `out`, calling
/// `flush` between lines so it can take what is there.
fn render_families(
    gauges: &Gauges,
    others: &[MetricFamily],
    out: &mut String,
    flush: &mut dyn FnMut(&mut String) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let encoder = TextEncoder::new();
    let mut others = others.iter().peekable();
    let encode = |mf: &MetricFamily, out: &mut String| {
        if let Err(e) = encoder.encode_utf8(std::slice::from_ref(mf), out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
    };
    for (f, family) in FAMILIES.iter().enumerate() {
        while let Some(mf) = others.next_if(|mf| mf.name() < family.name) {
            encode(mf, out);
            flush(out)?;
        }
        gauges.write(f, out, flush)?;
    }
    for mf in others {
        encode(mf, out);
        flush(out)?;
    }
    Ok(())
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
    use prometheus::{Encoder, IntGaugeVec};
    use proptest::prelude::*;

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
            violating_workloads: vec![(
                [
                    ns.into(),
                    "apps".into(),
                    "enforce".into(),
                    "Deployment".into(),
                ],
                1,
            )],
            blocked_workloads: vec![([ns.into(), "apps".into(), "Deployment".into()], 1)],
            apiserver_version: vec![("v1.31".into(), 0)],
            excluded: vec!["kube-system".into()],
            exempt: vec![],
            would_violate_pods: vec![([ns.into(), "audit".into(), "enforce".into()], 4)],
        }
    }

    /// The exposition as it was with the gauges as `IntGaugeVec`s in the registry: the values set
    /// on fresh gauges (what updating them in place from pass to pass left), gathered with the
    /// families of `m`'s registry and encoded by the crate's `TextEncoder`.
    fn with_prometheus_gauges(m: &Metrics, v: &MetricValues) -> String {
        let r = Registry::new();
        let index = |name: &str| {
            FAMILIES
                .iter()
                .position(|f| f.name == name)
                .expect("family")
        };
        let gauge = |name: &str| {
            let family = &FAMILIES[index(name)];
            let g = IntGaugeVec::new(Opts::new(family.name, family.help), family.labels)
                .expect("gauge");
            r.register(Box::new(g.clone())).expect("register");
            g
        };
        // The label order of the old `IntGaugeVec`s, not the sorted one.
        let set = |g: &IntGaugeVec, labels: &[&values::Value], value: i32| {
            let labels: Vec<&str> = labels.iter().map(|l| &***l).collect();
            g.with_label_values(&labels).set(i64::from(value));
        };
        // A family whose gauge had its labels in another order than the sorted one.
        let unsorted = |name: &str, labels: &[&str]| {
            let f = &FAMILIES[index(name)];
            let g = IntGaugeVec::new(Opts::new(f.name, f.help), labels).expect("gauge");
            r.register(Box::new(g.clone())).expect("register");
            g
        };
        let unsupported = gauge("pss_apiserver_version_unsupported");
        for (version, n) in &v.apiserver_version {
            set(&unsupported, &[version], *n);
        }
        let blocked = unsorted("pss_blocked_workloads", &["namespace", "profile", "kind"]);
        for (l, n) in &v.blocked_workloads {
            set(&blocked, &l.iter().collect::<Vec<_>>(), *n);
        }
        for (name, list) in [
            ("pss_namespace_conflict", &v.conflicted),
            ("pss_namespace_excluded", &v.excluded),
            ("pss_namespace_exempt", &v.exempt),
            ("pss_unprotected_namespace", &v.unprotected),
        ] {
            let g = gauge(name);
            for ns in list {
                set(&g, &[ns], 1);
            }
        }
        let level = unsorted(
            "pss_namespace_level",
            &["namespace", "profile", "mode", "level", "version"],
        );
        for l in &v.namespace_level {
            set(&level, &l.iter().collect::<Vec<_>>(), 1);
        }
        let violations = unsorted(
            "pss_pod_violations",
            &["namespace", "profile", "mode", "check"],
        );
        for (l, n) in &v.pod_violations {
            set(&violations, &l.iter().collect::<Vec<_>>(), *n);
        }
        let privileged = gauge("pss_privileged_containers");
        for (ns, n) in &v.privileged_containers {
            set(&privileged, &[ns], *n);
        }
        let pending = gauge("pss_rollout_pending");
        for (l, n) in &v.rollout_pending {
            set(&pending, &l.iter().collect::<Vec<_>>(), *n);
        }
        for (name, series) in [
            ("pss_violating_pods", &v.violating_pods),
            ("pss_would_violate_pods", &v.would_violate_pods),
        ] {
            let g = unsorted(name, &["namespace", "profile", "mode"]);
            for (l, n) in series {
                set(&g, &l.iter().collect::<Vec<_>>(), *n);
            }
        }
        let workloads = unsorted(
            "pss_violating_workloads",
            &["namespace", "profile", "mode", "kind"],
        );
        for (l, n) in &v.violating_workloads {
            set(&workloads, &l.iter().collect::<Vec<_>>(), *n);
        }
        let mut families = r.gather();
        families.extend(m.registry.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }

    /// Label values that escape, sort differently once escaped, are empty or not ASCII.
    const ODD: [&str; 10] = [
        "app", "app-1", "a\"b", "a\\b", "a\nb", "a#b", "", "ü-team", "b", "A",
    ];

    fn varied() -> MetricValues {
        let mut v = MetricValues::default();
        for (i, ns) in ODD.iter().enumerate() {
            let ns = values::Value::from(*ns);
            let profile = values::Value::from(ODD[(i * 3 + 1) % ODD.len()]);
            let n = i32::try_from(i).expect("small") * 7 - 20;
            v.privileged_containers.push((ns.clone(), n));
            if i % 3 == 0 {
                v.unprotected.push(ns.clone());
            }
            if i % 4 == 1 {
                v.rollout_pending
                    .push(([ns.clone(), profile.clone()], i32::MAX - i32::from(i == 1)));
            }
            for (mode, level) in [
                ("enforce", "baseline"),
                ("audit", "restricted"),
                ("warn", "x\"y"),
            ] {
                v.namespace_level.push([
                    ns.clone(),
                    profile.clone(),
                    mode.into(),
                    level.into(),
                    ODD[i % 5].into(),
                ]);
                v.violating_pods
                    .push(([ns.clone(), profile.clone(), mode.into()], n));
                for check in ["runAsNonRoot", "privileged", ODD[(i + 2) % ODD.len()]] {
                    v.pod_violations
                        .push(([ns.clone(), profile.clone(), mode.into(), check.into()], -n));
                }
                let kind = ["Deployment", "CronJob", ODD[(i + 3) % ODD.len()]][i % 3];
                v.violating_workloads.push((
                    [ns.clone(), profile.clone(), mode.into(), kind.into()],
                    n + 1,
                ));
                if mode == "enforce" {
                    v.blocked_workloads
                        .push(([ns.clone(), profile.clone(), kind.into()], n + 1));
                }
            }
        }
        v.apiserver_version.push(("v1.99".into(), 1));
        v.excluded.extend(["kube-system".into(), ODD[2].into()]);
        v.exempt.push(ODD[3].into());
        v.would_violate_pods
            .push(([ODD[4].into(), ODD[5].into(), "enforce".into()], 9));
        // The same labels twice: the last value counts.
        v.privileged_containers.push(("app".into(), i32::MIN));
        v
    }

    #[test]
    fn families_and_labels_are_sorted_by_name() {
        assert!(FAMILIES.is_sorted_by_key(|f| f.name));
        for f in &FAMILIES {
            assert!(f.labels.is_sorted(), "{}", f.name);
        }
    }

    #[test]
    fn build_info_names_the_version_and_commit() {
        let m = Metrics::new().expect("metrics");
        m.build_info("0.1.0", "0123abcd");
        let text = m.render();
        assert!(
            text.contains("# TYPE pss_build_info gauge\npss_build_info{commit=\"0123abcd\",version=\"0.1.0\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn text_is_byte_identical_to_the_prometheus_crate() {
        let m = Metrics::new().expect("metrics");
        m.drift("a\"b", "app", "pod-security.kubernetes.io/enforce");
        m.error("namespace", &Error::LeadershipLost);
        m.build_info("0.1.0", "0123abcd");
        m.report_write("apply");
        drop(m.timer("namespace"));
        let mut cases = vec![varied(), values("app"), MetricValues::default()];
        // Empty families between non-empty ones.
        cases.push(MetricValues {
            conflicted: vec![],
            pod_violations: vec![],
            rollout_pending: vec![],
            ..varied()
        });
        cases.push(MetricValues {
            blocked_workloads: vec![],
            violating_pods: vec![],
            ..varied()
        });
        for v in &cases {
            m.publish(v, |_, _| true);
            assert_eq!(m.render(), with_prometheus_gauges(&m, v));
        }
    }

    #[test]
    fn nothing_published_renders_nothing() {
        let m = Metrics::new().expect("metrics");
        assert_eq!(m.render(), "");
        m.publish(&MetricValues::default(), |_, _| true);
        assert_eq!(m.render(), "");
    }

    #[test]
    fn capacity_is_the_length_of_the_gauges() {
        let m = Metrics::new().expect("metrics");
        m.publish(&varied(), |_, _| true);
        let text = m.render();
        assert_eq!(text.len(), lock(&m.gauges).text_len);
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
            r#"pss_blocked_workloads{kind="Deployment",namespace="app",profile="apps"} 1"#,
            r#"pss_violating_workloads{kind="Deployment",mode="enforce",namespace="app",profile="apps"} 1"#,
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
    fn a_namespace_gone_from_the_values_is_gone_from_the_text() {
        let m = Metrics::new().expect("metrics");
        let mut both = values("app");
        let other = values("other");
        both.namespace_level.extend(other.namespace_level.clone());
        both.violating_pods.extend(other.violating_pods.clone());
        both.pod_violations.extend(other.pod_violations.clone());
        both.privileged_containers
            .extend(other.privileged_containers.clone());
        both.unprotected.push("other".into());
        both.conflicted.extend(other.conflicted.clone());
        both.rollout_pending.extend(other.rollout_pending.clone());
        both.violating_workloads
            .extend(other.violating_workloads.clone());
        both.blocked_workloads
            .extend(other.blocked_workloads.clone());
        m.publish(&both, |_, _| true);
        let text = m.render();
        assert_eq!(text, with_prometheus_gauges(&m, &both));
        assert!(text.contains(r#"pss_unprotected_namespace{namespace="other"} 1"#));

        m.publish(&values("app"), |_, _| true);
        let text = m.render();
        assert_eq!(text, with_prometheus_gauges(&m, &values("app")));
        assert!(!text.contains("other"), "{text}");
        // A family left without series is left out, headers included.
        assert!(!text.contains("pss_unprotected_namespace"), "{text}");

        m.publish(&MetricValues::default(), |_, _| true);
        assert_eq!(m.render(), "");
    }

    #[test]
    fn a_scrape_keeps_the_values_it_started_with() {
        let m = Metrics::new().expect("metrics");
        m.publish(&values("app"), |_, _| true);
        let rendering = Arc::clone(&lock(&m.gauges));
        m.publish(&values("other"), |_, _| true);
        let mut text = String::new();
        for f in 0..FAMILIES.len() {
            rendering
                .write(f, &mut text, &mut |_| Ok(()))
                .expect("into a String");
        }
        assert!(text.contains(r#"namespace="app""#) && !text.contains("other"));
        assert!(m.render().contains(r#"namespace="other""#));
    }

    #[test]
    fn the_chunked_exposition_is_the_whole_one_in_pieces_of_about_a_chunk() {
        let m = Metrics::new().expect("metrics");
        let many: Vec<String> = (0..3_000).map(|i| format!("namespace-{i:05}")).collect();
        let values = MetricValues {
            namespace_level: many
                .iter()
                .map(|ns| {
                    let mode = "enforce".into();
                    [
                        ns.as_str().into(),
                        "apps".into(),
                        mode,
                        "baseline".into(),
                        "latest".into(),
                    ]
                })
                .collect(),
            privileged_containers: many.iter().map(|ns| (ns.as_str().into(), 1)).collect(),
            ..Default::default()
        };
        m.publish(&values, |_, _| true);
        let mut pieces = Vec::new();
        m.render_chunked(&mut |piece| {
            pieces.push(piece.to_owned());
            Ok(())
        })
        .expect("collected");
        assert!(pieces.len() > 2, "{} pieces", pieces.len());
        assert!(pieces.iter().all(|p| p.len() < CHUNK + 1024));
        assert_eq!(pieces.concat(), m.render());
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

    /// Odd label values none of which is a prefix of another: the `prometheus` crate keyed a
    /// series by a hash of its label values run together, so label sets that run together the
    /// same (`"ab","c"` and `"a","bc"`) were one series there and are two here.
    const PREFIX_FREE: [&str; 8] = ["x\"1", "x\\2", "x\n3", "ü4", "A5", "a6", "b7", "a#8"];

    fn label() -> impl Strategy<Value = values::Value> {
        prop::sample::select(PREFIX_FREE.to_vec()).prop_map(values::Value::from)
    }

    fn metric_values() -> impl Strategy<Value = MetricValues> {
        let n = -3..1000i32;
        (
            prop::collection::vec(prop::array::uniform5(label()), 0..6),
            prop::collection::vec((prop::array::uniform3(label()), n.clone()), 0..6),
            prop::collection::vec((prop::array::uniform4(label()), n.clone()), 0..6),
            prop::collection::vec((label(), n.clone()), 0..6),
            prop::collection::vec(label(), 0..3),
            prop::collection::vec(label(), 0..3),
            prop::collection::vec((prop::array::uniform2(label()), n.clone()), 0..3),
            prop::collection::vec((prop::array::uniform4(label()), n.clone()), 0..4),
            prop::collection::vec((prop::array::uniform3(label()), n.clone()), 0..4),
            (
                prop::collection::vec((label(), 0..2i32), 0..2),
                prop::collection::vec(label(), 0..3),
                prop::collection::vec(label(), 0..3),
                prop::collection::vec((prop::array::uniform3(label()), n), 0..4),
            ),
        )
            .prop_map(
                |(
                    namespace_level,
                    violating_pods,
                    pod_violations,
                    privileged_containers,
                    unprotected,
                    conflicted,
                    rollout_pending,
                    violating_workloads,
                    blocked_workloads,
                    (apiserver_version, excluded, exempt, would_violate_pods),
                )| MetricValues {
                    namespace_level,
                    violating_pods,
                    pod_violations,
                    privileged_containers,
                    unprotected,
                    conflicted,
                    rollout_pending,
                    violating_workloads,
                    blocked_workloads,
                    apiserver_version,
                    excluded,
                    exempt,
                    would_violate_pods,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Any values, duplicates included, and any pass after any other.
        #[test]
        fn any_values_render_as_the_prometheus_crate_did(
            first in metric_values(),
            second in metric_values(),
        ) {
            let m = Metrics::new().expect("metrics");
            m.publish(&first, |_, _| true);
            prop_assert_eq!(m.render(), with_prometheus_gauges(&m, &first));
            m.publish(&second, |_, _| true);
            prop_assert_eq!(m.render(), with_prometheus_gauges(&m, &second));
        }
    }
}
