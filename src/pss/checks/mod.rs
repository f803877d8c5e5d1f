//! The 19 upstream checks, which of them run at each level and version, and in what order.

mod baseline;
mod restricted;

use std::fmt;
use std::sync::LazyLock;

use super::format::containers_phrase;
use super::level::{Level, NEWEST_KNOWN_MINOR};
use super::model::{Container, PodMeta, PodSpec, Volume};

pub use baseline::annotation_is_checked;

/// An upstream check id; `Display` gives the id exactly as upstream spells it.
///
/// Declared in the evaluator's order (baseline ids sorted byte-wise, then restricted ids sorted
/// byte-wise; tested): [`CheckSet`] iterates in discriminant order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckId {
    AppArmorProfile,
    CapabilitiesBaseline,
    HostNamespaces,
    HostPathVolumes,
    HostPorts,
    HostProbesAndHostLifecycle,
    Privileged,
    ProcMount,
    SeLinuxOptions,
    SeccompProfileBaseline,
    Sysctls,
    WindowsHostProcess,
    AllowPrivilegeEscalation,
    CapabilitiesRestricted,
    ProcMountRestricted,
    RestrictedVolumes,
    RunAsNonRoot,
    RunAsUser,
    SeccompProfileRestricted,
}

impl CheckId {
    pub const ALL: [CheckId; 19] = [
        CheckId::AppArmorProfile,
        CheckId::CapabilitiesBaseline,
        CheckId::HostNamespaces,
        CheckId::HostPathVolumes,
        CheckId::HostPorts,
        CheckId::HostProbesAndHostLifecycle,
        CheckId::Privileged,
        CheckId::ProcMount,
        CheckId::SeLinuxOptions,
        CheckId::SeccompProfileBaseline,
        CheckId::Sysctls,
        CheckId::WindowsHostProcess,
        CheckId::AllowPrivilegeEscalation,
        CheckId::CapabilitiesRestricted,
        CheckId::ProcMountRestricted,
        CheckId::RestrictedVolumes,
        CheckId::RunAsNonRoot,
        CheckId::RunAsUser,
        CheckId::SeccompProfileRestricted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckId::AppArmorProfile => "appArmorProfile",
            CheckId::CapabilitiesBaseline => "capabilities_baseline",
            CheckId::HostNamespaces => "hostNamespaces",
            CheckId::HostPathVolumes => "hostPathVolumes",
            CheckId::HostPorts => "hostPorts",
            CheckId::HostProbesAndHostLifecycle => "hostProbesAndHostLifecycle",
            CheckId::Privileged => "privileged",
            CheckId::ProcMount => "procMount",
            CheckId::SeLinuxOptions => "seLinuxOptions",
            CheckId::SeccompProfileBaseline => "seccompProfile_baseline",
            CheckId::Sysctls => "sysctls",
            CheckId::WindowsHostProcess => "windowsHostProcess",
            CheckId::AllowPrivilegeEscalation => "allowPrivilegeEscalation",
            CheckId::CapabilitiesRestricted => "capabilities_restricted",
            CheckId::ProcMountRestricted => "procMount_restricted",
            CheckId::RestrictedVolumes => "restrictedVolumes",
            CheckId::RunAsNonRoot => "runAsNonRoot",
            CheckId::RunAsUser => "runAsUser",
            CheckId::SeccompProfileRestricted => "seccompProfile_restricted",
        }
    }

    pub fn level(self) -> Level {
        use CheckId::*;
        match self {
            AllowPrivilegeEscalation
            | CapabilitiesRestricted
            | ProcMountRestricted
            | RestrictedVolumes
            | RunAsNonRoot
            | RunAsUser
            | SeccompProfileRestricted => Level::Restricted,
            _ => Level::Baseline,
        }
    }

    /// The first policy minor version (1.x) at which the check exists.
    fn since_minor(self) -> u32 {
        match self {
            CheckId::AllowPrivilegeEscalation => 8,
            CheckId::SeccompProfileRestricted => 19,
            CheckId::CapabilitiesRestricted => 22,
            CheckId::RunAsUser => 23,
            CheckId::HostProbesAndHostLifecycle => 34,
            CheckId::ProcMountRestricted => 35,
            _ => 0,
        }
    }

    /// The baseline check a restricted check replaces (whenever the restricted one exists).
    fn replaces(self) -> Option<CheckId> {
        match self {
            CheckId::RestrictedVolumes => Some(CheckId::HostPathVolumes),
            CheckId::SeccompProfileRestricted => Some(CheckId::SeccompProfileBaseline),
            CheckId::CapabilitiesRestricted => Some(CheckId::CapabilitiesBaseline),
            CheckId::ProcMountRestricted => Some(CheckId::ProcMount),
            _ => None,
        }
    }

    /// Whether this check at policy version 1.`minor` refuses every Pod the API server accepts
    /// that `other` at 1.`other_minor` refuses. Each version of a check either keeps, tightens
    /// or relaxes the one before; the relaxations are what make versions incomparable:
    /// - `procMount` (v1.35) and `runAsNonRoot`/`runAsUser` (v1.35) let Pods in a user namespace
    ///   through; `seLinuxOptions` (v1.31) allows `container_engine_t`; `sysctls` grows its safe
    ///   list (v1.27, v1.29, v1.32, v1.37);
    /// - the restricted `allowPrivilegeEscalation`, `capabilities` and `seccompProfile` checks
    ///   exempt Windows Pods from v1.25;
    /// - `seccompProfile_baseline` reads the alpha annotations before v1.19 and the fields from
    ///   v1.19: neither covers the other.
    ///
    /// A restricted check covers the baseline check it replaces, including its Windows
    /// exemption, because API validation refuses those fields on Windows Pods.
    fn refuses_at_least(self, minor: u32, other: CheckId, other_minor: u32) -> bool {
        use CheckId::*;
        // Whether a relaxation made at 1.`since` separates the two versions the wrong way.
        let relaxed_since = |since: u32| minor >= since && other_minor < since;
        match (self, other) {
            (a, b) if a == b => match a {
                ProcMount | RunAsNonRoot | RunAsUser => !relaxed_since(35),
                SeLinuxOptions => !relaxed_since(31),
                AllowPrivilegeEscalation | CapabilitiesRestricted | SeccompProfileRestricted => {
                    !relaxed_since(25)
                }
                SeccompProfileBaseline => (minor >= 19) == (other_minor >= 19),
                Sysctls => !baseline::sysctls_allowed_after(other_minor, minor),
                _ => true,
            },
            (ProcMountRestricted, ProcMount)
            | (RestrictedVolumes, HostPathVolumes)
            | (CapabilitiesRestricted, CapabilitiesBaseline) => true,
            (SeccompProfileRestricted, SeccompProfileBaseline) => other_minor >= 19,
            _ => false,
        }
    }

    /// Runs this check at policy version 1.`minor` (`minor` ≤ [`NEWEST_KNOWN_MINOR`]).
    fn run(self, meta: &PodMeta, spec: &PodSpec, minor: u32) -> Option<Finding> {
        use CheckId::*;
        match self {
            AppArmorProfile => baseline::app_armor_profile(meta, spec),
            CapabilitiesBaseline => baseline::capabilities(spec),
            HostNamespaces => baseline::host_namespaces(spec),
            HostPathVolumes => baseline::host_path_volumes(spec),
            HostPorts => baseline::host_ports(spec),
            HostProbesAndHostLifecycle => baseline::host_probes_and_lifecycle(spec),
            Privileged => baseline::privileged(spec),
            ProcMount => baseline::proc_mount(spec, minor),
            SeLinuxOptions => baseline::se_linux_options(spec, minor),
            SeccompProfileBaseline => baseline::seccomp_profile(meta, spec, minor),
            Sysctls => baseline::sysctls(spec, minor),
            WindowsHostProcess => baseline::windows_host_process(spec),
            AllowPrivilegeEscalation => restricted::allow_privilege_escalation(spec, minor),
            CapabilitiesRestricted => restricted::capabilities(spec, minor),
            ProcMountRestricted => baseline::proc_mount_unconditional(spec),
            RestrictedVolumes => restricted::volumes(spec),
            RunAsNonRoot => restricted::run_as_non_root(spec, minor),
            RunAsUser => restricted::run_as_user(spec, minor),
            SeccompProfileRestricted => restricted::seccomp_profile(spec, minor),
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CheckId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckId::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown check id {s:?}"))
    }
}

