//! The `PodSecurityProfile` custom resource: what a platform team declares, and the bounded status
//! the operator reports back. The CRD YAML in `crds/` is generated from these types
//! (`pss-operator crd`); a test fails when the two differ.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pss::{Level, LevelVersion, Version};

pub const GROUP: &str = "pss-operator.io";
/// The finalizer that holds a `deletionPolicy: Remove` profile until its labels are taken off.
pub const FINALIZER: &str = "pss-operator.io/remove-labels";

/// Declares the Pod Security Admission levels that every selected namespace must carry.
// clippy reads the repeated `type_ = ...` of distinct printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[kube(
    group = "pss-operator.io",
    version = "v1alpha1",
    kind = "PodSecurityProfile",
    plural = "podsecurityprofiles",
    shortname = "pssp",
    status = "PodSecurityProfileStatus",
    derive = "PartialEq",
    doc = "Pod Security Admission levels kept on every namespace the selector matches, with continuous reporting of the Pods that break them.",
    printcolumn(name = "Enforce", type_ = "string", json_path = ".spec.enforce.level"),
    printcolumn(name = "Audit", type_ = "string", json_path = ".spec.audit.level"),
    printcolumn(name = "Warn", type_ = "string", json_path = ".spec.warn.level"),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        json_path = ".status.matchedNamespaces"
    ),
    printcolumn(
        name = "Violating",
        type_ = "integer",
        description = "Running Pods that violate the enforce level of the namespaces this profile manages",
        json_path = ".status.enforce.violatingPods"
    ),
    printcolumn(
        name = "Blocked",
        type_ = "integer",
        description = "Workloads whose Pod template violates the enforce level in force: their next Pod is refused",
        json_path = ".status.blockedWorkloads"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.enforce) || has(self.audit) || has(self.warn)").message("set at least one of enforce, audit, warn"))]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityProfileSpec {
    /// Namespaces this profile applies to. `{}` selects every namespace.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Level for `pod-security.kubernetes.io/enforce`: Pods that violate it are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<LevelSpec>,
    /// Level for `pod-security.kubernetes.io/audit`: violations are recorded in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<LevelSpec>,
    /// Level for `pod-security.kubernetes.io/warn`: violations are returned as warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<LevelSpec>,
    /// When profiles overlap on a namespace, the highest priority wins; at equal priority the
    /// most restrictive level per mode wins and both profiles report `Conflicted`.
    #[serde(default)]
    pub priority: i32,
    /// A namespace may keep a stricter level than this profile's (the profile is a floor).
    #[serde(default)]
    pub allow_stricter: bool,
    /// `Enforce` writes the labels; `Audit` only reports what it would write.
    #[serde(default)]
    pub mode: ProfileMode,
    /// `Immediate`, or `WhenCompliant`: raise `enforce` only once no running Pod in the namespace
    /// violates it (until then audit and warn get that level and the namespace is pending).
    #[serde(default)]
    pub rollout: Rollout,
    /// What happens to the labels when the profile is deleted. `Retain` (default) leaves them
    /// as they are (only the operator's ledger annotation `pss-operator.io/applied` goes).
    /// `Remove` puts back, on each namespace no other profile governs, the values the labels had
    /// before the operator first took them over (kept in that annotation), takes off the labels
    /// that did not exist before, and takes the annotation off; the profile is held by a
    /// finalizer until that is done.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// One PSA mode's level and policy version.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.level) || !has(self.version)").message("version requires level"))]
pub struct LevelSpec {
    /// `privileged`, `baseline` or `restricted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "level_schema")]
    pub level: Option<LevelName>,
    /// `latest` (the default) or `v1.N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(latest|v1\.(0|[1-9][0-9]*))$"))]
    pub version: Option<String>,
}

/// The level enum without `null`: optional is expressed by leaving the field out, and the API
/// server's message then lists only the three real levels.
fn level_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["privileged", "baseline", "restricted"],
        "description": "`privileged`, `baseline` or `restricted`."
    })
}

