//! Baseline checks. Each writes upstream's detail to `out` and returns upstream's reason when the
//! pod fails, or returns `None` (having written nothing) when it passes; none allocates unless a
//! message holds more than eight distinct values of a kind.

use super::{containers_where, setters_where};
use crate::pss::format::{DecimalText, SortedSet, go_quote, plural, quote_join};
use crate::pss::model::{Container, Handler, PodMeta, PodSpec, SeLinuxOptions};

pub(super) const APPARMOR_ANNOTATION_PREFIX: &str =
    "container.apparmor.security.beta.kubernetes.io/";
pub(super) const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
pub(super) const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str =
    "container.seccomp.security.alpha.kubernetes.io/";

/// Whether any check reads the annotation `key` (AppArmor per container; the alpha seccomp
/// annotations, read before v1.19): every other annotation can be dropped without changing a
/// verdict or a message.
pub fn annotation_is_checked(key: &str) -> bool {
    key.starts_with(APPARMOR_ANNOTATION_PREFIX)
        || key == SECCOMP_POD_ANNOTATION
        || key.starts_with(SECCOMP_CONTAINER_ANNOTATION_PREFIX)
}

pub(super) fn profile_type_allowed(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

/// The value of a `container.apparmor.security.beta.kubernetes.io/*` annotation baseline allows.
pub(super) fn apparmor_annotation_allowed(v: &str) -> bool {
    v.is_empty() || v == "runtime/default" || v.starts_with("localhost/")
}

/// The annotations whose key starts with `prefix`, sorted by key (the map's order).
pub(super) fn annotations_with_prefix<'a>(
    meta: &'a PodMeta,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a String)> {
    use std::ops::Bound;
    meta.annotations
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// The AppArmor annotations, sorted by key (upstream's order too).
fn apparmor_annotations(meta: &PodMeta) -> impl Iterator<Item = (&String, &String)> {
    annotations_with_prefix(meta, APPARMOR_ANNOTATION_PREFIX)
}

fn app_armor_type(c: &Container) -> Option<&str> {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.app_armor_profile.as_ref())
        .map(|p| p.type_.as_str())
        .filter(|t| !profile_type_allowed(t))
}

pub(super) fn app_armor_profile(
    meta: &PodMeta,
    spec: &PodSpec,
    out: &mut String,
) -> Option<&'static str> {
    let pod_type = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.app_armor_profile.as_ref())
        .map(|p| p.type_.as_str())
        .filter(|t| !profile_type_allowed(t));
    let bad_annotations = apparmor_annotations(meta)
        .filter(|(_, v)| !apparmor_annotation_allowed(v))
        .count();
    if pod_type.is_none()
        && bad_annotations == 0
        && !spec.all_containers().any(|c| app_armor_type(c).is_some())
    {
        return None;
    }
    let types: SortedSet<&str> = pod_type
        .into_iter()
        .chain(spec.all_containers().filter_map(app_armor_type))
        .collect();
    let bad_containers = setters_where(out, pod_type.is_some(), spec, |c| {
        app_armor_type(c).is_some()
    });
    if bad_annotations > 0 {
        if pod_type.is_some() || bad_containers > 0 {
            out.push_str(" and ");
        }
        out.push_str(plural(bad_annotations, "annotation", "annotations"));
    }
    out.push_str(" must not set AppArmor profile type to ");
    quote_join(out, types.as_slice());
    // Annotation keys are unique, and the map iterates them sorted: already upstream's order.
    for (i, (k, v)) in apparmor_annotations(meta)
        .filter(|(_, v)| !apparmor_annotation_allowed(v))
        .enumerate()
    {
        if i > 0 || !types.is_empty() {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(k);
        out.push('=');
        go_quote(out, v);
        out.push('"');
    }
    Some(plural(
        types.len() + bad_annotations,
        "forbidden AppArmor profile",
        "forbidden AppArmor profiles",
    ))
}

pub(super) const DEFAULT_CAPABILITIES: [&str; 13] = [
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

fn non_default(cap: &&String) -> bool {
    !DEFAULT_CAPABILITIES.contains(&cap.as_str())
}

pub(super) fn capabilities(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let bad = |c: &Container| added_capabilities(c).iter().any(|a| non_default(&a));
    if !spec.all_containers().any(bad) {
        return None;
    }
    let caps: SortedSet<&str> = spec
        .all_containers()
        .flat_map(added_capabilities)
        .filter(non_default)
        .map(String::as_str)
        .collect();
    containers_where(out, spec, bad);
    out.push_str(" must not include ");
    quote_join(out, caps.as_slice());
    out.push_str(" in securityContext.capabilities.add");
    Some("non-default capabilities")
}

pub(super) fn host_namespaces(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let set = [
        (spec.host_network, "hostNetwork=true"),
        (spec.host_pid, "hostPID=true"),
        (spec.host_ipc, "hostIPC=true"),
    ];
    if !set.iter().any(|(on, _)| *on) {
        return None;
    }
    for (i, (_, name)) in set.iter().filter(|(on, _)| *on).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
    }
    Some("host namespaces")
}