/// A set of check ids in one `u32` (one bit per [`CheckId`] discriminant). Iterates in the
/// evaluator's order, the order [`Evaluation::failed_checks`](super::Evaluation::failed_checks)
/// gives: the index keeps one per Pod and mode instead of a vector of ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckSet(u32);

impl CheckSet {
    pub const EMPTY: CheckSet = CheckSet(0);

    pub fn insert(&mut self, id: CheckId) {
        self.0 |= 1 << id as u32;
    }

    pub fn contains(self, id: CheckId) -> bool {
        self.0 & 1 << id as u32 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The ids, in the evaluator's order.
    pub fn iter(self) -> CheckSetIter {
        CheckSetIter(self.0)
    }

    /// The ids as upstream spells them, in the evaluator's order.
    pub fn ids(self) -> impl Iterator<Item = &'static str> {
        self.iter().map(CheckId::as_str)
    }
}

impl FromIterator<CheckId> for CheckSet {
    fn from_iter<I: IntoIterator<Item = CheckId>>(iter: I) -> Self {
        let mut set = CheckSet::EMPTY;
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl IntoIterator for CheckSet {
    type Item = CheckId;
    type IntoIter = CheckSetIter;
    fn into_iter(self) -> CheckSetIter {
        self.iter()
    }
}

/// The ids of a [`CheckSet`], lowest bit first.
#[derive(Debug, Clone)]
pub struct CheckSetIter(u32);

impl Iterator for CheckSetIter {
    type Item = CheckId;
    fn next(&mut self) -> Option<CheckId> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(CheckId::ALL[bit])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for CheckSetIter {}

/// Whether any check reads `volume`: `hostPathVolumes` names the volumes with a hostPath source
/// and `restrictedVolumes` those with no source restricted allows; no other check reads volumes.
/// A volume no check reads can never change a verdict or a message.
pub fn volume_is_checked(volume: &Volume) -> bool {
    volume.sources.has_host_path() || !volume.sources.restricted_allows()
}

/// One failed check: upstream's reason and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub check: CheckId,
    pub reason: &'static str,
    pub detail: String,
}

/// What a check function returns when it fails.
pub(crate) struct Finding {
    reason: &'static str,
    detail: String,
}

impl Finding {
    fn new(reason: &'static str, detail: String) -> Option<Finding> {
        Some(Finding { reason, detail })
    }
}

/// Names of the containers (visit order, duplicates kept) for which `bad` holds.
pub(super) fn containers_where(spec: &PodSpec, bad: impl Fn(&Container) -> bool) -> Vec<&str> {
    spec.all_containers()
        .filter(|c| bad(c))
        .map(|c| c.name.as_str())
        .collect()
}

/// `pod`, then `containers "a", "b"`, joined with ` and `.
pub(super) fn setters(pod: bool, containers: &[&str]) -> String {
    let mut out = String::new();
    if pod {
        out.push_str("pod");
    }
    if !containers.is_empty() {
        if pod {
            out.push_str(" and ");
        }
        containers_phrase(&mut out, containers);
    }
    out
}

/// For each minor version 0..=NEWEST, the ordered checks of baseline and of restricted.
static REGISTRY: LazyLock<Vec<[Vec<CheckId>; 2]>> = LazyLock::new(|| {
    // Upstream order: baseline ids sorted byte-wise, then restricted ids sorted byte-wise.
    let mut ordered = CheckId::ALL.to_vec();
    ordered.sort_by_key(|c| (c.level(), c.as_str()));
    (0..=NEWEST_KNOWN_MINOR)
        .map(|minor| {
            let exists = |c: &&CheckId| c.since_minor() <= minor;
            let baseline: Vec<CheckId> = ordered
                .iter()
                .filter(exists)
                .filter(|c| c.level() == Level::Baseline)
                .copied()
                .collect();
            let replaced: Vec<CheckId> = ordered
                .iter()
                .filter(exists)
                .filter_map(|c| c.replaces())
                .collect();
            let restricted = ordered
                .iter()
                .filter(exists)
                .filter(|c| !replaced.contains(c))
                .copied()
                .collect();
            [baseline, restricted]
        })
        .collect()
});

/// The checks that run, in order, for `level` at policy version 1.`minor`.
pub fn checks_for(level: Level, minor: u32) -> &'static [CheckId] {
    let minor = minor.min(NEWEST_KNOWN_MINOR) as usize;
    match level {
        Level::Privileged => &[],
        Level::Baseline => &REGISTRY[minor][0],
        Level::Restricted => &REGISTRY[minor][1],
    }
}

/// Whether `level` at 1.`minor` refuses every Pod the API server accepts that `other` at
/// 1.`other_minor` refuses: every check of `other` is covered by one of `level`'s (see
/// [`CheckId::refuses_at_least`]). Privileged refuses nothing.
pub fn refuses_at_least(level: Level, minor: u32, other: Level, other_minor: u32) -> bool {
    let ours = checks_for(level, minor);
    checks_for(other, other_minor).iter().all(|&theirs| {
        ours.iter().any(|&check| {
            check.refuses_at_least(
                minor.min(NEWEST_KNOWN_MINOR),
                theirs,
                other_minor.min(NEWEST_KNOWN_MINOR),
            )
        })
    })
}

/// Runs `checks` and returns the violations, in order. No allocation when everything passes.
pub(crate) fn run_checks(
    checks: &[CheckId],
    meta: &PodMeta,
    spec: &PodSpec,
    minor: u32,
) -> Vec<Violation> {
    checks
        .iter()
        .filter_map(|&check| {
            check.run(meta, spec, minor).map(|f| Violation {
                check,
                reason: f.reason,
                detail: f.detail,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(level: Level, minor: u32) -> Vec<&'static str> {
        checks_for(level, minor)
            .iter()
            .map(|c| c.as_str())
            .collect()
    }

    #[test]
    fn order_and_replacement_follow_upstream() {
        assert_eq!(
            ids(Level::Baseline, 37),
            [
                "appArmorProfile",
                "capabilities_baseline",
                "hostNamespaces",
                "hostPathVolumes",
                "hostPorts",
                "hostProbesAndHostLifecycle",
                "privileged",
                "procMount",
                "seLinuxOptions",
                "seccompProfile_baseline",
                "sysctls",
                "windowsHostProcess",
            ]
        );
        assert_eq!(
            ids(Level::Restricted, 37),
            [
                "appArmorProfile",
                "hostNamespaces",
                "hostPorts",
                "hostProbesAndHostLifecycle",
                "privileged",
                "seLinuxOptions",
                "sysctls",
                "windowsHostProcess",
                "allowPrivilegeEscalation",
                "capabilities_restricted",
                "procMount_restricted",
                "restrictedVolumes",
                "runAsNonRoot",
                "runAsUser",
                "seccompProfile_restricted",
            ]
        );
        // v1.0 restricted keeps the seccomp annotation and baseline capability checks.
        assert_eq!(
            ids(Level::Restricted, 0),
            [
                "appArmorProfile",
                "capabilities_baseline",
                "hostNamespaces",
                "hostPorts",
                "privileged",
                "procMount",
                "seLinuxOptions",
                "seccompProfile_baseline",
                "sysctls",
                "windowsHostProcess",
                "restrictedVolumes",
                "runAsNonRoot",
            ]
        );
        assert!(checks_for(Level::Privileged, 37).is_empty());
        assert_eq!(
            checks_for(Level::Baseline, 99),
            checks_for(Level::Baseline, 37)
        );
    }

    #[test]
    fn declaration_order_is_the_evaluators_order() {
        for (i, id) in CheckId::ALL.into_iter().enumerate() {
            assert_eq!(id as usize, i, "ALL lists {id} at its discriminant");
        }
        let mut sorted = CheckId::ALL;
        sorted.sort_by_key(|c| (c.level(), c.as_str()));
        assert_eq!(sorted, CheckId::ALL);
        // So every level and version runs its checks in ascending discriminant order.
        for minor in 0..=NEWEST_KNOWN_MINOR {
            for level in [Level::Baseline, Level::Restricted] {
                let checks = checks_for(level, minor);
                assert!(checks.windows(2).all(|w| (w[0] as u32) < (w[1] as u32)));
                let set: CheckSet = checks.iter().copied().collect();
                assert_eq!(set.iter().collect::<Vec<_>>(), checks);
            }
        }
    }

    #[test]
    fn check_sets_iterate_in_order_and_count() {
        let set: CheckSet = [
            CheckId::SeccompProfileRestricted,
            CheckId::AppArmorProfile,
            CheckId::Privileged,
            CheckId::AppArmorProfile,
        ]
        .into_iter()
        .collect();
        assert_eq!(
            set.ids().collect::<Vec<_>>(),
            ["appArmorProfile", "privileged", "seccompProfile_restricted"]
        );
        assert_eq!((set.len(), set.iter().len()), (3, 3));
        assert!(set.contains(CheckId::Privileged) && !set.contains(CheckId::RunAsUser));
        assert!(CheckSet::EMPTY.is_empty() && CheckSet::default().iter().next().is_none());
        let all: CheckSet = CheckId::ALL.into_iter().collect();
        assert_eq!(all.into_iter().collect::<Vec<_>>(), CheckId::ALL);
    }

    #[test]
    fn check_ids_round_trip() {
        for id in CheckId::ALL {
            assert_eq!(id.as_str().parse::<CheckId>(), Ok(id));
        }
    }
}
