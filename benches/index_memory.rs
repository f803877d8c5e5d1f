//! Memory and build time of the Pod index at the scale benchmark's size (e2e/bench/scale.py:
//! 50,000 Pods round-robin over 2,000 namespaces, restricted-compliant, baseline-only and
//! privileged Pods), fed the way the Pod watch feeds it: JSON as the API server sends it,
//! deserialized into `WatchedPod`, projected, collected for the initial list, then `reset`, then
//! the namespace policies set as the first pass sets them.
//!
//! Each Pod also gets what ServiceAccount admission adds in real clusters (scale.py turns it off
//! with `automountServiceAccountToken: false`): a `kube-api-access-<random>` projected volume.
//! `--no-token-volume` leaves it out, as scale.py does.
//!
//! Memory is the process's VmRSS growth (from /proc/self/status) and its peak (VmHWM, reset through
//! /proc/self/clear_refs first); the allocator's own overhead and fragmentation count, as they do
//! in the operator. Run: `cargo bench --bench index_memory [-- --pods N --namespaces N --no-token-volume --apply
//! --distinct --kube-guard]`.

use std::time::Instant;

use kube::core::DeserializeGuard;
use pss_operator::operator::index::{Evaluate, Interner, Listed, PodIndex};
use pss_operator::operator::pods::{SlimPod, WatchedPod};
use pss_operator::operator::readable::Readable;
use pss_operator::pss::{LevelVersion, Mode, Policy};
use serde_json::json;

#[path = "common/proc_status.rs"]
mod proc_status;
#[path = "common/scale_pods.rs"]
mod scale_pods;

use proc_status::status_kb;
use scale_pods::{pod_kind, secure, tier};

struct Args {
    pods: usize,
    namespaces: usize,
    token_volume: bool,
    /// Build with `apply` per Pod (the watch path) instead of the initial list and `reset`: no
    /// intermediate copy, so the RSS growth is close to what the index itself holds.
    apply: bool,
    /// Every Pod its own container name: no two projections equal (bare Pods, the worst case).
    distinct: bool,
    /// Decode through kube's `DeserializeGuard` (a `serde_value` tree, cloned) instead of the
    /// operator's `Readable`, to compare the two.
    kube_guard: bool,
}

fn args() -> Args {
    let mut out = Args {
        pods: 50_000,
        namespaces: 2_000,
        token_volume: true,
        apply: false,
        distinct: false,
        kube_guard: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = || -> usize {
            it.next()
                .and_then(|n| n.parse().ok())
                .expect("a number after --pods / --namespaces")
        };
        match a.as_str() {
            "--pods" => out.pods = number(),
            "--namespaces" => out.namespaces = number(),
            "--no-token-volume" => out.token_volume = false,
            "--apply" => out.apply = true,
            "--distinct" => out.distinct = true,
            "--kube-guard" => out.kube_guard = true,
            // `cargo bench` passes `--bench`; anything else is ignored too.
            _ => {}
        }
    }
    out
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A deterministic xorshift, for the random parts of names (no rand dependency here).
struct Rng(u64);

impl Rng {
    fn suffix(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ALPHABET[(self.0 % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }
}

/// A Pod as a list or watch returns it: scale.py's `pod_object` plus what the API server adds.
fn pod_json(ns: &str, name: &str, kind: char, args: &Args, rng: &mut Rng) -> String {
    let container_name = if args.distinct {
        format!("app-{}", rng.suffix(10))
    } else {
        "app".to_owned()
    };
    let mut container = json!({
        "name": container_name,
        "image": "registry.example/app:1.2.3",
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "MODE", "value": "bench"}, {"name": "LOG_LEVEL", "value": "info"}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    });
    let mut spec = json!({
        "containers": [],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority",
    });
    secure(kind, &mut spec, &mut container);
    if args.token_volume {
        let volume = format!("kube-api-access-{}", rng.suffix(5));
        container["volumeMounts"] = json!([{
            "name": volume, "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
        }]);
        spec["volumes"] = json!([{"name": volume, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}]);
    } else {
        spec["automountServiceAccountToken"] = json!(false);
    }
    spec["containers"] = json!([container]);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns,
            "uid": format!("{}-{}", rng.suffix(8), rng.suffix(12)),
            "resourceVersion": "123456", "creationTimestamp": "2026-11-26T10:00:00Z",
            "labels": {"app": "bench", "bench/kind": kind.to_string()},
            "managedFields": [{"manager": "python", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-26T10:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {}}}]
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    })
    .to_string()
}

/// What the operator's planner gives each tier (scale.py's profiles; `strict` is pending, so it
/// keeps privileged enforcement and reports restricted).
fn tier_policy(tier: &str) -> Policy {
    let lv = |s: &str| s.parse::<LevelVersion>().expect("level:version");
    let (enforce, audit, warn) = match tier {
        "web" => ("baseline:latest", "restricted:latest", "restricted:latest"),
        "batch" => ("privileged:latest", "baseline:latest", "restricted:latest"),
        "strict" => (
            "privileged:latest",
            "restricted:latest",
            "restricted:latest",
        ),
        _ => return Policy::DEFAULT,
    };
    Policy {
        enforce: lv(enforce),
        audit: lv(audit),
        warn: lv(warn),
    }
}

