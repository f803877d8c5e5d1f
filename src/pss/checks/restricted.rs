//! Restricted checks. Each writes upstream's detail to `out` and returns upstream's reason when
//! the pod fails, or returns `None` (having written nothing) when it passes.

use super::baseline::{pod_seccomp_type, seccomp_explicit};
use super::{containers_where, setters_where};
use crate::pss::format::{SortedSet, plural, quote_join};
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

pub(super) fn allow_privilege_escalation(
    spec: &PodSpec,
    minor: u32,
    out: &mut String,
) -> Option<&'static str> {
    if windows_exempt(spec, minor) {
        return None;
    }
    let bad = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.allow_privilege_escalation)
            != Some(false)
    };
    if !spec.all_containers().any(bad) {
        return None;
    }
    containers_where(out, spec, bad);
    out.push_str(" must set securityContext.allowPrivilegeEscalation=false");
    Some("allowPrivilegeEscalation != false")
}

fn caps(c: &Container) -> Option<&Capabilities> {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.capabilities.as_ref())
}

fn forbidden_add(cap: &&String) -> bool {
    *cap != "NET_BIND_SERVICE"
}

pub(super) fn capabilities(spec: &PodSpec, minor: u32, out: &mut String) -> Option<&'static str> {
    if windows_exempt(spec, minor) {
        return None;
    }
    let missing_drop_all =
        |c: &Container| caps(c).is_none_or(|caps| !caps.drop.iter().any(|d| d == "ALL"));
    let adding =
        |c: &Container| caps(c).is_some_and(|caps| caps.add.iter().any(|a| forbidden_add(&a)));
    let (missing, add) = (
        spec.all_containers().any(missing_drop_all),
        spec.all_containers().any(adding),
    );
    if !missing && !add {
        return None;
    }
    if missing {
        containers_where(out, spec, missing_drop_all);
        out.push_str(r#" must set securityContext.capabilities.drop=["ALL"]"#);
    }
    if add {
        if missing {
            out.push_str("; ");
        }
        let added: SortedSet<&str> = spec
            .all_containers()
            .filter_map(caps)
            .flat_map(|caps| &caps.add)
            .filter(forbidden_add)
            .map(String::as_str)
            .collect();
        containers_where(out, spec, adding);
        out.push_str(" must not include ");
        quote_join(out, added.as_slice());
        out.push_str(" in securityContext.capabilities.add");
    }
    Some("unrestricted capabilities")
}

pub(super) fn volumes(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let refused = |v: &&crate::pss::model::Volume| !v.sources.restricted_allows();
    let count = spec.volumes.iter().filter(refused).count();
    if count == 0 {
        return None;
    }
    let types: SortedSet<&str> = spec
        .volumes
        .iter()
        .filter(refused)
        .map(|v| v.sources.restricted_type())
        .collect();
    out.push_str(plural(count, "volume ", "volumes "));
    for (i, v) in spec.volumes.iter().filter(refused).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(&v.name);
        out.push('"');
    }
    out.push(' ');
    out.push_str(plural(count, "uses", "use"));
    out.push(' ');
    out.push_str(plural(
        types.len(),
        "restricted volume type ",
        "restricted volume types ",
    ));
    quote_join(out, types.as_slice());
    Some("restricted volume types")
}

fn run_as_non_root_of(c: &Container) -> Option<bool> {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.run_as_non_root)
}

pub(super) fn run_as_non_root(
    spec: &PodSpec,
    minor: u32,
    out: &mut String,
) -> Option<&'static str> {
    if user_namespace_exempt(spec, minor) {
        return None;
    }
    let pod_value = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.run_as_non_root);
    let explicitly_bad = |c: &Container| run_as_non_root_of(c) == Some(false);
    if pod_value == Some(false) || spec.all_containers().any(explicitly_bad) {
        setters_where(out, pod_value == Some(false), spec, explicitly_bad);
        out.push_str(" must not set securityContext.runAsNonRoot=false");
        return Some("runAsNonRoot != true");
    }
    if pod_value == Some(true) {
        return None;
    }
    let implicitly_bad = |c: &Container| run_as_non_root_of(c).is_none();
    if !spec.all_containers().any(implicitly_bad) {
        return None;
    }
    out.push_str("pod or ");
    containers_where(out, spec, implicitly_bad);
    out.push_str(" must set securityContext.runAsNonRoot=true");
    Some("runAsNonRoot != true")
}

pub(super) fn run_as_user(spec: &PodSpec, minor: u32, out: &mut String) -> Option<&'static str> {
    if user_namespace_exempt(spec, minor) {
        return None;
    }
    let pod = spec.security_context.as_ref().and_then(|sc| sc.run_as_user) == Some(0);
    let bad = |c: &Container| c.security_context.as_ref().and_then(|sc| sc.run_as_user) == Some(0);
    if !pod && !spec.all_containers().any(bad) {
        return None;
    }
    setters_where(out, pod, spec, bad);
    out.push_str(" must not set runAsUser=0");
    Some("runAsUser=0")
}

pub(super) fn seccomp_profile(
    spec: &PodSpec,
    minor: u32,
    out: &mut String,
) -> Option<&'static str> {
    if windows_exempt(spec, minor) {
        return None;
    }
    if let Some(reason) = seccomp_explicit(spec, out) {
        return Some(reason);
    }
    // An allowed pod-level profile (the only kind left) is what unset containers inherit.
    if pod_seccomp_type(spec).is_some() {
        return None;
    }
    let unset = |c: &Container| {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .is_none()
    };
    if !spec.all_containers().any(unset) {
        return None;
    }
    out.push_str("pod or ");
    containers_where(out, spec, unset);
    out.push_str(
        r#" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#,
    );
    Some("seccompProfile")
}
