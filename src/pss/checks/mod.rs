//! The 19 upstream checks, which of them run at each level and version, and in what order.

mod baseline;
mod restricted;
mod scan;

use std::cell::RefCell;
use std::fmt;
use std::sync::LazyLock;

use super::format::plural;
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

    pub const fn level(self) -> Level {
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
    const fn since_minor(self) -> u32 {
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
    const fn replaces(self) -> Option<CheckId> {
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

    /// Runs this check at policy version 1.`minor` (`minor` ≤ [`NEWEST_KNOWN_MINOR`]): when the
    /// pod fails, writes upstream's detail to `out` and returns upstream's reason; when it
    /// passes, returns `None` and writes nothing.
    fn run(
        self,
        meta: &PodMeta,
        spec: &PodSpec,
        minor: u32,
        out: &mut String,
    ) -> Option<&'static str> {
        use CheckId::*;
        match self {
            AppArmorProfile => baseline::app_armor_profile(meta, spec, out),
            CapabilitiesBaseline => baseline::capabilities(spec, out),
            HostNamespaces => baseline::host_namespaces(spec, out),
            HostPathVolumes => baseline::host_path_volumes(spec, out),
            HostPorts => baseline::host_ports(spec, out),
            HostProbesAndHostLifecycle => baseline::host_probes_and_lifecycle(spec, out),
            Privileged => baseline::privileged(spec, out),
            ProcMount => baseline::proc_mount(spec, minor, out),
            SeLinuxOptions => baseline::se_linux_options(spec, minor, out),
            SeccompProfileBaseline => baseline::seccomp_profile(meta, spec, minor, out),
            Sysctls => baseline::sysctls(spec, minor, out),
            WindowsHostProcess => baseline::windows_host_process(spec, out),
            AllowPrivilegeEscalation => restricted::allow_privilege_escalation(spec, minor, out),
            CapabilitiesRestricted => restricted::capabilities(spec, minor, out),
            ProcMountRestricted => baseline::proc_mount_unconditional(spec, out),
            RestrictedVolumes => restricted::volumes(spec, out),
            RunAsNonRoot => restricted::run_as_non_root(spec, minor, out),
            RunAsUser => restricted::run_as_user(spec, minor, out),
            SeccompProfileRestricted => restricted::seccomp_profile(spec, minor, out),
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

/// Writes `container "a"` / `containers "a", "b"` for the containers (visit order, duplicates
/// kept) for which `bad` holds, and returns how many; writes nothing when none.
pub(super) fn containers_where(
    out: &mut String,
    spec: &PodSpec,
    bad: impl Fn(&Container) -> bool,
) -> usize {
    let count = spec.all_containers().filter(|c| bad(c)).count();
    if count > 0 {
        out.push_str(plural(count, "container ", "containers "));
        for (i, c) in spec.all_containers().filter(|c| bad(c)).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push('"');
            out.push_str(&c.name);
            out.push('"');
        }
    }
    count
}

/// Writes `pod` (if `pod`), then the containers for which `bad` holds (see
/// [`containers_where`]), joined with ` and `; returns how many containers.
pub(super) fn setters_where(
    out: &mut String,
    pod: bool,
    spec: &PodSpec,
    bad: impl Fn(&Container) -> bool,
) -> usize {
    if pod {
        out.push_str("pod");
        if spec.all_containers().any(&bad) {
            out.push_str(" and ");
        }
    }
    containers_where(out, spec, bad)
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

/// [`REGISTRY`] as sets: for each minor version, the checks of baseline and of restricted.
const CHECK_SETS: [[CheckSet; 2]; NEWEST_KNOWN_MINOR as usize + 1] = {
    let mut table = [[CheckSet::EMPTY; 2]; NEWEST_KNOWN_MINOR as usize + 1];
    let mut minor = 0;
    while minor <= NEWEST_KNOWN_MINOR as usize {
        let (mut baseline, mut restricted, mut replaced) = (0u32, 0u32, 0u32);
        let mut i = 0;
        while i < CheckId::ALL.len() {
            let check = CheckId::ALL[i];
            if check.since_minor() <= minor as u32 {
                match check.level() {
                    Level::Baseline => baseline |= 1 << i,
                    _ => restricted |= 1 << i,
                }
                if let Some(r) = check.replaces() {
                    replaced |= 1 << r as u32;
                }
            }
            i += 1;
        }
        table[minor] = [
            CheckSet(baseline),
            CheckSet((baseline | restricted) & !replaced),
        ];
        minor += 1;
    }
    table
};

/// The checks that run for `level` at policy version 1.`minor`, as a set (it iterates them in
/// order): what [`checks_for`] lists.
pub fn check_set_for(level: Level, minor: u32) -> CheckSet {
    let minor = minor.min(NEWEST_KNOWN_MINOR) as usize;
    match level {
        Level::Privileged => CheckSet::EMPTY,
        Level::Baseline => CHECK_SETS[minor][0],
        Level::Restricted => CHECK_SETS[minor][1],
    }
}

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

thread_local! {
    /// Where details are written before each is copied to a string of its exact size.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `checks` and returns the violations, in order. One pass over the pod finds the failing
/// checks ([`scan::failing`]); only those build their message. No allocation when everything
/// passes; otherwise one for the vector and one per violation.
pub(crate) fn run_checks(
    checks: CheckSet,
    meta: &PodMeta,
    spec: &PodSpec,
    minor: u32,
) -> Vec<Violation> {
    let failing = scan::failing(meta, spec, minor, checks);
    #[cfg(debug_assertions)]
    scan_agrees_with_the_checks(checks, failing, meta, spec, minor);
    if failing.is_empty() {
        return Vec::new();
    }
    SCRATCH.with_borrow_mut(|detail| {
        let mut violations = Vec::with_capacity(failing.len());
        for check in failing {
            detail.clear();
            if let Some(reason) = check.run(meta, spec, minor, detail) {
                violations.push(Violation {
                    check,
                    reason,
                    detail: detail.as_str().to_owned(),
                });
            }
        }
        detail.clear();
        if detail.capacity() > 4096 {
            detail.shrink_to(4096);
        }
        violations
    })
}

/// Debug builds (every test): the scan finds exactly the checks whose function fails, except
/// `seccompProfile_baseline` before v1.19, which it may include for the function to decide.
#[cfg(debug_assertions)]
fn scan_agrees_with_the_checks(
    checks: CheckSet,
    failing: CheckSet,
    meta: &PodMeta,
    spec: &PodSpec,
    minor: u32,
) {
    let mut out = String::new();
    for check in checks {
        out.clear();
        let fails = check.run(meta, spec, minor, &mut out).is_some();
        let maybe = check == CheckId::SeccompProfileBaseline && minor < 19;
        assert!(
            fails == failing.contains(check) || (maybe && !fails),
            "{check} at v1.{minor}: the check says {fails}, the scan {}",
            failing.contains(check)
        );
        assert!(fails || out.is_empty(), "{check} passed but wrote {out:?}");
    }
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
    fn check_sets_are_the_registry() {
        for minor in 0..=NEWEST_KNOWN_MINOR + 2 {
            for level in Level::ALL {
                let listed: CheckSet = checks_for(level, minor).iter().copied().collect();
                assert_eq!(check_set_for(level, minor), listed, "{level} v1.{minor}");
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
