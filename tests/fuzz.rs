//! Bounded fuzzing of the evaluator and the manifest reader (`make fuzz`): many more inputs than
//! `tests/properties.rs`, structured (the 4,537 upstream fixtures, mutated) and unstructured (random
//! JSON trees, random and bit-flipped bytes), plus hostile sizes: thousands of containers, megabyte
//! strings, nesting far deeper than any parser's recursion limit. No input may panic, overflow the
//! stack or make memory grow without bound (peak RSS, `VmHWM`, is reported and bounded).
//!
//! The ledger annotation's parser (`pss-operator.io/applied`, read from every governed namespace)
//! gets random trees, mutated valid records and mangled bytes.
//!
//! `PSS_FUZZ_CASES` (default 2,000) is the number of inputs per generator; `make fuzz` raises it.
//! Inputs tried and time taken are printed (`--nocapture`).

use std::time::Instant;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::{Map, Value};

use pss_operator::manifest::{self, Item};
use pss_operator::operator::record::{Announced, Digest, MAX_LEN, Record};
use pss_operator::pss::{self, Level, LevelVersion, Version, model::Pod};

/// The two tests run one after the other: the peak RSS they check is the whole process's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cases() -> usize {
    std::env::var("PSS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Peak resident set size of this process so far, in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

const LEVELS: [(Level, Version); 7] = [
    (Level::Baseline, Version::V1(0)),
    (Level::Baseline, Version::V1(25)),
    (Level::Baseline, Version::Latest),
    (Level::Restricted, Version::V1(0)),
    (Level::Restricted, Version::V1(22)),
    (Level::Restricted, Version::Latest),
    (Level::Privileged, Version::Latest),
];

/// Evaluates at every level; checks the invariants that hold for any input.
fn evaluate_all(pod: &mut Pod) {
    pod.apply_api_server_defaults();
    let mut allowed = Vec::new();
    let mut failed = Vec::new();
    for (level, version) in LEVELS {
        let eval = pss::evaluate(&pod.metadata, &pod.spec, LevelVersion::new(level, version));
        let message = eval.denial_message();
        assert_eq!(eval.allowed(), message.is_empty());
        assert!(!message.contains("unknown forbidden reason"), "{message}");
        allowed.push(eval.allowed());
        failed.push(eval.failed_check_set().ids().collect::<Vec<_>>());
    }
    assert!(allowed[6], "privileged allows everything");
    // restricted ⊂ baseline at the same version, with upstream's one exception: from v1.25 the
    // restricted seccomp check replaces the baseline one and waives Windows Pods, so a Windows
    // Pod with a seccomp type baseline refuses (e.g. "") passes restricted:latest.
    let windows = pod.spec.os.as_ref().is_some_and(|os| os.name == "windows");
    for (b, r) in [(0, 3), (2, 5)] {
        let waived = windows && b == 2 && failed[b] == ["seccompProfile_baseline"];
        assert!(
            !allowed[r] || allowed[b] || waived,
            "passes restricted but not baseline: {:?}",
            failed[b]
        );
    }
}

fn read_all(source: &str, bytes: &[u8]) -> usize {
    let items = manifest::read_source(source, bytes);
    for item in &items {
        if let Item::Workload(w) = item {
            let _ = pss::evaluate(
                &w.pod.metadata,
                &w.pod.spec,
                LevelVersion::new(Level::Restricted, Version::Latest),
            );
        }
    }
    items.len()
}

const KEYS: &[&str] = &[
    "metadata",
    "annotations",
    "name",
    "namespace",
    "spec",
    "template",
    "containers",
    "initContainers",
    "ephemeralContainers",
    "securityContext",
    "privileged",
    "allowPrivilegeEscalation",
    "capabilities",
    "add",
    "drop",
    "procMount",
    "runAsNonRoot",
    "runAsUser",
    "seLinuxOptions",
    "type",
    "user",
    "role",
    "level",
    "seccompProfile",
    "localhostProfile",
    "appArmorProfile",
    "windowsOptions",
    "hostProcess",
    "sysctls",
    "value",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "hostUsers",
    "os",
    "volumes",
    "hostPath",
    "path",
    "nfs",
    "emptyDir",
    "ports",
    "hostPort",
    "containerPort",
    "kind",
    "apiVersion",
    "items",
    "jobTemplate",
];

const STRINGS: &[&str] = &[
    "",
    "ALL",
    "all",
    "NET_BIND_SERVICE",
    "SYS_ADMIN",
    "Unmasked",
    "Default",
    "RuntimeDefault",
    "Unconfined",
    "Localhost",
    "windows",
    "linux",
    "unconfined",
    "runtime/default",
    "localhost/x",
    "container_t",
    "spc_t",
    "Pod",
    "Deployment",
    "CronJob",
    "List",
    "v1",
    "apps/v1",
    "kernel.msgmax",
    "net.ipv4.ping_group_range",
    "c\"1",
    "\u{0}\n",
    "ℌ𝔢𝔩𝔩𝔬",
    "---",
    "{{",
    "&a *a",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(65536), any::<i64>()].prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(STRINGS).prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
    ]
}

