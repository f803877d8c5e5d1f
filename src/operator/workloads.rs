//! Pod-template workloads: what the workload watches deserialize (only the template, as the Pod
//! watch keeps only a slim Pod), which workloads are reported (a ReplicaSet a Deployment controls
//! and a Job a CronJob controls are folded into their owner, whose own template is evaluated),
//! and the index of their templates' verdicts. Pure: no I/O.
//!
//! A workload whose template violates the enforce level in force in its namespace is *blocked*:
//! kube-apiserver will refuse its next Pod (a rollout, a scale-up, a CronJob's next run), even
//! while its running Pods, admitted before the level was raised, are all there.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ReplicationController;
use kube::api::ObjectMeta;
use serde::Deserialize;

use super::index::{Evaluate, PodIndex, Policies, Tally, Violator};
use super::pods::SlimPod;
use crate::pss::{Admission, LevelVersion, Mode, Policy, model};

/// The workload kinds with a Pod template, in the order their indexes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    CronJob,
    DaemonSet,
    Deployment,
    Job,
    ReplicaSet,
    ReplicationController,
    StatefulSet,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 7] = [
        WorkloadKind::CronJob,
        WorkloadKind::DaemonSet,
        WorkloadKind::Deployment,
        WorkloadKind::Job,
        WorkloadKind::ReplicaSet,
        WorkloadKind::ReplicationController,
        WorkloadKind::StatefulSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::Job => "Job",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::ReplicationController => "ReplicationController",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            WorkloadKind::CronJob | WorkloadKind::Job => "batch/v1",
            WorkloadKind::ReplicationController => "v1",
            _ => "apps/v1",
        }
    }

    /// The position in [`WorkloadKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind whose template stands for this one's when it controls it.
    fn folded_into(self) -> Option<WorkloadKind> {
        match self {
            WorkloadKind::ReplicaSet => Some(WorkloadKind::Deployment),
            WorkloadKind::Job => Some(WorkloadKind::CronJob),
            _ => None,
        }
    }

    fn parse(kind: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload's spec as the watch deserializes it: the replica count and the Pod template.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct TemplateSpec {
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub template: Option<model::Pod>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct CronJobSpec {
    #[serde(default)]
    pub job_template: JobTemplate,
}

#[derive(Deserialize, Clone, Debug, Default)]
pub struct JobTemplate {
    #[serde(default)]
    pub spec: TemplateSpec,
}

/// A watched workload: its kind, and its template with the metadata the folding rule reads.
pub trait WatchedWorkload:
    kube::Resource<DynamicType = ()> + Clone + fmt::Debug + Send + Sync
{
    const KIND: WorkloadKind;
    fn into_parts(self) -> (ObjectMeta, TemplateSpec);
}

macro_rules! watched {
    ($name:ident, $k8s:ident, $kind:ident) => {
        #[doc = concat!("A ", stringify!($k8s), " as its watch deserializes it.")]
        #[derive(kube::Resource, Deserialize, Clone, Debug)]
        #[resource(inherit = $k8s)]
        pub struct $name {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: TemplateSpec,
        }

        impl WatchedWorkload for $name {
            const KIND: WorkloadKind = WorkloadKind::$kind;
            fn into_parts(self) -> (ObjectMeta, TemplateSpec) {
                (self.metadata, self.spec)
            }
        }
    };
}

watched!(WatchedDaemonSet, DaemonSet, DaemonSet);
watched!(WatchedDeployment, Deployment, Deployment);
watched!(WatchedJob, Job, Job);
watched!(WatchedReplicaSet, ReplicaSet, ReplicaSet);
watched!(
    WatchedReplicationController,
    ReplicationController,
    ReplicationController
);
watched!(WatchedStatefulSet, StatefulSet, StatefulSet);

/// A CronJob as its watch deserializes it.
#[derive(kube::Resource, Deserialize, Clone, Debug)]
#[resource(inherit = CronJob)]
pub struct WatchedCronJob {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CronJobSpec,
}

impl WatchedWorkload for WatchedCronJob {
    const KIND: WorkloadKind = WorkloadKind::CronJob;
    fn into_parts(self) -> (ObjectMeta, TemplateSpec) {
        (self.metadata, self.spec.job_template.spec)
    }
}

/// What the workload index keeps of a reported workload, or why it keeps nothing. Transient (the
/// index interns the projection), so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Reported {
    /// (namespace, name, template projection, replicas where the kind has them).
    Template(String, String, SlimPod, Option<i32>),
    /// (namespace, name, controller name): controlled by a workload whose own template is
    /// evaluated (a Deployment's ReplicaSet, a CronJob's Job), not reported itself.
    Folded(String, String, String),
    /// No namespace, name or template: nothing to evaluate.
    Nothing,
}

