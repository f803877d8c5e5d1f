//! The Pod watch's projection: only what the evaluator reads (the slim `pss::model` types), plus
//! the phase to drop finished Pods. Whole Pods are never stored.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use serde::Deserialize;

use super::index::{Evaluate, Verdict};
use crate::pss::{self, CheckSet, KubeVersion, LevelVersion, model};

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

    /// The Pod's controller as `Kind/name` (a ReplicaSet, a Job, a DaemonSet...), from its
    /// ownerReferences: no lookup, the Pod says it.
    pub fn controller(&self) -> Option<String> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| format!("{}/{}", o.kind, o.name))
    }

    /// (namespace, name, projection) for the index.
    pub fn into_slim(self) -> Option<(String, String, SlimPod)> {
        let namespace = self.metadata.namespace?;
        let name = self.metadata.name?;
        let meta = model::PodMeta {
            annotations: self.metadata.annotations.unwrap_or_default(),
            ..Default::default()
        };
        Some((namespace, name, SlimPod::new(meta, self.spec)))
    }
}

/// What the index shares between Pods: the part of a Pod its verdicts and messages depend on,
/// normalized so that the Pods of one template are equal (see [`SlimPod::new`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlimPod {
    meta: model::PodMeta,
    spec: model::PodSpec,
}

impl SlimPod {
    /// Keeps only what can change a verdict or a message, so that Pods of one template project
    /// to equal values (tests/conformance.rs checks, on every upstream fixture at every level and
    /// version, that the evaluation is unchanged):
    /// - no name, generateName or namespace: no check reads them (the index keys Pods by name);
    /// - only the annotations a check reads (AppArmor, alpha seccomp): others such as a CNI's
    ///   per-Pod IP would make every Pod distinct;
    /// - no volume that no check reads (restricted-allowed sources, no hostPath): every Pod has a
    ///   `kube-api-access-<random>` projected volume from ServiceAccount admission.
    pub fn new(mut meta: model::PodMeta, mut spec: model::PodSpec) -> SlimPod {
        meta.name = String::new();
        meta.generate_name = String::new();
        meta.namespace = String::new();
        meta.annotations
            .retain(|key, _| pss::annotation_is_checked(key));
        spec.volumes.retain(pss::volume_is_checked);
        spec.volumes.shrink_to_fit();
        SlimPod { meta, spec }
    }

    pub fn meta(&self) -> &model::PodMeta {
        &self.meta
    }

    pub fn spec(&self) -> &model::PodSpec {
        &self.spec
    }
}

impl Evaluate for SlimPod {
    fn evaluate(&self, level: LevelVersion, kube: KubeVersion) -> Verdict {
        let eval = pss::evaluate_on(kube, &self.meta, &self.spec, level);
        Verdict {
            checks: eval.failed_check_set(),
            message: eval.denial_message(),
        }
    }

    fn failing_checks(&self, level: LevelVersion, kube: KubeVersion) -> CheckSet {
        pss::evaluate_on(kube, &self.meta, &self.spec, level).failed_check_set()
    }

    fn privileged_containers(&self) -> usize {
        self.spec.privileged_containers()
    }

    fn runtime_class(&self) -> Option<&str> {
        self.spec.runtime_class_name.as_deref()
    }

    /// The container names (init, regular, ephemeral, in order), each after a newline, which no
    /// container name holds (they are DNS labels): one allocation per Pod whose containers are
    /// named apart, instead of a whole projection. Kept in place (nothing taken, `""`) when
    /// the Pod carries a checked annotation: the deprecated per-container seccomp and AppArmor
    /// annotations are keyed by container name, so there the names decide verdicts.
    fn take_names(&mut self) -> Box<str> {
        if !self.meta.annotations.is_empty() {
            return Box::default();
        }
        let mut names = String::new();
        for c in self.containers_mut() {
            names.push('\n');
            names.push_str(&std::mem::take(&mut c.name));
        }
        names.into_boxed_str()
    }