/// Random JSON trees with the evaluator's field names, deeper and wider than the property tests.
fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(10, 512, 10, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// The upstream conformance fixtures (YAML), as bytes and as JSON.
fn fixtures() -> Vec<(Vec<u8>, Value)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pss");
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let Ok(entry) = entry else { continue };
        if entry.path().extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        if let Ok(value) = serde_yaml_ng::from_slice::<Value>(&bytes) {
            out.push((bytes, value));
        }
    }
    out
}

/// Every path (object key or array index) in a value, up to `limit`.
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(PathStep::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            PathStep::Key(k) => cur.get_mut(k.as_str())?,
            PathStep::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// One structural mutation of a fixture: a node replaced by a random tree, deleted, duplicated
/// into an array, or a key renamed to one the evaluator reads.
fn mutate(
    value: &mut Value,
    rng: &mut TestRng,
    runner: &mut TestRunner,
    trees: &impl Strategy<Value = Value>,
) {
    let mut all = Vec::new();
    paths(value, &mut Vec::new(), &mut all);
    let path = all[rng.random_range(0..all.len())].clone();
    let replacement = trees
        .new_tree(runner)
        .map(|t| t.current())
        .unwrap_or(Value::Null);
    let Some(node) = at(value, &path) else { return };
    match rng.random_range(0..5) {
        0 => *node = replacement,
        1 => *node = Value::Null,
        2 => *node = Value::Array(vec![node.clone(), replacement]),
        3 => {
            if let Value::Object(m) = node {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                m.insert(key.to_owned(), replacement);
            } else {
                *node = replacement;
            }
        }
        _ => {
            if let Value::Array(a) = node {
                let copy = a.clone();
                a.extend(copy);
            } else {
                *node = Value::String(STRINGS[rng.random_range(0..STRINGS.len())].to_owned());
            }
        }
    }
}

#[test]
fn fuzz_evaluator_and_manifest_reader() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = cases();
    let hwm_start = vm_hwm_kib();
    let started = Instant::now();
    let mut runner = TestRunner::new(Config::default());
    let trees = tree();
    let mut tried = 0usize;
    let mut pods = 0usize;

    // 1. Random trees: as a Pod, and through the reader as JSON and YAML.
    for _ in 0..n {
        let value = trees.new_tree(&mut runner).expect("tree").current();
        if let Ok(mut pod) = serde_json::from_value::<Pod>(value.clone()) {
            evaluate_all(&mut pod);
            pods += 1;
        }
        let json = serde_json::to_vec(&value).expect("serializable");
        let yaml = serde_yaml_ng::to_string(&value).expect("serializable");
        read_all("tree.json", &json);
        read_all("tree.yaml", yaml.as_bytes());
        tried += 3;
    }
    let t_trees = started.elapsed();

    // 2. The upstream fixtures, structurally mutated (1 to 4 mutations each), as Pods and as
    // manifests (the fixtures are Pods; wrapped in a Deployment too).
    let fixtures = fixtures();
    assert!(fixtures.len() > 4000, "fixtures found: {}", fixtures.len());
    let mut rng = runner.new_rng();
    for i in 0..n {
        let (_, original) = &fixtures[i % fixtures.len()];
        let mut value = original.clone();
        for _ in 0..rng.random_range(1..5) {
            mutate(&mut value, &mut rng, &mut runner, &trees);
        }
        if let Ok(mut pod) = serde_json::from_value::<Pod>(value.clone()) {
            evaluate_all(&mut pod);
            pods += 1;
        }
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"metadata": value.get("metadata").cloned().unwrap_or(Value::Null),
                                  "spec": value.get("spec").cloned().unwrap_or(Value::Null)}},
        });
        read_all(
            "mutated.yaml",
            serde_yaml_ng::to_string(&value).expect("yaml").as_bytes(),
        );
        read_all(
            "deployment.json",
            &serde_json::to_vec(&deployment).expect("json"),
        );
        tried += 3;
    }
    let t_mutated = started.elapsed() - t_trees;

    // 3. Bytes: random, and fixtures with bytes flipped, inserted or cut.
    let bytes = prop::collection::vec(any::<u8>(), 0..4096);
    for i in 0..n {
        let random = bytes.new_tree(&mut runner).expect("bytes").current();
        read_all("random", &random);
        let (original, _) = &fixtures[(i * 7) % fixtures.len()];
        let mut b = original.clone();
        for _ in 0..rng.random_range(1..9) {
            if b.is_empty() {
                break;
            }
            let at = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[at] ^= 1 << rng.random_range(0..8),
                1 => b.insert(
                    at,
                    [b'{', b'[', b'&', b'*', b':', b'-', b'\n', b'"'][rng.random_range(0..8)],
                ),
                _ => b.truncate(at),
            }
        }
        read_all("flipped", &b);
        tried += 2;
    }
    let t_bytes = started.elapsed() - t_trees - t_mutated;
    let hwm_end = vm_hwm_kib();
    eprintln!(
        "fuzz: {tried} inputs ({n} per generator; {pods} read as Pods and evaluated at 7 level/versions) in {:.1}s: random trees {:.1}s, mutated fixtures {:.1}s, bytes {:.1}s; peak RSS {} MiB -> {} MiB",
        started.elapsed().as_secs_f64(),
        t_trees.as_secs_f64(),
        t_mutated.as_secs_f64(),
        t_bytes.as_secs_f64(),
        hwm_start / 1024,
        hwm_end / 1024
    );
    // Bounded memory: inputs are at most a few KiB; the peak may not grow with the number of
    // inputs (a leak or a blow-up would). 256 MiB is far above what one input can need.
    assert!(
        hwm_end.saturating_sub(hwm_start) < 256 * 1024,
        "peak RSS grew by {} MiB",
        (hwm_end - hwm_start) / 1024
    );
}

