//! The PodSecurity admission configuration: what kube-apiserver enforces beyond the namespace
//! labels. Cluster admins give it with `--admission-control-config-file`: the `defaults` apply to
//! the modes a namespace does not label, and the `exemptions` (namespaces, runtimeClasses,
//! usernames) skip evaluation altogether. Parsed and validated as upstream does
//! (`pod-security-admission/admission/api`), strictly: an unknown field is an error, so the
//! operator never runs on a half-read configuration. Pure: the caller reads the files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::level::{KubeVersion, Level, LevelVersion, Policy, Version, policy_from_labels};

/// What the cluster's PodSecurity admission enforces beyond the namespace labels: the server's
/// version (what `latest` means) and its admission configuration. Everything the operator and
/// `check` report is judged through this, so they say what that server would.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admission {
    pub kube: KubeVersion,
    pub config: AdmissionConfig,
}

impl Admission {
    /// The policy a namespace with these labels is evaluated under: its labels, the
    /// configuration's defaults for what they do not set (upstream `PolicyToEvaluate`), and
    /// nothing at all (privileged in every mode) when the namespace is exempt.
    pub fn policy<'a>(&self, namespace: &str, get: impl Fn(&str) -> Option<&'a str>) -> Policy {
        if self.config.exempt_namespace(namespace) {
            return Policy::DEFAULT;
        }
        policy_from_labels(get, self.config.defaults).0
    }

    /// [`super::at_least_as_strict`] on this server.
    pub fn at_least_as_strict(&self, a: LevelVersion, b: LevelVersion) -> bool {
        super::at_least_as_strict(a, b, self.kube)
    }
}

/// A validated PodSecurity admission configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdmissionConfig {
    /// The policy of a namespace without PSA labels (per mode, for each label it lacks).
    pub defaults: Policy,
    pub exemptions: Exemptions,
}

/// What PodSecurity admission does not evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Exemptions {
    pub namespaces: BTreeSet<String>,
    pub runtime_classes: BTreeSet<String>,
    /// Requesting users: they decide at admission only, and a running Pod does not record who
    /// created it, so existing Pods are never judged by them.
    pub usernames: BTreeSet<String>,
}

impl AdmissionConfig {
    pub fn exempt_namespace(&self, namespace: &str) -> bool {
        self.exemptions.namespaces.contains(namespace)
    }

    pub fn exempt_runtime_class(&self, runtime_class: Option<&str>) -> bool {
        runtime_class.is_some_and(|rc| self.exemptions.runtime_classes.contains(rc))
    }

    /// Reads a configuration file's text: a `PodSecurityConfiguration` alone, or an
    /// `AdmissionConfiguration` whose `PodSecurity` plugin holds one inline (`configuration`) or
    /// in another file (`path`, read with `read`, relative to `origin`'s folder like
    /// kube-apiserver). An `AdmissionConfiguration` without a `PodSecurity` plugin means the
    /// built-in defaults, as on the server. Errors name the file and the field.
    pub fn parse(
        text: &str,
        origin: &Path,
        read: &dyn Fn(&Path) -> Result<String, String>,
    ) -> Result<AdmissionConfig, String> {
        let at = |e: String| format!("{}: {e}", origin.display());
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| at(format!("not YAML: {e}")))?;
        let field = |name: &str| {
            doc.get(name)
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let (kind, api_version) = (field("kind"), field("apiVersion"));
        let api_version = api_version.as_str();
        match kind.as_str() {
            "PodSecurityConfiguration" => parse_pod_security(doc, api_version).map_err(at),
            "AdmissionConfiguration" => {
                if !matches!(
                    api_version,
                    "apiserver.config.k8s.io/v1" | "apiserver.k8s.io/v1alpha1"
                ) {
                    return Err(at(format!(
                        "apiVersion {api_version:?} is not an AdmissionConfiguration version kube-apiserver reads (apiserver.config.k8s.io/v1)"
                    )));
                }
                let admission: AdmissionConfiguration =
                    from_value(doc).map_err(|e| at(format!("AdmissionConfiguration: {e}")))?;
                let mut plugins = admission
                    .plugins
                    .into_iter()
                    .enumerate()
                    .filter(|(_, p)| p.name == "PodSecurity");
                let Some((i, plugin)) = plugins.next() else {
                    return Ok(AdmissionConfig::default());
                };
                if plugins.next().is_some() {
                    return Err(at("plugins: more than one PodSecurity entry".to_owned()));
                }
                match (plugin.configuration, plugin.path) {
                    (Some(inline), None) => {
                        let api_version = inline
                            .get("apiVersion")
                            .and_then(|k| k.as_str())
                            .unwrap_or_default()
                            .to_owned();
                        let kind = inline.get("kind").and_then(|k| k.as_str());
                        if kind != Some("PodSecurityConfiguration") {
                            return Err(at(format!(
                                "plugins[{i}].configuration: kind must be PodSecurityConfiguration, found {kind:?}"
                            )));
                        }
                        parse_pod_security(inline, &api_version)
                            .map_err(|e| at(format!("plugins[{i}].configuration: {e}")))
                    }
                    (None, Some(path)) => {
                        let path = relative_to(origin, Path::new(&path));
                        let text = read(&path).map_err(|e| {
                            at(format!("plugins[{i}].path {}: {e}", path.display()))
                        })?;
                        // One level of indirection, as kube-apiserver: the file it names must
                        // be the plugin's own configuration.
                        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
                            .map_err(|e| format!("{}: not YAML: {e}", path.display()))?;
                        let api_version = doc
                            .get("apiVersion")
                            .and_then(|k| k.as_str())
                            .unwrap_or_default()
                            .to_owned();
                        if doc.get("kind").and_then(|k| k.as_str())
                            != Some("PodSecurityConfiguration")
                        {
                            return Err(format!(
                                "{}: kind must be PodSecurityConfiguration",
                                path.display()
                            ));
                        }
                        parse_pod_security(doc, &api_version)
                            .map_err(|e| format!("{}: {e}", path.display()))
                    }
                    (Some(_), Some(_)) => Err(at(format!(
                        "plugins[{i}]: set configuration or path, not both"
                    ))),
                    (None, None) => Ok(AdmissionConfig::default()),
                }
            }
            "" => Err(at(
                "no kind: expected PodSecurityConfiguration or AdmissionConfiguration".to_owned(),
            )),
            other => Err(at(format!(
                "kind {other:?}: expected PodSecurityConfiguration or AdmissionConfiguration"
            ))),
        }
    }
}

