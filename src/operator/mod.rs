//! The operator: keeps PSA labels on the namespaces `PodSecurityProfile`s select, repairs drift,
//! and reports the running Pods that break each level as status and metrics.
//!
//! Pure core (no I/O, unit-tested), one room each:
//! - [`crd`]: the `PodSecurityProfile` resource and its status types;
//! - [`desired`]: the planner, who governs each namespace and which labels it should carry;
//! - [`labels`]: the label rules, which writes a pass makes, what is drift, which labels we own;
//! - [`ledger`]: what is remembered per namespace between passes (applied, declared, errors);
//! - [`record`]: the ledger persisted on each governed namespace, in one annotation;
//! - [`pods`]: the slim Pod projection the watch keeps; [`index`]: Pod verdicts per namespace;
//! - [`workloads`]: Pod-template workloads, folded into their owners, and their templates' verdicts;
//! - [`status`]: the bounded profile status; [`metrics`]: metric values and their exposition;
//! - [`preview`]: what `pss-operator plan` shows (the planner's label changes, what they refuse);
//! - [`backoff`]: the retry delay; [`fence`]: a leader writes only while its Lease is confirmed
//!   and it never stood still; [`error`]: the operator's errors.
//!
//! I/O edges: [`controller`] (watches, the pass, label writes, status and metrics, Events),
//! [`leader`] (Lease-based leader election), [`gate`] (the client layers that enforce the
//! fence), [`server`] (`/metrics` over TLS for authorized readers, `/healthz`, `/readyz`; its pure
//! token and cache rules in [`server::access`]).

pub mod backoff;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod error;
pub mod fence;
pub mod gate;
pub mod index;
pub mod interned;
pub mod labels;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod pods;
pub mod preview;
#[cfg(test)]
mod properties;
pub mod readable;
pub mod record;
pub mod reports;
pub mod server;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;
pub mod workloads;

/// The one field manager for labels and status.
pub const MANAGER: &str = "pss-operator";

pub use error::{Error, Result};

#[cfg(test)]
mod config_tests {
    //! The shipped `config/` must hold to what the operator preaches.

    use crate::manifest::{Item, read_source};
    use crate::pss::{self, Level, LevelVersion, Version};
    use serde_yaml_ng::Value;

    fn read(path: &str) -> String {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
    }

