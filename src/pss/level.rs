//! Pod Security levels and policy versions, parsed exactly as kube-apiserver parses the
//! `pod-security.kubernetes.io/*` namespace labels (upstream `api/helpers.go`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The newest policy version whose checks this evaluator knows: a server at this version or newer
/// is evaluated with these checks (newer servers are flagged; see [`KubeVersion::is_known`]).
pub const NEWEST_KNOWN_MINOR: u32 = 37;

/// The Kubernetes minor version of the kube-apiserver whose PodSecurity admission decides.
/// kube-apiserver evaluates `latest`, and any version label newer than itself, with its own
/// newest checks: on a v1.31 server `baseline:latest` and `baseline:v1.35` both mean v1.31's
/// checks (upstream `checkRegistry.EvaluatePod` caps the version at its `maxVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubeVersion {
    pub minor: u32,
}

impl KubeVersion {
    /// A server of the newest version this build knows (what `check` assumes by default).
    pub const NEWEST_KNOWN: KubeVersion = KubeVersion {
        minor: NEWEST_KNOWN_MINOR,
    };

    /// The newest policy minor version evaluated on this server.
    pub fn policy_minor(self) -> u32 {
        self.minor.min(NEWEST_KNOWN_MINOR)
    }

    /// Whether this build knows every check of this server's version. A newer server may have
    /// checks this build lacks: it is evaluated with the newest known checks, and flagged.
    pub fn is_known(self) -> bool {
        self.minor <= NEWEST_KNOWN_MINOR
    }

    /// From the API server's `/version` fields: `major` "1" and `minor` "31" (managed clusters
    /// add a `+`, as EKS's "31+"), falling back to `gitVersion` ("v1.31.13-eks-...").
    pub fn from_server(major: &str, minor: &str, git_version: &str) -> Result<KubeVersion, String> {
        let digits = |s: &str| -> Option<u32> {
            let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            s[..end].parse().ok()
        };
        if let (Some(1), Some(minor)) = (digits(major), digits(minor)) {
            return Ok(KubeVersion { minor });
        }
        git_version.parse().map_err(|_| {
            format!(
                "cannot read a Kubernetes version from /version (major {major:?}, minor {minor:?}, gitVersion {git_version:?})"
            )
        })
    }
}

impl Default for KubeVersion {
    fn default() -> Self {
        KubeVersion::NEWEST_KNOWN
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{}", self.minor)
    }
}

impl FromStr for KubeVersion {
    type Err = String;
    /// `v1.31`, `1.31` or a full `v1.31.13[-suffix]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid =
            || format!("invalid Kubernetes version {s:?}: expected v1.<minor>, e.g. v1.31");
        let rest = s.strip_prefix('v').unwrap_or(s);
        let rest = rest.strip_prefix("1.").ok_or_else(invalid)?;
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if end == 0 || !(end == rest.len() || rest[end..].starts_with(['.', '-', '+'])) {
            return Err(invalid());
        }
        let minor = rest[..end].parse().map_err(|_| invalid())?;
        Ok(KubeVersion { minor })
    }
}

/// A Pod Security Standards level, ordered from least to most strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Privileged, Level::Baseline, Level::Restricted];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a level or version value was refused; the text is upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid level {0:?}: must be one of privileged, baseline, restricted")]
    Level(String),
    #[error("invalid version {0:?}: must be \"latest\" or \"v1.x\"")]
    Version(String),
    #[error("invalid level:version {0:?}: expected <level>:<version>, e.g. restricted:latest")]
    LevelVersion(String),
}

impl FromStr for Level {
    type Err = ParseError;
    /// Case-sensitive, as upstream: `Baseline` is not a level.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(ParseError::Level(s.to_owned())),
        }
    }
}

/// A policy version: `latest` or `v1.<minor>`. The minor is kept as written (`v1.99` stays
/// `v1.99` in messages) and resolved against the server's version only when choosing checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Latest,
    V1(u32),
}

impl Version {
    /// The minor version whose checks apply on a server of version `kube`.
    pub fn effective_minor(self, kube: KubeVersion) -> u32 {
        match self {
            Version::Latest => kube.policy_minor(),
            Version::V1(minor) => minor.min(kube.policy_minor()),
        }
    }

    /// Whether two versions select the same checks on `kube` (`latest` and `v1.31` do on v1.31).
    pub fn equivalent(self, other: Version, kube: KubeVersion) -> bool {
        self.effective_minor(kube) == other.effective_minor(kube)
    }
}