impl PodSecurityProfile {
    /// Whether the profile is being deleted.
    pub fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// Whether our [`FINALIZER`] is on it.
    pub fn has_finalizer(&self) -> bool {
        self.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER)
    }

    /// Being deleted with `deletionPolicy: Remove` and still held by our finalizer: its labels
    /// come off first.
    pub fn releasing(&self) -> bool {
        self.deleting()
            && self.spec.deletion_policy == DeletionPolicy::Remove
            && self.has_finalizer()
    }
}

impl LevelSpec {
    /// The level and version to write, `None` when the mode is left alone.
    pub fn level_version(&self) -> Result<Option<LevelVersion>, String> {
        let Some(level) = self.level else {
            return match &self.version {
                Some(_) => Err("version requires level".to_owned()),
                None => Ok(None),
            };
        };
        let version = match &self.version {
            None => Version::Latest,
            Some(v) => v.parse::<Version>().map_err(|e| e.to_string())?,
        };
        Ok(Some(LevelVersion::new(level.into(), version)))
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LevelName {
    Privileged,
    Baseline,
    Restricted,
}

impl From<LevelName> for Level {
    fn from(l: LevelName) -> Level {
        match l {
            LevelName::Privileged => Level::Privileged,
            LevelName::Baseline => Level::Baseline,
            LevelName::Restricted => Level::Restricted,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProfileMode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rollout {
    #[default]
    Immediate,
    WhenCompliant,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Remove,
}

/// What the operator observed for a profile. Bounded and sorted: the same cluster always gives the
/// same status, so a pass that changes nothing writes nothing.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityProfileStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Conflicted` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Namespaces the selector matches (operator-wide exclusions left out).
    #[serde(default)]
    pub matched_namespaces: i32,
    /// Matched namespaces this profile governs whose labels are as declared.
    #[serde(default)]
    pub enforced_namespaces: i32,
    /// Governed namespaces the cluster's PodSecurity admission configuration exempts: the API
    /// server evaluates none of their Pods, whatever their labels say.
    #[serde(default)]
    pub exempt_namespaces: i32,
    /// The API server's Kubernetes version (`v1.31`): what `latest` means in every verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// Namespaces whose `enforce` level waits for violating Pods to go (`rollout: WhenCompliant`).
    #[serde(default)]
    pub pending_namespaces: i32,
    /// Namespaces where another profile of equal priority also applies.
    #[serde(default)]
    pub conflicted_namespaces: i32,
    /// Labels put back after someone changed or removed them.
    #[serde(default)]
    pub drift_corrections: i64,
    /// Workloads whose Pod template violates the enforce level in force: kube-apiserver refuses
    /// their next Pod (a rollout, a scale-up, a CronJob's next run). Listed in
    /// `enforce.workloadSamples`.
    #[serde(default)]
    pub blocked_workloads: i32,
    /// Pending namespaces and the Pods that block them (first 20 namespaces, 10 Pods each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingNamespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<ModeStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<ModeStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<ModeStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PendingNamespace {
    pub namespace: String,
    /// The level `enforce` will be raised to.
    pub target: String,
    /// Total Pods and workload templates that violate the target (a workload's next Pod would be
    /// refused).
    pub blocking_pods: i32,
    /// The first blocking Pods (by name) and workloads (`Kind/name`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

/// Running Pods checked against the level of one PSA mode in the namespaces this profile governs.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModeStatus {
    /// The level this profile declares for the mode (namespaces may be stricter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    pub violating_pods: i32,
    /// Violating Pods per check id (`privileged`, `runAsNonRoot`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_check: BTreeMap<String, i32>,
    /// Namespaces with violating Pods, most first (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceViolations>,
    /// Namespaces with violating Pods left out of `namespaces`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_namespaces: i32,
    /// Up to 20 violating Pods with the exact admission message; privileged containers first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SampleViolation>,
    /// Workloads (Deployments, CronJobs, ... a Deployment's ReplicaSets and a CronJob's Jobs
    /// folded into them) whose Pod template violates the level.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub violating_workloads: i32,
    /// Violating workloads per kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workloads_by_kind: BTreeMap<String, i32>,
    /// Up to 20 violating workloads with kube-apiserver's warning for their template;
    /// privileged containers first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_samples: Vec<WorkloadViolation>,
    /// The workloads that own violating Pods, most Pods first (at most 20): one thing to fix
    /// each. A Deployment's Pods are counted at the Deployment, a CronJob's at the CronJob.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<OwnerViolations>,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OwnerViolations {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub violating_pods: i32,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadViolation {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Desired replicas, for the kinds that have them (0: it breaks at the next scale-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    pub checks: Vec<String>,
    /// What kube-apiserver warns when the workload is applied (`would violate PodSecurity ...`).
    pub message: String,
    /// The refusal the cluster already shows for its Pods (a `FailedCreate` Event of it, or of a
    /// ReplicaSet/Job folded into it), in the API server's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceViolations {
    pub namespace: String,
    pub violating_pods: i32,
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SampleViolation {
    pub namespace: String,
    pub pod: String,
    pub checks: Vec<String>,
    /// What kube-apiserver would answer when admitting this Pod.
    pub message: String,
}

/// The CRD as YAML, exactly what `pss-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&PodSecurityProfile::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(path: &str) -> String {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
    }

    #[test]
    fn committed_crd_matches_the_types() {
        let generated = crd_yaml().expect("CRD serializes");
        for path in [
            "crds/podsecurityprofiles.yaml",
            "config/crd/podsecurityprofiles.yaml",
        ] {
            assert!(
                committed(path) == generated,
                "{path} is stale: run `cargo run -- crd > crds/podsecurityprofiles.yaml && cp crds/podsecurityprofiles.yaml config/crd/`"
            );
        }
    }

    #[test]
    fn crd_names_scope_and_validation() {
        let crd = PodSecurityProfile::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.plural, "podsecurityprofiles");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["pssp".to_owned()][..])
        );
        let yaml = crd_yaml().expect("CRD serializes");
        assert!(yaml.contains("version requires level"));
        assert!(yaml.contains(r"^(latest|v1\.(0|[1-9][0-9]*))$"));
        assert!(yaml.contains("- restricted"));
        assert!(yaml.contains("- WhenCompliant"));
        let columns: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Enforce",
                "Audit",
                "Warn",
                "Namespaces",
                "Violating",
                "Blocked",
                "Age"
            ]
        );
    }

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let spec: PodSecurityProfileSpec = serde_yaml_ng::from_str(
            "namespaceSelector: {matchLabels: {team: apps}}\n\
             enforce: {level: baseline, version: latest}\n\
             audit: {level: restricted}\n",
        )
        .expect("valid spec");
        assert_eq!(spec.priority, 0);
        assert!(!spec.allow_stricter);
        assert_eq!(spec.mode, ProfileMode::Enforce);
        assert_eq!(spec.rollout, Rollout::Immediate);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
        assert!(spec.warn.is_none());
        assert_eq!(
            spec.audit.as_ref().map(LevelSpec::level_version),
            Some(Ok(Some(LevelVersion::new(
                Level::Restricted,
                Version::Latest
            ))))
        );
    }

    #[test]
    fn level_spec_refuses_what_the_schema_refuses() {
        let version_only = LevelSpec {
            level: None,
            version: Some("v1.30".into()),
        };
        assert!(version_only.level_version().is_err());
        let bad_version = LevelSpec {
            level: Some(LevelName::Baseline),
            version: Some("v1.01".into()),
        };
        assert!(bad_version.level_version().is_err());
        let empty = LevelSpec {
            level: None,
            version: None,
        };
        assert_eq!(empty.level_version(), Ok(None));
    }
}
