//! Baseline checks. Each returns `None` when the pod passes, without allocating.

use super::{Finding, containers_where, setters};
use crate::pss::format::{containers_phrase, go_quote, plural, quote_join, sorted_unique};
use crate::pss::model::{Container, Handler, PodMeta, PodSpec, SeLinuxOptions};

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// Whether any check reads the annotation `key` (AppArmor per container; the alpha seccomp
/// annotations, read before v1.19): every other annotation can be dropped without changing a
/// verdict or a message.
pub fn annotation_is_checked(key: &str) -> bool {
    key.starts_with(APPARMOR_ANNOTATION_PREFIX)
        || key == SECCOMP_POD_ANNOTATION
        || key.starts_with(SECCOMP_CONTAINER_ANNOTATION_PREFIX)
}

fn profile_type_allowed(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

pub(super) fn app_armor_profile(meta: &PodMeta, spec: &PodSpec) -> Option<Finding> {
    let pod_type = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.app_armor_profile.as_ref())
        .map(|p| p.type_.as_str())
        .filter(|t| !profile_type_allowed(t));
    fn container_type(c: &Container) -> Option<&str> {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.app_armor_profile.as_ref())
            .map(|p| p.type_.as_str())
            .filter(|t| !profile_type_allowed(t))
    }
    let bad_containers = containers_where(spec, |c| container_type(c).is_some());
    let annotation_allowed =
        |v: &str| v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
    let bad_annotations = meta
        .annotations
        .iter()
        .filter(|(k, v)| k.starts_with(APPARMOR_ANNOTATION_PREFIX) && !annotation_allowed(v))
        .count();
    if pod_type.is_none() && bad_containers.is_empty() && bad_annotations == 0 {
        return None;
    }

    let mut values: Vec<String> = pod_type
        .into_iter()
        .chain(spec.all_containers().filter_map(container_type))
        .map(str::to_owned)
        .collect();
    sorted_unique(&mut values);
    // Annotation keys are unique, and the map iterates them sorted: already upstream's order.
    for (k, v) in &meta.annotations {
        if k.starts_with(APPARMOR_ANNOTATION_PREFIX) && !annotation_allowed(v) {
            let mut s = format!("{k}=");
            go_quote(&mut s, v);
            values.push(s);
        }
    }
    let mut who = setters(pod_type.is_some(), &bad_containers);
    if bad_annotations > 0 {
        if !who.is_empty() {
            who.push_str(" and ");
        }
        who.push_str(plural(bad_annotations, "annotation", "annotations"));
    }
    let mut detail = format!("{who} must not set AppArmor profile type to ");
    quote_join(&mut detail, &values);
    Finding::new(
        plural(
            values.len(),
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
        ),
        detail,
    )
}

const DEFAULT_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added_capabilities(c: &Container) -> &[String] {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.capabilities.as_ref())
        .map_or(&[], |caps| caps.add.as_slice())
}

pub(super) fn capabilities(spec: &PodSpec) -> Option<Finding> {
    let non_default = |cap: &&String| !DEFAULT_CAPABILITIES.contains(&cap.as_str());
    let bad = containers_where(spec, |c| {
        added_capabilities(c).iter().any(|a| non_default(&a))
    });
    if bad.is_empty() {
        return None;
    }
    let mut caps: Vec<&str> = spec
        .all_containers()
        .flat_map(added_capabilities)
        .filter(non_default)
        .map(String::as_str)
        .collect();
    sorted_unique(&mut caps);
    let mut detail = String::new();
    containers_phrase(&mut detail, &bad);
    detail.push_str(" must not include ");
    quote_join(&mut detail, &caps);
    detail.push_str(" in securityContext.capabilities.add");
    Finding::new("non-default capabilities", detail)
}

pub(super) fn host_namespaces(spec: &PodSpec) -> Option<Finding> {
    let set = [
        (spec.host_network, "hostNetwork=true"),
        (spec.host_pid, "hostPID=true"),
        (spec.host_ipc, "hostIPC=true"),
    ];
    if !set.iter().any(|(on, _)| *on) {
        return None;
    }
    let names: Vec<&str> = set.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
    Finding::new("host namespaces", names.join(", "))
}