impl Ord for Version {
    /// `latest` is newer than every numbered version, as upstream's `Version.Older`.
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Version::Latest, Version::Latest) => Ordering::Equal,
            (Version::Latest, _) => Ordering::Greater,
            (_, Version::Latest) => Ordering::Less,
            (Version::V1(a), Version::V1(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::V1(minor) => write!(f, "v1.{minor}"),
        }
    }
}

impl FromStr for Version {
    type Err = ParseError;
    /// `latest`, or `v1.` followed by `0` or a number without leading zero that fits Go's `int`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let invalid = || ParseError::Version(s.to_owned());
        let digits = s.strip_prefix("v1.").ok_or_else(invalid)?;
        let well_formed = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !well_formed {
            return Err(invalid());
        }
        // Upstream's strconv.Atoi fails beyond int64; such a label falls back to latest.
        let minor: i64 = digits.parse().map_err(|_| invalid())?;
        Ok(Version::V1(u32::try_from(minor).unwrap_or(u32::MAX)))
    }
}

/// A level at a version, displayed as upstream does: `restricted:latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl LevelVersion {
    pub const fn new(level: Level, version: Version) -> Self {
        LevelVersion { level, version }
    }

    pub const PRIVILEGED: LevelVersion = LevelVersion::new(Level::Privileged, Version::Latest);

    /// Whether both select the same checks on `kube`: both privileged, or same level and same
    /// checks.
    pub fn equivalent(self, other: LevelVersion, kube: KubeVersion) -> bool {
        (self.level == Level::Privileged && other.level == Level::Privileged)
            || (self.level == other.level && self.version.equivalent(other.version, kube))
    }
}

impl LevelVersion {
    /// Appends what `Display` writes (`restricted:latest`), without the formatting machinery:
    /// messages are built on the evaluator's hot path.
    pub fn write_to(&self, out: &mut String) {
        out.push_str(self.level.as_str());
        out.push(':');
        match self.version {
            Version::Latest => out.push_str("latest"),
            Version::V1(minor) => {
                out.push_str("v1.");
                super::format::push_decimal(out, minor.into());
            }
        }
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

impl FromStr for LevelVersion {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (level, version) = s
            .split_once(':')
            .ok_or_else(|| ParseError::LevelVersion(s.to_owned()))?;
        Ok(LevelVersion::new(level.parse()?, version.parse()?))
    }
}

/// The PSA namespace labels.
pub mod labels {
    pub const PREFIX: &str = "pod-security.kubernetes.io/";
    pub const ENFORCE: &str = "pod-security.kubernetes.io/enforce";
    pub const ENFORCE_VERSION: &str = "pod-security.kubernetes.io/enforce-version";
    pub const AUDIT: &str = "pod-security.kubernetes.io/audit";
    pub const AUDIT_VERSION: &str = "pod-security.kubernetes.io/audit-version";
    pub const WARN: &str = "pod-security.kubernetes.io/warn";
    pub const WARN_VERSION: &str = "pod-security.kubernetes.io/warn-version";
}

/// The three PSA modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Enforce,
    Audit,
    Warn,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Enforce, Mode::Audit, Mode::Warn];

    /// The position of this mode in [`Mode::ALL`], for arrays indexed by mode.
    pub fn index(self) -> usize {
        match self {
            Mode::Enforce => 0,
            Mode::Audit => 1,
            Mode::Warn => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Warn => "warn",
        }
    }

    /// The (level label, version label) of this mode.
    pub fn label_keys(self) -> (&'static str, &'static str) {
        match self {
            Mode::Enforce => (labels::ENFORCE, labels::ENFORCE_VERSION),
            Mode::Audit => (labels::AUDIT, labels::AUDIT_VERSION),
            Mode::Warn => (labels::WARN, labels::WARN_VERSION),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy in force in a namespace: one level/version per mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::DEFAULT
    }
}

impl Policy {
    /// kube-apiserver's default when no AdmissionConfiguration says otherwise.
    pub const DEFAULT: Policy = Policy {
        enforce: LevelVersion::PRIVILEGED,
        audit: LevelVersion::PRIVILEGED,
        warn: LevelVersion::PRIVILEGED,
    };

    pub fn get(&self, mode: Mode) -> LevelVersion {
        match mode {
            Mode::Enforce => self.enforce,
            Mode::Audit => self.audit,
            Mode::Warn => self.warn,
        }
    }
}

/// A namespace label whose value PSA refused, and what it fell back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelError {
    pub label: &'static str,
    pub value: String,
    pub error: ParseError,
}

