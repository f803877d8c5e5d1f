//! `pss-operator check`: evaluates manifests offline, for CI pipelines.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::manifest::{self, Item, ManifestError};
use crate::pss::{self, AdmissionConfig, KubeVersion, Level, LevelVersion, Version};

/// Exit codes: everything allowed, something violates, bad usage or input.
pub const EXIT_ALLOWED: u8 = 0;
pub const EXIT_VIOLATIONS: u8 = 1;
pub const EXIT_INPUT_ERROR: u8 = 2;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Pod Security Standards level to evaluate against.
    #[arg(long, default_value = "restricted", value_parser = parse_level)]
    pub level: Level,
    /// Policy version: `latest` or `v1.N`.
    #[arg(long, default_value = "latest", value_parser = parse_version)]
    pub version: Version,
    /// The Kubernetes version of the API server the manifests go to (`v1.N`): what `latest`, and
    /// any newer version, means there. Default: the newest version this build knows.
    #[arg(long, value_name = "v1.N", value_parser = parse_kube_version)]
    pub kube_version: Option<KubeVersion>,
    /// The cluster's PodSecurity admission configuration (the file given to kube-apiserver with
    /// --admission-control-config-file): objects in exempt namespaces or with an exempt
    /// runtimeClassName are reported as exempt, not evaluated.
    #[arg(long, value_name = "FILE")]
    pub admission_config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Files or directories (walked for .yaml, .yml, .json); `-` reads standard input.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse().map_err(|e: pss::ParseError| e.to_string())
}

fn parse_kube_version(s: &str) -> Result<KubeVersion, String> {
    s.parse()
}

fn parse_version(s: &str) -> Result<Version, String> {
    s.parse().map_err(|e: pss::ParseError| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Serialize)]
struct Report<'a> {
    results: Vec<ResultRow<'a>>,
    skipped: Vec<SkippedRow<'a>>,
    errors: Vec<ErrorRow<'a>>,
}

#[derive(Serialize)]
struct ResultRow<'a> {
    source: &'a str,
    index: usize,
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
    level: String,
    version: String,
    allowed: bool,
    /// Why the server would not evaluate it: `namespace` or `runtimeClass` exempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    exempt: Option<&'static str>,
    violations: Vec<ViolationRow<'a>>,
    message: String,
}

#[derive(Serialize)]
struct ViolationRow<'a> {
    check: &'static str,
    reason: &'static str,
    detail: &'a str,
}

#[derive(Serialize)]
struct SkippedRow<'a> {
    source: &'a str,
    index: usize,
    kind: &'a str,
}

#[derive(Serialize)]
struct ErrorRow<'a> {
    source: &'a str,
    index: Option<usize>,
    line: Option<usize>,
    path: Option<&'a str>,
    message: &'a str,
}

