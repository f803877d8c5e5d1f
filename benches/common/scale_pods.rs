//! The Pods of e2e/bench/scale.py, for benches that rebuild its cluster in memory.

use serde_json::{Value, json};

/// scale.py's `tier`: web 50 %, batch 30 %, strict 10 %, none 10 %.
pub fn tier(i: usize) -> &'static str {
    match i % 10 {
        0..=4 => "web",
        5..=7 => "batch",
        8 => "strict",
        _ => "none",
    }
}

/// scale.py's `pod_kind`: c restricted-compliant, b baseline-only, p privileged.
pub fn pod_kind(ns: usize, k: usize) -> char {
    match k % 4 {
        0 => 'c',
        3 if matches!(tier(ns), "batch" | "none") => 'p',
        _ => 'b',
    }
}

/// The security settings scale.py's `pod_object` gives a Pod of `kind`.
pub fn secure(kind: char, spec: &mut Value, container: &mut Value) {
    match kind {
        'c' => {
            spec["securityContext"] =
                json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
            container["securityContext"] =
                json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        }
        'p' => container["securityContext"] = json!({"privileged": true}),
        _ => {}
    }
}
