//! `pss-operator plan` (and `kubectl pss plan`): what the operator would do to the live cluster,
//! read-only. Lists the profiles (or reads them from files), namespaces, running Pods and
//! workloads, reads the server's version, and hands them to the operator's own planner and
//! evaluator ([`crate::operator::preview`]). Needs only `get`/`list`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::operator::readable::Readable;
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, ObjectList, PartialObjectMeta};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::operator::crd::PodSecurityProfile;
use crate::operator::desired::{Exclusions, NamespaceView, ProfileView};
use crate::operator::pods::WatchedPod;
use crate::operator::preview::{self, Listed};
use crate::operator::workloads::{
    WatchedCronJob, WatchedDaemonSet, WatchedDeployment, WatchedJob, WatchedReplicaSet,
    WatchedReplicationController, WatchedStatefulSet, WatchedWorkload, reported,
};
use crate::pss::{Admission, KubeVersion};

/// Exit codes: nothing refused, something refused, usage/input/API error.
pub const EXIT_NOTHING_REFUSED: u8 = 0;
pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

/// Objects per list request: every object is read, page after page (no limit on their number).
const PAGE: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// PodSecurityProfile files or directories (YAML/JSON, several documents each): planned as if
    /// applied, replacing the cluster's profiles of the same name.
    #[arg(long = "filename", short = 'f', value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Plan with the profiles of --filename only, ignoring those in the cluster.
    #[arg(long, requires = "files")]
    pub only_files: bool,
    /// The cluster's PodSecurity admission configuration (as for `run`): its defaults and
    /// exemptions. Without it: kube-apiserver's defaults.
    #[arg(long, value_name = "FILE")]
    pub admission_config: Option<PathBuf>,
    /// Namespaces the operator is told to leave alone (as for `run`), besides the system ones.
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// The operator's namespace (excluded, as for `run`).
    #[arg(long)]
    pub operator_namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(args: PlanArgs) -> ExitCode {
    let Some(runtime) = super::client_runtime() else {
        return ExitCode::from(EXIT_ERROR);
    };
    match runtime.block_on(plan(&args)) {
        Ok(p) => {
            match args.output {
                Output::Text => print!("{}", preview::render_text(&p)),
                Output::Json => match serde_json::to_string_pretty(&p) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("error: writing JSON: {e}");
                        return ExitCode::from(EXIT_ERROR);
                    }
                },
            }
            ExitCode::from(if p.refuses() {
                EXIT_REFUSED
            } else {
                EXIT_NOTHING_REFUSED
            })
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn plan(args: &PlanArgs) -> Result<preview::Preview, String> {
    // Local input first: a wrong file is named before the cluster is asked anything.
    let from_files = read_profiles(&args.files)?;
    let config = super::run::load_admission_config(args.admission_config.as_deref())?;
    let client = Client::try_default()
        .await
        .map_err(|e| format!("connecting to the cluster (kubeconfig): {e}"))?;
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| format!("reading the API server's /version: {e}"))?;
    let kube = KubeVersion::from_server(&info.major, &info.minor, &info.git_version)?;
    let mut profiles: Vec<PodSecurityProfile> = Vec::new();
    if !args.only_files {
        for guard in
            list_all::<Readable<PodSecurityProfile>>(&client, "podsecurityprofiles").await?
        {
            match guard.0 {
                Ok(p) if p.metadata.deletion_timestamp.is_none() => profiles.push(p),
                Ok(_) => {}
                Err(invalid) => eprintln!(
                    "warning: PodSecurityProfile {} skipped: {}",
                    invalid.metadata.name.unwrap_or_default(),
                    invalid.error
                ),
            }
        }
    }
    for p in from_files {
        profiles.retain(|q| q.name_any() != p.name_any());
        profiles.push(p);
    }
    let mut views = Vec::new();
    for p in &profiles {
        match ProfileView::from_profile(p) {
            Ok(v) => views.push(v),
            // The operator marks such a profile Degraded and plans without it.
            Err(e) => eprintln!("warning: PodSecurityProfile {} skipped: {e}", p.name_any()),
        }
    }
    let namespaces: Vec<NamespaceView> =
        list_all::<PartialObjectMeta<Namespace>>(&client, "namespaces")
            .await?
            .into_iter()
            .map(|n| NamespaceView {
                name: n.name_any(),
                labels: Arc::new(n.labels().clone()),
            })
            .collect();
    let mut listed = Listed::default();
    for guard in list_all::<Readable<WatchedPod>>(&client, "pods").await? {
        match guard.0 {
            Ok(pod) => {
                let owner = pod.controller();
                if pod.is_running()
                    && let Some((ns, name, slim)) = pod.into_slim()
                {
                    listed.pods.push((ns, name, slim, owner));
                }
            }
            Err(invalid) => eprintln!(
                "warning: Pod {}/{} skipped: cannot read its spec: {}",
                invalid.metadata.namespace.unwrap_or_default(),
                invalid.metadata.name.unwrap_or_default(),
                invalid.error
            ),
        }
    }
    list_workloads::<WatchedCronJob>(&client, &mut listed).await?;
    list_workloads::<WatchedDaemonSet>(&client, &mut listed).await?;
    list_workloads::<WatchedDeployment>(&client, &mut listed).await?;
    list_workloads::<WatchedJob>(&client, &mut listed).await?;
    list_workloads::<WatchedReplicaSet>(&client, &mut listed).await?;
    list_workloads::<WatchedReplicationController>(&client, &mut listed).await?;
    list_workloads::<WatchedStatefulSet>(&client, &mut listed).await?;
    let exclusions = Exclusions::new(
        args.exclude_namespaces
            .iter()
            .cloned()
            .chain(args.operator_namespace.clone()),
    );
    Ok(preview::preview(
        &views,
        &namespaces,
        &exclusions,
        Admission { kube, config },
        listed,
    ))
}