    fn with_names(&self, names: &str) -> Option<SlimPod> {
        if names.is_empty() {
            return None;
        }
        let mut whole = self.clone();
        for (c, name) in whole.containers_mut().zip(names.split('\n').skip(1)) {
            c.name = name.to_owned();
        }
        Some(whole)
    }
}

impl SlimPod {
    fn containers_mut(&mut self) -> impl Iterator<Item = &mut model::Container> {
        let spec = &mut self.spec;
        spec.init_containers
            .iter_mut()
            .chain(spec.containers.iter_mut())
            .chain(spec.ephemeral_containers.iter_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::index::{Interner, PodIndex};
    use crate::pss::{Level, Version};
    use std::sync::Arc;

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
        let v = slim.evaluate(
            LevelVersion::new(Level::Baseline, Version::Latest),
            KubeVersion::NEWEST_KNOWN,
        );
        assert_eq!(v.checks.ids().collect::<Vec<_>>(), ["privileged"]);
        assert_eq!(
            v.message,
            r#"violates PodSecurity "baseline:latest": privileged (container "nginx" must not set securityContext.privileged=true)"#
        );
        assert!(
            slim.evaluate(LevelVersion::PRIVILEGED, KubeVersion::NEWEST_KNOWN)
                .allowed()
        );
    }

    #[test]
    fn exempt_runtime_classes_and_the_servers_version_decide_the_index() {
        let mut pod: WatchedPod = serde_json::from_str(SEED_POD).expect("pod json");
        pod.spec.runtime_class_name = Some("kata".into());
        let (ns, name, slim) = pod.into_slim().expect("named");
        let mut index = PodIndex::default();
        let baseline = crate::pss::Policy {
            enforce: LevelVersion::new(Level::Baseline, Version::Latest),
            ..Default::default()
        };
        index.set_policy(&ns, baseline);
        index.apply(&ns, &name, slim);
        assert_eq!(index.tally(&ns, crate::pss::Mode::Enforce).pods, 1);
        let config = crate::pss::AdmissionConfig {
            exemptions: crate::pss::Exemptions {
                runtime_classes: ["kata".to_owned()].into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let exempting = Arc::new(crate::pss::Admission {
            kube: KubeVersion { minor: 31 },
            config,
        });
        assert!(index.set_admission(Arc::clone(&exempting)));
        assert!(
            !index.set_admission(exempting),
            "the same server again changes nothing"
        );
        assert_eq!(index.tally(&ns, crate::pss::Mode::Enforce).pods, 0);
        assert_eq!(index.message(&ns, &name, crate::pss::Mode::Enforce), None);
        assert!(
            index
                .blocking(&ns, LevelVersion::new(Level::Restricted, Version::Latest))
                .is_empty()
        );
        assert!(index.set_admission(Arc::default()));
        assert_eq!(index.tally(&ns, crate::pss::Mode::Enforce).pods, 1);
    }

    #[test]
    fn a_pod_names_its_controller() {
        let mut pod: WatchedPod = serde_json::from_str(SEED_POD).expect("pod json");
        assert_eq!(pod.controller(), None);
        pod.metadata.owner_references = Some(
            serde_json::from_value(serde_json::json!([
                {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "a"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9", "uid": "b",
                 "controller": true}
            ]))
            .expect("owners"),
        );
        assert_eq!(pod.controller().as_deref(), Some("ReplicaSet/web-7d9"));
    }

    #[test]
    fn finished_pods_are_not_running() {
        let json = SEED_POD.replace("Running", "Succeeded");
        let pod: WatchedPod = serde_json::from_str(&json).expect("pod json");
        assert!(!pod.is_running());
    }

    /// A Pod of a ReplicaSet as the API server stores it: its own name, the random
    /// kube-api-access volume ServiceAccount admission added, per-Pod annotations.
    fn replica(name: &str, token_volume: &str, ip: &str) -> WatchedPod {
        let json = serde_json::json!({
            "metadata": {
                "name": name, "generateName": "web-7d9f8b6c5d-", "namespace": "app",
                "uid": name, "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
                "annotations": {"cni.projectcalico.org/podIP": ip,
                                "container.apparmor.security.beta.kubernetes.io/web": "unconfined"}
            },
            "spec": {
                "volumes": [
                    {"name": "data", "hostPath": {"path": "/srv"}},
                    {"name": "cache", "emptyDir": {}},
                    {"name": token_volume, "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt"}}]}}
                ],
                "containers": [{"name": "web", "image": "nginx",
                                "volumeMounts": [{"name": token_volume, "mountPath": "/var/run"}]}],
                "nodeName": name
            },
            "status": {"phase": "Running", "podIP": ip}
        });
        serde_json::from_value(json).expect("pod json")
    }

    #[test]
    fn replicas_of_one_template_share_one_projection() {
        let a = replica("web-7d9f8b6c5d-x2b4k", "kube-api-access-7tq2n", "10.0.0.1");
        let b = replica("web-7d9f8b6c5d-9wzcl", "kube-api-access-k8d4z", "10.0.0.2");
        let (_, name_a, slim_a) = a.into_slim().expect("named");
        let (_, name_b, slim_b) = b.into_slim().expect("named");
        assert_ne!(name_a, name_b);
        assert_eq!(slim_a, slim_b);
        let mut interner = Interner::default();
        let (shared_a, shared_b) = (interner.intern(slim_a.clone()), interner.intern(slim_b));
        assert!(Arc::ptr_eq(&shared_a, &shared_b));
        let mut index = PodIndex::default();
        index.apply("app", &name_a, slim_a.clone());
        index.apply("app", "web-7d9f8b6c5d-9wzcl", (*shared_b).clone());
        assert_eq!(index.shared_projections(), 1);
        // What a check reads stays: the hostPath volume and the AppArmor annotation.
        assert_eq!(
            slim_a
                .spec()
                .volumes
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["data"]
        );
        assert_eq!(slim_a.meta().annotations.len(), 1);
        let v = slim_a.evaluate(
            LevelVersion::new(Level::Baseline, Version::Latest),
            KubeVersion::NEWEST_KNOWN,
        );
        assert_eq!(
            v.message,
            r#"violates PodSecurity "baseline:latest": forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/web="unconfined""), hostPath volumes (volume "data")"#
        );
    }

    #[test]
    fn pods_named_apart_share_one_projection_and_keep_their_own_messages() {
        let pod = |container: &str| {
            let json = SEED_POD.replace(
                "\"nginx\", \"image\"",
                &format!("\"{container}\", \"image\""),
            );
            let pod: WatchedPod = serde_json::from_str(&json).expect("pod json");
            pod.into_slim().expect("named").2
        };
        let mut index = PodIndex::default();
        let baseline = crate::pss::Policy {
            enforce: LevelVersion::new(Level::Baseline, Version::Latest),
            ..Default::default()
        };
        index.set_policy("app", baseline);
        for i in 0..100 {
            assert!(index.apply("app", &format!("p{i}"), pod(&format!("c{i}"))));
        }
        assert_eq!(index.shared_projections(), 1, "one shape, 100 name sets");
        assert_eq!(index.tally("app", crate::pss::Mode::Enforce).pods, 100);
        assert_eq!(
            index
                .message("app", "p42", crate::pss::Mode::Enforce)
                .as_deref(),
            Some(
                r#"violates PodSecurity "baseline:latest": privileged (container "c42" must not set securityContext.privileged=true)"#
            )
        );
        // A rename changes no count (apply reports none), but the message is the new one.
        assert!(!index.apply("app", "p42", pod("renamed")));
        assert!(
            index
                .message("app", "p42", crate::pss::Mode::Enforce)
                .is_some_and(|m| m.contains(r#"container "renamed""#))
        );
        for i in 0..100 {
            index.delete("app", &format!("p{i}"));
        }
        assert_eq!(index.shared_projections(), 0);
    }
}
