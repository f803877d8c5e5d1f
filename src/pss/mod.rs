//! The Pod Security Standards evaluator: a pure function of (pod metadata + spec, level,
//! version), byte-identical to kube-apiserver's PodSecurity admission (upstream
//! `k8s.io/pod-security-admission` at Kubernetes 1.37). No I/O here.
//!
//! ```
//! use pss_operator::pss::{self, Level, LevelVersion, Version, model::Pod};
//! let pod: Pod = serde_json::from_str(
//!     r#"{"spec":{"containers":[{"name":"nginx","securityContext":{"privileged":true}}]}}"#,
//! ).unwrap();
//! let eval = pss::evaluate(&pod.metadata, &pod.spec, LevelVersion::new(Level::Baseline, Version::Latest));
//! assert_eq!(
//!     eval.denial_message(),
//!     r#"violates PodSecurity "baseline:latest": privileged (container "nginx" must not set securityContext.privileged=true)"#
//! );
//! ```

pub mod checks;
pub mod format;
pub mod level;
pub mod model;

pub use checks::{
    CheckId, CheckSet, Violation, annotation_is_checked, checks_for, volume_is_checked,
};
pub use level::{
    LabelError, Level, LevelVersion, Mode, NEWEST_KNOWN_MINOR, ParseError, Policy, Version,
    policy_from_labels,
};

use model::{PodMeta, PodSpec};

/// The outcome of evaluating one pod at one level and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub level_version: LevelVersion,
    /// Failed checks in upstream order; empty when the pod is allowed.
    pub violations: Vec<Violation>,
}

impl Evaluation {
    pub fn allowed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Upstream's `ForbiddenDetail`: `reason (detail), reason (detail), ...`.
    pub fn forbidden_detail(&self) -> String {
        let mut out = String::new();
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(v.reason);
            if !v.detail.is_empty() {
                out.push_str(" (");
                out.push_str(&v.detail);
                out.push(')');
            }
        }
        out
    }

    /// The API server's denial: `violates PodSecurity "restricted:latest": ...`; empty if allowed.
    pub fn denial_message(&self) -> String {
        if self.allowed() {
            return String::new();
        }
        format!(
            "violates PodSecurity \"{}\": {}",
            self.level_version,
            self.forbidden_detail()
        )
    }

    /// The API server's warning and audit text: `would violate PodSecurity ...`; empty if allowed.
    pub fn warning_message(&self) -> String {
        if self.allowed() {
            return String::new();
        }
        warning_text(&self.denial_message())
    }

    /// The ids of the failed checks, in order.
    pub fn failed_checks(&self) -> impl Iterator<Item = CheckId> + '_ {
        self.violations.iter().map(|v| v.check)
    }

    /// The ids of the failed checks as a set (iterating in the same order).
    pub fn failed_check_set(&self) -> CheckSet {
        self.failed_checks().collect()
    }
}

/// The API server's warning and audit text for a denial message: `violates PodSecurity ...`
/// becomes `would violate PodSecurity ...`.
pub fn warning_text(denial: &str) -> String {
    format!("would {}", denial.replacen("violates", "violate", 1))
}

/// Evaluates a pod against a level at a version. `spec` should carry the API server's
/// defaulting (see [`model::Pod::apply_api_server_defaults`]), as stored Pods do.
pub fn evaluate(meta: &PodMeta, spec: &PodSpec, level_version: LevelVersion) -> Evaluation {
    let minor = level_version.version.effective_minor();
    let violations = checks::run_checks(checks_for(level_version.level, minor), meta, spec, minor);
    Evaluation {
        level_version,
        violations,
    }
}
