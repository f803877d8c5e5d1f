//! Upstream conformance: every fixture of `k8s.io/pod-security-admission` (test/testdata, copied
//! into tests/fixtures/pss) gives the verdict its folder says, fails by the check its file name
//! names, and carries the substring upstream's own test asserts.

use std::fs;
use std::path::{Path, PathBuf};

use pss_operator::operator::pods::SlimPod;
use pss_operator::pss::{
    self, CheckId, KubeVersion, Level, LevelVersion, NEWEST_KNOWN_MINOR, Version,
    model::{Pod, Volume, VolumeSources},
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pss");

/// File-name prefix → (check id, substring the message must contain), from upstream's fixtures.
const EXPECTATIONS: [(&str, &str); 19] = [
    ("allowprivilegeescalation", "allowPrivilegeEscalation"),
    ("apparmorprofile", "forbidden AppArmor profile"),
    ("capabilities_baseline", "capabilities"),
    ("capabilities_restricted", "unrestricted capabilities"),
    ("hostnamespaces", "host namespaces"),
    ("hostpathvolumes", "hostPath"),
    ("hostports", "hostPort"),
    ("hostprobesandhostlifecycle", "probe or lifecycle host"),
    ("privileged", "privileged"),
    ("procmount", "procMount"),
    ("procmount_restricted", "procMount"),
    ("restrictedvolumes", "restricted volume types"),
    ("runasnonroot", "runAsNonRoot"),
    ("runasuser", "runAsUser"),
    ("seccompprofile_baseline", "seccompProfile"),
    ("seccompprofile_restricted", "seccompProfile"),
    ("selinuxoptions", "seLinuxOptions"),
    ("sysctls", "forbidden sysctl"),
    ("windowshostprocess", "hostProcess"),
];

struct Fixture {
    path: PathBuf,
    level_version: LevelVersion,
    expect_pass: bool,
    /// Lower-cased check id from the file name (`privileged` for `privileged0.yaml`).
    check_prefix: String,
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for level in ["baseline", "restricted"] {
        let level_dir = Path::new(FIXTURES).join(level);
        let entries = fs::read_dir(&level_dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", level_dir.display()));
        for version_dir in entries.map(|e| e.expect("dir entry").path()) {
            let version: Version = version_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad version folder {}", version_dir.display()));
            for (verdict, expect_pass) in [("pass", true), ("fail", false)] {
                let Ok(files) = fs::read_dir(version_dir.join(verdict)) else {
                    continue;
                };
                for path in files.map(|e| e.expect("dir entry").path()) {
                    let stem = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .expect("file name");
                    out.push(Fixture {
                        check_prefix: stem
                            .trim_end_matches(|c: char| c.is_ascii_digit())
                            .to_owned(),
                        level_version: LevelVersion::new(level.parse().expect("level"), version),
                        expect_pass,
                        path,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn load(path: &Path) -> Pod {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pod: Pod =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pod.apply_api_server_defaults();
    pod
}

/// The check that denies a fixture: the one it names, or at restricted the check replacing it.
fn denying_check(prefix: &str, level: Level, minor: u32) -> CheckId {
    let named = CheckId::ALL
        .into_iter()
        .find(|c| c.as_str().to_ascii_lowercase() == prefix)
        .unwrap_or_else(|| panic!("no check named {prefix}"));
    let active = pss::checks_for(level, minor);
    if active.contains(&named) {
        return named;
    }
    let replacement = match named {
        CheckId::HostPathVolumes => CheckId::RestrictedVolumes,
        CheckId::SeccompProfileBaseline => CheckId::SeccompProfileRestricted,
        CheckId::CapabilitiesBaseline => CheckId::CapabilitiesRestricted,
        CheckId::ProcMount => CheckId::ProcMountRestricted,
        other => panic!("{other} does not run at {level} v1.{minor}"),
    };
    assert!(active.contains(&replacement));
    replacement
}

#[test]
fn every_upstream_fixture_gives_its_verdict() {
    let all = fixtures();
    assert_eq!(all.len(), 4537, "the upstream corpus has 4,537 fixtures");
    let mut failures = Vec::new();
    let (mut passed, mut denied) = (0, 0);
    for f in &all {
        let pod = load(&f.path);
        let eval = pss::evaluate(&pod.metadata, &pod.spec, f.level_version);
        let message = eval.denial_message();
        let name = f.path.strip_prefix(FIXTURES).unwrap_or(&f.path).display();
        if message.contains("unknown forbidden reason") {
            failures.push(format!("{name}: unknown forbidden reason: {message}"));
        }
        if f.expect_pass {
            if eval.allowed() {
                passed += 1;
            } else {
                failures.push(format!("{name}: expected allowed, got {message}"));
            }
            continue;
        }
        let minor = f
            .level_version
            .version
            .effective_minor(KubeVersion::NEWEST_KNOWN);
        let check = denying_check(&f.check_prefix, f.level_version.level, minor);
        let substring = EXPECTATIONS
            .iter()
            .find(|(prefix, _)| *prefix == f.check_prefix)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("no expectation for {}", f.check_prefix));
        if !eval.failed_checks().any(|c| c == check) {
            failures.push(format!(
                "{name}: expected denial by {check}, got {message:?}"
            ));
        } else if !message.contains(substring) {
            failures.push(format!("{name}: message lacks {substring:?}: {message}"));
        } else {
            denied += 1;
        }
    }
    println!(
        "conformance: {passed} allowed and {denied} denied as expected, {} wrong",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} fixtures wrong:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn fixtures_evaluated_as_latest_match_the_newest_version() {
    // `latest` and any version above the newest known select exactly v1.37's checks.
    for f in fixtures()
        .iter()
        .filter(|f| f.level_version.version == Version::V1(37))
    {
        let pod = load(&f.path);
        let at = |v| {
            pss::evaluate(
                &pod.metadata,
                &pod.spec,
                LevelVersion::new(f.level_version.level, v),
            )
            .violations
        };
        assert_eq!(
            at(Version::V1(37)),
            at(Version::Latest),
            "{}",
            f.path.display()
        );
        assert_eq!(
            at(Version::V1(37)),
            at(Version::V1(99)),
            "{}",
            f.path.display()
        );
    }
}

/// The operator's index shares one normalized projection between Pods of one template
/// (`SlimPod::new`: no names, only checked annotations, no unchecked volumes). That must never
/// change a verdict or a message: every distinct fixture, at every level and version, evaluates
/// the same as its projection, and so does the fixture dressed as a real Pod (own name, per-Pod
/// annotations, the kube-api-access volume ServiceAccount admission adds), whose projection must
/// be the fixture's own.
#[test]
fn projection_normalization_never_changes_a_verdict_or_message() {
    let mut texts = std::collections::BTreeMap::new();
    for f in fixtures() {
        let text = fs::read_to_string(&f.path).expect("fixture");
        texts.entry(text).or_insert(f.path);
    }
    let versions: Vec<Version> = (0..=NEWEST_KNOWN_MINOR + 1)
        .map(Version::V1)
        .chain([Version::Latest])
        .collect();
    let mut compared = 0;
    for path in texts.values() {
        let pod = load(path);
        let slim = SlimPod::new(pod.metadata.clone(), pod.spec.clone());
        let mut real: Pod = pod.clone();
        real.metadata.name = "web-7d9f8b6c5d-x2b4k".into();
        real.metadata.generate_name = "web-7d9f8b6c5d-".into();
        real.metadata.namespace = "app".into();
        for (k, v) in [
            ("cni.projectcalico.org/podIP", "10.0.0.7"),
            ("kubectl.kubernetes.io/restartedAt", "2026-11-26T10:00:00Z"),
            ("seccomp.security.alpha.kubernetes.io/podx", "unconfined"),
        ] {
            real.metadata.annotations.insert(k.into(), v.into());
        }
        for (name, source) in [
            ("kube-api-access-7tq2n", "projected"),
            ("cache", "emptyDir"),
            ("config", "configMap"),
        ] {
            real.spec.volumes.push(Volume {
                name: name.into(),
                sources: VolumeSources::from_names([source]),
            });
        }
        assert_eq!(
            SlimPod::new(real.metadata.clone(), real.spec.clone()),
            slim,
            "{}",
            path.display()
        );
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            for &version in &versions {
                let lv = LevelVersion::new(level, version);
                let original = pss::evaluate(&pod.metadata, &pod.spec, lv);
                let projected = pss::evaluate(slim.meta(), slim.spec(), lv);
                assert_eq!(original, projected, "{} at {lv}", path.display());
                let as_real = pss::evaluate(&real.metadata, &real.spec, lv);
                assert_eq!(original, as_real, "{} at {lv}", path.display());
                compared += 1;
            }
        }
    }
    assert_eq!(texts.len(), 380, "distinct fixtures");
    println!("normalization: {compared} (fixture, level, version) evaluations unchanged");
}

/// The index keeps a Pod's container names apart from its shared projection
/// (`Evaluate::take_names`), so that Pods differing only in names share one: the names must round
/// trip, the shape alone must fail exactly the checks the Pod fails (the index keeps those), and
/// the shape with the names put back must give the Pod's exact message — every distinct fixture,
/// with its containers renamed apart, at every level and version.
#[test]
fn container_names_apart_round_trip_and_never_change_a_verdict() {
    use pss_operator::operator::index::Evaluate;
    let mut texts = std::collections::BTreeMap::new();
    for f in fixtures() {
        let text = fs::read_to_string(&f.path).expect("fixture");
        texts.entry(text).or_insert(f.path);
    }
    let versions: Vec<Version> = (0..=NEWEST_KNOWN_MINOR + 1)
        .map(Version::V1)
        .chain([Version::Latest])
        .collect();
    let (mut compared, mut kept, mut shapes) = (0, 0, std::collections::HashSet::new());
    for path in texts.values() {
        let pod = load(path);
        for suffix in ["", "-7q2x"] {
            let mut spec = pod.spec.clone();
            for c in spec
                .init_containers
                .iter_mut()
                .chain(&mut spec.containers)
                .chain(&mut spec.ephemeral_containers)
            {
                c.name.push_str(suffix);
            }
            let whole = SlimPod::new(pod.metadata.clone(), spec);
            let mut shape = whole.clone();
            let names = shape.take_names();
            let rejoined = shape.with_names(&names);
            assert_eq!(
                rejoined.as_ref().unwrap_or(&shape),
                &whole,
                "{}",
                path.display()
            );
            if rejoined.is_none() {
                kept += 1;
            }
            shapes.insert(format!("{shape:?}"));
            for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
                for (&version, kube) in versions.iter().flat_map(|v| {
                    [KubeVersion::NEWEST_KNOWN, KubeVersion { minor: 31 }].map(|k| (v, k))
                }) {
                    let lv = LevelVersion::new(level, version);
                    let expected = whole.evaluate(lv, kube);
                    assert_eq!(shape.failing_checks(lv, kube), expected.checks);
                    let whole_again = rejoined.as_ref().unwrap_or(&shape);
                    assert_eq!(
                        whole_again.evaluate(lv, kube),
                        expected,
                        "{} at {lv}",
                        path.display()
                    );
                    compared += 1;
                }
            }
        }
    }
    // Renaming the containers changed no shape, except where the names stayed in (per-container
    // annotations).
    assert!(
        shapes.len() <= texts.len() + kept / 2,
        "{} shapes",
        shapes.len()
    );
    assert!(
        kept < texts.len() / 4,
        "names kept in {kept} of {} Pods",
        2 * texts.len()
    );
    println!(
        "names apart: {compared} (fixture, level, version) evaluations unchanged; names kept in {kept} Pods (checked annotations)"
    );
}

/// The planner's strictness order (`pss::at_least_as_strict`, used for the `allowStricter` floor,
/// the most restrictive of tied profiles and `WhenCompliant`) checked against the evaluator:
/// whenever it says (level A, version A) is at least as strict as (level B, version B), every
/// distinct upstream fixture that B refuses is refused by A too — for every pair of levels and
/// versions v1.0..latest, on a server of the newest known version and on a v1.31 server.
#[test]
fn the_strictness_order_never_claims_more_than_the_evaluator_refuses() {
    let mut texts = std::collections::BTreeMap::new();
    for f in fixtures() {
        let text = fs::read_to_string(&f.path).expect("fixture");
        texts.entry(text).or_insert(f.path);
    }
    let pods: Vec<(String, Pod)> = texts
        .values()
        .map(|p| (p.display().to_string(), load(p)))
        .collect();
    let levels: Vec<LevelVersion> = [Level::Privileged, Level::Baseline, Level::Restricted]
        .into_iter()
        .flat_map(|level| {
            (0..=NEWEST_KNOWN_MINOR)
                .map(Version::V1)
                .chain([Version::Latest])
                .map(move |v| LevelVersion::new(level, v))
        })
        .collect();
    for kube in [KubeVersion::NEWEST_KNOWN, KubeVersion { minor: 31 }] {
        let refused: Vec<Vec<bool>> = levels
            .iter()
            .map(|&lv| {
                pods.iter()
                    .map(|(_, pod)| !pss::evaluate_on(kube, &pod.metadata, &pod.spec, lv).allowed())
                    .collect()
            })
            .collect();
        let (mut ordered, mut apart, mut witnessed) = (0, 0, 0);
        for (i, &a) in levels.iter().enumerate() {
            for (j, &b) in levels.iter().enumerate() {
                let witness = (0..pods.len()).find(|&p| refused[j][p] && !refused[i][p]);
                if pss::at_least_as_strict(a, b, kube) {
                    ordered += 1;
                    if let Some(p) = witness {
                        panic!(
                            "on {kube}: {a} is said to refuse all {b} refuses, but admits {}",
                            pods[p].0
                        );
                    }
                } else {
                    apart += 1;
                    witnessed += usize::from(witness.is_some());
                }
            }
        }
        println!(
            "strictness on {kube}: {ordered} ordered pairs sound; {apart} not ordered, {witnessed} of them with a fixture that proves it"
        );
        assert!(ordered > levels.len(), "reflexive at least");
    }
    // The cases that motivated it, with the fixture that shows each.
    let newest = KubeVersion::NEWEST_KNOWN;
    let lv = |s: &str| s.parse::<LevelVersion>().expect("level");
    assert!(!pss::at_least_as_strict(
        lv("restricted:v1.30"),
        lv("baseline:latest"),
        newest
    ));
    assert!(!pss::at_least_as_strict(
        lv("baseline:v1.20"),
        lv("baseline:latest"),
        newest
    ));
    assert!(pss::at_least_as_strict(
        lv("restricted:latest"),
        lv("baseline:latest"),
        newest
    ));
    assert!(pss::at_least_as_strict(
        lv("baseline:v1.30"),
        lv("baseline:latest"),
        KubeVersion { minor: 31 }
    ));
}
