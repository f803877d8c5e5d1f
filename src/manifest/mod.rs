//! Reading Kubernetes manifests (multi-document YAML, JSON, `List`s) into the pod templates that
//! Pod Security evaluates, the way kube-apiserver would see them (its defaulting applied).
//!
//! Bad input never stops the reader: each broken document becomes a [`ManifestError`] naming the
//! source, the document, the line and the field, and reading goes on with the next one.

pub mod split;

use std::fmt;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::pss::model::Pod;

/// An object whose pod template can be evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// File path, or `-` for standard input.
    pub source: String,
    /// 0-based index of the document in its source (non-empty documents only).
    pub index: usize,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The pod (or the template's metadata and spec), with API-server defaulting applied.
    pub pod: Pod,
}

/// A document that could not be read, and exactly where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub source: String,
    pub index: Option<usize>,
    /// 1-based line in the source, when known.
    pub line: Option<usize>,
    /// Field path inside the document (`spec.containers[0].securityContext.privileged`).
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(index) = self.index {
            write!(f, ": document {index}")?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        if let Some(path) = &self.path {
            write!(f, ": field {path}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// What one document (or `List` item) turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Workload(Box<Workload>),
    /// An object of a kind without a pod template (a Service, a ConfigMap...).
    Skipped {
        source: String,
        index: usize,
        kind: String,
    },
    Error(ManifestError),
}

/// Kinds evaluated through a pod, and where their pod template lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TemplatePlace {
    /// `Pod`: the object itself.
    Itself,
    /// `PodTemplate`: `.template`.
    Template,
    /// Deployment, ReplicaSet, ...: `.spec.template`.
    SpecTemplate,
    /// `CronJob`: `.spec.jobTemplate.spec.template`.
    JobTemplate,
}

fn template_place(api_version: &str, kind: &str) -> Option<TemplatePlace> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let group_is = |groups: &[&str]| api_version.is_empty() || groups.contains(&group);
    match kind {
        "Pod" if group_is(&[""]) => Some(TemplatePlace::Itself),
        "PodTemplate" if group_is(&[""]) => Some(TemplatePlace::Template),
        "ReplicationController" if group_is(&[""]) => Some(TemplatePlace::SpecTemplate),
        "Deployment" | "ReplicaSet" | "DaemonSet" if group_is(&["apps", "extensions"]) => {
            Some(TemplatePlace::SpecTemplate)
        }
        "StatefulSet" if group_is(&["apps"]) => Some(TemplatePlace::SpecTemplate),
        "Job" if group_is(&["batch"]) => Some(TemplatePlace::SpecTemplate),
        "CronJob" if group_is(&["batch"]) => Some(TemplatePlace::JobTemplate),
        _ => None,
    }
}

// Typed views of each place a pod template lives; everything else in the object is skipped.
#[derive(Deserialize)]
struct WithTemplate {
    template: Option<Pod>,
}
#[derive(Deserialize)]
struct WithSpec<T> {
    spec: Option<T>,
}
#[derive(Deserialize)]
struct WithJobTemplate {
    #[serde(rename = "jobTemplate")]
    job_template: Option<WithSpec<WithTemplate>>,
}

/// Deserializes the pod of an object of a known kind, with the field path of any error.
fn extract_pod<'de, D>(
    place: TemplatePlace,
    de: D,
) -> Result<Pod, serde_path_to_error::Error<D::Error>>
where
    D: serde::Deserializer<'de>,
{
    let mut pod = match place {
        TemplatePlace::Itself => {
            let mut pod: Pod = serde_path_to_error::deserialize(de)?;
            pod.apply_api_server_defaults();
            return Ok(pod);
        }
        TemplatePlace::Template => {
            serde_path_to_error::deserialize::<_, WithTemplate>(de)?.template
        }
        TemplatePlace::SpecTemplate => {
            serde_path_to_error::deserialize::<_, WithSpec<WithTemplate>>(de)?
                .spec
                .and_then(|s| s.template)
        }
        TemplatePlace::JobTemplate => {
            serde_path_to_error::deserialize::<_, WithSpec<WithJobTemplate>>(de)?
                .spec
                .and_then(|s| s.job_template)
                .and_then(|j| j.spec)
                .and_then(|s| s.template)
        }
    }
    .unwrap_or_default();
    // Templates get the defaulting every pod spec gets, not the Pod-only kind.
    pod.spec.apply_template_defaults();
    Ok(pod)
}