pub(super) fn host_path_volumes(spec: &PodSpec) -> Option<Finding> {
    if !spec.volumes.iter().any(|v| v.sources.has_host_path()) {
        return None;
    }
    let names: Vec<&str> = spec
        .volumes
        .iter()
        .filter(|v| v.sources.has_host_path())
        .map(|v| v.name.as_str())
        .collect();
    let mut detail = plural(names.len(), "volume ", "volumes ").to_owned();
    quote_join(&mut detail, &names);
    Finding::new("hostPath volumes", detail)
}

pub(super) fn host_ports(spec: &PodSpec) -> Option<Finding> {
    let bad = containers_where(spec, |c| c.ports.iter().any(|p| p.host_port != 0));
    if bad.is_empty() {
        return None;
    }
    // Upstream keeps the ports as strings in a set: sorted as strings, "10000" before "9090".
    let mut ports: Vec<String> = spec
        .all_containers()
        .flat_map(|c| &c.ports)
        .filter(|p| p.host_port != 0)
        .map(|p| p.host_port.to_string())
        .collect();
    sorted_unique(&mut ports);
    let mut detail = String::new();
    containers_phrase(&mut detail, &bad);
    detail.push(' ');
    detail.push_str(plural(bad.len(), "uses", "use"));
    detail.push(' ');
    detail.push_str(plural(ports.len(), "hostPort", "hostPorts"));
    detail.push(' ');
    detail.push_str(&ports.join(", "));
    Finding::new("hostPort", detail)
}

/// Probe and lifecycle handlers of a container, in upstream's visiting order.
fn handlers(c: &Container) -> impl Iterator<Item = &Handler> {
    let lifecycle = c.lifecycle.as_deref();
    [
        c.liveness_probe.as_deref(),
        c.readiness_probe.as_deref(),
        c.startup_probe.as_deref(),
        lifecycle.and_then(|l| l.post_start.as_ref()),
        lifecycle.and_then(|l| l.pre_stop.as_ref()),
    ]
    .into_iter()
    .flatten()
}

pub(super) fn host_probes_and_lifecycle(spec: &PodSpec) -> Option<Finding> {
    let mut bad = containers_where(spec, |c| handlers(c).any(|h| h.hosts().next().is_some()));
    if bad.is_empty() {
        return None;
    }
    sorted_unique(&mut bad);
    let mut hosts: Vec<&str> = spec
        .all_containers()
        .flat_map(handlers)
        .flat_map(Handler::hosts)
        .collect();
    sorted_unique(&mut hosts);
    let mut detail = String::new();
    containers_phrase(&mut detail, &bad);
    detail.push(' ');
    detail.push_str(plural(bad.len(), "uses", "use"));
    detail.push(' ');
    detail.push_str(plural(
        hosts.len(),
        "probe or lifecycle host ",
        "probe or lifecycle hosts ",
    ));
    quote_join(&mut detail, &hosts);
    Finding::new("probe or lifecycle host", detail)
}

pub(super) fn privileged(spec: &PodSpec) -> Option<Finding> {
    let bad = containers_where(spec, Container::is_privileged);
    if bad.is_empty() {
        return None;
    }
    let mut detail = String::new();
    containers_phrase(&mut detail, &bad);
    detail.push_str(" must not set securityContext.privileged=true");
    Finding::new("privileged", detail)
}

fn proc_mount_of(c: &Container) -> Option<&str> {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.proc_mount.as_deref())
        .filter(|m| *m != "Default")
}

/// Baseline `procMount`: from v1.35 a pod in a user namespace may set any value.
pub(super) fn proc_mount(spec: &PodSpec, minor: u32) -> Option<Finding> {
    if minor >= 35 && spec.in_user_namespace() {
        return None;
    }
    proc_mount_unconditional(spec)
}

