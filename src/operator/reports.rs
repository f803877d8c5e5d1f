//! Policy reports (`--reports`): one namespaced report per governed namespace, in the format
//! Kyverno, Trivy Operator, Falco and Policy Reporter read: OpenReports (`openreports.io/v1alpha1`
//! `Report`) or its predecessor (`wgpolicyk8s.io/v1alpha2` `PolicyReport`). Pure: what a report
//! holds, from the Pod and template indexes; `controller::reports` writes it.
//!
//! Content: one result per subject and failing check, the subject a workload (a Deployment, a
//! CronJob ... with a Deployment's ReplicaSets and a CronJob's Jobs folded into their owner, whose
//! Pods and template are counted there) or a standalone Pod; policy `pod-security-<mode>` for the
//! first mode (enforce, audit, warn) whose level in force the check fails; rule the upstream
//! check id; message kube-apiserver's (a Pod's denial, a template's warning); result `fail` for
//! enforce, `warn` for audit and warn; severity `high` for a baseline check, `medium` for a
//! restricted one. Results are sorted (fail first, then high, then subject and rule) and capped
//! at [`MAX_RESULTS`]; the summary counts all of them, and the cap and what it left out are
//! stated (`configuration.limits.maxResults` in OpenReports, annotations in both).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use super::index::{Evaluate, PodIndex};
use super::workloads::{TemplateIndex, WorkloadKind};
use crate::pss::{CheckId, Level, Mode};

/// The report's name in each namespace, its source, and the label it is found by.
pub const REPORT_NAME: &str = "pss-operator";
pub const SOURCE: &str = "pss-operator";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "pss-operator");
/// Results kept per report.
pub const MAX_RESULTS: usize = 200;
/// The digest of what the operator wrote: compared before any write, also after a restart.
pub const HASH_ANNOTATION: &str = "pss-operator.io/content-hash";
pub const MAX_RESULTS_ANNOTATION: &str = "pss-operator.io/max-results";
pub const OMITTED_ANNOTATION: &str = "pss-operator.io/omitted-results";

/// Which report kind is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenReports,
    PolicyReport,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::OpenReports, Format::PolicyReport];

    pub fn group_version(self) -> (&'static str, &'static str) {
        match self {
            Format::OpenReports => ("openreports.io", "v1alpha1"),
            Format::PolicyReport => ("wgpolicyk8s.io", "v1alpha2"),
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Format::OpenReports => "Report",
            Format::PolicyReport => "PolicyReport",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Format::OpenReports => "reports",
            Format::PolicyReport => "policyreports",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, version) = self.group_version();
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.kind()),
            self.plural(),
        )
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::OpenReports => "openreports",
            Format::PolicyReport => "policyreport",
        })
    }
}

/// What `--reports` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wanted {
    #[default]
    Off,
    /// The first format whose CRD the API server serves (OpenReports before PolicyReport).
    Auto,
    Only(Format),
}

impl Wanted {
    /// The formats to look for, in order of preference.
    pub fn candidates(self) -> &'static [Format] {
        match self {
            Wanted::Off => &[],
            Wanted::Auto => &Format::ALL,
            Wanted::Only(Format::OpenReports) => &[Format::OpenReports],
            Wanted::Only(Format::PolicyReport) => &[Format::PolicyReport],
        }
    }
}

/// What a result is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Subject {
    kind: String,
    name: String,
}

impl Subject {
    fn api_version(&self) -> &'static str {
        if self.kind == "Pod" {
            return "v1";
        }
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == self.kind)
            .map_or("", WorkloadKind::api_version)
    }
}

/// One subject failing one check.
#[derive(Debug, Clone)]
struct Finding {
    mode: Mode,
    level: String,
    message: String,
    /// Violating Pods counted at this subject (0: only its template).
    pods: usize,
}

fn severity(check: CheckId) -> &'static str {
    match check.level() {
        Level::Restricted => "medium",
        _ => "high",
    }
}

fn outcome(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "fail",
        Mode::Audit | Mode::Warn => "warn",
    }
}

