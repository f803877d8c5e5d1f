//! Our evaluator against the real PodSecurity admission plugin, byte for byte.
//!
//! Every upstream conformance fixture (tests/fixtures/pss/{baseline,restricted}/v1.N/{pass,fail}) and
//! a few hundred generated pods mixing every checked field are dry-run created (`?dryRun=All`: full
//! admission, nothing stored) in namespaces labelled `enforce=<level>`, `enforce-version=<version>`.
//! The API server's verdict and denial message must equal `pss::evaluate`'s. Pods the API server
//! rejects as invalid (422: validation runs before validating admission) never reach PodSecurity;
//! they are counted and reported, not compared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use kube::Client;
use kube::api::PostParams;
use serde_json::{Value, json};

use pss_operator::pss::{self, Level, LevelVersion, Version};

use crate::harness::{TestEnv, create_namespace, repo_root, unique_name};

/// Where the main branch keeps the upstream fixtures (k8s.io/pod-security-admission v0.37.2
/// test/testdata). `PSS_E2E_FIXTURES_DIR` points elsewhere, e.g. at the Go module cache.
const FIXTURES_DIR: &str = "tests/fixtures/pss";
const UPSTREAM_FIXTURE_COUNT: usize = 4537;
const GENERATED_PODS: usize = 400;
const IN_FLIGHT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// An upstream fixture, with the verdict upstream expects.
    Fixture {
        expect_allowed: bool,
    },
    Generated,
}

struct Case {
    /// Fixture path relative to the fixtures folder, or `generated/<pod name>`.
    id: String,
    source: Source,
    level: Level,
    version: String,
    pod: Value,
}

enum Outcome {
    Compared {
        source: Source,
        mismatch: Option<String>,
    },
    /// 422 Invalid: rejected by validation before PodSecurity ran.
    Invalid { id: String, message: String },
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("PSS_E2E_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(FIXTURES_DIR))
}

/// Every `<level>/<version>/<pass|fail>/<name>.yaml` under `root`, sorted.
fn fixture_cases(root: &Path) -> Result<Vec<Case>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| {
            format!(
                "reading {} (the conformance fixtures; set PSS_E2E_FIXTURES_DIR to use another copy)",
                dir.display()
            )
        })?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let parts: Vec<&str> = rel.split('/').collect();
            let [level, version, verdict, _file] = parts[..] else {
                bail!(
                    "unexpected fixture path {rel} (want <level>/<version>/<pass|fail>/<name>.yaml)"
                );
            };
            let expect_allowed = match verdict {
                "pass" => true,
                "fail" => false,
                other => bail!("unexpected fixture verdict folder {other:?} in {rel}"),
            };
            let text = std::fs::read_to_string(&path)?;
            let pod: Value = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            Ok(Case {
                id: rel.clone(),
                source: Source::Fixture { expect_allowed },
                level: level.parse().map_err(|e| anyhow!("{rel}: {e}"))?,
                version: version.to_string(),
                pod,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluator_matches_apiserver_on_every_fixture_and_generated_pod() -> Result<()> {
    let root = fixtures_dir();
    let mut cases = fixture_cases(&root)?;
    let fixture_count = cases.len();
    ensure!(
        fixture_count == UPSTREAM_FIXTURE_COUNT,
        "expected all {UPSTREAM_FIXTURE_COUNT} upstream fixtures under {}, found {fixture_count}",
        root.display()
    );
    cases.extend(generated_cases(GENERATED_PODS));

    // One namespace per level/version pair, created before the dry-runs.
    let env = TestEnv::new("parity", &[]).await?;
    let pairs: BTreeSet<(Level, String)> =
        cases.iter().map(|c| (c.level, c.version.clone())).collect();
    let mut namespaces = BTreeMap::new();
    for (level, version) in pairs {
        let name = unique_name(&format!("pss-{level}-{}", version.replace('.', "-")));
        create_namespace(
            &env.client,
            &name,
            &[
                ("pod-security.kubernetes.io/enforce", level.as_str()),
                ("pod-security.kubernetes.io/enforce-version", &version),
            ],
        )
        .await?;
        namespaces.insert((level, version), name);
    }

    let outcomes = run_all(&env.client, cases, &namespaces).await;
    // Dry-runs leave nothing behind worth inspecting: drop the namespaces whatever the outcome.
    for ns in namespaces.values() {
        crate::harness::delete_namespace(&env.client, ns).await?;
    }
    env.cleanup().await?;
    let outcomes = outcomes?;

    let mut compared = [0usize; 2]; // [fixtures, generated]
    let mut mismatches = Vec::new();
    let mut invalid = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Compared { source, mismatch } => {
                compared[usize::from(source == Source::Generated)] += 1;
                mismatches.extend(mismatch);
            }
            Outcome::Invalid { id, message } => invalid.push((id, message)),
        }
    }
    let total = compared[0] + compared[1];
    let summary = format!(
        "parity: compared {total} dry-runs with the evaluator ({} fixtures, {} generated); {} matched, {} differed; {} rejected as invalid (422) before admission, not compared",
        compared[0],
        compared[1],
        total - mismatches.len(),
        mismatches.len(),
        invalid.len()
    );
    // The whole story goes to a file; the output shows the summary and the first few of each.
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apiserver-parity-report.txt");
    let mut text = format!("{summary}\n");
    for (id, message) in &invalid {
        text.push_str(&format!("INVALID {id}: {message}\n"));
    }
    for m in &mismatches {
        text.push_str(m);
        text.push('\n');
    }
    std::fs::write(&report, text).with_context(|| format!("writing {}", report.display()))?;
    println!("{summary}\nfull report: {}", report.display());
    for (id, message) in invalid.iter().take(10) {
        println!("  invalid: {id}: {message}");
    }
    if !mismatches.is_empty() {
        for m in mismatches.iter().take(30) {
            println!("{m}");
        }
        bail!(
            "{} of {total} verdicts differ between the evaluator and kube-apiserver (first 30 above, all in {})",
            mismatches.len(),
            report.display()
        );
    }
    ensure!(compared[0] > 0 && compared[1] > 0, "nothing was compared");
    Ok(())
}

