//! CPU of one reconcile pass's pure stages at the scale benchmark's size (e2e/bench/scale.py:
//! 2,000 namespaces in four tiers, its four profiles, 50,000 Pods round-robin): planning every
//! namespace, setting the index policies, the label diff (`labels::plan_writes`, as on a
//! converged cluster and with every namespace's labels stripped), the metric values and the four
//! profile statuses. The same functions the controller calls; no cluster, no I/O.
//!
//! Run: `cargo bench --bench reconcile [-- --pods N --namespaces N --rounds N]`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use pss_operator::operator::crd::PodSecurityProfile;
use pss_operator::operator::desired::{
    Exclusions, Labels, LabelsByNamespace, NamespaceView, ProfileView, plan,
};
use pss_operator::operator::index::PodIndex;
use pss_operator::operator::labels::{Cluster, governs, plan_writes};
use pss_operator::operator::ledger::Ledger;
use pss_operator::operator::metrics::Gauges;
use pss_operator::operator::pods::{SlimPod, WatchedPod};
use pss_operator::operator::record::Record;
use pss_operator::operator::status::{Observed, profile_status};
use pss_operator::operator::workloads::TemplateIndex;
use pss_operator::pss::Admission;
use serde_json::json;

#[path = "common/scale_pods.rs"]
mod scale_pods;

use scale_pods::{pod_kind, secure, tier};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn profiles() -> Vec<PodSecurityProfile> {
    let mut out = Vec::new();
    for (name, selector, priority, levels, rollout) in [
        (
            "web",
            json!({"matchLabels": {"bench/tier": "web"}}),
            10,
            vec![
                ("enforce", "baseline"),
                ("audit", "restricted"),
                ("warn", "restricted"),
            ],
            None,
        ),
        (
            "batch",
            json!({"matchLabels": {"bench/tier": "batch"}}),
            10,
            vec![
                ("enforce", "privileged"),
                ("audit", "baseline"),
                ("warn", "restricted"),
            ],
            None,
        ),
        (
            "strict",
            json!({"matchLabels": {"bench/tier": "strict"}}),
            10,
            vec![("enforce", "restricted")],
            Some("WhenCompliant"),
        ),
        (
            "floor",
            json!({"matchExpressions": [{"key": "bench/tier", "operator": "In",
                                         "values": ["web", "batch", "strict"]}]}),
            0,
            vec![("enforce", "baseline"), ("audit", "baseline")],
            None,
        ),
    ] {
        let mut spec = json!({"namespaceSelector": selector, "priority": priority});
        for (mode, level) in levels {
            spec[mode] = json!({"level": level, "version": "latest"});
        }
        if let Some(r) = rollout {
            spec["rollout"] = json!(r);
        }
        let p = json!({"apiVersion": "pss-operator.io/v1alpha1", "kind": "PodSecurityProfile",
                       "metadata": {"name": name, "generation": 1}, "spec": spec});
        out.push(serde_json::from_value(p).expect("profile"));
    }
    out
}

fn pod(ns: &str, ns_index: usize, k: usize) -> WatchedPod {
    let kind = pod_kind(ns_index, k);
    let mut container = json!({"name": "app", "image": "registry.example/app:1.2.3",
                               "ports": [{"containerPort": 8080}]});
    let mut spec = json!({"containers": [], "automountServiceAccountToken": false});
    secure(kind, &mut spec, &mut container);
    spec["containers"] = json!([container]);
    let guard: DeserializeGuard<WatchedPod> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{k:05}"), "namespace": ns},
        "spec": spec, "status": {"phase": "Pending"}}))
    .expect("pod");
    guard.0.expect("readable pod")
}

