//! Which checks fail, found in one pass over the Pod without allocating: the evaluator builds
//! messages only for those. The check functions ([`super::baseline`], [`super::restricted`])
//! stay the reference for both the verdict and the message; debug builds compare every
//! evaluation against them (see [`super::run_checks`]).

use super::baseline::sysctl_forbidden;
use super::baseline::{APPARMOR_ANNOTATION_PREFIX, SECCOMP_CONTAINER_ANNOTATION_PREFIX};
use super::baseline::{DEFAULT_CAPABILITIES, handlers, profile_type_allowed, se_linux_invalid};
use super::baseline::{
    SECCOMP_POD_ANNOTATION, annotations_with_prefix, apparmor_annotation_allowed,
};
use super::{CheckId, CheckSet};
use crate::pss::model::{Container, PodMeta, PodSpec};

/// What one container does that some check refuses, one bit each.
mod bit {
    pub const APP_ARMOR: u32 = 1 << 0;
    pub const CAPS_NON_DEFAULT: u32 = 1 << 1;
    pub const HOST_PORT: u32 = 1 << 2;
    pub const HOST_PROBE: u32 = 1 << 3;
    pub const PRIVILEGED: u32 = 1 << 4;
    pub const PROC_MOUNT: u32 = 1 << 5;
    pub const SE_LINUX: u32 = 1 << 6;
    pub const SECCOMP_BAD: u32 = 1 << 7;
    pub const SECCOMP_UNSET: u32 = 1 << 8;
    pub const HOST_PROCESS: u32 = 1 << 9;
    pub const ESCALATION: u32 = 1 << 10;
    pub const NO_DROP_ALL: u32 = 1 << 11;
    pub const CAPS_ADD_RESTRICTED: u32 = 1 << 12;
    pub const NON_ROOT_FALSE: u32 = 1 << 13;
    pub const NON_ROOT_UNSET: u32 = 1 << 14;
    pub const RUN_AS_ROOT: u32 = 1 << 15;
}

/// The bits of one container at policy version 1.`minor`.
fn container_bits(c: &Container, minor: u32) -> u32 {
    use bit::*;
    let mut bits = 0;
    match c.security_context.as_deref() {
        None => bits |= ESCALATION | NO_DROP_ALL | NON_ROOT_UNSET | SECCOMP_UNSET,
        Some(sc) => {
            if sc.privileged == Some(true) {
                bits |= PRIVILEGED;
            }
            if sc.allow_privilege_escalation != Some(false) {
                bits |= ESCALATION;
            }
            match &sc.capabilities {
                None => bits |= NO_DROP_ALL,
                Some(caps) => {
                    if !caps.drop.iter().any(|d| d == "ALL") {
                        bits |= NO_DROP_ALL;
                    }
                    for add in &caps.add {
                        if add != "NET_BIND_SERVICE" {
                            bits |= CAPS_ADD_RESTRICTED;
                            if !DEFAULT_CAPABILITIES.contains(&add.as_str()) {
                                bits |= CAPS_NON_DEFAULT;
                            }
                        }
                    }
                }
            }
            if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
                bits |= PROC_MOUNT;
            }
            match sc.run_as_non_root {
                Some(false) => bits |= NON_ROOT_FALSE,
                None => bits |= NON_ROOT_UNSET,
                Some(true) => {}
            }
            if sc.run_as_user == Some(0) {
                bits |= RUN_AS_ROOT;
            }
            if sc
                .se_linux_options
                .as_ref()
                .is_some_and(|o| se_linux_invalid(o, minor))
            {
                bits |= SE_LINUX;
            }
            match &sc.seccomp_profile {
                None => bits |= SECCOMP_UNSET,
                Some(p) if !profile_type_allowed(&p.type_) => bits |= SECCOMP_BAD,
                Some(_) => {}
            }
            if sc
                .app_armor_profile
                .as_ref()
                .is_some_and(|p| !profile_type_allowed(&p.type_))
            {
                bits |= APP_ARMOR;
            }
            if sc
                .windows_options
                .as_ref()
                .is_some_and(|w| w.host_process == Some(true))
            {
                bits |= HOST_PROCESS;
            }
        }
    }
    if c.ports.iter().any(|p| p.host_port != 0) {
        bits |= HOST_PORT;
    }
    if handlers(c).any(|h| h.hosts().next().is_some()) {
        bits |= HOST_PROBE;
    }
    bits
}