#[test]
fn hostile_sizes_and_nesting() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let hwm_start = vm_hwm_kib();
    let mb = "x".repeat(1 << 20);

    // 10,000 containers (init and ephemeral too), megabyte strings in names, annotations,
    // capabilities, sysctls and seccomp/AppArmor profiles.
    let containers: Vec<Value> = (0..5_000)
        .map(|i| {
            let long = if i == 2_500 || i == 4_999 { mb.clone() } else { format!("c{i}") };
            serde_json::json!({
                "name": long, "image": "busybox",
                "securityContext": {
                    "privileged": i % 3 == 0, "capabilities": {"add": [long.clone()], "drop": ["ALL"]},
                    "seccompProfile": {"type": "Localhost", "localhostProfile": long.clone()},
                    "appArmorProfile": {"type": if i % 5 == 0 { "Unconfined" } else { "RuntimeDefault" }},
                    "procMount": if i % 7 == 0 { "Unmasked" } else { "Default" },
                },
                "ports": [{"containerPort": 80, "hostPort": i % 65536}],
            })
        })
        .collect();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": mb, "annotations": {format!("container.apparmor.security.beta.kubernetes.io/{mb}"): mb, "a": mb}},
        "spec": {
            "containers": containers, "initContainers": containers[..1000], "ephemeralContainers": containers[1000..2000],
            "securityContext": {"sysctls": (0..2000).map(|i| serde_json::json!({"name": format!("kernel.x{i}{}", if i == 0 { &mb } else { "" }), "value": "1"})).collect::<Vec<_>>()},
            "volumes": (0..2000).map(|i| serde_json::json!({"name": format!("v{i}"), "hostPath": {"path": "/"}})).collect::<Vec<_>>(),
        },
    });
    let mut parsed: Pod = serde_json::from_value(pod.clone()).expect("a huge pod is still a pod");
    evaluate_all(&mut parsed);
    let eval = pss::evaluate(
        &parsed.metadata,
        &parsed.spec,
        LevelVersion::new(Level::Baseline, Version::Latest),
    );
    let message = eval.denial_message();
    // The denial message is bounded by design? Report its size; it must at least not be absurd.
    eprintln!(
        "hostile: 7,000 containers, 2,000 sysctls, 2,000 hostPath volumes, 1 MiB strings: denial message {} bytes",
        message.len()
    );
    let json = serde_json::to_vec(&pod).expect("json");
    let yaml = serde_yaml_ng::to_string(&pod).expect("yaml");
    eprintln!(
        "hostile: as JSON {} MiB, as YAML {} MiB",
        json.len() >> 20,
        yaml.len() >> 20
    );
    assert_eq!(read_all("huge.json", &json), 1);
    assert_eq!(read_all("huge.yaml", yaml.as_bytes()), 1);

    // Nesting far beyond any recursion limit: an error, never a stack overflow.
    for depth in [1_000usize, 100_000, 1_000_000] {
        let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        read_all("deep.json", json.as_bytes());
        let flow = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        read_all("deep-flow.yaml", flow.as_bytes());
        let mut block = String::from("spec:\n");
        for i in 0..depth.min(2_000) {
            block.push_str(&" ".repeat(i + 1));
            block.push_str("- \n");
        }
        read_all("deep-block.yaml", block.as_bytes());
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        read_all("deep-object.json", objects.as_bytes());
        let pod = format!(
            "{{\"kind\":\"Pod\",\"spec\":{{\"containers\":[{{\"name\":\"c\",\"securityContext\":{}1{}}}]}}}}",
            "{\"x\":".repeat(depth),
            "}".repeat(depth)
        );
        read_all("deep-pod.json", pod.as_bytes());
    }
    // YAML aliases that expand exponentially ("billion laughs").
    let mut laughs = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..40 {
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    laughs.push_str("kind: Pod\nspec: {containers: [{name: c, securityContext: *a39}]}\n");
    read_all("laughs.yaml", laughs.as_bytes());
    // A document stream of 100,000 tiny documents.
    let stream = "---\nkind: ConfigMap\n".repeat(100_000);
    assert_eq!(read_all("stream.yaml", stream.as_bytes()), 100_000);

    let hwm_end = vm_hwm_kib();
    eprintln!(
        "hostile: done in {:.1}s; peak RSS {} MiB -> {} MiB",
        started.elapsed().as_secs_f64(),
        hwm_start / 1024,
        hwm_end / 1024
    );
    // The inputs above are ~100 MiB of text at most; 2 GiB of peak growth would mean an
    // expansion (aliases) or a copy per level of nesting.
    assert!(
        hwm_end.saturating_sub(hwm_start) < 2 * 1024 * 1024,
        "peak RSS grew by {} MiB",
        (hwm_end - hwm_start) / 1024
    );
}