/// The v1.0 rule, also run by `procMount_restricted`: only `Default` (or unset) is allowed.
pub(super) fn proc_mount_unconditional(spec: &PodSpec) -> Option<Finding> {
    let bad = containers_where(spec, |c| proc_mount_of(c).is_some());
    if bad.is_empty() {
        return None;
    }
    let mut values: Vec<&str> = spec.all_containers().filter_map(proc_mount_of).collect();
    sorted_unique(&mut values);
    let mut detail = String::new();
    containers_phrase(&mut detail, &bad);
    detail.push_str(" must not set securityContext.procMount to ");
    quote_join(&mut detail, &values);
    Finding::new("procMount", detail)
}

pub(super) fn se_linux_options(spec: &PodSpec, minor: u32) -> Option<Finding> {
    let type_allowed = |t: &str| {
        matches!(
            t,
            "" | "container_t" | "container_init_t" | "container_kvm_t"
        ) || (minor >= 31 && t == "container_engine_t")
    };
    let invalid =
        |o: &SeLinuxOptions| !type_allowed(&o.type_) || !o.user.is_empty() || !o.role.is_empty();
    let pod_opts = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.se_linux_options.as_ref())
        .filter(|o| invalid(o));
    fn options_of(c: &Container) -> Option<&SeLinuxOptions> {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.se_linux_options.as_ref())
    }
    let bad = containers_where(spec, |c| options_of(c).is_some_and(invalid));
    if pod_opts.is_none() && bad.is_empty() {
        return None;
    }
    let all_bad: Vec<&SeLinuxOptions> = pod_opts
        .into_iter()
        .chain(
            spec.all_containers()
                .filter_map(options_of)
                .filter(|o| invalid(o)),
        )
        .collect();
    let mut types: Vec<&str> = all_bad
        .iter()
        .map(|o| o.type_.as_str())
        .filter(|t| !type_allowed(t))
        .collect();
    sorted_unique(&mut types);
    let mut parts = Vec::with_capacity(3);
    if !types.is_empty() {
        let mut s = plural(types.len(), "type ", "types ").to_owned();
        quote_join(&mut s, &types);
        parts.push(s);
    }
    if all_bad.iter().any(|o| !o.user.is_empty()) {
        parts.push("user may not be set".to_owned());
    }
    if all_bad.iter().any(|o| !o.role.is_empty()) {
        parts.push("role may not be set".to_owned());
    }
    let detail = format!(
        "{} set forbidden securityContext.seLinuxOptions: {}",
        setters(pod_opts.is_some(), &bad),
        parts.join("; ")
    );
    Finding::new("seLinuxOptions", detail)
}

/// Bad seccomp profile types, set explicitly at pod level and per container: shared by the
/// baseline (v1.19+) and restricted checks.
pub(super) struct SeccompTypes<'a> {
    pub pod_bad: Option<&'a str>,
    /// Whether the pod sets an allowed profile, which containers then inherit.
    pub pod_ok: bool,
    pub bad_containers: Vec<&'a str>,
    pub bad_values: Vec<&'a str>,
}

pub(super) fn seccomp_types(spec: &PodSpec) -> SeccompTypes<'_> {
    let pod_type = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    let pod_bad = pod_type.filter(|t| !profile_type_allowed(t));
    fn container_bad(c: &Container) -> Option<&str> {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str())
            .filter(|t| !profile_type_allowed(t))
    }
    let bad_containers = containers_where(spec, |c| container_bad(c).is_some());
    let mut bad_values = Vec::new();
    if pod_bad.is_some() || !bad_containers.is_empty() {
        bad_values = pod_bad
            .into_iter()
            .chain(spec.all_containers().filter_map(container_bad))
            .collect();
        sorted_unique(&mut bad_values);
    }
    SeccompTypes {
        pod_bad,
        pod_ok: pod_type.is_some() && pod_bad.is_none(),
        bad_containers,
        bad_values,
    }
}

impl SeccompTypes<'_> {
    /// `<setters> must not set securityContext.seccompProfile.type to "…"`, if any were set.
    pub fn explicit_finding(&self) -> Option<Finding> {
        if self.pod_bad.is_none() && self.bad_containers.is_empty() {
            return None;
        }
        let mut detail = setters(self.pod_bad.is_some(), &self.bad_containers);
        detail.push_str(" must not set securityContext.seccompProfile.type to ");
        quote_join(&mut detail, &self.bad_values);
        Finding::new("seccompProfile", detail)
    }
}