/// The report of namespace `ns` (whole object, metadata included) and the digest of its content.
pub fn report<P: Evaluate>(
    format: Format,
    ns: &str,
    pods: &PodIndex<P>,
    templates: &TemplateIndex<P>,
) -> (Value, String) {
    let mut found: BTreeMap<(Subject, CheckId), Finding> = BTreeMap::new();
    for mode in Mode::ALL {
        let level = pods.policy(ns).get(mode);
        // Templates first: a workload's message is its template's warning when it has one.
        for w in templates.violators(ns, mode) {
            let subject = Subject {
                kind: w.kind.to_string(),
                name: w.violator.pod.to_owned(),
            };
            for check in w.violator.checks {
                if let Entry::Vacant(slot) = found.entry((subject.clone(), check)) {
                    slot.insert(Finding {
                        mode,
                        level: level.to_string(),
                        message: templates
                            .message(w.kind, ns, w.violator.pod, mode)
                            .unwrap_or_default(),
                        pods: 0,
                    });
                }
            }
        }
        // Pods at their workload (or as themselves); the first Pod's denial when the template
        // does not speak for it.
        let mut counted: BTreeMap<(Subject, CheckId), usize> = BTreeMap::new();
        for v in pods.violators(ns, mode) {
            let subject = match v.owner {
                Some(owner) => {
                    let owner = templates.owner_of(ns, owner);
                    let (kind, name) = owner.split_once('/').unwrap_or(("", owner.as_str()));
                    Subject {
                        kind: kind.to_owned(),
                        name: name.to_owned(),
                    }
                }
                None => Subject {
                    kind: "Pod".to_owned(),
                    name: v.pod.to_owned(),
                },
            };
            for check in v.checks {
                let key = (subject.clone(), check);
                match found.entry(key.clone()) {
                    Entry::Vacant(slot) => {
                        slot.insert(Finding {
                            mode,
                            level: level.to_string(),
                            message: pods.message(ns, v.pod, mode).unwrap_or_default(),
                            pods: 0,
                        });
                    }
                    Entry::Occupied(slot) if slot.get().mode != mode => continue,
                    Entry::Occupied(_) => {}
                }
                *counted.entry(key).or_default() += 1;
            }
        }
        for (key, n) in counted {
            if let Some(f) = found.get_mut(&key) {
                f.pods = n;
            }
        }
    }

    let mut results: Vec<(usize, &'static str, Subject, CheckId, Finding)> = found
        .into_iter()
        .map(|((subject, check), f)| {
            let rank = usize::from(f.mode != Mode::Enforce) * 2
                + usize::from(check.level() == Level::Restricted);
            (rank, check.as_str(), subject, check, f)
        })
        .collect();
    results.sort_by(|a, b| (a.0, &a.2, a.1).cmp(&(b.0, &b.2, b.1)));
    let (mut fail, mut warn) = (0, 0);
    for r in &results {
        match outcome(r.4.mode) {
            "fail" => fail += 1,
            _ => warn += 1,
        }
    }
    let omitted = results.len().saturating_sub(MAX_RESULTS);
    let listed: Vec<Value> = results
        .into_iter()
        .take(MAX_RESULTS)
        .map(|(_, rule, subject, check, f)| {
            let mut properties = BTreeMap::new();
            properties.insert("level", f.level.clone());
            if f.pods > 0 {
                properties.insert("violatingPods", f.pods.to_string());
            }
            let mut resource = json!({"kind": subject.kind, "name": subject.name, "namespace": ns});
            let api_version = subject.api_version();
            if !api_version.is_empty() {
                resource["apiVersion"] = json!(api_version);
            }
            json!({
                "source": SOURCE,
                "policy": format!("pod-security-{}", f.mode),
                "rule": rule,
                "category": match check.level() {
                    Level::Restricted => "Pod Security Standards (Restricted)",
                    _ => "Pod Security Standards (Baseline)",
                },
                "severity": severity(check),
                "result": outcome(f.mode),
                "scored": true,
                "message": f.message,
                "properties": properties,
                "resources": [resource],
            })
        })
        .collect();
    let mut content = json!({
        "scope": {"apiVersion": "v1", "kind": "Namespace", "name": ns},
        "summary": {"pass": 0, "fail": fail, "warn": warn, "error": 0, "skip": 0},
        "results": listed,
    });
    if format == Format::OpenReports {
        content["source"] = json!(SOURCE);
        content["configuration"] = json!({"limits": {"maxResults": MAX_RESULTS}});
    }
    let hash = digest(format, &content);
    let (group, version) = format.group_version();
    let mut object = json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": format.kind(),
        "metadata": {
            "name": REPORT_NAME,
            "namespace": ns,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
            "annotations": {
                HASH_ANNOTATION: hash,
                MAX_RESULTS_ANNOTATION: MAX_RESULTS.to_string(),
                OMITTED_ANNOTATION: omitted.to_string(),
            },
        },
    });
    if let (Some(o), Some(c)) = (object.as_object_mut(), content.as_object()) {
        o.extend(c.clone());
    }
    (object, hash)
}

