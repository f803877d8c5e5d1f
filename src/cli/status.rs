//! `pss-operator status` (and `kubectl pss status`): the PodSecurityProfiles' status as tables,
//! read-only (`list` on podsecurityprofiles). Rendering is pure ([`render`]).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::operator::crd::{ModeStatus, PodSecurityProfile, ProfileMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Only this profile.
    #[arg(long, short = 'p')]
    pub profile: Option<String>,
    /// Output format: tables, or the profiles' status as JSON.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(args: StatusArgs) -> ExitCode {
    let Some(runtime) = super::client_runtime() else {
        return ExitCode::FAILURE;
    };
    let profiles = match runtime.block_on(list(args.profile.as_deref())) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.output {
        Output::Text => print!("{}", render(&profiles)),
        Output::Json => {
            let rows: Vec<serde_json::Value> = profiles
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name_any(),
                        "mode": mode(p),
                        "status": p.status,
                    })
                })
                .collect();
            match serde_json::to_string_pretty(&rows) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("error: writing JSON: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

async fn list(only: Option<&str>) -> Result<Vec<PodSecurityProfile>, String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("connecting to the cluster (kubeconfig): {e}"))?;
    let api: Api<PodSecurityProfile> = Api::all(client);
    let mut profiles = match only {
        Some(name) => vec![
            api.get(name)
                .await
                .map_err(|e| format!("reading PodSecurityProfile {name}: {e}"))?,
        ],
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(|e| format!("listing PodSecurityProfiles: {e}"))?
                .items
        }
    };
    profiles.sort_by_key(|p| p.name_any());
    Ok(profiles)
}

fn mode(p: &PodSecurityProfile) -> &'static str {
    match p.spec.mode {
        ProfileMode::Enforce => "Enforce",
        ProfileMode::Audit => "Audit",
    }
}

/// Columns padded to their widest cell, two spaces apart (kubectl's look).
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = *w);
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(out, header.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

fn condition(p: &PodSecurityProfile, kind: &str) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .map_or_else(|| "-".to_owned(), |c| c.status.clone())
}

fn level(spec: &Option<crate::operator::crd::LevelSpec>) -> String {
    match spec.as_ref().map(|s| s.level_version()) {
        Some(Ok(Some(lv))) => lv.to_string(),
        Some(Err(e)) => format!("invalid ({e})"),
        _ => "-".to_owned(),
    }
}