async fn run_all(
    client: &Client,
    cases: Vec<Case>,
    namespaces: &BTreeMap<(Level, String), String>,
) -> Result<Vec<Outcome>> {
    let cases = Arc::new(cases);
    let namespaces = Arc::new(namespaces.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (client, cases, namespaces, next) = (
            client.clone(),
            cases.clone(),
            namespaces.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else {
                    return Ok::<_, anyhow::Error>(outcomes);
                };
                let ns = &namespaces[&(case.level, case.version.clone())];
                outcomes.push(
                    compare(&client, ns, case)
                        .await
                        .with_context(|| format!("case {}", case.id))?,
                );
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = workers.join_next().await {
        outcomes.extend(done??);
    }
    Ok(outcomes)
}

/// The API server's verdict: `Ok(None)` allowed, `Ok(Some(message))` denied by PodSecurity with the
/// `pods "<name>" is forbidden: ` prefix removed, `Err(message)` rejected as invalid (422).
async fn apiserver_verdict(
    client: &Client,
    ns: &str,
    pod: &Value,
) -> Result<std::result::Result<Option<String>, String>> {
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods")).create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        serde_json::to_vec(pod)?,
    )?;
    match client.request::<Value>(request).await {
        Ok(_) => Ok(Ok(None)),
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(Err(status.message)),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let (_, denial) = status
                .message
                .split_once(" is forbidden: ")
                .ok_or_else(|| anyhow!("unexpected 403 message {:?}", status.message))?;
            ensure!(
                denial.starts_with("violates PodSecurity "),
                "403 not from PodSecurity: {:?}",
                status.message
            );
            Ok(Ok(Some(denial.to_string())))
        }
        Err(e) => Err(e).context("dry-run create"),
    }
}

