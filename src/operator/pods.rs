//! The Pod watch's projection: only what the evaluator reads (the slim `pss::model` types), plus
//! the phase to drop finished Pods. Whole Pods are never stored.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use serde::Deserialize;

use super::index::{Evaluate, Verdict};
use crate::pss::{self, LevelVersion, model};

/// A Pod as the watch deserializes it: full metadata (the watch machinery needs it), the slim
/// spec, and the phase.
#[derive(kube::Resource, Deserialize, Clone, Debug)]
#[resource(inherit = Pod)]
pub struct WatchedPod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: model::PodSpec,
    #[serde(default)]
    pub status: Option<PodPhase>,
}

#[derive(Deserialize, Clone, Debug, Default)]
pub struct PodPhase {
    #[serde(default)]
    pub phase: Option<String>,
}

impl WatchedPod {
    /// Succeeded and Failed Pods run nothing: they are not counted.
    pub fn is_running(&self) -> bool {
        !matches!(
            self.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    }

    /// (namespace, name, projection) for the index.
    pub fn into_slim(self) -> Option<(String, String, SlimPod)> {
        let namespace = self.metadata.namespace?;
        let name = self.metadata.name?;
        let meta = model::PodMeta {
            name: name.clone(),
            generate_name: self.metadata.generate_name.unwrap_or_default(),
            namespace: namespace.clone(),
            annotations: self.metadata.annotations.unwrap_or_default(),
        };
        Some((
            namespace,
            name,
            SlimPod {
                meta,
                spec: self.spec,
            },
        ))
    }
}

/// What the index keeps per Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct SlimPod {
    pub meta: model::PodMeta,
    pub spec: model::PodSpec,
}

impl Evaluate for SlimPod {
    fn evaluate(&self, level: LevelVersion) -> Verdict {
        let eval = pss::evaluate(&self.meta, &self.spec, level);
        Verdict {
            checks: eval.failed_checks().map(|c| c.as_str()).collect(),
            message: eval.denial_message(),
        }
    }

    fn failing_checks(&self, level: LevelVersion) -> Vec<&'static str> {
        pss::evaluate(&self.meta, &self.spec, level)
            .failed_checks()
            .map(|c| c.as_str())
            .collect()
    }

    fn privileged_containers(&self) -> usize {
        self.spec.privileged_containers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pss::{Level, Version};

    const SEED_POD: &str = r#"{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nginx-1", "namespace": "app", "uid": "u", "resourceVersion": "7",
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                                 "securityContext": {"privileged": true}}],
                 "nodeName": "n1", "restartPolicy": "Always"},
        "status": {"phase": "Running", "podIP": "10.0.0.1"}
    }"#;

    #[test]
    fn the_seed_pod_violates_baseline_with_the_exact_message() {
        let pod: WatchedPod = serde_json::from_str(SEED_POD).expect("pod json");
        assert!(pod.is_running());
        let (ns, name, slim) = pod.into_slim().expect("named");
        assert_eq!((ns.as_str(), name.as_str()), ("app", "nginx-1"));
        assert_eq!(slim.privileged_containers(), 1);
        let v = slim.evaluate(LevelVersion::new(Level::Baseline, Version::Latest));
        assert_eq!(v.checks, ["privileged"]);
        assert_eq!(
            v.message,
            r#"violates PodSecurity "baseline:latest": privileged (container "nginx" must not set securityContext.privileged=true)"#
        );
        assert!(slim.evaluate(LevelVersion::PRIVILEGED).allowed());
    }

    #[test]
    fn finished_pods_are_not_running() {
        let json = SEED_POD.replace("Running", "Succeeded");
        let pod: WatchedPod = serde_json::from_str(&json).expect("pod json");
        assert!(!pod.is_running());
    }
}
