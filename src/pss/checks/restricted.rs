//! Restricted checks. Each returns `None` when the pod passes, without allocating.

use super::baseline::seccomp_types;
use super::{Finding, containers_where, setters};
use crate::pss::format::{containers_phrase, plural, quote_join, sorted_unique};
use crate::pss::model::{Capabilities, Container, PodSpec};

/// Windows pods are exempt from the Linux-only restricted checks from v1.25 (API validation
/// forbids those fields on them).
fn windows_exempt(spec: &PodSpec, minor: u32) -> bool {
    minor >= 25 && spec.is_windows()
}

/// From v1.35, pods in a user namespace (`hostUsers: false`) may run as root.
fn user_namespace_exempt(spec: &PodSpec, minor: u32) -> bool {
    minor >= 35 && spec.in_user_namespace()
}

pub(super) fn allow_privilege_escalation(spec: &PodSpec, minor: u32) -> Option<Finding> {
    if windows_exempt(spec, minor) {
        return None;
    }
    let bad = containers_where(spec, |c| {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.allow_privilege_escalation)
            != Some(false)
    });
    if bad.is_empty() {
        return None;
    }
    let mut detail = String::new();
    containers_phrase(&mut detail, &bad);
    detail.push_str(" must set securityContext.allowPrivilegeEscalation=false");
    Finding::new("allowPrivilegeEscalation != false", detail)
}

pub(super) fn capabilities(spec: &PodSpec, minor: u32) -> Option<Finding> {
    if windows_exempt(spec, minor) {
        return None;
    }
    fn caps(c: &Container) -> Option<&Capabilities> {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.capabilities.as_ref())
    }
    let missing_drop_all = containers_where(spec, |c| {
        caps(c).is_none_or(|caps| !caps.drop.iter().any(|d| d == "ALL"))
    });
    let forbidden_add = |cap: &&String| *cap != "NET_BIND_SERVICE";
    let adding = containers_where(spec, |c| {
        caps(c).is_some_and(|caps| caps.add.iter().any(|a| forbidden_add(&a)))
    });
    if missing_drop_all.is_empty() && adding.is_empty() {
        return None;
    }
    let mut detail = String::new();
    if !missing_drop_all.is_empty() {
        containers_phrase(&mut detail, &missing_drop_all);
        detail.push_str(r#" must set securityContext.capabilities.drop=["ALL"]"#);
    }
    if !adding.is_empty() {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        let mut added: Vec<&str> = spec
            .all_containers()
            .filter_map(caps)
            .flat_map(|caps| &caps.add)
            .filter(forbidden_add)
            .map(String::as_str)
            .collect();
        sorted_unique(&mut added);
        containers_phrase(&mut detail, &adding);
        detail.push_str(" must not include ");
        quote_join(&mut detail, &added);
        detail.push_str(" in securityContext.capabilities.add");
    }
    Finding::new("unrestricted capabilities", detail)
}

pub(super) fn volumes(spec: &PodSpec) -> Option<Finding> {
    let refused = |v: &&crate::pss::model::Volume| !v.sources.restricted_allows();
    if !spec.volumes.iter().any(|v| refused(&v)) {
        return None;
    }
    let names: Vec<&str> = spec
        .volumes
        .iter()
        .filter(refused)
        .map(|v| v.name.as_str())
        .collect();
    let mut types: Vec<&str> = spec
        .volumes
        .iter()
        .filter(refused)
        .map(|v| v.sources.restricted_type())
        .collect();
    sorted_unique(&mut types);
    let mut detail = plural(names.len(), "volume ", "volumes ").to_owned();
    quote_join(&mut detail, &names);
    detail.push(' ');
    detail.push_str(plural(names.len(), "uses", "use"));
    detail.push(' ');
    detail.push_str(plural(
        types.len(),
        "restricted volume type ",
        "restricted volume types ",
    ));
    quote_join(&mut detail, &types);
    Finding::new("restricted volume types", detail)
}

pub(super) fn run_as_non_root(spec: &PodSpec, minor: u32) -> Option<Finding> {
    if user_namespace_exempt(spec, minor) {
        return None;
    }
    let pod_value = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.run_as_non_root);
    let container_value = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.run_as_non_root)
    };
    let explicitly_bad = containers_where(spec, |c| container_value(c) == Some(false));
    if pod_value == Some(false) || !explicitly_bad.is_empty() {
        let detail = format!(
            "{} must not set securityContext.runAsNonRoot=false",
            setters(pod_value == Some(false), &explicitly_bad)
        );
        return Finding::new("runAsNonRoot != true", detail);
    }
    if pod_value == Some(true) {
        return None;
    }
    let implicitly_bad = containers_where(spec, |c| container_value(c).is_none());
    if implicitly_bad.is_empty() {
        return None;
    }
    let mut detail = "pod or ".to_owned();
    containers_phrase(&mut detail, &implicitly_bad);
    detail.push_str(" must set securityContext.runAsNonRoot=true");
    Finding::new("runAsNonRoot != true", detail)
}

pub(super) fn run_as_user(spec: &PodSpec, minor: u32) -> Option<Finding> {
    if user_namespace_exempt(spec, minor) {
        return None;
    }
    let pod = spec.security_context.as_ref().and_then(|sc| sc.run_as_user) == Some(0);
    let bad = containers_where(spec, |c| {
        c.security_context.as_ref().and_then(|sc| sc.run_as_user) == Some(0)
    });
    if !pod && bad.is_empty() {
        return None;
    }
    let detail = format!("{} must not set runAsUser=0", setters(pod, &bad));
    Finding::new("runAsUser=0", detail)
}

pub(super) fn seccomp_profile(spec: &PodSpec, minor: u32) -> Option<Finding> {
    if windows_exempt(spec, minor) {
        return None;
    }
    let types = seccomp_types(spec);
    if let Some(finding) = types.explicit_finding() {
        return Some(finding);
    }
    if types.pod_ok {
        return None;
    }
    let unset = containers_where(spec, |c| {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .is_none()
    });
    if unset.is_empty() {
        return None;
    }
    let mut detail = "pod or ".to_owned();
    containers_phrase(&mut detail, &unset);
    detail.push_str(
        r#" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#,
    );
    Finding::new("seccompProfile", detail)
}