async fn compare(client: &Client, ns: &str, case: &Case) -> Result<Outcome> {
    let mut pod = case.pod.clone();
    pod["metadata"]["namespace"] = ns.into();
    // Upstream fixture names such as `capabilities_baseline0` are not valid object names; the name
    // only appears in the stripped `pods "<name>" is forbidden: ` prefix, never in PSA's message.
    if let Some(name) = pod["metadata"]["name"].as_str() {
        pod["metadata"]["name"] = name.replace('_', "-").into();
    }
    let api = match apiserver_verdict(client, ns, &pod).await? {
        Ok(verdict) => verdict,
        Err(message) => {
            return Ok(Outcome::Invalid {
                id: case.id.clone(),
                message,
            });
        }
    };
    if let Source::Fixture { expect_allowed } = case.source {
        ensure!(
            api.is_none() == expect_allowed,
            "kube-apiserver disagrees with the upstream fixture's expectation (allowed={expect_allowed}): {api:?}"
        );
    }

    let mut model: pss::model::Pod = serde_json::from_value(pod.clone())
        .with_context(|| format!("the evaluator's Pod model cannot read {}", case.id))?;
    model.apply_api_server_defaults();
    let version: Version = case
        .version
        .parse()
        .map_err(|e| anyhow!("version {}: {e}", case.version))?;
    let eval = pss::evaluate(
        &model.metadata,
        &model.spec,
        LevelVersion::new(case.level, version),
    );
    let ours = (!eval.allowed()).then(|| eval.denial_message());

    let mismatch = (ours != api).then(|| {
        format!(
            "MISMATCH {} at {}:{}\n  pod:       {}\n  apiserver: {}\n  evaluator: {}",
            case.id,
            case.level,
            case.version,
            serde_json::to_string(&case.pod).unwrap_or_default(),
            api.as_deref().unwrap_or("(allowed)"),
            ours.as_deref().unwrap_or("(allowed)"),
        )
    });
    Ok(Outcome::Compared {
        source: case.source,
        mismatch,
    })
}

// ---- generated pods --------------------------------------------------------------------------------

/// splitmix64: a fixed seed gives the same pods on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `percent`%.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// Versions the generated pods are checked at: `latest` and every minor with fixtures.
fn generated_versions() -> Vec<String> {
    std::iter::once("latest".to_string())
        .chain((0..=37).rev().map(|m| format!("v1.{m}")))
        .collect()
}

/// `count` pods, each checked at baseline and restricted at a version cycling through
/// `generated_versions()`.
fn generated_cases(count: usize) -> Vec<Case> {
    let mut rng = Rng(0x5EED_0000_0000_0003);
    let versions = generated_versions();
    let mut cases = Vec::new();
    for i in 0..count {
        let pod = generated_pod(i, &mut rng);
        let version = &versions[i % versions.len()];
        for level in [Level::Baseline, Level::Restricted] {
            cases.push(Case {
                id: format!("generated/gen-{i:04}"),
                source: Source::Generated,
                level,
                version: version.clone(),
                pod: pod.clone(),
            });
        }
    }
    cases
}

fn seccomp_profile(rng: &mut Rng) -> Value {
    match rng.next() % 4 {
        0 => json!({"type": "RuntimeDefault"}),
        1 => json!({"type": "Localhost", "localhostProfile": "profiles/audit.json"}),
        2 => json!({"type": "Unconfined"}),
        _ => json!({"type": "RuntimeDefault"}),
    }
}

fn apparmor_profile(rng: &mut Rng) -> Value {
    match rng.next() % 3 {
        0 => json!({"type": "RuntimeDefault"}),
        1 => json!({"type": "Localhost", "localhostProfile": "k8s-apparmor-example"}),
        _ => json!({"type": "Unconfined"}),
    }
}

fn selinux_options(rng: &mut Rng) -> Value {
    rng.pick(&[
        json!({"type": "container_t"}),
        json!({"type": "container_init_t"}),
        json!({"type": "container_kvm_t"}),
        json!({"type": "container_engine_t"}),
        json!({"type": "spc_t"}),
        json!({"level": "s0:c123,c456"}),
        json!({"user": "system_u"}),
        json!({"role": "system_r"}),
        json!({"type": "container_t", "level": "s0:c1,c2"}),
        json!({}),
    ])
    .clone()
}

/// The security fields shared by pod and container securityContexts.
fn common_security_fields(rng: &mut Rng, sc: &mut serde_json::Map<String, Value>) {
    if rng.chance(30) {
        sc.insert("runAsNonRoot".into(), rng.chance(70).into());
    }
    if rng.chance(25) {
        sc.insert("runAsUser".into(), (*rng.pick(&[0, 1000, 65534])).into());
    }
    if rng.chance(35) {
        sc.insert("seccompProfile".into(), seccomp_profile(rng));
    }
    if rng.chance(15) {
        sc.insert("seLinuxOptions".into(), selinux_options(rng));
    }
    if rng.chance(12) {
        sc.insert("appArmorProfile".into(), apparmor_profile(rng));
    }
}

struct PodShape {
    host_network: bool,
    host_ipc_or_pid: bool,
}