/// The tables `status` prints: profiles; namespaces with violating Pods; workloads (blocked,
/// violating, and owners of violating Pods).
pub fn render(profiles: &[PodSecurityProfile]) -> String {
    let mut out = String::new();
    if profiles.is_empty() {
        out.push_str("No PodSecurityProfiles found.\n");
        return out;
    }
    let rows: Vec<Vec<String>> = profiles
        .iter()
        .map(|p| {
            let s = p.status.clone().unwrap_or_default();
            vec![
                p.name_any(),
                mode(p).to_owned(),
                level(&p.spec.enforce),
                level(&p.spec.audit),
                level(&p.spec.warn),
                s.matched_namespaces.to_string(),
                s.enforced_namespaces.to_string(),
                s.pending_namespaces.to_string(),
                s.conflicted_namespaces.to_string(),
                s.enforce
                    .as_ref()
                    .map_or(0, |m| m.violating_pods)
                    .to_string(),
                s.blocked_workloads.to_string(),
                condition(p, "Ready"),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "PROFILE",
            "MODE",
            "ENFORCE",
            "AUDIT",
            "WARN",
            "MATCHED",
            "ENFORCED",
            "PENDING",
            "CONFLICTED",
            "VIOLATING-PODS",
            "BLOCKED",
            "READY",
        ],
        &rows,
    );

    let modes = |p: &PodSecurityProfile| -> Vec<(&'static str, ModeStatus)> {
        let s = p.status.clone().unwrap_or_default();
        [("enforce", s.enforce), ("audit", s.audit), ("warn", s.warn)]
            .into_iter()
            .filter_map(|(m, st)| st.map(|st| (m, st)))
            .collect()
    };
    let mut namespaces = Vec::new();
    let mut workloads = Vec::new();
    for p in profiles {
        let name = p.name_any();
        for (m, st) in modes(p) {
            for n in &st.namespaces {
                namespaces.push(vec![
                    name.clone(),
                    m.to_owned(),
                    n.namespace.clone(),
                    n.violating_pods.to_string(),
                ]);
            }
            if st.omitted_namespaces > 0 {
                namespaces.push(vec![
                    name.clone(),
                    m.to_owned(),
                    format!("({} more)", st.omitted_namespaces),
                    "-".to_owned(),
                ]);
            }
            for w in &st.workload_samples {
                // A template that violates the enforce level in force: its next Pod is refused.
                let state = if m == "enforce" && p.spec.mode == ProfileMode::Enforce {
                    "blocked"
                } else {
                    "violating"
                };
                workloads.push(vec![
                    name.clone(),
                    m.to_owned(),
                    w.namespace.clone(),
                    format!("{}/{}", w.kind, w.name),
                    state.to_owned(),
                    w.replicas.map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    w.checks.join(","),
                ]);
            }
            for o in &st.owners {
                workloads.push(vec![
                    name.clone(),
                    m.to_owned(),
                    o.namespace.clone(),
                    format!("{}/{}", o.kind, o.name),
                    format!("{} violating Pods", o.violating_pods),
                    "-".to_owned(),
                    String::new(),
                ]);
            }
        }
    }
    out.push('\n');
    if namespaces.is_empty() {
        out.push_str("No namespace has violating Pods.\n");
    } else {
        table(
            &mut out,
            &["PROFILE", "MODE", "NAMESPACE", "VIOLATING-PODS"],
            &namespaces,
        );
    }
    out.push('\n');
    if workloads.is_empty() {
        out.push_str("No violating or blocked workloads.\n");
    } else {
        table(
            &mut out,
            &[
                "PROFILE",
                "MODE",
                "NAMESPACE",
                "WORKLOAD",
                "STATE",
                "REPLICAS",
                "CHECKS",
            ],
            &workloads,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{
        NamespaceViolations, OwnerViolations, PodSecurityProfileStatus, WorkloadViolation,
    };
    use crate::operator::testing::profile;

    #[test]
    fn no_profiles_says_so() {
        assert_eq!(render(&[]), "No PodSecurityProfiles found.\n");
    }

    #[test]
    fn profiles_namespaces_and_workloads_are_tables() {
        let mut p = profile("strict").enforce("restricted").build();
        p.status = Some(PodSecurityProfileStatus {
            matched_namespaces: 2,
            enforced_namespaces: 2,
            blocked_workloads: 1,
            enforce: Some(ModeStatus {
                violating_pods: 3,
                namespaces: vec![NamespaceViolations {
                    namespace: "apps".into(),
                    violating_pods: 3,
                }],
                workload_samples: vec![WorkloadViolation {
                    kind: "Deployment".into(),
                    namespace: "apps".into(),
                    name: "web".into(),
                    replicas: Some(2),
                    checks: vec!["privileged".into(), "runAsNonRoot".into()],
                    message: "would violate".into(),
                    refused: None,
                }],
                owners: vec![OwnerViolations {
                    namespace: "apps".into(),
                    kind: "Deployment".into(),
                    name: "web".into(),
                    violating_pods: 3,
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let bare = profile("bare").enforce("baseline").build();
        let text = render(&[p, bare]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "PROFILE  MODE     ENFORCE            AUDIT  WARN  MATCHED  ENFORCED  PENDING  CONFLICTED  VIOLATING-PODS  BLOCKED  READY"
        );
        assert_eq!(
            lines[1],
            "strict   Enforce  restricted:latest  -      -     2        2         0        0           3               1        -"
        );
        assert!(
            lines[2].starts_with("bare     Enforce  baseline:latest"),
            "{text}"
        );
        assert!(text.contains("strict   enforce  apps       3\n"), "{text}");
        assert!(
            text.contains(
                "apps       Deployment/web  blocked           2         privileged,runAsNonRoot\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("apps       Deployment/web  3 violating Pods  -\n"),
            "{text}"
        );
    }
}
