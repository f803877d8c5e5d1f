//! Property tests: arbitrary JSON shaped like pods (and arbitrary bytes) never make the evaluator
//! or the manifest reader panic, and verdicts stay consistent across levels.

use proptest::prelude::*;
use serde_json::{Map, Value};

use pss_operator::manifest::{self, Item};
use pss_operator::pss::{self, Level, LevelVersion, Version, model::Pod};

/// Field names evaluation reads, so generated objects hit the interesting paths often.
const KEYS: &[&str] = &[
    "metadata",
    "annotations",
    "name",
    "namespace",
    "spec",
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
    "seccompProfile",
    "appArmorProfile",
    "windowsOptions",
    "hostProcess",
    "sysctls",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "hostUsers",
    "os",
    "volumes",
    "hostPath",
    "nfs",
    "emptyDir",
    "ports",
    "hostPort",
    "containerPort",
    "livenessProbe",
    "httpGet",
    "host",
    "tcpSocket",
    "lifecycle",
    "preStop",
    "kind",
    "apiVersion",
    "template",
    "items",
];

const STRINGS: &[&str] = &[
    "",
    "ALL",
    "NET_BIND_SERVICE",
    "SYS_ADMIN",
    "Unmasked",
    "Default",
    "RuntimeDefault",
    "Unconfined",
    "Localhost",
    "windows",
    "unconfined",
    "localhost/x",
    "container_t",
    "Pod",
    "Deployment",
    "List",
    "kernel.msgmax",
    "c\"1",
    "\u{0}\n",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(1), Just(-1), any::<i64>()].prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|pairs| {
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

fn levels() -> Vec<LevelVersion> {
    let mut out = Vec::new();
    for level in Level::ALL {
        for version in [
            Version::V1(0),
            Version::V1(18),
            Version::V1(25),
            Version::V1(35),
            Version::Latest,
            Version::V1(99),
        ] {
            out.push(LevelVersion::new(level, version));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn evaluator_never_panics_and_is_consistent(value in json()) {
        if let Ok(mut pod) = serde_json::from_value::<Pod>(value) {
            pod.apply_api_server_defaults();
            for lv in levels() {
                let eval = pss::evaluate(&pod.metadata, &pod.spec, lv);
                let message = eval.denial_message();
                prop_assert_eq!(eval.allowed(), message.is_empty());
                prop_assert!(!message.contains("unknown forbidden reason"));
                if lv.level == Level::Privileged {
                    prop_assert!(eval.allowed());
                }
            }
            // restricted is a superset of baseline: passing restricted implies passing baseline.
            for version in [Version::V1(0), Version::V1(22), Version::Latest] {
                let at = |level| pss::evaluate(&pod.metadata, &pod.spec, LevelVersion::new(level, version)).allowed();
                prop_assert!(!at(Level::Restricted) || at(Level::Baseline));
            }
        }
    }

    #[test]
    fn manifest_reader_never_panics_on_json_or_yaml(value in json()) {
        let as_json = serde_json::to_vec(&value).expect("serializable");
        let as_yaml = serde_yaml_ng::to_string(&value).expect("serializable");
        for bytes in [as_json.as_slice(), as_yaml.as_bytes()] {
            for item in manifest::read_source("prop", bytes) {
                if let Item::Workload(w) = item {
                    let _ = pss::evaluate(&w.pod.metadata, &w.pod.spec, LevelVersion::new(Level::Restricted, Version::Latest));
                }
            }
        }
    }

    #[test]
    fn manifest_reader_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = manifest::read_source("bytes", &bytes);
    }
}

#[test]
fn huge_specs_evaluate_without_trouble() {
    // Thousands of containers and megabyte strings: bounded work, no panic.
    let big = "x".repeat(1 << 20);
    let containers: Vec<Value> = (0..5000)
        .map(|i| {
            let cap = if i < 3 { big.clone() } else { format!("CAP_{i}") };
            serde_json::json!({"name": format!("c{i}"), "securityContext": {"privileged": i % 2 == 0, "capabilities": {"add": [cap]}}, "ports": [{"hostPort": i}]})
        })
        .collect();
    let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": containers}}))
        .expect("pod");
    let eval = pss::evaluate(
        &pod.metadata,
        &pod.spec,
        LevelVersion::new(Level::Baseline, Version::Latest),
    );
    assert_eq!(
        eval.failed_checks().map(|c| c.as_str()).collect::<Vec<_>>(),
        ["capabilities_baseline", "hostPorts", "privileged"]
    );
    assert!(eval.denial_message().contains(r#"containers "c0", "c2""#));
}