pub(super) fn seccomp_profile(meta: &PodMeta, spec: &PodSpec, minor: u32) -> Option<Finding> {
    if minor >= 19 {
        return seccomp_types(spec).explicit_finding();
    }
    // Before v1.19 only the alpha annotations count.
    let allowed =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let bad_pod = meta
        .annotations
        .get(SECCOMP_POD_ANNOTATION)
        .filter(|v| !allowed(v))
        .map(|v| (SECCOMP_POD_ANNOTATION.to_owned(), v));
    let container_annotation = |c: &Container| {
        let key = format!("{SECCOMP_CONTAINER_ANNOTATION_PREFIX}{}", c.name);
        let value = meta.annotations.get(&key).filter(|v| !allowed(v))?;
        Some((key, value))
    };
    let has_container_annotations = meta
        .annotations
        .keys()
        .any(|k| k.starts_with(SECCOMP_CONTAINER_ANNOTATION_PREFIX));
    if bad_pod.is_none() && !has_container_annotations {
        return None;
    }
    let mut forbidden: Vec<String> = bad_pod
        .into_iter()
        .chain(spec.all_containers().filter_map(container_annotation))
        .map(|(key, value)| {
            let mut s = format!("{key}=");
            go_quote(&mut s, value);
            s
        })
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    sorted_unique(&mut forbidden);
    let detail = format!(
        "forbidden {} {}",
        plural(forbidden.len(), "annotation", "annotations"),
        forbidden.join(", ")
    );
    Finding::new("seccompProfile", detail)
}

/// Safe sysctls and the policy version that allowed each.
const SAFE_SYSCTLS: [(&str, u32); 14] = [
    ("kernel.shm_rmid_forced", 0),
    ("net.ipv4.ip_local_port_range", 0),
    ("net.ipv4.tcp_syncookies", 0),
    ("net.ipv4.ping_group_range", 0),
    ("net.ipv4.ip_unprivileged_port_start", 0),
    ("net.ipv4.ip_local_reserved_ports", 27),
    ("net.ipv4.tcp_keepalive_time", 29),
    ("net.ipv4.tcp_fin_timeout", 29),
    ("net.ipv4.tcp_keepalive_intvl", 29),
    ("net.ipv4.tcp_keepalive_probes", 29),
    ("net.ipv4.tcp_rmem", 32),
    ("net.ipv4.tcp_wmem", 32),
    ("net.ipv4.tcp_slow_start_after_idle", 37),
    ("net.ipv4.tcp_notsent_lowat", 37),
];

/// Whether some sysctl became safe after 1.`older` and by 1.`newer`.
pub(super) fn sysctls_allowed_after(older: u32, newer: u32) -> bool {
    SAFE_SYSCTLS
        .iter()
        .any(|&(_, since)| older < since && since <= newer)
}

pub(super) fn sysctls(spec: &PodSpec, minor: u32) -> Option<Finding> {
    let forbidden = |name: &str| {
        !SAFE_SYSCTLS
            .iter()
            .any(|&(safe, since)| safe == name && since <= minor)
    };
    let all = spec
        .security_context
        .as_ref()
        .map_or(&[][..], |sc| sc.sysctls.as_slice());
    if !all.iter().any(|s| forbidden(&s.name)) {
        return None;
    }
    let names: Vec<&str> = all
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| forbidden(n))
        .collect();
    Finding::new("forbidden sysctls", names.join(", "))
}

pub(super) fn windows_host_process(spec: &PodSpec) -> Option<Finding> {
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.windows_options.as_ref())
        .is_some_and(|w| w.host_process == Some(true));
    let bad = containers_where(spec, |c| {
        c.security_context
            .as_ref()
            .and_then(|sc| sc.windows_options.as_ref())
            .is_some_and(|w| w.host_process == Some(true))
    });
    if !pod && bad.is_empty() {
        return None;
    }
    let detail = format!(
        "{} must not set securityContext.windowsOptions.hostProcess=true",
        setters(pod, &bad)
    );
    Finding::new("hostProcess", detail)
}