/// Resolves namespace labels to the policy PSA evaluates, with upstream's fallbacks: an invalid
/// enforce level fails closed (restricted), invalid audit/warn levels fail open (privileged), an
/// invalid version means latest, and an unset warn follows a stricter explicit enforce.
/// `get` looks a label up; it works on any label map type.
pub fn policy_from_labels<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    defaults: Policy,
) -> (Policy, Vec<LabelError>) {
    let mut policy = defaults;
    let mut errors = Vec::new();
    let mut note = |label: &'static str, value: &str, error: ParseError| {
        errors.push(LabelError {
            label,
            value: value.to_owned(),
            error,
        })
    };

    let mut has_enforce_level = false;
    if let Some(value) = get(labels::ENFORCE) {
        match value.parse() {
            Ok(level) => {
                policy.enforce.level = level;
                has_enforce_level = true;
            }
            Err(e) => {
                policy.enforce.level = Level::Restricted;
                note(labels::ENFORCE, value, e);
            }
        }
    }
    let mut parse_version = |label: &'static str, target: &mut Version| -> bool {
        let Some(value) = get(label) else {
            return false;
        };
        *target = value.parse().unwrap_or_else(|e| {
            note(label, value, e);
            Version::Latest
        });
        true
    };
    parse_version(labels::ENFORCE_VERSION, &mut policy.enforce.version);
    parse_version(labels::AUDIT_VERSION, &mut policy.audit.version);
    let has_warn_version = parse_version(labels::WARN_VERSION, &mut policy.warn.version);

    let mut parse_open_level = |label: &'static str, target: &mut Level| -> bool {
        let Some(value) = get(label) else {
            return false;
        };
        *target = value.parse().unwrap_or_else(|e| {
            errors.push(LabelError {
                label,
                value: value.to_owned(),
                error: e,
            });
            Level::Privileged
        });
        true
    };
    parse_open_level(labels::AUDIT, &mut policy.audit.level);
    let has_warn_level = parse_open_level(labels::WARN, &mut policy.warn.level);

    if !has_warn_level && has_enforce_level && policy.enforce.level > policy.warn.level {
        policy.warn.level = policy.enforce.level;
        if !has_warn_version {
            policy.warn.version = policy.enforce.version;
        }
    }
    // Upstream reports label errors in label order: enforce, enforce-version, audit, ...
    errors.sort_by_key(|e| label_order(e.label));
    (policy, errors)
}