/// SHA-256 of the content (serde_json writes object keys sorted), hex.
fn digest(format: Format, content: &Value) -> String {
    let text = format!("{format}\n{content}");
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::pods::SlimPod;
    use crate::operator::workloads::{Reported, TemplateSpec, reported};
    use crate::pss::{Admission, KubeVersion, LevelVersion, Policy, Version, model};
    use kube::api::ObjectMeta;
    use std::sync::Arc;

    fn spec(v: Value) -> model::PodSpec {
        serde_json::from_value(v).expect("pod spec")
    }

    fn privileged() -> model::PodSpec {
        spec(
            json!({"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": true}}]}),
        )
    }

    /// Fails restricted only.
    fn plain() -> model::PodSpec {
        spec(json!({"containers": [{"name": "c", "image": "i"}]}))
    }

    fn slim(s: model::PodSpec) -> SlimPod {
        SlimPod::new(model::PodMeta::default(), s)
    }

    fn lv(level: Level) -> LevelVersion {
        LevelVersion::new(level, Version::Latest)
    }

    struct World {
        pods: PodIndex<SlimPod>,
        templates: TemplateIndex<SlimPod>,
    }

    fn world(policy: Policy) -> World {
        let admission = Arc::new(Admission {
            kube: KubeVersion { minor: 37 },
            ..Default::default()
        });
        let mut pods = PodIndex::default();
        pods.set_admission(Arc::clone(&admission));
        pods.set_policy("apps", policy);
        let mut templates = TemplateIndex::default();
        templates.set_admission(&admission);
        templates.set_policy("apps", policy);
        World { pods, templates }
    }

    fn template(
        w: &mut World,
        kind: WorkloadKind,
        name: &str,
        s: model::PodSpec,
        owner: Option<&str>,
    ) {
        let meta: ObjectMeta = serde_json::from_value(json!({
            "namespace": "apps", "name": name,
            "ownerReferences": owner.map(|o| vec![json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": o, "uid": "u", "controller": true})]).unwrap_or_default(),
        }))
        .expect("meta");
        let r = reported(
            kind,
            meta,
            TemplateSpec {
                replicas: Some(1),
                template: Some(model::Pod {
                    metadata: Default::default(),
                    spec: s,
                }),
            },
        );
        match r {
            Reported::Template(ns, name, slim, _) => {
                w.templates.kind_mut(kind).apply(&ns, &name, slim);
            }
            Reported::Folded(ns, name, c) => {
                w.templates.fold(kind, &ns, &name, Some(c));
            }
            Reported::Nothing => panic!("nothing reported"),
        }
    }

    fn results(r: &Value) -> Vec<(String, String, String, String, String)> {
        r["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|x| {
                let res = &x["resources"][0];
                (
                    x["policy"].as_str().unwrap_or_default().to_owned(),
                    format!(
                        "{}/{}",
                        res["kind"].as_str().unwrap_or_default(),
                        res["name"].as_str().unwrap_or_default()
                    ),
                    x["rule"].as_str().unwrap_or_default().to_owned(),
                    x["result"].as_str().unwrap_or_default().to_owned(),
                    x["severity"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn policy(enforce: Level, audit: Level, warn: Level) -> Policy {
        Policy {
            enforce: lv(enforce),
            audit: lv(audit),
            warn: lv(warn),
        }
    }

    #[test]
    fn one_result_per_subject_and_check_at_the_first_mode_that_fails_it() {
        let mut w = world(policy(
            Level::Baseline,
            Level::Restricted,
            Level::Restricted,
        ));
        // A Deployment whose template and Pods (through a folded ReplicaSet) fail restricted only.
        template(&mut w, WorkloadKind::Deployment, "web", plain(), None);
        template(
            &mut w,
            WorkloadKind::ReplicaSet,
            "web-5d8",
            plain(),
            Some("web"),
        );
        w.pods.apply_owned(
            "apps",
            "web-5d8-a",
            slim(plain()),
            Some("ReplicaSet/web-5d8"),
        );
        w.pods.apply_owned(
            "apps",
            "web-5d8-b",
            slim(plain()),
            Some("ReplicaSet/web-5d8"),
        );
        // A standalone privileged Pod: fails baseline (enforce) and more of restricted (audit).
        w.pods.apply("apps", "root", slim(privileged()));
        let (r, _) = report(Format::OpenReports, "apps", &w.pods, &w.templates);
        let got = results(&r);
        let s = |p: &str, subj: &str, rule: &str, res: &str, sev: &str| {
            (
                p.to_owned(),
                subj.to_owned(),
                rule.to_owned(),
                res.to_owned(),
                sev.to_owned(),
            )
        };
        assert_eq!(
            got,
            [
                s(
                    "pod-security-enforce",
                    "Pod/root",
                    "privileged",
                    "fail",
                    "high"
                ),
                s(
                    "pod-security-audit",
                    "Deployment/web",
                    "allowPrivilegeEscalation",
                    "warn",
                    "medium"
                ),
                s(
                    "pod-security-audit",
                    "Deployment/web",
                    "capabilities_restricted",
                    "warn",
                    "medium"
                ),
                s(
                    "pod-security-audit",
                    "Deployment/web",
                    "runAsNonRoot",
                    "warn",
                    "medium"
                ),
                s(
                    "pod-security-audit",
                    "Deployment/web",
                    "seccompProfile_restricted",
                    "warn",
                    "medium"
                ),
                s(
                    "pod-security-audit",
                    "Pod/root",
                    "allowPrivilegeEscalation",
                    "warn",
                    "medium"
                ),
                s(
                    "pod-security-audit",
                    "Pod/root",
                    "capabilities_restricted",
                    "warn",
                    "medium"
                ),
                s(
                    "pod-security-audit",
                    "Pod/root",
                    "runAsNonRoot",
                    "warn",
                    "medium"
                ),
                s(
                    "pod-security-audit",
                    "Pod/root",
                    "seccompProfile_restricted",
                    "warn",
                    "medium"
                ),
            ],
            "warn duplicates audit: nothing more"
        );
        assert_eq!(
            r["summary"],
            json!({"pass": 0, "fail": 1, "warn": 8, "error": 0, "skip": 0})
        );
        // The exact messages: a Pod's denial, a template's warning; the Pods counted at the Deployment.
        let root = &r["results"][0];
        let eval = crate::pss::evaluate_on(
            KubeVersion { minor: 37 },
            &model::PodMeta::default(),
            &privileged(),
            lv(Level::Baseline),
        );
        assert_eq!(root["message"], json!(eval.denial_message()));
        assert_eq!(
            root["resources"][0],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "root", "namespace": "apps"})
        );
        assert_eq!(
            root["properties"],
            json!({"level": "baseline:latest", "violatingPods": "1"})
        );
        let web = &r["results"][1];
        let eval = crate::pss::evaluate_on(
            KubeVersion { minor: 37 },
            &model::PodMeta::default(),
            &plain(),
            lv(Level::Restricted),
        );
        assert_eq!(web["message"], json!(eval.warning_message()));
        assert_eq!(
            web["properties"],
            json!({"level": "restricted:latest", "violatingPods": "2"})
        );
        assert_eq!(web["resources"][0]["apiVersion"], "apps/v1");
        assert_eq!(web["source"], SOURCE);
        assert_eq!(web["category"], "Pod Security Standards (Restricted)");
        // The object: OpenReports' own source and limits, our label and annotations.
        assert_eq!(r["apiVersion"], "openreports.io/v1alpha1");
        assert_eq!(r["kind"], "Report");
        assert_eq!(r["source"], SOURCE);
        assert_eq!(
            r["configuration"],
            json!({"limits": {"maxResults": MAX_RESULTS}})
        );
        assert_eq!(r["metadata"]["name"], REPORT_NAME);
        assert_eq!(r["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(r["metadata"]["annotations"][OMITTED_ANNOTATION], "0");
        assert_eq!(
            r["scope"],
            json!({"apiVersion": "v1", "kind": "Namespace", "name": "apps"})
        );
    }

    #[test]
    fn the_policy_report_format_has_no_report_level_source_or_configuration() {
        let mut w = world(policy(Level::Baseline, Level::Baseline, Level::Baseline));
        w.pods.apply("apps", "root", slim(privileged()));
        let (r, h) = report(Format::PolicyReport, "apps", &w.pods, &w.templates);
        assert_eq!(r["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(r["kind"], "PolicyReport");
        assert!(r.get("source").is_none() && r.get("configuration").is_none());
        assert_eq!(results(&r).len(), 1);
        let (_, other) = report(Format::OpenReports, "apps", &w.pods, &w.templates);
        assert_ne!(h, other, "the format is part of the digest");
        assert_eq!(Format::PolicyReport.api_resource().plural, "policyreports");
        assert_eq!(
            Format::OpenReports.api_resource().api_version,
            "openreports.io/v1alpha1"
        );
    }

    #[test]
    fn the_digest_follows_the_content_only() {
        let mut w = world(policy(Level::Baseline, Level::Baseline, Level::Baseline));
        let (clean, h0) = report(Format::OpenReports, "apps", &w.pods, &w.templates);
        assert_eq!(clean["results"], json!([]));
        assert_eq!(clean["summary"]["fail"], 0);
        w.pods.apply("apps", "ok", slim(plain()));
        assert_eq!(
            report(Format::OpenReports, "apps", &w.pods, &w.templates).1,
            h0,
            "a compliant Pod changes nothing"
        );
        w.pods.apply("apps", "root", slim(privileged()));
        let h1 = report(Format::OpenReports, "apps", &w.pods, &w.templates).1;
        assert_ne!(h1, h0);
        assert_eq!(
            report(Format::OpenReports, "apps", &w.pods, &w.templates).1,
            h1,
            "deterministic"
        );
        assert_eq!(h1.len(), 64);
        w.pods.delete("apps", "root");
        assert_eq!(
            report(Format::OpenReports, "apps", &w.pods, &w.templates).1,
            h0
        );
    }

    #[test]
    fn results_are_capped_and_the_summary_counts_them_all() {
        let mut w = world(policy(Level::Baseline, Level::Baseline, Level::Baseline));
        for i in 0..(MAX_RESULTS + 7) {
            w.pods
                .apply("apps", &format!("p{i:04}"), slim(privileged()));
        }
        let (r, _) = report(Format::OpenReports, "apps", &w.pods, &w.templates);
        assert_eq!(r["results"].as_array().map(Vec::len), Some(MAX_RESULTS));
        assert_eq!(r["summary"]["fail"], MAX_RESULTS + 7);
        assert_eq!(r["metadata"]["annotations"][OMITTED_ANNOTATION], "7");
        assert_eq!(
            r["metadata"]["annotations"][MAX_RESULTS_ANNOTATION],
            MAX_RESULTS.to_string()
        );
        assert_eq!(
            r["results"][0]["resources"][0]["name"], "p0000",
            "sorted by subject"
        );
    }

    #[test]
    fn auto_prefers_openreports() {
        assert_eq!(
            Wanted::Auto.candidates(),
            [Format::OpenReports, Format::PolicyReport]
        );
        assert_eq!(
            Wanted::Only(Format::PolicyReport).candidates(),
            [Format::PolicyReport]
        );
        assert!(Wanted::Off.candidates().is_empty());
        assert_eq!(Wanted::default(), Wanted::Off);
    }

    #[test]
    fn privileged_everywhere_reports_nothing() {
        let mut w = world(Policy::DEFAULT);
        w.pods.apply("apps", "root", slim(privileged()));
        let (r, _) = report(Format::OpenReports, "apps", &w.pods, &w.templates);
        assert_eq!(r["results"], json!([]));
    }
}