/// The identity fields every object has.
struct Header {
    api_version: String,
    kind: Option<String>,
    name: String,
    namespace: String,
}

fn header(value: &Value) -> Header {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let meta = value.get("metadata");
    let name = text(meta.and_then(|m| m.get("name")));
    Header {
        api_version: text(value.get("apiVersion")),
        kind: value.get("kind").and_then(Value::as_str).map(str::to_owned),
        name: if name.is_empty() {
            text(meta.and_then(|m| m.get("generateName")))
        } else {
            name
        },
        namespace: text(meta.and_then(|m| m.get("namespace"))),
    }
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing. libyaml's
/// scanner revisits every open flow level for each token, so parsing time grows with the square of
/// the depth: a 100 KB document of `{"a":` nested 20,000 deep took 28 s (debug build), a few MB
/// would take hours. serde_yaml_ng refuses more than 128 levels anyway, after parsing.
const MAX_FLOW_DEPTH: usize = 1_000;

/// Whether `text` opens more than `limit` flow collections at once. A linear scan that follows
/// YAML's lexical rules closely enough that brackets inside quoted scalars and comments are not
/// counted; where it cannot tell (block scalars, plain scalars), it may only count too many.
fn flow_depth_exceeds(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // A quote or `#` is an indicator only at the start of a token.
    let token_start = |i: usize| {
        i == 0
            || matches!(
                bytes[i - 1],
                b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':'
            )
    };
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\n' | b'\r') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if token_start(i) => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if token_start(i) => {
                i += 1;
                // `''` is an escaped quote inside a single-quoted scalar.
                while i < bytes.len() {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// Reads every document of one source. Never panics, whatever the bytes.
pub fn read_source(source: &str, bytes: &[u8]) -> Vec<Item> {
    let error = |index, line, message: String| {
        Item::Error(ManifestError {
            source: source.to_owned(),
            index,
            line,
            path: None,
            message,
        })
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return vec![error(None, None, format!("not UTF-8 text: {e}"))],
    };
    let mut items = Vec::new();
    for (index, doc) in split::documents(text).enumerate() {
        if flow_depth_exceeds(doc.text, MAX_FLOW_DEPTH) {
            items.push(error(
                Some(index),
                Some(doc.first_line),
                format!(
                    "not valid YAML or JSON: brackets nested deeper than {MAX_FLOW_DEPTH} levels"
                ),
            ));
            continue;
        }
        let value: Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(value) => value,
            Err(e) => {
                let line = e.location().map(|l| doc.first_line + l.line() - 1);
                items.push(error(
                    Some(index),
                    line,
                    format!("not valid YAML or JSON: {}", strip_location(&e)),
                ));
                continue;
            }
        };
        if !value.is_mapping() {
            items.push(error(
                Some(index),
                Some(doc.first_line),
                format!("expected an object, found {}", describe(&value)),
            ));
            continue;
        }
        read_object(source, index, &value, Some(&doc), &mut items);
    }
    items
}

/// Reads one object: a workload, a `List`, or something to skip.
fn read_object(
    source: &str,
    index: usize,
    value: &Value,
    doc: Option<&split::Document>,
    items: &mut Vec<Item>,
) {
    let header = header(value);
    let err = |line: Option<usize>, path: Option<String>, message: String| {
        Item::Error(ManifestError {
            source: source.to_owned(),
            index: Some(index),
            line,
            path,
            message,
        })
    };
    let Some(kind) = header.kind.clone() else {
        items.push(err(
            doc.map(|d| d.first_line),
            None,
            "object has no \"kind\"".to_owned(),
        ));
        return;
    };
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        let Some(list) = value.get("items").and_then(Value::as_sequence) else {
            items.push(err(
                doc.map(|d| d.first_line),
                Some("items".into()),
                "expected a list of objects".into(),
            ));
            return;
        };
        for (i, item) in list.iter().enumerate() {
            if !item.is_mapping() {
                items.push(err(
                    doc.map(|d| d.first_line),
                    Some(format!("items[{i}]")),
                    format!("expected an object, found {}", describe(item)),
                ));
                continue;
            }
            let mut nested = Vec::new();
            read_object(source, index, item, None, &mut nested);
            // Errors inside a List item carry the item's path prefix and the list's line.
            items.extend(nested.into_iter().map(|it| match it {
                Item::Error(mut e) => {
                    e.path = Some(match e.path {
                        Some(p) => format!("items[{i}].{p}"),
                        None => format!("items[{i}]"),
                    });
                    e.line = e.line.or(doc.map(|d| d.first_line));
                    Item::Error(e)
                }
                other => other,
            }));
        }
        return;
    }
    let Some(place) = template_place(&header.api_version, &kind) else {
        items.push(Item::Skipped {
            source: source.to_owned(),
            index,
            kind,
        });
        return;
    };
    // Typed pass: from the document text when we have it (errors get a line), else the value.
    let pod = match doc {
        Some(doc) => {
            extract_pod(place, serde_yaml_ng::Deserializer::from_str(doc.text)).map_err(|e| {
                let line = e.inner().location().map(|l| doc.first_line + l.line() - 1);
                (line, e.path().to_string(), strip_location(e.inner()))
            })
        }
        None => extract_pod(place, value.clone())
            .map_err(|e| (None, e.path().to_string(), strip_location(e.inner()))),
    };
    match pod {
        Ok(pod) => items.push(Item::Workload(Box::new(Workload {
            source: source.to_owned(),
            index,
            kind,
            namespace: header.namespace,
            name: header.name,
            pod,
        }))),
        Err((line, path, message)) => {
            // serde_yaml_ng already prefixes its messages with the path; keep it once.
            let message = message
                .strip_prefix(&format!("{path}: "))
                .map(str::to_owned)
                .unwrap_or(message);
            items.push(err(line, Some(path), message))
        }
    }
}

/// serde_yaml_ng and serde_json append "at line L column C" (relative to the document, or to one
/// object's text on the wire); we report lines ourselves, or they mean nothing to the reader.
pub(crate) fn strip_location(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) if text[i..].contains(" column ") => text[..i].to_owned(),
        _ => text,
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "an object",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<Item> {
        read_source("test.yaml", text.as_bytes())
    }

    fn workloads(items: &[Item]) -> Vec<&Workload> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Workload(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect()
    }

    fn errors(items: &[Item]) -> Vec<&ManifestError> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Error(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_workload_kind_yields_its_template() {
        let template =
            "template: {metadata: {annotations: {a: b}}, spec: {containers: [{name: c}]}}";
        let mut text = String::new();
        for (api, kind) in [
            ("apps/v1", "Deployment"),
            ("apps/v1", "ReplicaSet"),
            ("apps/v1", "StatefulSet"),
            ("apps/v1", "DaemonSet"),
            ("batch/v1", "Job"),
            ("v1", "ReplicationController"),
        ] {
            text.push_str(&format!("---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: w, namespace: ns}}\nspec: {{{template}}}\n"));
        }
        text.push_str(&format!("---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: w}}\nspec: {{jobTemplate: {{spec: {{{template}}}}}}}\n"));
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: PodTemplate\nmetadata: {{name: w}}\n{template}\n"
        ));
        text.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {a: b}}\nspec: {containers: [{name: c}]}\n");
        let items = read(&text);
        let found = workloads(&items);
        assert_eq!(found.len(), 9, "{items:?}");
        for w in found {
            assert_eq!(w.pod.spec.containers[0].name, "c", "{}", w.kind);
            assert_eq!(w.pod.metadata.annotations["a"], "b", "{}", w.kind);
        }
    }

    #[test]
    fn lists_are_unpacked_and_other_kinds_skipped() {
        let items = read(
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"s"}},
                {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c"}]}}]}"#,
        );
        assert_eq!(workloads(&items).len(), 1);
        assert!(matches!(&items[0], Item::Skipped { kind, .. } if kind == "Service"));
    }

    #[test]
    fn errors_name_document_line_and_field_and_reading_goes_on() {
        let items = read(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: c}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n  - name: c\n    securityContext:\n      privileged: yes-please\n---\n\
             just a string\n---\n\
             kind: [unclosed\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: last}\n",
        );
        let errs = errors(&items);
        assert_eq!(errs.len(), 3, "{items:?}");
        assert_eq!(errs[0].index, Some(1));
        assert_eq!(errs[0].line, Some(13));
        assert_eq!(
            errs[0].path.as_deref(),
            Some("spec.containers[0].securityContext.privileged")
        );
        assert!(
            errs[0].message.contains("expected a boolean"),
            "{}",
            errs[0].message
        );
        assert!(
            errs[1]
                .message
                .contains("expected an object, found a string")
        );
        assert_eq!(errs[1].line, Some(15));
        assert!(errs[2].message.starts_with("not valid YAML"), "{}", errs[2]);
        let names: Vec<_> = workloads(&items).iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["ok", "last"]);
    }

    #[test]
    fn missing_kind_and_binary_input_are_errors() {
        assert!(
            errors(&read("metadata: {name: x}\n"))[0]
                .message
                .contains("no \"kind\"")
        );
        let items = read_source("bin", &[0xff, 0xfe, 0x00]);
        assert!(errors(&items)[0].message.starts_with("not UTF-8"));
    }

    #[test]
    fn pods_get_api_server_defaulting_and_templates_only_theirs() {
        let items = read(
            "kind: Pod\nspec: {hostNetwork: true, volumes: [{name: v}], containers: [{name: c, ports: [{containerPort: 80}]}]}\n---\n\
             kind: Deployment\napiVersion: apps/v1\nspec: {template: {spec: {hostNetwork: true, volumes: [{name: v}], containers: [{name: c, ports: [{containerPort: 80}]}]}}}\n",
        );
        let w = workloads(&items);
        assert_eq!(w[0].pod.spec.containers[0].ports[0].host_port, 80);
        assert_eq!(w[1].pod.spec.containers[0].ports[0].host_port, 0);
        assert!(!w[1].pod.spec.volumes[0].sources.is_empty());
    }

    #[test]
    fn brackets_nested_absurdly_deep_are_refused_before_parsing() {
        // 200,000 levels: without the pre-check libyaml would take hours (quadratic).
        let deep = format!("{}1{}", "{\"a\":".repeat(200_000), "}".repeat(200_000));
        let items = read(&deep);
        assert!(
            matches!(&items[..], [Item::Error(e)] if e.message.contains("nested deeper than 1000")),
            "{items:?}"
        );
        let deep = format!(
            "kind: Pod\nspec: {}{}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        assert!(matches!(&read(&deep)[..], [Item::Error(_)]));
    }

    #[test]
    fn brackets_in_quotes_comments_and_plain_scalars_are_not_nesting() {
        let many = "[".repeat(2_000);
        for text in [
            format!("a: \"{many}\"\n"),
            format!("a: '{many}'\n"),
            format!("a: 'it''s {many}'\n"),
            format!("a: 1 # {many}\n"),
            format!("a: \"\\\" {many}\"\n"),
        ] {
            assert!(!flow_depth_exceeds(&text, MAX_FLOW_DEPTH), "{text:.40}");
        }
        // Closing brackets hidden in strings or comments cannot hide real nesting.
        let sneaky = format!("{}\"]]]]\" # ]]]]\n{}", "[".repeat(600), "[".repeat(600));
        assert!(flow_depth_exceeds(&sneaky, MAX_FLOW_DEPTH));
        // An apostrophe inside a plain scalar opens no quote.
        let plain = format!("a: [it's, {}]", "[".repeat(1_001));
        assert!(flow_depth_exceeds(&plain, MAX_FLOW_DEPTH));
        // Ordinary manifests pass.
        assert!(!flow_depth_exceeds(
            "{\"spec\": {\"containers\": [{\"name\": \"c\"}]}}",
            MAX_FLOW_DEPTH
        ));
    }
}