/// A valid ledger record drawn from `rng`: some of the six labels, values that are or look like
/// levels and versions, priors present or absent, digests or none.
fn ledger_record(rng: &mut TestRng) -> Record {
    const SUFFIXES: [&str; 6] = [
        "enforce",
        "enforce-version",
        "audit",
        "audit-version",
        "warn",
        "warn-version",
    ];
    const VALUES: [&str; 8] = [
        "baseline",
        "restricted",
        "privileged",
        "latest",
        "v1.30",
        "v1.0",
        "",
        "x.y_z-1",
    ];
    let mut labels = std::collections::BTreeMap::new();
    let mut prior = std::collections::BTreeMap::new();
    for s in SUFFIXES {
        if rng.random_range(0..2) == 0 {
            let key = format!("pod-security.kubernetes.io/{s}");
            labels.insert(
                key.clone(),
                VALUES[rng.random_range(0..VALUES.len())].to_owned(),
            );
            match rng.random_range(0..3) {
                0 => {}
                1 => {
                    prior.insert(key, None);
                }
                _ => {
                    prior.insert(
                        key,
                        Some(VALUES[rng.random_range(0..VALUES.len())].to_owned()),
                    );
                }
            }
        }
    }
    let declared = match rng.random_range(0..3) {
        0 => None,
        1 => Some(labels.clone()),
        _ => Some(
            labels
                .keys()
                .map(|k| (k.clone(), "restricted".to_owned()))
                .collect(),
        ),
    };
    let digest = |rng: &mut TestRng| (rng.random_range(0..2) == 0).then(|| Digest(rng.random()));
    Record {
        profile: format!("p-{}", rng.random_range(0..1_000_000u32)),
        generation: (rng.random_range(0..2) == 0).then(|| rng.random_range(0..i64::MAX)),
        labels: labels.into(),
        declared: declared.map(Into::into),
        prior: prior.into(),
        announced: Announced {
            pending: digest(rng),
            conflict: digest(rng),
            blocked: digest(rng),
        },
    }
}

