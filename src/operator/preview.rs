//! What `pss-operator plan` shows: the operator's own plan of every namespace (the planner of
//! [`super::desired`], with the same admission configuration and server version), as label
//! changes, and the running Pods and workload templates the enforce level after the change would
//! refuse, in kube-apiserver's words. Pure: the caller lists the cluster and prints the result.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::desired::{Exclusions, LabelChange, NamespaceView, ProfileView, label_changes, plan};
use super::index::PodIndex;
use super::pods::SlimPod;
use super::workloads::{Reported, TemplateIndex, WorkloadKind};
use crate::pss::{Admission, LevelVersion, Mode};

/// The cluster as listed: running Pods (namespace, name, projection, controller `Kind/name`) and
/// the workloads of every kind, as the operator's watches would see them.
#[derive(Default)]
pub struct Listed {
    pub pods: Vec<(String, String, SlimPod, Option<String>)>,
    pub workloads: Vec<(WorkloadKind, Reported)>,
}

/// A label the plan changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub label: String,
    /// The value found (`None`: not set).
    pub from: Option<String>,
    pub to: String,
}

impl From<LabelChange> for Change {
    fn from(c: LabelChange) -> Self {
        Change {
            label: c.label,
            from: c.found,
            to: c.want,
        }
    }
}

/// A running Pod or a workload template the enforce level after the change refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    /// `Pod`, or the workload kind.
    pub kind: String,
    pub name: String,
    /// For a Pod, the workload it belongs to (`Deployment/web`, a ReplicaSet folded into its
    /// Deployment), or its controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub checks: Vec<String>,
    /// kube-apiserver's words: the denial of a Pod (`violates PodSecurity ...`), the warning for a
    /// workload (`would violate PodSecurity ...`).
    pub message: String,
    /// Whether the enforce level in force now admits it (the change is what refuses it).
    pub new: bool,
}

/// `enforce` held back by a `WhenCompliant` rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    pub target: String,
    pub blocking: Vec<String>,
}

/// The plan of one governed namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacePreview {
    pub name: String,
    pub governed_by: Vec<String>,
    /// Whether the operator writes its labels (some governing profile is in `Enforce` mode).
    pub write: bool,
    /// The admission configuration exempts it: nothing is refused there.
    pub exempt: bool,
    pub label_changes: Vec<Change>,
    /// The enforce level in force now and after the change (`level:version`).
    pub enforce_now: String,
    pub enforce_after: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// Pods first (by name), then workloads (by kind, then name).
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub namespaces: usize,
    pub label_changes: usize,
    pub refused_pods: usize,
    pub refused_workloads: usize,
    /// Of those, the ones the enforce level in force now admits.
    pub newly_refused: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    pub kubernetes_version: String,
    pub namespaces: Vec<NamespacePreview>,
    pub summary: Summary,
}

impl Preview {
    /// Whether anything would be refused (`plan`'s exit code 1).
    pub fn refuses(&self) -> bool {
        self.summary.refused_pods + self.summary.refused_workloads > 0
    }
}

