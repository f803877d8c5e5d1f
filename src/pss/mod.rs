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

pub mod admission;
pub mod checks;
pub mod format;
pub mod level;
pub mod model;

pub use admission::{Admission, AdmissionConfig, Exemptions};
pub use checks::{
    CheckId, CheckSet, Violation, annotation_is_checked, check_set_for, checks_for,
    volume_is_checked,
};
pub use level::{
    KubeVersion, LabelError, Level, LevelVersion, Mode, NEWEST_KNOWN_MINOR, ParseError, Policy,
    Version, policy_from_labels,
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
        let mut out = String::with_capacity(self.forbidden_detail_len());
        self.write_forbidden_detail(&mut out);
        out
    }

    fn forbidden_detail_len(&self) -> usize {
        self.violations
            .iter()
            .map(|v| v.reason.len() + v.detail.len() + 5)
            .sum()
    }

    fn write_forbidden_detail(&self, out: &mut String) {
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
    }

    /// `<verb> PodSecurity "restricted:latest": <forbidden detail>`, in one allocation.
    fn message(&self, verb: &str) -> String {
        if self.allowed() {
            return String::new();
        }
        const NOUN: &str = " PodSecurity \"";
        let mut out =
            String::with_capacity(verb.len() + NOUN.len() + 24 + 3 + self.forbidden_detail_len());
        out.push_str(verb);
        out.push_str(NOUN);
        self.level_version.write_to(&mut out);
        out.push_str("\": ");
        self.write_forbidden_detail(&mut out);
        out
    }

    /// The API server's denial: `violates PodSecurity "restricted:latest": ...`; empty if allowed.
    pub fn denial_message(&self) -> String {
        self.message("violates")
    }

    /// The API server's warning and audit text: `would violate PodSecurity ...`; empty if allowed.
    pub fn warning_message(&self) -> String {
        self.message("would violate")
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

/// Whether a namespace whose label says `a` refuses every Pod (that the API server accepts) that
/// one whose label says `b` refuses, on a server of version `kube`. The order the planner uses for
/// the `allowStricter` floor, the most restrictive of tied profiles and `WhenCompliant`: levels
/// alone are not enough (`restricted:v1.30` admits host probes that `baseline:latest` refuses),
/// nor are versions (newer versions also relax: sysctls, user namespaces, Windows Pods).
pub fn at_least_as_strict(a: LevelVersion, b: LevelVersion, kube: KubeVersion) -> bool {
    checks::refuses_at_least(
        a.level,
        a.version.effective_minor(kube),
        b.level,
        b.version.effective_minor(kube),
    )
}

/// Evaluates a pod against a level at a version, as a server of the newest version this build
/// knows does (see [`evaluate_on`]). `spec` should carry the API server's defaulting (see
/// [`model::Pod::apply_api_server_defaults`]), as stored Pods do.
pub fn evaluate(meta: &PodMeta, spec: &PodSpec, level_version: LevelVersion) -> Evaluation {
    evaluate_on(KubeVersion::NEWEST_KNOWN, meta, spec, level_version)
}

/// Evaluates a pod as a kube-apiserver of version `kube` does: `latest`, and versions newer than
/// the server, select the server's own checks; the message keeps the version as written.
pub fn evaluate_on(
    kube: KubeVersion,
    meta: &PodMeta,
    spec: &PodSpec,
    level_version: LevelVersion,
) -> Evaluation {
    let minor = level_version.version.effective_minor(kube);
    let violations =
        checks::run_checks(check_set_for(level_version.level, minor), meta, spec, minor);
    Evaluation {
        level_version,
        violations,
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;

    fn every_level_version() -> Vec<LevelVersion> {
        Level::ALL
            .into_iter()
            .flat_map(|level| {
                (0..=NEWEST_KNOWN_MINOR + 1)
                    .map(Version::V1)
                    .chain([Version::Latest])
                    .map(move |v| LevelVersion::new(level, v))
            })
            .collect()
    }

    #[test]
    fn privileged_is_the_bottom_and_every_pair_is_reflexive() {
        for kube in [
            KubeVersion::NEWEST_KNOWN,
            KubeVersion { minor: 31 },
            KubeVersion { minor: 20 },
        ] {
            for a in every_level_version() {
                assert!(at_least_as_strict(a, a, kube), "{a} on {kube}");
                assert!(at_least_as_strict(a, LevelVersion::PRIVILEGED, kube));
                let privileged_only = at_least_as_strict(LevelVersion::PRIVILEGED, a, kube);
                assert_eq!(privileged_only, a.level == Level::Privileged, "{a}");
                // Equivalent labels are ordered both ways.
                for b in every_level_version() {
                    if a.equivalent(b, kube) {
                        assert!(at_least_as_strict(a, b, kube) && at_least_as_strict(b, a, kube));
                    }
                }
            }
        }
    }

    #[test]
    fn the_order_is_transitive() {
        let kube = KubeVersion::NEWEST_KNOWN;
        let all = every_level_version();
        for &a in &all {
            for &b in all.iter().filter(|b| at_least_as_strict(a, **b, kube)) {
                for &c in all.iter().filter(|c| at_least_as_strict(b, **c, kube)) {
                    assert!(at_least_as_strict(a, c, kube), "{a} ≥ {b} ≥ {c}");
                }
            }
        }
    }

    #[test]
    fn versions_matter_as_much_as_levels() {
        let lv = |s: &str| s.parse::<LevelVersion>().expect("valid");
        let newest = KubeVersion::NEWEST_KNOWN;
        // Host probes are refused from v1.34: an older restricted label admits them.
        assert!(!at_least_as_strict(
            lv("restricted:v1.30"),
            lv("baseline:latest"),
            newest
        ));
        assert!(at_least_as_strict(
            lv("restricted:latest"),
            lv("baseline:latest"),
            newest
        ));
        assert!(at_least_as_strict(
            lv("restricted:v1.30"),
            lv("baseline:v1.30"),
            newest
        ));
        // ... but not over an older baseline: v1.31 allows the container_engine_t SELinux type.
        assert!(!at_least_as_strict(
            lv("restricted:v1.34"),
            lv("baseline:v1.30"),
            newest
        ));
        // A raise of the version alone is a raise.
        assert!(!at_least_as_strict(
            lv("baseline:v1.20"),
            lv("baseline:latest"),
            newest
        ));
        // Newer versions relax too (sysctls, SELinux type, user namespaces): not the other way.
        assert!(!at_least_as_strict(
            lv("baseline:latest"),
            lv("baseline:v1.20"),
            newest
        ));
        // On a v1.31 server, v1.35 and latest are the server's own v1.31.
        let v131 = KubeVersion { minor: 31 };
        assert!(at_least_as_strict(
            lv("baseline:v1.35"),
            lv("baseline:latest"),
            v131
        ));
        assert!(at_least_as_strict(
            lv("baseline:latest"),
            lv("baseline:v1.31"),
            v131
        ));
    }
}