pub(super) fn host_path_volumes(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let count = spec
        .volumes
        .iter()
        .filter(|v| v.sources.has_host_path())
        .count();
    if count == 0 {
        return None;
    }
    out.push_str(plural(count, "volume ", "volumes "));
    for (i, v) in spec
        .volumes
        .iter()
        .filter(|v| v.sources.has_host_path())
        .enumerate()
    {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(&v.name);
        out.push('"');
    }
    Some("hostPath volumes")
}

pub(super) fn host_ports(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let bad = |c: &Container| c.ports.iter().any(|p| p.host_port != 0);
    if !spec.all_containers().any(bad) {
        return None;
    }
    // Upstream keeps the ports as strings in a set: sorted as strings, "10000" before "9090".
    let ports: SortedSet<DecimalText> = spec
        .all_containers()
        .flat_map(|c| &c.ports)
        .filter(|p| p.host_port != 0)
        .map(|p| DecimalText::new(p.host_port.into()))
        .collect();
    let containers = containers_where(out, spec, bad);
    out.push(' ');
    out.push_str(plural(containers, "uses", "use"));
    out.push(' ');
    out.push_str(plural(ports.len(), "hostPort", "hostPorts"));
    out.push(' ');
    for (i, port) in ports.as_slice().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(port.as_str());
    }
    Some("hostPort")
}

/// Probe and lifecycle handlers of a container, in upstream's visiting order.
pub(super) fn handlers(c: &Container) -> impl Iterator<Item = &Handler> {
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

pub(super) fn host_probes_and_lifecycle(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let bad = |c: &&Container| handlers(c).any(|h| h.hosts().next().is_some());
    if !spec.all_containers().any(|c| bad(&c)) {
        return None;
    }
    // Upstream collects these names in a set: sorted, without duplicates.
    let names: SortedSet<&str> = spec
        .all_containers()
        .filter(bad)
        .map(|c| c.name.as_str())
        .collect();
    let hosts: SortedSet<&str> = spec
        .all_containers()
        .flat_map(handlers)
        .flat_map(Handler::hosts)
        .collect();
    out.push_str(plural(names.len(), "container ", "containers "));
    quote_join(out, names.as_slice());
    out.push(' ');
    out.push_str(plural(names.len(), "uses", "use"));
    out.push(' ');
    out.push_str(plural(
        hosts.len(),
        "probe or lifecycle host ",
        "probe or lifecycle hosts ",
    ));
    quote_join(out, hosts.as_slice());
    Some("probe or lifecycle host")
}

pub(super) fn privileged(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    if !spec.all_containers().any(Container::is_privileged) {
        return None;
    }
    containers_where(out, spec, Container::is_privileged);
    out.push_str(" must not set securityContext.privileged=true");
    Some("privileged")
}

fn proc_mount_of(c: &Container) -> Option<&str> {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.proc_mount.as_deref())
        .filter(|m| *m != "Default")
}

/// Baseline `procMount`: from v1.35 a pod in a user namespace may set any value.
pub(super) fn proc_mount(spec: &PodSpec, minor: u32, out: &mut String) -> Option<&'static str> {
    if minor >= 35 && spec.in_user_namespace() {
        return None;
    }
    proc_mount_unconditional(spec, out)
}

/// The v1.0 rule, also run by `procMount_restricted`: only `Default` (or unset) is allowed.
pub(super) fn proc_mount_unconditional(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let bad = |c: &Container| proc_mount_of(c).is_some();
    if !spec.all_containers().any(bad) {
        return None;
    }
    let values: SortedSet<&str> = spec.all_containers().filter_map(proc_mount_of).collect();
    containers_where(out, spec, bad);
    out.push_str(" must not set securityContext.procMount to ");
    quote_join(out, values.as_slice());
    Some("procMount")
}

fn se_linux_type_allowed(t: &str, minor: u32) -> bool {
    matches!(
        t,
        "" | "container_t" | "container_init_t" | "container_kvm_t"
    ) || (minor >= 31 && t == "container_engine_t")
}

/// Whether baseline refuses these SELinux options at policy version 1.`minor`.
pub(super) fn se_linux_invalid(o: &SeLinuxOptions, minor: u32) -> bool {
    !se_linux_type_allowed(&o.type_, minor) || !o.user.is_empty() || !o.role.is_empty()
}