fn container(rng: &mut Rng, name: &str, first: bool, shape: &PodShape) -> Value {
    let mut sc = serde_json::Map::new();
    common_security_fields(rng, &mut sc);
    let privileged = rng.chance(15).then(|| rng.chance(60));
    if let Some(p) = privileged {
        sc.insert("privileged".into(), p.into());
    }
    let mut adds = Vec::new();
    if rng.chance(30) {
        let mut caps = serde_json::Map::new();
        if rng.chance(60) {
            let drop: Vec<&str> = match rng.next() % 4 {
                0 => vec!["ALL"],
                1 => vec!["NET_RAW"],
                2 => vec!["ALL", "NET_RAW"],
                _ => vec!["all"],
            };
            caps.insert("drop".into(), json!(drop));
        }
        if rng.chance(50) {
            let pool = [
                "NET_BIND_SERVICE",
                "CHOWN",
                "KILL",
                "SYS_ADMIN",
                "NET_RAW",
                "SYS_TIME",
                "AUDIT_WRITE",
                "SETUID",
                "NET_ADMIN",
            ];
            for cap in pool {
                if rng.chance(20) {
                    adds.push(cap);
                }
            }
            if adds.is_empty() {
                adds.push(*rng.pick(&pool));
            }
            caps.insert("add".into(), json!(adds));
        }
        sc.insert("capabilities".into(), Value::Object(caps));
    }
    // Validation rejects allowPrivilegeEscalation=false with privileged or CAP_SYS_ADMIN.
    if rng.chance(40) {
        let escalation_required = privileged == Some(true) || adds.contains(&"SYS_ADMIN");
        let ape = !rng.chance(65) || escalation_required;
        sc.insert("allowPrivilegeEscalation".into(), ape.into());
    }
    if rng.chance(8) && !shape.host_network && !shape.host_ipc_or_pid {
        sc.insert(
            "procMount".into(),
            (*rng.pick(&["Default", "Unmasked"])).into(),
        );
    }
    let mut c = json!({"name": name, "image": "registry.k8s.io/pause"});
    if !sc.is_empty() || rng.chance(50) {
        c["securityContext"] = Value::Object(sc);
    }
    // Host ports must be unique in a pod and equal containerPort with hostNetwork.
    if first && rng.chance(25) {
        let mut port = json!({"containerPort": 8080});
        if shape.host_network {
            if rng.chance(50) {
                port["hostPort"] = 8080.into();
            }
        } else if rng.chance(60) {
            port["hostPort"] = (*rng.pick(&[0, 8080, 80])).into();
        }
        c["ports"] = json!([port]);
    }
    c
}