fn relative_to(origin: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    origin
        .parent()
        .map_or_else(|| path.to_owned(), |dir| dir.join(path))
}

fn from_value<T: serde::de::DeserializeOwned>(doc: serde_yaml_ng::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmissionConfiguration {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    plugins: Vec<Plugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plugin {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    configuration: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodSecurityConfiguration {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    defaults: DefaultsSpec,
    #[serde(default)]
    exemptions: ExemptionsSpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DefaultsSpec {
    enforce: Option<String>,
    #[serde(rename = "enforce-version")]
    enforce_version: Option<String>,
    audit: Option<String>,
    #[serde(rename = "audit-version")]
    audit_version: Option<String>,
    warn: Option<String>,
    #[serde(rename = "warn-version")]
    warn_version: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExemptionsSpec {
    #[serde(default)]
    usernames: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    runtime_classes: Vec<String>,
}

const POD_SECURITY_VERSIONS: [&str; 2] = [
    "pod-security.admission.config.k8s.io/v1",
    "pod-security.admission.config.k8s.io/v1beta1",
];

fn parse_pod_security(
    doc: serde_yaml_ng::Value,
    api_version: &str,
) -> Result<AdmissionConfig, String> {
    if !POD_SECURITY_VERSIONS.contains(&api_version) {
        return Err(format!(
            "apiVersion {api_version:?}: expected one of {}",
            POD_SECURITY_VERSIONS.join(", ")
        ));
    }
    let spec: PodSecurityConfiguration = from_value(doc)?;
    let d = spec.defaults;
    let level_version = |mode: &str,
                         level: Option<String>,
                         version: Option<String>|
     -> Result<LevelVersion, String> {
        // Upstream defaults an unset level to privileged and an unset version to latest.
        let level: Level = level
            .as_deref()
            .unwrap_or("privileged")
            .parse()
            .map_err(|e| format!("defaults.{mode}: {e}"))?;
        let version: Version = version
            .as_deref()
            .unwrap_or("latest")
            .parse()
            .map_err(|e| format!("defaults.{mode}-version: {e}"))?;
        Ok(LevelVersion::new(level, version))
    };
    let defaults = Policy {
        enforce: level_version("enforce", d.enforce, d.enforce_version)?,
        audit: level_version("audit", d.audit, d.audit_version)?,
        warn: level_version("warn", d.warn, d.warn_version)?,
    };
    let e = spec.exemptions;
    let exemptions = Exemptions {
        usernames: names("usernames", e.usernames, |_| None)?,
        namespaces: names("namespaces", e.namespaces, |n| {
            dns_label(n).then_some(()).map_or_else(
                || Some("must be a lowercase RFC 1123 label (a namespace name)"),
                |_| None,
            )
        })?,
        runtime_classes: names("runtimeClasses", e.runtime_classes, |n| {
            dns_subdomain(n).then_some(()).map_or_else(
                || Some("must be a lowercase RFC 1123 subdomain (a RuntimeClass name)"),
                |_| None,
            )
        })?,
    };
    Ok(AdmissionConfig {
        defaults,
        exemptions,
    })
}

/// A list of names as a set, refusing empty, duplicate and (by `invalid`) malformed entries.
fn names(
    field: &str,
    list: Vec<String>,
    invalid: impl Fn(&str) -> Option<&'static str>,
) -> Result<BTreeSet<String>, String> {
    let mut set = BTreeSet::new();
    for (i, name) in list.into_iter().enumerate() {
        if name.trim().is_empty() {
            return Err(format!("exemptions.{field}[{i}]: must not be empty"));
        }
        if let Some(why) = invalid(&name) {
            return Err(format!("exemptions.{field}[{i}]: {name:?} {why}"));
        }
        if set.contains(&name) {
            return Err(format!("exemptions.{field}[{i}]: duplicate entry {name:?}"));
        }
        set.insert(name);
    }
    Ok(set)
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AdmissionConfig, String> {
        AdmissionConfig::parse(text, Path::new("/etc/k8s/admission.yaml"), &|p| {
            if p == Path::new("/etc/k8s/pod-security.yaml") {
                Ok(POD_SECURITY.to_owned())
            } else {
                Err("no such file".to_owned())
            }
        })
    }

    const POD_SECURITY: &str = r#"
apiVersion: pod-security.admission.config.k8s.io/v1
kind: PodSecurityConfiguration
defaults:
  enforce: baseline
  enforce-version: v1.31
  warn: restricted
exemptions:
  usernames: ["system:serviceaccount:kube-system:replicaset-controller"]
  namespaces: [legacy, tools]
  runtimeClasses: [kata]
"#;

    fn expected() -> AdmissionConfig {
        AdmissionConfig {
            defaults: Policy {
                enforce: "baseline:v1.31".parse().expect("valid"),
                audit: LevelVersion::PRIVILEGED,
                warn: "restricted:latest".parse().expect("valid"),
            },
            exemptions: Exemptions {
                usernames: ["system:serviceaccount:kube-system:replicaset-controller".to_owned()]
                    .into(),
                namespaces: ["legacy".to_owned(), "tools".to_owned()].into(),
                runtime_classes: ["kata".to_owned()].into(),
            },
        }
    }

    #[test]
    fn reads_a_pod_security_configuration_alone() {
        let config = parse(POD_SECURITY).expect("valid");
        assert_eq!(config, expected());
        assert!(config.exempt_namespace("legacy") && !config.exempt_namespace("app"));
        assert!(config.exempt_runtime_class(Some("kata")));
        assert!(!config.exempt_runtime_class(Some("runc")) && !config.exempt_runtime_class(None));
    }

    #[test]
    fn reads_it_inside_an_admission_configuration_inline_or_by_path() {
        let inline = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: EventRateLimit\n  path: ratelimit.yaml\n- name: PodSecurity\n  configuration:\n{}",
            POD_SECURITY
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        assert_eq!(parse(&inline), Ok(expected()));
        let by_path = "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  path: pod-security.yaml\n";
        assert_eq!(parse(by_path), Ok(expected()));
        let missing = by_path.replace("pod-security.yaml", "nope.yaml");
        let err = parse(&missing).expect_err("an error");
        assert!(
            err.contains("plugins[0].path /etc/k8s/nope.yaml: no such file"),
            "{err}"
        );
        // No PodSecurity plugin: the server's built-in defaults.
        let other = "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: EventRateLimit\n  path: x.yaml\n";
        assert_eq!(parse(other), Ok(AdmissionConfig::default()));
    }

    #[test]
    fn unset_defaults_are_privileged_latest() {
        let config = parse(
            "apiVersion: pod-security.admission.config.k8s.io/v1beta1\nkind: PodSecurityConfiguration\n",
        )
        .expect("valid");
        assert_eq!(config, AdmissionConfig::default());
        assert_eq!(config.defaults, Policy::DEFAULT);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            ("kind: Pod\n", "kind \"Pod\""),
            ("apiVersion: v1\n", "no kind"),
            (
                "apiVersion: pod-security.admission.config.k8s.io/v2\nkind: PodSecurityConfiguration\n",
                "apiVersion \"pod-security.admission.config.k8s.io/v2\"",
            ),
            (
                "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  enforce: Baseline\n",
                "defaults.enforce: invalid level \"Baseline\"",
            ),
            (
                "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  audit-version: \"1.30\"\n",
                "defaults.audit-version: invalid version \"1.30\"",
            ),
            (
                "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nexemptions:\n  runtimeclasses: [kata]\n",
                "unknown field `runtimeclasses`",
            ),
            (
                "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nexemptions:\n  namespaces: [a, b, a]\n",
                "exemptions.namespaces[2]: duplicate entry \"a\"",
            ),
            (
                "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nexemptions:\n  namespaces: [Legacy]\n",
                "exemptions.namespaces[0]: \"Legacy\" must be a lowercase RFC 1123 label",
            ),
            (
                "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nexemptions:\n  usernames: [\"\"]\n",
                "exemptions.usernames[0]: must not be empty",
            ),
            ("{{{", "not YAML"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err("an error");
            assert!(err.starts_with("/etc/k8s/admission.yaml: "), "{err}");
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }
}