    #[test]
    fn the_manager_pod_passes_restricted() {
        let text = read("config/manager/manager.yaml");
        let items = read_source("config/manager/manager.yaml", text.as_bytes());
        let workloads: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Workload(w) => Some(w),
                _ => None,
            })
            .collect();
        assert_eq!(workloads.len(), 1, "one Deployment: {items:?}");
        let w = workloads[0];
        let eval = pss::evaluate(
            &w.pod.metadata,
            &w.pod.spec,
            LevelVersion::new(Level::Restricted, Version::Latest),
        );
        assert!(eval.allowed(), "{}", eval.denial_message());
        assert!(text.contains("readOnlyRootFilesystem: true"));
    }

    #[test]
    fn the_shipped_admission_configuration_is_kube_apiservers_default_and_is_mounted() {
        let text = read("config/manager/admission-config.yaml");
        let map: Value = serde_yaml_ng::from_str(&text).expect("ConfigMap");
        let file = map["data"]["admission.yaml"]
            .as_str()
            .expect("data.admission.yaml");
        let config =
            pss::AdmissionConfig::parse(file, std::path::Path::new("admission.yaml"), &|_| {
                Err("no other file".into())
            })
            .expect("valid");
        assert_eq!(config, pss::AdmissionConfig::default());
        let manager = read("config/manager/manager.yaml");
        assert!(manager.contains("--admission-config=/etc/pss-operator/admission.yaml"));
        assert!(manager.contains("name: pss-operator-admission"));
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    }

    /// "resource:verb" (or "group/resource:verb" with `with_groups`, "url:verb" for
    /// non-resource URLs) for every rule of a role file.
    fn grants(path: &str, with_groups: bool) -> Vec<String> {
        let role: Value = serde_yaml_ng::from_str(&read(path)).expect("yaml");
        let rules = role["rules"].as_sequence().expect("rules");
        let mut granted = Vec::new();
        for rule in rules {
            let groups = strings(&rule["apiGroups"]);
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    if with_groups {
                        for group in &groups {
                            granted.push(format!("{group}/{resource}:{verb}"));
                        }
                    } else {
                        granted.push(format!("{resource}:{verb}"));
                    }
                }
            }
            for url in strings(&rule["nonResourceURLs"]) {
                for verb in strings(&rule["verbs"]) {
                    granted.push(format!("{url}:{verb}"));
                }
            }
        }
        granted.sort();
        granted
    }

    #[test]
    fn reports_rbac_comes_only_with_config_reports() {
        assert_eq!(
            grants("config/reports/role.yaml", true),
            [
                "openreports.io/reports:create",
                "openreports.io/reports:delete",
                "openreports.io/reports:list",
                "openreports.io/reports:patch",
                "wgpolicyk8s.io/policyreports:create",
                "wgpolicyk8s.io/policyreports:delete",
                "wgpolicyk8s.io/policyreports:list",
                "wgpolicyk8s.io/policyreports:patch",
            ]
        );
        let binding: Value =
            serde_yaml_ng::from_str(&read("config/reports/role_binding.yaml")).expect("yaml");
        assert_eq!(
            binding["roleRef"]["name"].as_str(),
            Some("pss-operator-reports")
        );
        assert_eq!(
            binding["subjects"][0]["name"].as_str(),
            Some("pss-operator")
        );
        let kustomization: Value =
            serde_yaml_ng::from_str(&read("config/reports/kustomization.yaml")).expect("yaml");
        assert_eq!(
            strings(&kustomization["resources"]),
            [
                "../default",
                "crds/openreports.io_reports.yaml",
                "role.yaml",
                "role_binding.yaml"
            ]
        );
        assert!(read("config/reports/kustomization.yaml").contains("value: --reports=auto"));
        // Nothing of it in the base: config/rbac grants no report kind (rbac_is_least_privilege).
        for file in ["role.yaml", "role_binding.yaml"] {
            assert!(!read(&format!("config/rbac/{file}")).contains("reports"));
        }
    }

    #[test]
    fn rbac_is_least_privilege() {
        // config/rbac holds exactly these objects: nothing else is granted.
        let kustomization: Value =
            serde_yaml_ng::from_str(&read("config/rbac/kustomization.yaml")).expect("yaml");
        assert_eq!(
            strings(&kustomization["resources"]),
            [
                "service_account.yaml",
                "role.yaml",
                "role_binding.yaml",
                "leader_election_role.yaml",
                "leader_election_role_binding.yaml",
                "metrics_auth_role.yaml",
                "metrics_auth_role_binding.yaml",
                "metrics_reader_role.yaml",
            ]
        );
        // The secure metrics port: create reviews (no reads), and nothing else.
        assert_eq!(
            grants("config/rbac/metrics_auth_role.yaml", true),
            [
                "authentication.k8s.io/tokenreviews:create",
                "authorization.k8s.io/subjectaccessreviews:create",
            ]
        );
        // What Prometheus is bound to: reading /metrics, nothing else (and config/rbac binds it
        // to nobody: the cluster's Prometheus is not ours to name).
        assert_eq!(
            grants("config/rbac/metrics_reader_role.yaml", true),
            ["/metrics:get"]
        );
        for binding in [
            "config/rbac/role_binding.yaml",
            "config/rbac/metrics_auth_role_binding.yaml",
            "config/rbac/leader_election_role_binding.yaml",
        ] {
            let b: Value = serde_yaml_ng::from_str(&read(binding)).expect("yaml");
            assert_ne!(
                b["roleRef"]["name"].as_str(),
                Some("pss-operator-metrics-reader"),
                "{binding}"
            );
            assert_eq!(
                b["subjects"].as_sequence().map(Vec::len),
                Some(1),
                "{binding}"
            );
            assert_eq!(b["subjects"][0]["name"].as_str(), Some("pss-operator"));
        }
        let granted = grants("config/rbac/role.yaml", false);
        assert_eq!(
            granted,
            [
                "cronjobs:list",
                "cronjobs:watch",
                "daemonsets:list",
                "daemonsets:watch",
                "deployments:list",
                "deployments:watch",
                "events:create",
                "events:list",
                "events:patch",
                "events:watch",
                "jobs:list",
                "jobs:watch",
                "namespaces:list",
                "namespaces:patch",
                "namespaces:watch",
                "pods:list",
                "pods:watch",
                "podsecurityprofiles/status:patch",
                "podsecurityprofiles:list",
                "podsecurityprofiles:patch",
                "podsecurityprofiles:watch",
                "replicasets:list",
                "replicasets:watch",
                "replicationcontrollers:list",
                "replicationcontrollers:watch",
                "statefulsets:list",
                "statefulsets:watch",
            ]
        );
        let lease: Value =
            serde_yaml_ng::from_str(&read("config/rbac/leader_election_role.yaml")).expect("yaml");
        assert_eq!(
            lease["kind"].as_str(),
            Some("Role"),
            "leases only in its own namespace"
        );
        assert_eq!(strings(&lease["rules"][0]["resources"]), ["leases"]);
    }
}