/// Whether and as what a workload is reported.
pub fn reported(kind: WorkloadKind, meta: ObjectMeta, spec: TemplateSpec) -> Reported {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.controller == Some(true)
                && kind.folded_into().map(WorkloadKind::as_str) == Some(o.kind.as_str())
        })
        .map(|o| o.name.clone());
    if let Some(controller) = controller {
        return match (meta.namespace, meta.name) {
            (Some(ns), Some(name)) => Reported::Folded(ns, name, controller),
            _ => Reported::Nothing,
        };
    }
    let (Some(ns), Some(name), Some(template)) = (meta.namespace, meta.name, spec.template) else {
        return Reported::Nothing;
    };
    Reported::Template(
        ns,
        name,
        SlimPod::new(template.metadata, template.spec),
        spec.replicas,
    )
}

/// The templates of the reported workloads, one Pod index per kind (a relist of one kind
/// replaces only that kind's), each checked against its namespace's policy.
#[derive(Debug)]
pub struct TemplateIndex<P> {
    kinds: [PodIndex<P>; 7],
    /// Per kind, the objects folded into their controller: [`key`] -> controller name.
    folded: [HashMap<Box<str>, Box<str>>; 7],
    /// Pods the cluster refused by PodSecurity (`FailedCreate` Events), per (namespace,
    /// `Kind/name` of the object that tried): the API server's message.
    refusals: BTreeMap<(String, String), String>,
    /// Per kind, the replicas of the reported workloads that have them: [`key`] -> replicas.
    replicas: [HashMap<Box<str>, i32>; 7],
}

/// `namespace/name`, one allocation (a namespace name has no `/`): as a pair of `String`s the
/// keys of 15,000 Deployments' ReplicaSets and replicas took about twice the room.
fn key(ns: &str, name: &str) -> Box<str> {
    let mut key = String::with_capacity(ns.len() + 1 + name.len());
    key.push_str(ns);
    key.push('/');
    key.push_str(name);
    key.into_boxed_str()
}

impl<P> Default for TemplateIndex<P> {
    fn default() -> Self {
        TemplateIndex {
            kinds: Default::default(),
            folded: Default::default(),
            refusals: BTreeMap::new(),
            replicas: Default::default(),
        }
    }
}

/// A workload whose template violates a mode's level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViolatingWorkload<'a> {
    pub kind: WorkloadKind,
    pub violator: Violator<'a>,
}

impl<P: Evaluate + std::hash::Hash + Eq + Clone> TemplateIndex<P> {
    pub fn kind_mut(&mut self, kind: WorkloadKind) -> &mut PodIndex<P> {
        &mut self.kinds[kind.index()]
    }

    /// Sets the server the verdicts are those of, for every kind; returns whether it changed.
    pub fn set_admission(&mut self, admission: &Arc<Admission>) -> bool {
        let mut changed = false;
        for index in &mut self.kinds {
            changed |= index.set_admission(Arc::clone(admission));
        }
        changed
    }

    /// Sets the policy of `ns` for every kind; returns whether it changed.
    pub fn set_policy(&mut self, ns: &str, policy: Policy) -> bool {
        let mut changed = false;
        for index in &mut self.kinds {
            changed |= index.set_policy(ns, policy);
        }
        changed
    }

    /// Takes `policies` (shared with the Pod index), re-evaluating the templates of the
    /// namespaces whose policy changed.
    pub fn set_policies(&mut self, policies: &Arc<Policies>) {
        for index in &mut self.kinds {
            index.set_policies(Arc::clone(policies));
        }
    }
}

impl<P> TemplateIndex<P> {
    /// Books `ns/name` of `kind` as folded into `controller` (`None`: not folded). Returns
    /// whether that changed.
    pub fn fold(
        &mut self,
        kind: WorkloadKind,
        ns: &str,
        name: &str,
        controller: Option<String>,
    ) -> bool {
        let key = key(ns, name);
        let folded = &mut self.folded[kind.index()];
        match controller {
            Some(c) if folded.get(&key).is_some_and(|f| **f == *c) => false,
            Some(c) => {
                folded.insert(key, c.into_boxed_str());
                true
            }
            None => folded.remove(&key).is_some(),
        }
    }