fn label_order(label: &str) -> usize {
    [
        labels::ENFORCE,
        labels::ENFORCE_VERSION,
        labels::AUDIT,
        labels::AUDIT_VERSION,
        labels::WARN,
        labels::WARN_VERSION,
    ]
    .iter()
    .position(|l| *l == label)
    .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn versions_parse_like_upstream() {
        assert_eq!("latest".parse(), Ok(Version::Latest));
        assert_eq!("v1.0".parse(), Ok(Version::V1(0)));
        assert_eq!("v1.37".parse(), Ok(Version::V1(37)));
        assert_eq!(
            "v1.99".parse::<Version>().map(|v| v.to_string()),
            Ok("v1.99".to_owned())
        );
        for bad in [
            "", "v1", "1.1", "v1.01", "v2.0", "v1.", "v1.-1", "V1.2", "v1.2 ", "Latest", "v1.1a",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} must be refused");
        }
        assert!("v1.99999999999999999999".parse::<Version>().is_err());
    }

    #[test]
    fn versions_beyond_the_newest_select_the_newest_checks() {
        let newest = KubeVersion::NEWEST_KNOWN;
        assert_eq!(Version::V1(99).effective_minor(newest), NEWEST_KNOWN_MINOR);
        assert_eq!(Version::Latest.effective_minor(newest), NEWEST_KNOWN_MINOR);
        assert!(Version::V1(37).equivalent(Version::Latest, newest));
        assert!(Version::V1(3) < Version::V1(20) && Version::V1(1000) < Version::Latest);
        // A newer server than this build is evaluated with the newest checks it knows.
        let future = KubeVersion { minor: 40 };
        assert!(!future.is_known());
        assert_eq!(Version::Latest.effective_minor(future), NEWEST_KNOWN_MINOR);
    }

    #[test]
    fn latest_is_the_servers_own_version() {
        let v131 = KubeVersion { minor: 31 };
        assert!(v131.is_known());
        assert_eq!(Version::Latest.effective_minor(v131), 31);
        assert_eq!(Version::V1(35).effective_minor(v131), 31);
        assert_eq!(Version::V1(20).effective_minor(v131), 20);
        assert!(Version::V1(31).equivalent(Version::Latest, v131));
        assert!(Version::V1(35).equivalent(Version::Latest, v131));
        assert!(!Version::V1(31).equivalent(Version::Latest, KubeVersion::NEWEST_KNOWN));
    }

    #[test]
    fn kube_versions_parse_from_flags_and_from_the_server() {
        for (text, minor) in [
            ("v1.31", 31),
            ("1.31", 31),
            ("v1.31.13", 31),
            ("v1.37.2-eks-1a2b", 37),
        ] {
            assert_eq!(text.parse(), Ok(KubeVersion { minor }), "{text}");
        }
        for bad in ["", "v1", "v2.3", "1.", "v1.x", "v1.31x", "latest"] {
            assert!(
                bad.parse::<KubeVersion>().is_err(),
                "{bad:?} must be refused"
            );
        }
        assert_eq!(
            KubeVersion::from_server("1", "31+", ""),
            Ok(KubeVersion { minor: 31 })
        );
        assert_eq!(
            KubeVersion::from_server("", "", "v1.30.4-gke.100"),
            Ok(KubeVersion { minor: 30 })
        );
        let err = KubeVersion::from_server("", "", "weird").expect_err("an error");
        assert!(err.contains("weird"), "{err}");
        assert_eq!(KubeVersion { minor: 31 }.to_string(), "v1.31");
    }

    #[test]
    fn a_mode_indexes_its_place_in_all() {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            assert_eq!(mode.index(), i, "{mode}");
        }
    }

    #[test]
    fn levels_are_case_sensitive_and_ordered() {
        assert_eq!("baseline".parse(), Ok(Level::Baseline));
        assert!("Baseline".parse::<Level>().is_err());
        assert!(Level::Privileged < Level::Baseline && Level::Baseline < Level::Restricted);
        assert_eq!(
            "restricted:v1.30"
                .parse::<LevelVersion>()
                .map(|lv| lv.to_string()),
            Ok("restricted:v1.30".to_owned())
        );
    }

    fn policy_of(pairs: &[(&str, &str)]) -> (Policy, Vec<LabelError>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        policy_from_labels(|k| map.get(k).map(String::as_str), Policy::DEFAULT)
    }

    #[test]
    fn invalid_enforce_fails_closed_and_audit_warn_fail_open() {
        let (p, errors) = policy_of(&[
            (labels::ENFORCE, "bogus"),
            (labels::AUDIT, "bogus"),
            (labels::WARN, "bogus"),
            (labels::AUDIT_VERSION, "v1.01"),
        ]);
        assert_eq!(p.enforce.level, Level::Restricted);
        assert_eq!(p.audit.level, Level::Privileged);
        assert_eq!(p.warn.level, Level::Privileged);
        assert_eq!(p.audit.version, Version::Latest);
        let labels: Vec<_> = errors.iter().map(|e| e.label).collect();
        assert_eq!(
            labels,
            [
                labels::ENFORCE,
                labels::AUDIT,
                labels::AUDIT_VERSION,
                labels::WARN
            ]
        );
    }

    #[test]
    fn unset_warn_follows_a_stricter_valid_enforce() {
        let (p, _) = policy_of(&[
            (labels::ENFORCE, "baseline"),
            (labels::ENFORCE_VERSION, "v1.20"),
        ]);
        assert_eq!(p.warn, LevelVersion::new(Level::Baseline, Version::V1(20)));
        let (p, _) = policy_of(&[
            (labels::ENFORCE, "baseline"),
            (labels::ENFORCE_VERSION, "v1.20"),
            (labels::WARN_VERSION, "v1.25"),
        ]);
        assert_eq!(p.warn, LevelVersion::new(Level::Baseline, Version::V1(25)));
        // An invalid enforce level does not drag warn along.
        let (p, _) = policy_of(&[(labels::ENFORCE, "nope")]);
        assert_eq!(p.warn.level, Level::Privileged);
        // An explicit warn level is kept even if less strict.
        let (p, _) = policy_of(&[
            (labels::ENFORCE, "restricted"),
            (labels::WARN, "privileged"),
        ]);
        assert_eq!(p.warn.level, Level::Privileged);
    }

    #[test]
    fn no_labels_means_the_defaults() {
        assert_eq!(policy_of(&[]).0, Policy::DEFAULT);
    }
}
