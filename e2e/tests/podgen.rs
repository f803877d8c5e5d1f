//! A deterministic generator of API-valid Pods mixing every field Pod Security checks. Shared by
//! the end-to-end parity tests and the evaluator-vs-upstream benchmark (`#[path]`-included there).

use serde_json::{Value, json};

/// `count` pods from `seed`: the same pods on every run and machine.
pub fn generated_pods(count: usize, seed: u64) -> Vec<Value> {
    let mut rng = Rng(seed);
    (0..count).map(|i| generated_pod(i, &mut rng)).collect()
}

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

/// `spec.os` (restricted relaxes some checks for Windows pods) and Windows `hostProcess`. A Windows
/// pod loses the fields validation forbids on Windows; `hostProcess` pods get `hostNetwork` and
/// every container inherits it, as validation requires.
fn windows_and_os(rng: &mut Rng, spec: &mut serde_json::Map<String, Value>) {
    let os = match rng.next() % 10 {
        0 => "windows",
        1 => "linux",
        _ => "",
    };
    let each_container = |spec: &mut serde_json::Map<String, Value>,
                          f: &mut dyn FnMut(&mut Value)| {
        for key in ["initContainers", "containers"] {
            if let Some(Value::Array(cs)) = spec.get_mut(key) {
                cs.iter_mut().for_each(&mut *f);
            }
        }
    };
    if os == "windows" {
        for key in ["hostUsers", "hostPID", "hostIPC"] {
            spec.remove(key);
        }
        if let Some(Value::Object(sc)) = spec.get_mut("securityContext") {
            for key in [
                "seLinuxOptions",
                "seccompProfile",
                "appArmorProfile",
                "sysctls",
                "runAsUser",
            ] {
                sc.remove(key);
            }
        }
        each_container(spec, &mut |c| {
            if let Some(Value::Object(sc)) = c.get_mut("securityContext") {
                for key in [
                    "appArmorProfile",
                    "seLinuxOptions",
                    "seccompProfile",
                    "capabilities",
                    "privileged",
                    "allowPrivilegeEscalation",
                    "procMount",
                    "runAsUser",
                ] {
                    sc.remove(key);
                }
            }
        });
    }
    if !os.is_empty() {
        spec.insert("os".into(), json!({"name": os}));
    }
    if os == "linux" {
        return; // windowsOptions are forbidden on Linux pods
    }
    if spec.contains_key("hostNetwork") && rng.chance(50) {
        let pod_sc = spec.entry("securityContext").or_insert_with(|| json!({}));
        pod_sc["windowsOptions"] = json!({"hostProcess": true});
        let explicit = rng.chance(40);
        each_container(spec, &mut |c| {
            if explicit {
                c["securityContext"]["windowsOptions"] = json!({"hostProcess": true});
            }
        });
    } else if rng.chance(10) {
        let pod_sc = spec.entry("securityContext").or_insert_with(|| json!({}));
        pod_sc["windowsOptions"] = json!({"hostProcess": false});
    }
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

    windows_and_os(rng, &mut spec);

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