    /// Replaces what is folded of `kind` (after a relist): (namespace, name, controller).
    pub fn reset_folded(&mut self, kind: WorkloadKind, folded: Vec<(String, String, String)>) {
        self.folded[kind.index()] = folded
            .into_iter()
            .map(|(ns, name, controller)| (key(&ns, &name), controller.into_boxed_str()))
            .collect();
    }

    /// The workload reported for a Pod's controller (`Kind/name`): a ReplicaSet's Deployment, a
    /// Job's CronJob, or the controller itself.
    pub fn owner_of(&self, ns: &str, controller: &str) -> String {
        controller
            .split_once('/')
            .and_then(|(kind, name)| {
                let kind = WorkloadKind::parse(kind)?;
                let into = kind.folded_into()?;
                let c = self.folded[kind.index()].get(&key(ns, name))?;
                Some(format!("{into}/{c}"))
            })
            .unwrap_or_else(|| controller.to_owned())
    }

    /// Books a reported workload's replicas (`None`: the kind has none, or it is gone).
    pub fn set_replicas(
        &mut self,
        kind: WorkloadKind,
        ns: &str,
        name: &str,
        replicas: Option<i32>,
    ) {
        let key = key(ns, name);
        match replicas {
            Some(r) => self.replicas[kind.index()].insert(key, r),
            None => self.replicas[kind.index()].remove(&key),
        };
    }

    /// Replaces the replicas of `kind` (after a relist): (namespace, name, replicas).
    pub fn reset_replicas(&mut self, kind: WorkloadKind, replicas: Vec<(String, String, i32)>) {
        self.replicas[kind.index()] = replicas
            .into_iter()
            .map(|(ns, name, r)| (key(&ns, &name), r))
            .collect();
    }

    pub fn replicas(&self, kind: WorkloadKind, ns: &str, name: &str) -> Option<i32> {
        self.replicas[kind.index()].get(&key(ns, name)).copied()
    }

    /// Books (`Some`) or forgets a refusal of a Pod of `object` (`Kind/name`) in `ns`. Returns
    /// whether that changed.
    pub fn set_refusal(&mut self, ns: &str, object: &str, message: Option<String>) -> bool {
        let key = (ns.to_owned(), object.to_owned());
        match message {
            Some(m) if self.refusals.get(&key) == Some(&m) => false,
            Some(m) => {
                self.refusals.insert(key, m);
                true
            }
            None => self.refusals.remove(&key).is_some(),
        }
    }

    pub fn reset_refusals(&mut self, refusals: Vec<(String, String, String)>) {
        self.refusals = refusals
            .into_iter()
            .map(|(ns, object, message)| ((ns, object), message))
            .collect();
    }