/// The checks among `wanted` that fail at policy version 1.`minor`. For `seccompProfile_baseline`
/// before v1.19 (the alpha annotations) it may include the check when the Pod passes it: the
/// check function decides.
pub(super) fn failing(meta: &PodMeta, spec: &PodSpec, minor: u32, wanted: CheckSet) -> CheckSet {
    use CheckId::*;
    use bit::*;
    let mut bits = 0;
    for c in spec.all_containers() {
        bits |= container_bits(c, minor);
    }
    let has = |b: u32| bits & b != 0;
    let sc = spec.security_context.as_deref();
    let windows_exempt = minor >= 25 && spec.is_windows();
    let user_namespace_exempt = minor >= 35 && spec.in_user_namespace();

    let mut failed = CheckSet::EMPTY;
    let mut fail = |id: CheckId, fails: bool| {
        if fails {
            failed.insert(id);
        }
    };
    for id in wanted {
        match id {
            AppArmorProfile => fail(
                id,
                has(APP_ARMOR)
                    || sc
                        .and_then(|sc| sc.app_armor_profile.as_ref())
                        .is_some_and(|p| !profile_type_allowed(&p.type_))
                    || annotations_with_prefix(meta, APPARMOR_ANNOTATION_PREFIX)
                        .any(|(_, v)| !apparmor_annotation_allowed(v)),
            ),
            CapabilitiesBaseline => fail(id, has(CAPS_NON_DEFAULT)),
            HostNamespaces => fail(id, spec.host_network || spec.host_pid || spec.host_ipc),
            HostPathVolumes => fail(id, spec.volumes.iter().any(|v| v.sources.has_host_path())),
            HostPorts => fail(id, has(HOST_PORT)),
            HostProbesAndHostLifecycle => fail(id, has(HOST_PROBE)),
            Privileged => fail(id, has(PRIVILEGED)),
            ProcMount => fail(
                id,
                has(PROC_MOUNT) && !(minor >= 35 && spec.in_user_namespace()),
            ),
            SeLinuxOptions => fail(
                id,
                has(SE_LINUX)
                    || sc
                        .and_then(|sc| sc.se_linux_options.as_ref())
                        .is_some_and(|o| se_linux_invalid(o, minor)),
            ),
            SeccompProfileBaseline => fail(
                id,
                if minor >= 19 {
                    has(SECCOMP_BAD)
                        || sc
                            .and_then(|sc| sc.seccomp_profile.as_ref())
                            .is_some_and(|p| !profile_type_allowed(&p.type_))
                } else {
                    // The check function reads the annotations.
                    meta.annotations.contains_key(SECCOMP_POD_ANNOTATION)
                        || annotations_with_prefix(meta, SECCOMP_CONTAINER_ANNOTATION_PREFIX)
                            .next()
                            .is_some()
                },
            ),
            Sysctls => fail(
                id,
                sc.is_some_and(|sc| sc.sysctls.iter().any(|s| sysctl_forbidden(&s.name, minor))),
            ),
            WindowsHostProcess => fail(
                id,
                has(HOST_PROCESS)
                    || sc
                        .and_then(|sc| sc.windows_options.as_ref())
                        .is_some_and(|w| w.host_process == Some(true)),
            ),
            AllowPrivilegeEscalation => fail(id, !windows_exempt && has(ESCALATION)),
            CapabilitiesRestricted => fail(
                id,
                !windows_exempt && has(NO_DROP_ALL | CAPS_ADD_RESTRICTED),
            ),
            ProcMountRestricted => fail(id, has(PROC_MOUNT)),
            RestrictedVolumes => fail(
                id,
                spec.volumes.iter().any(|v| !v.sources.restricted_allows()),
            ),
            RunAsNonRoot => {
                let pod = sc.and_then(|sc| sc.run_as_non_root);
                fail(
                    id,
                    !user_namespace_exempt
                        && (pod == Some(false)
                            || has(NON_ROOT_FALSE)
                            || (pod != Some(true) && has(NON_ROOT_UNSET))),
                )
            }
            RunAsUser => fail(
                id,
                !user_namespace_exempt
                    && (has(RUN_AS_ROOT) || sc.and_then(|sc| sc.run_as_user) == Some(0)),
            ),
            SeccompProfileRestricted => {
                let pod = sc.and_then(|sc| sc.seccomp_profile.as_ref());
                let pod_bad = pod.is_some_and(|p| !profile_type_allowed(&p.type_));
                fail(
                    id,
                    !windows_exempt
                        && (pod_bad || has(SECCOMP_BAD) || (pod.is_none() && has(SECCOMP_UNSET))),
                )
            }
        }
    }
    failed
}