/// Runs the command; returns the process exit code. Output goes to `out`, diagnostics to `err`.
pub fn run(
    args: &CheckArgs,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<u8> {
    let config = match super::run::load_admission_config(args.admission_config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(EXIT_INPUT_ERROR);
        }
    };
    let kube = args.kube_version.unwrap_or_default();
    if !kube.is_known() {
        writeln!(
            err,
            "warning: --kube-version {kube} is newer than the newest policy version this build knows (v1.{}): evaluated with its checks",
            pss::NEWEST_KNOWN_MINOR
        )?;
    }
    let items = read_inputs(&args.paths, stdin);
    let level_version = LevelVersion::new(args.level, args.version);
    let exemption = |w: &manifest::Workload| exemption(&config, w);

    let mut evaluated = Vec::new();
    let mut skipped = Vec::new();
    let mut errors = Vec::new();
    for item in &items {
        match item {
            Item::Workload(w) => evaluated.push((
                w,
                match exemption(w) {
                    Some(_) => pss::Evaluation {
                        level_version,
                        violations: Vec::new(),
                    },
                    None => {
                        let mut pod = w.pod.clone();
                        pod.apply_version_skew(kube, w.kind != "Pod");
                        pss::evaluate_on(kube, &pod.metadata, &pod.spec, level_version)
                    }
                },
            )),
            Item::Skipped {
                source,
                index,
                kind,
            } => skipped.push(SkippedRow {
                source,
                index: *index,
                kind,
            }),
            Item::Error(e) => errors.push(e),
        }
    }
    let violating = evaluated.iter().filter(|(_, e)| !e.allowed()).count();

    match args.output {
        Output::Text => {
            for (w, eval) in &evaluated {
                let verdict = match exemption(w) {
                    Some("namespace") => format!(
                        "exempt (namespace {:?} is exempt in the admission configuration)",
                        w.namespace
                    ),
                    Some(_) => format!(
                        "exempt (runtimeClassName {:?} is exempt in the admission configuration)",
                        w.pod.spec.runtime_class_name.as_deref().unwrap_or_default()
                    ),
                    None if eval.allowed() => "allowed".to_owned(),
                    None => eval.denial_message(),
                };
                if w.namespace.is_empty() {
                    writeln!(out, "{}/{}: {verdict}", w.kind, w.name)?;
                } else {
                    writeln!(out, "{}/{} in {}: {verdict}", w.kind, w.name, w.namespace)?;
                }
            }
        }
        Output::Json => {
            let report = Report {
                results: evaluated
                    .iter()
                    .map(|(w, eval)| ResultRow {
                        source: &w.source,
                        index: w.index,
                        kind: &w.kind,
                        namespace: &w.namespace,
                        name: &w.name,
                        level: args.level.to_string(),
                        version: args.version.to_string(),
                        allowed: eval.allowed(),
                        exempt: exemption(w),
                        violations: eval
                            .violations
                            .iter()
                            .map(|v| ViolationRow {
                                check: v.check.as_str(),
                                reason: v.reason,
                                detail: &v.detail,
                            })
                            .collect(),
                        message: eval.denial_message(),
                    })
                    .collect(),
                skipped,
                errors: errors
                    .iter()
                    .map(|e| ErrorRow {
                        source: &e.source,
                        index: e.index,
                        line: e.line,
                        path: e.path.as_deref(),
                        message: &e.message,
                    })
                    .collect(),
            };
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
    }
    for e in &errors {
        writeln!(err, "error: {e}")?;
    }
    let skipped_count = items
        .iter()
        .filter(|i| matches!(i, Item::Skipped { .. }))
        .count();
    writeln!(
        err,
        "checked {} objects against {level_version} on Kubernetes {kube}: {} allowed, {violating} violating, {skipped_count} skipped (no pod template), {} errors",
        evaluated.len(),
        evaluated.len() - violating,
        errors.len(),
    )?;
    Ok(if !errors.is_empty() {
        EXIT_INPUT_ERROR
    } else if violating > 0 {
        EXIT_VIOLATIONS
    } else {
        EXIT_ALLOWED
    })
}

/// Why the API server would skip this object, per the admission configuration.
fn exemption(config: &AdmissionConfig, w: &manifest::Workload) -> Option<&'static str> {
    if !w.namespace.is_empty() && config.exempt_namespace(&w.namespace) {
        Some("namespace")
    } else if config.exempt_runtime_class(w.pod.spec.runtime_class_name.as_deref()) {
        Some("runtimeClass")
    } else {
        None
    }
}

/// Reads every path (files, walked directories, `-`), in a stable order.
fn read_inputs(paths: &[PathBuf], stdin: &mut dyn Read) -> Vec<Item> {
    let mut items = Vec::new();
    let input_error = |source: &Path, message: String| {
        Item::Error(ManifestError {
            source: source.display().to_string(),
            index: None,
            line: None,
            path: None,
            message,
        })
    };
    for path in paths {
        if path.as_os_str() == "-" {
            let mut bytes = Vec::new();
            match stdin.read_to_end(&mut bytes) {
                Ok(_) => items.extend(manifest::read_source("-", &bytes)),
                Err(e) => items.push(input_error(
                    path,
                    format!("cannot read standard input: {e}"),
                )),
            }
            continue;
        }
        if path.is_dir() {
            let mut found = false;
            for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
                match entry {
                    Ok(entry) if entry.file_type().is_file() && is_manifest(entry.path()) => {
                        found = true;
                        items.extend(read_file(entry.path()));
                    }
                    Ok(_) => {}
                    Err(e) => items.push(input_error(path, format!("cannot walk directory: {e}"))),
                }
            }
            if !found {
                items.push(input_error(
                    path,
                    "directory holds no .yaml, .yml or .json file".into(),
                ));
            }
            continue;
        }
        items.extend(read_file(path));
    }
    items
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn read_file(path: &Path) -> Vec<Item> {
    let source = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => manifest::read_source(&source, &bytes),
        Err(e) => vec![Item::Error(ManifestError {
            source,
            index: None,
            line: None,
            path: None,
            message: format!("cannot read: {e}"),
        })],
    }
}