/// The Pods of the list, in list order, deserialized as the watch does (through `Readable`, or
/// kube's `DeserializeGuard` with `--kube-guard`).
fn listed_pods(args: &Args, rng: &mut Rng) -> impl Iterator<Item = WatchedPod> {
    (0..args.pods).map(move |j| {
        let (i, k) = (j % args.namespaces, j / args.namespaces);
        let json = pod_json(
            &format!("bench-{i:04}"),
            &format!("pod-{k:05}"),
            pod_kind(i, k),
            args,
            rng,
        );
        if args.kube_guard {
            let guard: DeserializeGuard<WatchedPod> =
                serde_json::from_str(&json).expect("pod json");
            guard.0.expect("a readable pod")
        } else {
            let pod: Readable<WatchedPod> = serde_json::from_str(&json).expect("pod json");
            pod.0.expect("a readable pod")
        }
    })
}

/// The initial list as `feed_pods` handles it: projections collected, then one `reset`.
/// Returns the index and (list ms, reset ms).
fn feed(args: &Args, rng: &mut Rng) -> (PodIndex<SlimPod>, u128, u128) {
    let started = Instant::now();
    let mut index = PodIndex::default();
    if args.apply {
        for pod in listed_pods(args, rng) {
            if pod.is_running()
                && let Some((ns, name, slim)) = pod.into_slim()
            {
                index.apply(&ns, &name, slim);
            }
        }
        return (index, started.elapsed().as_millis(), 0);
    }
    // Container names apart, shapes interned, as the Pod watch does.
    let mut initial = Vec::new();
    let mut interner = Interner::default();
    let mut names_interner = Interner::default();
    for pod in listed_pods(args, rng) {
        if pod.is_running()
            && let Some((ns, name, mut slim)) = pod.into_slim()
        {
            let names = slim.take_names();
            initial.push(Listed {
                ns: ns.into(),
                name: name.into_boxed_str(),
                pod: interner.intern(slim),
                names: names_interner.intern(names),
                owner: None,
            });
        }
    }
    drop((interner, names_interner));
    let listed = started.elapsed().as_millis();
    let started = Instant::now();
    index.reset_apart(initial);
    (index, listed, started.elapsed().as_millis())
}

fn main() {
    let args = args();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let rss0 = status_kb("VmRSS");
    // Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let (mut index, list_ms, reset_ms) = feed(&args, &mut rng);
    let rss_built = status_kb("VmRSS");
    let hwm_built = status_kb("VmHWM");

    let started = Instant::now();
    for i in 0..args.namespaces {
        index.set_policy(&format!("bench-{i:04}"), tier_policy(tier(i)));
    }
    let policy_ms = started.elapsed().as_millis();
    let rss_policy = status_kb("VmRSS");

    // What statuses and metrics read, as a check that before and after report the same.
    let mut violating = [0usize; 3];
    let mut by_check = 0usize;
    let mut privileged = 0usize;
    let namespaces: Vec<String> = index.namespaces().map(str::to_owned).collect();
    for ns in &namespaces {
        privileged += index.privileged_containers(ns);
        for (slot, mode) in Mode::ALL.into_iter().enumerate() {
            for v in index.violators(ns, mode) {
                violating[slot] += 1;
                by_check += v.checks.len();
            }
        }
    }

    println!(
        "index_memory: {} pods over {} namespaces, token volume: {}, distinct projections: {}, built by {}",
        args.pods,
        args.namespaces,
        args.token_volume,
        args.distinct,
        if args.apply { "apply" } else { "list + reset" }
    );
    println!(
        "  list + project: {list_ms} ms, reset: {reset_ms} ms, set_policy (all namespaces): {policy_ms} ms"
    );
    println!(
        "  VmRSS growth: {:.1} MB after reset, {:.1} MB after set_policy; peak during the list: {}",
        mb(rss_built - rss0),
        mb(rss_policy - rss0),
        if peak_reset {
            format!("{:.1} MB above the start", mb(hwm_built - rss0))
        } else {
            format!(
                "{:.1} MB (absolute; clear_refs not writable)",
                mb(hwm_built)
            )
        }
    );
    println!(
        "  reported: violating pods enforce/audit/warn {violating:?}, failing checks {by_check}, privileged containers {privileged}"
    );
    println!(
        "  distinct projections shared by the Pods: {}; bytes per Pod held by the index: {:.0}",
        index.shared_projections(),
        (rss_policy - rss0) as f64 * 1024.0 / args.pods.max(1) as f64
    );
    drop(index);
}