fn main() {
    let n_ns = arg("--namespaces", 2_000);
    let n_pods = arg("--pods", 50_000);
    let rounds = arg("--rounds", 20);

    let profiles = profiles();
    let views: Vec<ProfileView> = profiles
        .iter()
        .map(|p| ProfileView::from_profile(p).expect("valid"))
        .collect();
    let namespaces: Vec<NamespaceView> = (0..n_ns)
        .map(|i| NamespaceView {
            name: format!("bench-{i:04}"),
            labels: Arc::new(Labels::from([
                ("bench/tier".to_owned(), tier(i).to_owned()),
                (
                    "kubernetes.io/metadata.name".to_owned(),
                    format!("bench-{i:04}"),
                ),
            ])),
        })
        .collect();
    let mut index: PodIndex<SlimPod> = PodIndex::default();
    for k in 0..n_pods {
        let i = k % n_ns;
        if let Some((ns, name, slim)) = pod(&namespaces[i].name, i, k).into_slim() {
            index.apply(&ns, &name, slim);
        }
    }
    let exclusions = Exclusions::new(Exclusions::DEFAULT);
    let now = Time(Timestamp::now());
    let templates: TemplateIndex<SlimPod> = TemplateIndex::default();
    let shared: Vec<Arc<PodSecurityProfile>> = profiles.iter().cloned().map(Arc::new).collect();
    let owned = HashMap::new();
    // The namespaces as listed (their tier labels, no PSA labels): every governed one gets a write.
    let bare: LabelsByNamespace = namespaces
        .iter()
        .map(|n| (n.name.clone(), n.labels.clone()))
        .collect();

    let mut plan_t = Duration::ZERO;
    let mut policy_t = Duration::ZERO;
    let mut diff_t = Duration::ZERO;
    let mut strip_t = Duration::ZERO;
    let mut metrics_t = Duration::ZERO;
    let mut status_t = Duration::ZERO;
    let mut series = 0;
    let mut writes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let plans = plan(
            &views,
            &namespaces,
            &exclusions,
            &Admission::default(),
            &|ns, lv| index.blocking(ns, lv),
        );
        plan_t += t.elapsed();
        let t = Instant::now();
        for p in plans.values() {
            index.set_policy(&p.name, p.policy);
        }
        policy_t += t.elapsed();
        // As converged: the labels as desired.
        let labels: LabelsByNamespace = plans
            .values()
            .map(|p| (p.name.clone(), p.desired.clone()))
            .collect();
        // Each governed namespace carries the ledger record the operator wrote with its labels.
        let records: HashMap<String, Record> = plans
            .values()
            .filter(|p| governs(p))
            .map(|p| {
                let record = Ledger::default().record(p, &p.desired, &BTreeSet::new(), None);
                (p.name.clone(), record)
            })
            .collect();
        // The label diff on a converged cluster (nothing to write), then on one whose labels were
        // all stripped (a write per governed namespace).
        let mut ledger = Ledger::default();
        let mut cluster = Cluster {
            plans: &plans,
            labels: &labels,
            owned: &owned,
            records: &records,
            profiles: &shared,
            exclusions: &exclusions,
        };
        let t = Instant::now();
        let none = plan_writes(&mut ledger, &cluster, &|_| false);
        diff_t += t.elapsed();
        assert!(none.is_empty(), "converged: {} writes", none.len());
        cluster.labels = &bare;
        let t = Instant::now();
        writes = plan_writes(&mut ledger, &cluster, &|_| false).len();
        strip_t += t.elapsed();
        let (drift, errors) = (Default::default(), Default::default());
        let obs = Observed {
            plans: &plans,
            labels: &labels,
            index: &index,
            templates: &templates,
            drift: &drift,
            apply_errors: &errors,
        };
        // What the reporter publishes: the exposition's tables, straight from what was observed.
        let t = Instant::now();
        let gauges = Gauges::of(&obs);
        metrics_t += t.elapsed();
        series = gauges.series();
        let t = Instant::now();
        for (p, view) in profiles.iter().zip(&views) {
            std::hint::black_box(profile_status(p, Ok(view), &obs, &now));
        }
        status_t += t.elapsed();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / rounds as f64;
    println!(
        "{n_ns} namespaces, {n_pods} Pods, {rounds} rounds; per pass: plan {:.1} ms, set_policy {:.1} ms, label diff {:.1} ms converged / {:.1} ms stripped ({writes} writes), gauges {:.1} ms ({series} series), 4 statuses {:.1} ms",
        ms(plan_t),
        ms(policy_t),
        ms(diff_t),
        ms(strip_t),
        ms(metrics_t),
        ms(status_t)
    );
}