/// Plans every namespace as the operator would and lists what its enforce level would refuse.
/// Namespaces no profile governs (and excluded ones) are left out.
pub fn preview(
    profiles: &[ProfileView],
    namespaces: &[NamespaceView],
    exclusions: &Exclusions,
    admission: Admission,
    listed: Listed,
) -> Preview {
    let admission = Arc::new(admission);
    let mut pods: PodIndex<SlimPod> = PodIndex::default();
    pods.set_admission(Arc::clone(&admission));
    pods.reset_owned(listed.pods);
    let mut templates: TemplateIndex<SlimPod> = TemplateIndex::default();
    templates.set_admission(&admission);
    let mut by_kind: BTreeMap<WorkloadKind, (Vec<_>, Vec<_>)> = BTreeMap::new();
    for (kind, reported) in listed.workloads {
        let (reported_, folded) = by_kind.entry(kind).or_default();
        match reported {
            Reported::Template(ns, name, slim, _) => reported_.push((ns, name, slim)),
            Reported::Folded(ns, name, controller) => folded.push((ns, name, controller)),
            Reported::Nothing => {}
        }
    }
    for (kind, (reported, folded)) in by_kind {
        templates.kind_mut(kind).reset(reported);
        templates.reset_folded(kind, folded);
    }
    // The same question a WhenCompliant rollout asks in the operator's pass.
    fn blocking(
        pods: &PodIndex<SlimPod>,
        templates: &TemplateIndex<SlimPod>,
        ns: &str,
        level: LevelVersion,
    ) -> Vec<String> {
        let mut b = pods.blocking(ns, level);
        b.extend(templates.blocking(ns, level));
        b.sort_unstable();
        b
    }
    let plans = plan(
        profiles,
        namespaces,
        exclusions,
        &admission,
        &|ns, level| blocking(&pods, &templates, ns, level),
    );
    let mut out = Vec::new();
    let mut summary = Summary::default();
    for ns in namespaces {
        let Some(p) = plans.get(&ns.name) else {
            continue;
        };
        if p.excluded || p.governed_by.is_empty() {
            continue;
        }
        let now = admission.policy(&ns.name, |k| ns.labels.get(k).map(String::as_str));
        let changes: Vec<Change> = if p.write {
            label_changes(&ns.labels, &p.desired)
                .into_iter()
                .map(Change::from)
                .collect()
        } else {
            Vec::new()
        };
        let mut after_labels = ns.labels.as_ref().clone();
        for c in &changes {
            after_labels.insert(c.label.clone(), c.to.clone());
        }
        let after = admission.policy(&ns.name, |k| after_labels.get(k).map(String::as_str));
        let refused_now: BTreeSet<String> = if p.exempt {
            BTreeSet::new()
        } else {
            blocking(&pods, &templates, &ns.name, now.enforce)
                .into_iter()
                .collect()
        };
        pods.set_policy(&ns.name, after);
        templates.set_policy(&ns.name, after);
        let mut refused = Vec::new();
        for v in pods.violators(&ns.name, Mode::Enforce) {
            let owner = v.owner.map(|o| templates.owner_of(&ns.name, o));
            refused.push(Refused {
                kind: "Pod".to_owned(),
                name: v.pod.to_owned(),
                owner,
                checks: v.checks.ids().map(str::to_owned).collect(),
                message: pods
                    .message(&ns.name, v.pod, Mode::Enforce)
                    .unwrap_or_default(),
                new: !refused_now.contains(v.pod),
            });
        }
        summary.refused_pods += refused.len();
        for w in templates.violators(&ns.name, Mode::Enforce) {
            let id = format!("{}/{}", w.kind, w.violator.pod);
            refused.push(Refused {
                kind: w.kind.to_string(),
                name: w.violator.pod.to_owned(),
                owner: None,
                checks: w.violator.checks.ids().map(str::to_owned).collect(),
                message: templates
                    .message(w.kind, &ns.name, w.violator.pod, Mode::Enforce)
                    .unwrap_or_default(),
                new: !refused_now.contains(&id),
            });
            summary.refused_workloads += 1;
        }
        summary.newly_refused += refused.iter().filter(|r| r.new).count();
        summary.label_changes += changes.len();
        summary.namespaces += 1;
        out.push(NamespacePreview {
            name: ns.name.clone(),
            governed_by: p.governed_by.to_vec(),
            write: p.write,
            exempt: p.exempt,
            label_changes: changes,
            enforce_now: now.enforce.to_string(),
            enforce_after: after.enforce.to_string(),
            held: p.pending.as_ref().map(|h| Held {
                target: h.target.to_string(),
                blocking: h.blocking.clone(),
            }),
            refused,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Preview {
        kubernetes_version: admission.kube.to_string(),
        namespaces: out,
        summary,
    }
}

/// The text form: one block per namespace, then a summary line.
pub fn render_text(p: &Preview) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for ns in &p.namespaces {
        let _ = write!(out, "namespace {} (", ns.name);
        let _ = write!(out, "governed by {}", ns.governed_by.join(", "));
        if !ns.write {
            out.push_str("; Audit mode: labels not written");
        }
        if ns.exempt {
            out.push_str("; exempt by the admission configuration");
        }
        out.push_str(")\n");
        if ns.label_changes.is_empty() {
            out.push_str("  labels: no change\n");
        }
        for c in &ns.label_changes {
            let _ = writeln!(
                out,
                "  label {}: {} -> {}",
                c.label,
                c.from.as_deref().unwrap_or("(unset)"),
                c.to
            );
        }
        if let Some(h) = &ns.held {
            let _ = writeln!(
                out,
                "  enforce held (rollout WhenCompliant) until {} Pods/workloads stop violating {}: {}",
                h.blocking.len(),
                h.target,
                h.blocking.join(", ")
            );
        }
        if ns.refused.is_empty() {
            let _ = writeln!(out, "  enforce {}: nothing refused", ns.enforce_after);
        } else {
            let _ = writeln!(
                out,
                "  enforce {} (now {}) would refuse:",
                ns.enforce_after, ns.enforce_now
            );
        }
        for r in &ns.refused {
            let what = match (&r.owner, r.kind.as_str()) {
                (Some(owner), "Pod") => format!("Pod {} (of {owner})", r.name),
                _ => format!("{} {}", r.kind, r.name),
            };
            let already = if r.new { "" } else { " [refused already]" };
            let _ = writeln!(out, "    {what}{already}: {}", r.message);
        }
    }
    let s = &p.summary;
    let _ = writeln!(
        out,
        "{} governed namespace{}, {} label change{}; would refuse {} running Pod{} and {} workload template{} ({} newly) [Kubernetes {}]",
        s.namespaces,
        plural(s.namespaces),
        s.label_changes,
        plural(s.label_changes),
        s.refused_pods,
        plural(s.refused_pods),
        s.refused_workloads,
        plural(s.refused_workloads),
        s.newly_refused,
        p.kubernetes_version
    );
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::testing::profile;
    use crate::operator::workloads::{TemplateSpec, reported};
    use crate::pss::{AdmissionConfig, KubeVersion, Level, Policy, Version, model};
    use kube::api::ObjectMeta;
    use serde_json::json;

    use crate::operator::testing::namespace_view as ns;

    fn spec(v: serde_json::Value) -> model::PodSpec {
        serde_json::from_value(v).expect("pod spec")
    }

    fn privileged() -> model::PodSpec {
        spec(
            json!({"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": true}}]}),
        )
    }

    /// Passes baseline, fails restricted.
    fn plain() -> model::PodSpec {
        spec(json!({"containers": [{"name": "c", "image": "i"}]}))
    }

    fn pod(
        ns: &str,
        name: &str,
        s: model::PodSpec,
        owner: Option<&str>,
    ) -> (String, String, SlimPod, Option<String>) {
        (
            ns.to_owned(),
            name.to_owned(),
            SlimPod::new(model::PodMeta::default(), s),
            owner.map(str::to_owned),
        )
    }

    fn workload(
        kind: WorkloadKind,
        ns: &str,
        name: &str,
        s: model::PodSpec,
        owner: Option<(&str, &str)>,
    ) -> (WorkloadKind, Reported) {
        let meta: ObjectMeta = serde_json::from_value(json!({
            "namespace": ns,
            "name": name,
            "ownerReferences": owner.map(|(k, n)| vec![json!({"apiVersion": "apps/v1", "kind": k, "name": n, "uid": "u", "controller": true})]).unwrap_or_default(),
        }))
        .expect("meta");
        let template = model::Pod {
            metadata: model::PodMeta::default(),
            spec: s,
        };
        (
            kind,
            reported(
                kind,
                meta,
                TemplateSpec {
                    replicas: Some(1),
                    template: Some(template),
                },
            ),
        )
    }

    fn view(p: &crate::operator::crd::PodSecurityProfile) -> ProfileView {
        ProfileView::from_profile(p).expect("valid")
    }

    fn admission() -> Admission {
        Admission {
            kube: KubeVersion { minor: 37 },
            config: AdmissionConfig::default(),
        }
    }

    #[test]
    fn raising_enforce_lists_the_changes_and_what_it_refuses_with_the_exact_messages() {
        let profiles = [view(
            &profile("strict").team("apps").enforce("restricted").build(),
        )];
        let namespaces = [
            ns(
                "apps",
                &[
                    ("team", "apps"),
                    ("pod-security.kubernetes.io/enforce", "baseline"),
                ],
            ),
            ns("other", &[]),
            ns("kube-system", &[("team", "apps")]),
        ];
        let listed = Listed {
            pods: vec![
                pod("apps", "web-1", plain(), Some("ReplicaSet/web-5d8")),
                pod("apps", "root", privileged(), None),
                pod("other", "x", privileged(), None),
            ],
            workloads: vec![
                workload(WorkloadKind::Deployment, "apps", "web", plain(), None),
                workload(
                    WorkloadKind::ReplicaSet,
                    "apps",
                    "web-5d8",
                    plain(),
                    Some(("Deployment", "web")),
                ),
            ],
        };
        let p = preview(
            &profiles,
            &namespaces,
            &Exclusions::default(),
            admission(),
            listed,
        );
        assert_eq!(
            p.namespaces.len(),
            1,
            "only governed, never excluded: {p:?}"
        );
        let apps = &p.namespaces[0];
        assert_eq!(apps.governed_by, ["strict"]);
        assert_eq!(
            apps.label_changes,
            [
                Change {
                    label: "pod-security.kubernetes.io/enforce".into(),
                    from: Some("baseline".into()),
                    to: "restricted".into()
                },
                Change {
                    label: "pod-security.kubernetes.io/enforce-version".into(),
                    from: None,
                    to: "latest".into()
                },
            ]
        );
        assert_eq!(apps.enforce_now, "baseline:latest");
        assert_eq!(apps.enforce_after, "restricted:latest");
        let names: Vec<(&str, &str, bool)> = apps
            .refused
            .iter()
            .map(|r| (r.kind.as_str(), r.name.as_str(), r.new))
            .collect();
        assert_eq!(
            names,
            [
                ("Pod", "root", false),
                ("Pod", "web-1", true),
                ("Deployment", "web", true)
            ]
        );
        // The Pod of a ReplicaSet is shown at its Deployment.
        assert_eq!(apps.refused[1].owner.as_deref(), Some("Deployment/web"));
        // The messages are the evaluator's, byte for byte.
        let lv = LevelVersion::new(Level::Restricted, Version::Latest);
        let expected = crate::pss::evaluate_on(
            KubeVersion { minor: 37 },
            &model::PodMeta::default(),
            &plain(),
            lv,
        );
        assert_eq!(apps.refused[1].message, expected.denial_message());
        assert_eq!(apps.refused[2].message, expected.warning_message());
        assert!(
            apps.refused[1]
                .message
                .starts_with("violates PodSecurity \"restricted:latest\": ")
        );
        assert!(
            apps.refused[2]
                .message
                .starts_with("would violate PodSecurity \"restricted:latest\": ")
        );
        assert_eq!(
            apps.refused[0].checks,
            [
                "privileged",
                "allowPrivilegeEscalation",
                "capabilities_restricted",
                "runAsNonRoot",
                "seccompProfile_restricted"
            ]
        );
        assert_eq!(
            p.summary,
            Summary {
                namespaces: 1,
                label_changes: 2,
                refused_pods: 2,
                refused_workloads: 1,
                newly_refused: 2
            }
        );
        assert!(p.refuses());
        let text = render_text(&p);
        assert!(
            text.contains("label pod-security.kubernetes.io/enforce: baseline -> restricted"),
            "{text}"
        );
        assert!(
            text.contains("Pod web-1 (of Deployment/web): violates PodSecurity"),
            "{text}"
        );
        assert!(text.contains("Pod root [refused already]"), "{text}");
        assert!(
            text.ends_with(
                "would refuse 2 running Pods and 1 workload template (2 newly) [Kubernetes v1.37]\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_compliant_namespace_changes_labels_and_refuses_nothing() {
        let profiles = [view(&profile("base").enforce("baseline").build())];
        let namespaces = [ns("apps", &[])];
        let listed = Listed {
            pods: vec![pod("apps", "ok", plain(), None)],
            workloads: vec![],
        };
        let p = preview(
            &profiles,
            &namespaces,
            &Exclusions::default(),
            admission(),
            listed,
        );
        assert!(!p.refuses());
        assert_eq!(p.summary.label_changes, 2);
        assert_eq!(p.namespaces[0].enforce_now, "privileged:latest");
        assert!(render_text(&p).contains("enforce baseline:latest: nothing refused"));
    }

    #[test]
    fn audit_mode_writes_nothing_and_judges_the_labels_as_they_are() {
        let mut p = profile("watch").enforce("restricted").build();
        p.spec.mode = crate::operator::crd::ProfileMode::Audit;
        let namespaces = [ns("apps", &[])];
        let listed = Listed {
            pods: vec![pod("apps", "root", privileged(), None)],
            workloads: vec![],
        };
        let out = preview(
            &[view(&p)],
            &namespaces,
            &Exclusions::default(),
            admission(),
            listed,
        );
        assert!(out.namespaces[0].label_changes.is_empty());
        assert!(!out.namespaces[0].write);
        assert!(!out.refuses(), "privileged in force: nothing refused");
        assert!(render_text(&out).contains("Audit mode: labels not written"));
    }

    #[test]
    fn exempt_namespaces_and_runtime_classes_refuse_nothing() {
        let profiles = [view(&profile("base").enforce("restricted").build())];
        let mut config = AdmissionConfig::default();
        config.exemptions.namespaces.insert("legacy".into());
        config.exemptions.runtime_classes.insert("kata".into());
        let admission = Admission {
            kube: KubeVersion { minor: 37 },
            config,
        };
        let mut kata = privileged();
        kata.runtime_class_name = Some("kata".into());
        let listed = Listed {
            pods: vec![
                pod("legacy", "root", privileged(), None),
                pod("apps", "vm", kata, None),
            ],
            workloads: vec![],
        };
        let p = preview(
            &profiles,
            &[ns("legacy", &[]), ns("apps", &[])],
            &Exclusions::default(),
            admission,
            listed,
        );
        assert!(!p.refuses(), "{p:?}");
        assert!(p.namespaces.iter().any(|n| n.name == "legacy" && n.exempt));
    }

    #[test]
    fn a_when_compliant_rollout_holds_enforce_and_names_its_blockers() {
        let mut p = profile("slow").enforce("restricted").build();
        p.spec.rollout = crate::operator::crd::Rollout::WhenCompliant;
        let namespaces = [ns(
            "apps",
            &[("pod-security.kubernetes.io/enforce", "baseline")],
        )];
        let listed = Listed {
            pods: vec![pod("apps", "web-1", plain(), None)],
            workloads: vec![workload(
                WorkloadKind::StatefulSet,
                "apps",
                "db",
                plain(),
                None,
            )],
        };
        let out = preview(
            &[view(&p)],
            &namespaces,
            &Exclusions::default(),
            admission(),
            listed,
        );
        let apps = &out.namespaces[0];
        assert_eq!(apps.enforce_after, "baseline:latest", "held");
        assert_eq!(
            apps.held,
            Some(Held {
                target: "restricted:latest".into(),
                blocking: vec!["StatefulSet/db".into(), "web-1".into()]
            })
        );
        assert!(
            apps.label_changes
                .iter()
                .all(|c| !c.label.ends_with("/enforce"))
        );
        assert!(!out.refuses(), "baseline refuses neither");
        let _ = Policy::DEFAULT;
    }
}