fn volume(rng: &mut Rng, i: usize) -> Value {
    let name = format!("vol{i}");
    let sources = [
        json!({"emptyDir": {}}),
        json!({"configMap": {"name": "cfg"}}),
        json!({"secret": {"secretName": "sec"}}),
        json!({"hostPath": {"path": "/var/log"}}),
        json!({"hostPath": {"path": "/", "type": "Directory"}}),
        json!({"persistentVolumeClaim": {"claimName": "data"}}),
        json!({"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}),
        json!({"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}),
        json!({"csi": {"driver": "inline.storage.example.com"}}),
        json!({"ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}),
        json!({"nfs": {"server": "nfs.example.com", "path": "/exports"}}),
        json!({"iscsi": {"targetPortal": "10.0.0.9:3260", "iqn": "iqn.2001-04.com.example:storage", "lun": 0}}),
        json!({}), // no source: the API server defaults it to emptyDir before admission
    ];
    let mut v = rng.pick(&sources).clone();
    v["name"] = name.into();
    v
}

/// The legacy annotation value equivalent to an AppArmor or seccomp profile field.
fn legacy_profile_annotation(profile: &Value, runtime_default: &str) -> String {
    match profile["type"].as_str() {
        Some("Unconfined") => "unconfined".to_string(),
        Some("Localhost") => format!(
            "localhost/{}",
            profile["localhostProfile"].as_str().unwrap_or_default()
        ),
        _ => runtime_default.to_string(),
    }
}

fn generated_pod(i: usize, rng: &mut Rng) -> Value {
    let shape = PodShape {
        host_network: rng.chance(12),
        host_ipc_or_pid: rng.chance(15),
    };
    let mut spec = serde_json::Map::new();
    if shape.host_network {
        spec.insert("hostNetwork".into(), true.into());
    }
    if shape.host_ipc_or_pid {
        spec.insert((*rng.pick(&["hostPID", "hostIPC"])).into(), true.into());
    }

    let names: Vec<String> = (0..1 + rng.next() % 2).map(|n| format!("app{n}")).collect();
    let init_names: Vec<String> = (0..rng.next() % 2).map(|n| format!("init{n}")).collect();
    let containers: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(n, name)| container(rng, name, n == 0, &shape))
        .collect();
    let init_containers: Vec<Value> = init_names
        .iter()
        .map(|name| container(rng, name, false, &shape))
        .collect();
    // procMount: Unmasked needs a user namespace.
    let unmasked = containers
        .iter()
        .chain(&init_containers)
        .any(|c| c["securityContext"]["procMount"] == "Unmasked");
    if unmasked {
        spec.insert("hostUsers".into(), false.into());
    }
    spec.insert("containers".into(), Value::Array(containers));
    if !init_containers.is_empty() {
        spec.insert("initContainers".into(), Value::Array(init_containers));
    }

    let mut pod_sc = serde_json::Map::new();
    common_security_fields(rng, &mut pod_sc);
    if rng.chance(15) {
        // Validation forbids net.* sysctls with hostNetwork and IPC ones with hostIPC.
        let pool = [
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.core.somaxconn",
            "kernel.msgmax",
        ];
        let value_for = |name: &str| match name {
            "net.ipv4.ip_local_port_range" => "32768 60999",
            "net.ipv4.ping_group_range" => "0 2147483647",
            "net.ipv4.tcp_rmem" | "net.ipv4.tcp_wmem" => "4096 87380 6291456",
            "net.ipv4.ip_local_reserved_ports" => "8080",
            _ => "1",
        };
        let mut sysctls = Vec::new();
        for name in pool {
            let net = name.starts_with("net.");
            let ipc = name.starts_with("kernel.shm") || name.starts_with("kernel.msg");
            if rng.chance(20)
                && !(net && shape.host_network)
                && !(ipc && spec.contains_key("hostIPC"))
            {
                sysctls.push(json!({"name": name, "value": value_for(name)}));
            }
        }
        if !sysctls.is_empty() {
            pod_sc.insert("sysctls".into(), Value::Array(sysctls));
        }
    }
    if !pod_sc.is_empty() {
        spec.insert("securityContext".into(), Value::Object(pod_sc));
    }
    if rng.chance(30) {
        let volumes: Vec<Value> = (0..1 + rng.next() % 3)
            .map(|n| volume(rng, n as usize))
            .collect();
        spec.insert("volumes".into(), Value::Array(volumes));
    }

    // Legacy annotations (AppArmor, seccomp) some versions still check. Validation requires an
    // annotation to agree with the field it shadows, so when that field is set the annotation
    // mirrors it (and the API server keeps both); otherwise it is random and the API server copies
    // an AppArmor annotation into the container's field before admission.
    let mut annotations = serde_json::Map::new();
    if rng.chance(10) {
        let target = rng.pick(&names).clone();
        let container_profile = spec["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == target.as_str()))
            .map(|c| c["securityContext"]["appArmorProfile"].clone())
            .filter(|p| !p.is_null());
        let pod_profile = spec
            .get("securityContext")
            .map(|sc| sc["appArmorProfile"].clone())
            .filter(|p| !p.is_null());
        let value = match container_profile.or(pod_profile) {
            Some(profile) => legacy_profile_annotation(&profile, "runtime/default"),
            None => (*rng.pick(&[
                "runtime/default",
                "localhost/k8s-apparmor-example",
                "unconfined",
            ]))
            .to_string(),
        };
        annotations.insert(
            format!("container.apparmor.security.beta.kubernetes.io/{target}"),
            value.into(),
        );
    }
    if rng.chance(5) {
        let pod_field = spec
            .get("securityContext")
            .map(|sc| sc["seccompProfile"].clone())
            .filter(|p| !p.is_null());
        let value = match pod_field {
            Some(profile) => legacy_profile_annotation(&profile, "runtime/default"),
            None => (*rng.pick(&["runtime/default", "docker/default", "unconfined"])).to_string(),
        };
        annotations.insert(
            "seccomp.security.alpha.kubernetes.io/pod".into(),
            value.into(),
        );
    }
    let mut metadata = json!({"name": format!("gen-{i:04}")});
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}