fn se_linux_options_of(c: &Container) -> Option<&SeLinuxOptions> {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.se_linux_options.as_ref())
}

pub(super) fn se_linux_options(
    spec: &PodSpec,
    minor: u32,
    out: &mut String,
) -> Option<&'static str> {
    let invalid = |o: &&SeLinuxOptions| se_linux_invalid(o, minor);
    let pod_opts = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.se_linux_options.as_ref())
        .filter(invalid);
    let bad = |c: &Container| se_linux_options_of(c).is_some_and(|o| invalid(&o));
    if pod_opts.is_none() && !spec.all_containers().any(bad) {
        return None;
    }
    let all_bad = || {
        pod_opts.into_iter().chain(
            spec.all_containers()
                .filter_map(se_linux_options_of)
                .filter(invalid),
        )
    };
    let types: SortedSet<&str> = all_bad()
        .map(|o| o.type_.as_str())
        .filter(|t| !se_linux_type_allowed(t, minor))
        .collect();
    setters_where(out, pod_opts.is_some(), spec, bad);
    out.push_str(" set forbidden securityContext.seLinuxOptions: ");
    let mut separator = "";
    if !types.is_empty() {
        out.push_str(plural(types.len(), "type ", "types "));
        quote_join(out, types.as_slice());
        separator = "; ";
    }
    if all_bad().any(|o| !o.user.is_empty()) {
        out.push_str(separator);
        out.push_str("user may not be set");
        separator = "; ";
    }
    if all_bad().any(|o| !o.role.is_empty()) {
        out.push_str(separator);
        out.push_str("role may not be set");
    }
    Some("seLinuxOptions")
}

fn seccomp_bad(c: &Container) -> Option<&str> {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str())
        .filter(|t| !profile_type_allowed(t))
}

/// The pod's seccomp profile type, if set.
pub(super) fn pod_seccomp_type(spec: &PodSpec) -> Option<&str> {
    spec.security_context
        .as_ref()
        .and_then(|sc| sc.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str())
}

/// `<setters> must not set securityContext.seccompProfile.type to "…"` for the forbidden types
/// set explicitly at pod level and per container, if any: shared by the baseline (v1.19+) and
/// restricted checks.
pub(super) fn seccomp_explicit(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let pod_bad = pod_seccomp_type(spec).filter(|t| !profile_type_allowed(t));
    let bad = |c: &Container| seccomp_bad(c).is_some();
    if pod_bad.is_none() && !spec.all_containers().any(bad) {
        return None;
    }
    let values: SortedSet<&str> = pod_bad
        .into_iter()
        .chain(spec.all_containers().filter_map(seccomp_bad))
        .collect();
    setters_where(out, pod_bad.is_some(), spec, bad);
    out.push_str(" must not set securityContext.seccompProfile.type to ");
    quote_join(out, values.as_slice());
    Some("seccompProfile")
}

pub(super) fn seccomp_profile(
    meta: &PodMeta,
    spec: &PodSpec,
    minor: u32,
    out: &mut String,
) -> Option<&'static str> {
    if minor >= 19 {
        return seccomp_explicit(spec, out);
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
    forbidden.sort_unstable();
    forbidden.dedup();
    out.push_str("forbidden ");
    out.push_str(plural(forbidden.len(), "annotation", "annotations"));
    out.push(' ');
    out.push_str(&forbidden.join(", "));
    Some("seccompProfile")
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

/// Whether baseline refuses the sysctl `name` at policy version 1.`minor`.
pub(super) fn sysctl_forbidden(name: &str, minor: u32) -> bool {
    !SAFE_SYSCTLS
        .iter()
        .any(|&(safe, since)| safe == name && since <= minor)
}

pub(super) fn sysctls(spec: &PodSpec, minor: u32, out: &mut String) -> Option<&'static str> {
    let all = spec
        .security_context
        .as_ref()
        .map_or(&[][..], |sc| sc.sysctls.as_slice());
    let mut forbidden = all.iter().filter(|s| sysctl_forbidden(&s.name, minor));
    let first = forbidden.next()?;
    out.push_str(&first.name);
    for s in forbidden {
        out.push_str(", ");
        out.push_str(&s.name);
    }
    Some("forbidden sysctls")
}

fn host_process(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|sc| sc.windows_options.as_ref())
        .is_some_and(|w| w.host_process == Some(true))
}

pub(super) fn windows_host_process(spec: &PodSpec, out: &mut String) -> Option<&'static str> {
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.windows_options.as_ref())
        .is_some_and(|w| w.host_process == Some(true));
    if !pod && !spec.all_containers().any(host_process) {
        return None;
    }
    setters_where(out, pod, spec, host_process);
    out.push_str(" must not set securityContext.windowsOptions.hostProcess=true");
    Some("hostProcess")
}