/// Whatever an annotation holds, decoding it is an answer, never a panic; whatever it accepts
/// encodes back to itself, within the size it accepts.
fn decode_checked(text: &str) -> bool {
    match Record::decode(text) {
        Ok(r) => {
            let again = r.encode();
            assert!(again.len() <= MAX_LEN, "{} bytes", again.len());
            assert_eq!(Record::decode(&again), Ok(r), "{text}");
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

#[test]
fn fuzz_ledger_annotation_parser() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = cases();
    let started = Instant::now();
    let mut runner = TestRunner::new(Config::default());
    let mut rng = runner.new_rng();
    let trees = tree();
    let (mut tried, mut accepted) = (0usize, 0usize);
    for _ in 0..n {
        // Random JSON trees, alone and put in place of any part of a valid record.
        let value = trees.new_tree(&mut runner).expect("tree").current();
        accepted += usize::from(decode_checked(&value.to_string()));
        let valid = ledger_record(&mut rng);
        let text = valid.encode();
        assert_eq!(Record::decode(&text), Ok(valid.clone()));
        let mut json: Value = serde_json::from_str(&text).expect("json");
        for _ in 0..rng.random_range(1..4) {
            mutate(&mut json, &mut rng, &mut runner, &trees);
        }
        accepted += usize::from(decode_checked(&json.to_string()));
        // The encoding with bytes flipped, inserted or cut.
        let mut b = text.into_bytes();
        for _ in 0..rng.random_range(1..6) {
            if b.is_empty() {
                break;
            }
            let at = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[at] ^= 1 << rng.random_range(0..8),
                1 => b.insert(
                    at,
                    [b'{', b'"', b':', b',', b'}', b'\\'][rng.random_range(0..6)],
                ),
                _ => b.truncate(at),
            }
        }
        accepted += usize::from(decode_checked(&String::from_utf8_lossy(&b)));
        tried += 4;
    }
    // Hostile sizes: far over the limit, and nested deeper than any recursion limit.
    assert!(Record::decode(&"x".repeat(1 << 20)).is_err());
    assert!(Record::decode(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))).is_err());
    eprintln!(
        "fuzz: {tried} ledger annotations ({n} per generator) in {:.1}s, {accepted} of the mangled ones still valid records",
        started.elapsed().as_secs_f64()
    );
}