async fn list_workloads<W>(client: &Client, listed: &mut Listed) -> Result<(), String>
where
    W: WatchedWorkload + DeserializeOwned + 'static,
{
    let kind = W::KIND;
    let what = format!("{}s", kind.as_str().to_lowercase());
    for guard in list_all::<Readable<W>>(client, &what).await? {
        match guard.0 {
            Ok(w) => {
                let (meta, spec) = w.into_parts();
                listed.workloads.push((kind, reported(kind, meta, spec)));
            }
            Err(invalid) => eprintln!(
                "warning: {kind} {}/{} skipped: cannot read its template: {}",
                invalid.metadata.namespace.unwrap_or_default(),
                invalid.metadata.name.unwrap_or_default(),
                invalid.error
            ),
        }
    }
    Ok(())
}

/// Every object of a cluster-wide list, page by page.
async fn list_all<K>(client: &Client, what: &str) -> Result<Vec<K>, String>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page: ObjectList<K> = api
            .list(&params)
            .await
            .map_err(|e| format!("listing {what}: {e}"))?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// The PodSecurityProfiles of `paths` (files, or directories walked for .yaml/.yml/.json);
/// anything else, or an unreadable profile, is an error naming the file and document.
pub fn read_profiles(paths: &[PathBuf]) -> Result<Vec<PodSecurityProfile>, String> {
    let mut profiles: Vec<PodSecurityProfile> = Vec::new();
    for path in paths {
        for file in files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("reading {}: {e}", file.display()))?;
            for p in parse_profiles(&file, &text)? {
                if profiles.iter().any(|q| q.name_any() == p.name_any()) {
                    return Err(format!(
                        "{}: PodSecurityProfile {} is given twice",
                        file.display(),
                        p.name_any()
                    ));
                }
                profiles.push(p);
            }
        }
    }
    Ok(profiles)
}

fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_dir() {
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
            let entry = entry.map_err(|e| format!("reading {}: {e}", path.display()))?;
            let p = entry.path();
            if entry.file_type().is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                found.push(p.to_owned());
            }
        }
        Ok(found)
    } else if path.exists() {
        Ok(vec![path.to_owned()])
    } else {
        Err(format!("{}: no such file or directory", path.display()))
    }
}