    /// The refusal the cluster shows for a reported workload's Pods: its own, or one of the
    /// objects folded into it (a Deployment's ReplicaSets, a CronJob's Jobs); the first by
    /// object name, so that the same cluster gives the same status.
    pub fn refusal(&self, kind: WorkloadKind, ns: &str, name: &str) -> Option<&str> {
        let workload = format!("{kind}/{name}");
        self.refusals
            .range((ns.to_owned(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .find(|((_, object), _)| self.owner_of(ns, object) == workload)
            .map(|(_, message)| message.as_str())
    }
}

impl<P: Evaluate> TemplateIndex<P> {
    /// `Kind/name` of the workloads of `ns` whose template violates `level`, sorted.
    pub fn blocking(&self, ns: &str, level: LevelVersion) -> Vec<String> {
        WorkloadKind::ALL
            .iter()
            .flat_map(|kind| {
                self.kinds[kind.index()]
                    .blocking(ns, level)
                    .into_iter()
                    .map(move |name| format!("{kind}/{name}"))
            })
            .collect()
    }

    /// The workloads of `ns` violating the namespace policy in `mode`, by kind then name.
    pub fn violators(&self, ns: &str, mode: Mode) -> impl Iterator<Item = ViolatingWorkload<'_>> {
        WorkloadKind::ALL.into_iter().flat_map(move |kind| {
            self.kinds[kind.index()]
                .violators(ns, mode)
                .map(move |violator| ViolatingWorkload { kind, violator })
        })
    }

    /// Violating workloads of `ns` in `mode`, counted per kind.
    pub fn tally(&self, ns: &str, mode: Mode) -> [Tally; 7] {
        WorkloadKind::ALL.map(|kind| self.kinds[kind.index()].tally(ns, mode))
    }

    /// kube-apiserver's warning for the workload's template in `mode`
    /// (`would violate PodSecurity "...": ...`), recomputed.
    pub fn message(&self, kind: WorkloadKind, ns: &str, name: &str, mode: Mode) -> Option<String> {
        let denial = self.kinds[kind.index()].message(ns, name, mode)?;
        Some(crate::pss::warning_text(&denial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pss::{KubeVersion, Level, Version};
    use serde_json::json;

    const SEED_DEPLOYMENT: &str = r#"{
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "nginx", "namespace": "app", "uid": "d1"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "nginx"}},
                 "template": {"metadata": {"labels": {"app": "nginx"}},
                              "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                                       "securityContext": {"privileged": true}}]}}}
    }"#;

    fn baseline_enforced() -> Policy {
        Policy {
            enforce: LevelVersion::new(Level::Baseline, Version::Latest),
            ..Policy::DEFAULT
        }
    }

    #[test]
    fn the_seed_deployment_is_blocked_with_the_api_servers_warning() {
        let d: WatchedDeployment = serde_json::from_str(SEED_DEPLOYMENT).expect("deployment");
        let (meta, spec) = d.into_parts();
        let Reported::Template(ns, name, slim, replicas) =
            reported(WorkloadKind::Deployment, meta, spec)
        else {
            panic!("a reported template")
        };
        assert_eq!(replicas, Some(2));
        let mut index: TemplateIndex<SlimPod> = TemplateIndex::default();
        index.set_policy(&ns, baseline_enforced());
        index
            .kind_mut(WorkloadKind::Deployment)
            .apply(&ns, &name, slim);
        let blocked: Vec<_> = index.violators("app", Mode::Enforce).collect();
        assert_eq!(blocked.len(), 1);
        assert_eq!(blocked[0].kind, WorkloadKind::Deployment);
        assert_eq!(blocked[0].violator.pod, "nginx");
        assert_eq!(
            index
                .message(WorkloadKind::Deployment, "app", "nginx", Mode::Enforce)
                .as_deref(),
            Some(
                r#"would violate PodSecurity "baseline:latest": privileged (container "nginx" must not set securityContext.privileged=true)"#
            )
        );
        assert_eq!(
            index.blocking("app", LevelVersion::new(Level::Baseline, Version::Latest)),
            ["Deployment/nginx"]
        );
        assert_eq!(
            index.tally("app", Mode::Enforce)[WorkloadKind::Deployment.index()].pods,
            1
        );
    }

    fn meta(kind: &str, owner: Option<(&str, bool)>) -> ObjectMeta {
        let mut m: ObjectMeta =
            serde_json::from_value(json!({"name": "w", "namespace": "app"})).expect("meta");
        if let Some((owner_kind, controller)) = owner {
            m.owner_references = Some(vec![
                serde_json::from_value(json!({"apiVersion": "v1", "kind": owner_kind,
                    "name": "o", "uid": "u", "controller": controller}))
                .expect("owner"),
            ]);
        }
        let _ = kind;
        m
    }

    fn template() -> TemplateSpec {
        serde_json::from_value(json!({"template": {"spec": {"containers": [{"name": "c"}]}}}))
            .expect("spec")
    }

    #[test]
    fn replica_sets_and_jobs_fold_into_their_controllers_others_are_reported() {
        let folded = |kind, owner| reported(kind, meta("", owner), template());
        assert_eq!(
            folded(WorkloadKind::ReplicaSet, Some(("Deployment", true))),
            Reported::Folded("app".into(), "w".into(), "o".into())
        );
        assert_eq!(
            folded(WorkloadKind::Job, Some(("CronJob", true))),
            Reported::Folded("app".into(), "w".into(), "o".into())
        );
        // Standalone, owned by another kind, or an owner that is not the controller: reported.
        for (kind, owner) in [
            (WorkloadKind::ReplicaSet, None),
            (WorkloadKind::ReplicaSet, Some(("Rollout", true))),
            (WorkloadKind::ReplicaSet, Some(("Deployment", false))),
            (WorkloadKind::Job, None),
            (WorkloadKind::Deployment, Some(("Deployment", true))),
        ] {
            assert!(
                matches!(folded(kind, owner), Reported::Template(..)),
                "{kind} owned by {owner:?}"
            );
        }
        let no_template = TemplateSpec::default();
        assert_eq!(
            reported(
                WorkloadKind::ReplicationController,
                meta("", None),
                no_template
            ),
            Reported::Nothing
        );
    }

    #[test]
    fn pods_and_refusals_of_folded_objects_are_reported_at_their_owner() {
        let mut index: TemplateIndex<SlimPod> = TemplateIndex::default();
        index.fold(
            WorkloadKind::ReplicaSet,
            "app",
            "web-7d9",
            Some("web".into()),
        );
        index.fold(
            WorkloadKind::Job,
            "app",
            "nightly-290",
            Some("nightly".into()),
        );
        assert_eq!(
            index.owner_of("app", "ReplicaSet/web-7d9"),
            "Deployment/web"
        );
        assert_eq!(index.owner_of("app", "Job/nightly-290"), "CronJob/nightly");
        assert_eq!(
            index.owner_of("other", "ReplicaSet/web-7d9"),
            "ReplicaSet/web-7d9"
        );
        assert_eq!(index.owner_of("app", "StatefulSet/db"), "StatefulSet/db");
        let refused =
            r#"pods "web-7d9-x" is forbidden: violates PodSecurity "baseline:latest": privileged"#;
        index.set_refusal("app", "ReplicaSet/web-7d9", Some(refused.into()));
        index.set_refusal("app", "StatefulSet/db", Some("sts".into()));
        assert_eq!(
            index.refusal(WorkloadKind::Deployment, "app", "web"),
            Some(refused)
        );
        assert_eq!(
            index.refusal(WorkloadKind::StatefulSet, "app", "db"),
            Some("sts")
        );
        assert_eq!(index.refusal(WorkloadKind::CronJob, "app", "nightly"), None);
        index.fold(WorkloadKind::ReplicaSet, "app", "web-7d9", None);
        assert_eq!(index.refusal(WorkloadKind::Deployment, "app", "web"), None);
    }

    #[test]
    fn a_malformed_template_is_an_error_for_that_workload_only_and_a_huge_one_is_read() {
        use crate::operator::readable::Readable;
        let bad: Readable<WatchedDeployment> = serde_json::from_str(
            &json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "bad", "namespace": "app"},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "c", "securityContext": {"privileged": "yes-please"}}]}}}
            })
            .to_string(),
        )
        .expect("the guard itself deserializes");
        let invalid = bad.0.expect_err("a wrong type is an error");
        assert_eq!(invalid.metadata.name.as_deref(), Some("bad"));
        assert!(invalid.error.contains("yes-please"), "{}", invalid.error);
        // A CronJob with 300 containers and a 100 KiB annotation: read, evaluated.
        let containers: Vec<_> = (0..300)
            .map(|i| {
                json!({"name": format!("c{i}"), "image": "busybox",
                            "securityContext": {"privileged": i == 299}})
            })
            .collect();
        let huge: Readable<WatchedCronJob> = serde_json::from_str(
            &json!({
                "apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": "huge", "namespace": "app",
                             "annotations": {"note": "x".repeat(100 * 1024)}},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
                    "spec": {"restartPolicy": "Never", "containers": containers}}}}}
            })
            .to_string(),
        )
        .expect("guard");
        let (meta, spec) = huge.0.expect("readable").into_parts();
        let Reported::Template(_, _, slim, _) = reported(WorkloadKind::CronJob, meta, spec) else {
            panic!("reported")
        };
        let v = slim.evaluate(
            LevelVersion::new(Level::Baseline, Version::Latest),
            KubeVersion::NEWEST_KNOWN,
        );
        assert_eq!(v.checks.ids().collect::<Vec<_>>(), ["privileged"]);
        assert!(v.message.contains(r#"container "c299""#), "{}", v.message);
    }

    #[test]
    fn a_cron_job_is_evaluated_through_its_job_template() {
        let c: WatchedCronJob = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "app"},
            "spec": {"schedule": "0 1 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "hostNetwork": true,
                "containers": [{"name": "job", "image": "busybox"}]}}}}}
        }))
        .expect("cronjob");
        let (meta, spec) = c.into_parts();
        let Reported::Template(_, name, slim, _) = reported(WorkloadKind::CronJob, meta, spec)
        else {
            panic!("reported")
        };
        assert_eq!(name, "nightly");
        let v = slim.evaluate(
            LevelVersion::new(Level::Baseline, Version::Latest),
            KubeVersion::NEWEST_KNOWN,
        );
        assert_eq!(v.checks.ids().collect::<Vec<_>>(), ["hostNamespaces"]);
    }
}