/// The profiles of one file's documents (empty documents and `List`s of profiles allowed).
pub fn parse_profiles(file: &Path, text: &str) -> Result<Vec<PodSecurityProfile>, String> {
    let mut out = Vec::new();
    for (i, doc) in crate::manifest::split::documents(text).enumerate() {
        let at = || {
            format!(
                "{} (document {}, line {})",
                file.display(),
                i + 1,
                doc.first_line
            )
        };
        let value: serde_json::Value =
            serde_yaml_ng::from_str(doc.text).map_err(|e| format!("{}: {e}", at()))?;
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let api = item
                .get("apiVersion")
                .and_then(|k| k.as_str())
                .unwrap_or("");
            if kind != "PodSecurityProfile" || !api.starts_with("pss-operator.io/") {
                return Err(format!(
                    "{}: expected a PodSecurityProfile (pss-operator.io), found {}",
                    at(),
                    if kind.is_empty() {
                        "no kind".to_owned()
                    } else {
                        format!("{api} {kind}")
                    }
                ));
            }
            let p: PodSecurityProfile = serde_path_to_error::deserialize(item)
                .map_err(|e| format!("{}: {}: {}", at(), e.path(), e.inner()))?;
            if p.metadata.name.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "{}: PodSecurityProfile without metadata.name",
                    at()
                ));
            }
            ProfileView::from_profile(&p)
                .map_err(|e| format!("{}: PodSecurityProfile {}: {e}", at(), p.name_any()))?;
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: pss-operator.io/v1alpha1
kind: PodSecurityProfile
metadata:
  name: strict
spec:
  namespaceSelector:
    matchLabels:
      team: apps
  enforce:
    level: restricted
---
# nothing
---
apiVersion: pss-operator.io/v1alpha1
kind: PodSecurityProfile
metadata:
  name: base
spec:
  enforce:
    level: baseline
";

    #[test]
    fn profiles_are_read_from_every_document() {
        let p = parse_profiles(Path::new("p.yaml"), GOOD).expect("valid");
        let names: Vec<String> = p.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["strict", "base"]);
    }

    #[test]
    fn bad_files_are_named_with_the_document_and_what_is_wrong() {
        let err = parse_profiles(
            Path::new("p.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        )
        .expect_err("not a profile");
        assert!(
            err.contains("p.yaml (document 1, line 1)") && err.contains("v1 Namespace"),
            "{err}"
        );
        let text = format!(
            "{GOOD}---\napiVersion: pss-operator.io/v1alpha1\nkind: PodSecurityProfile\nmetadata: {{name: x}}\nspec:\n  enforce:\n    level: strictest\n"
        );
        let err = parse_profiles(Path::new("p.yaml"), &text).expect_err("bad level");
        assert!(
            err.contains("document 3") && err.contains("spec.enforce.level"),
            "{err}"
        );
        let err = parse_profiles(Path::new("p.yaml"), "apiVersion: pss-operator.io/v1alpha1\nkind: PodSecurityProfile\nmetadata: {name: x}\nspec: {}\n")
            .expect_err("declares nothing");
        assert!(
            err.contains("set at least one of enforce, audit, warn"),
            "{err}"
        );
        let err = parse_profiles(Path::new("p.yaml"), "a: [").expect_err("yaml");
        assert!(err.starts_with("p.yaml (document 1, line 1): "), "{err}");
        let err = read_profiles(&[PathBuf::from("/nonexistent/p.yaml")]).expect_err("missing");
        assert!(err.contains("/nonexistent/p.yaml: no such file"), "{err}");
    }

    #[test]
    fn a_directory_is_walked_and_a_name_given_twice_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), GOOD).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let p = read_profiles(&[dir.path().to_owned()]).expect("read");
        assert_eq!(p.len(), 2);
        std::fs::write(dir.path().join("b.yml"), GOOD).expect("write");
        let err = read_profiles(&[dir.path().to_owned()]).expect_err("twice");
        assert!(
            err.contains("b.yml") && err.contains("given twice"),
            "{err}"
        );
    }
}
