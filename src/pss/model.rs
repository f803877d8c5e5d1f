//! The slim pod model: exactly the fields Pod Security evaluation reads, nothing else.
//!
//! It deserializes from a Pod's (or pod template's) JSON/YAML, skipping every other field, so
//! the operator never holds whole Pods and the `check` command can point at the field that has
//! the wrong type. `null` is accepted wherever the API server accepts it and means "unset".

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

/// `null` → `T::default()`, as Go's JSON decoding leaves a zero value for `null`.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A string map whose `null` values read as `""` (Go's zero value).
fn nullable_string_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let map: Option<BTreeMap<String, Option<String>>> = Option::deserialize(deserializer)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

/// A Pod (or an object with a `metadata` and a pod `spec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct Pod {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: PodMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
}

impl Pod {
    /// Applies what kube-apiserver defaults on a Pod before admission sees it, so that a manifest
    /// evaluates as the stored Pod would.
    pub fn apply_api_server_defaults(&mut self) {
        self.spec.apply_template_defaults();
        self.copy_app_armor_annotations_to_fields();
        // Pods only (not templates): with host networking every container port is a host port.
        if self.spec.host_network {
            for container in self
                .spec
                .init_containers
                .iter_mut()
                .chain(&mut self.spec.containers)
            {
                for port in &mut container.ports {
                    if port.host_port == 0 {
                        port.host_port = port.container_port;
                    }
                }
            }
        }
    }
}

impl Pod {
    /// [`Pod::apply_api_server_defaults`], then what kube-apiserver `kube` changes besides (see
    /// [`Pod::apply_version_skew`]).
    pub fn apply_api_server_defaults_on(&mut self, kube: super::KubeVersion) {
        self.apply_api_server_defaults();
        self.apply_version_skew(kube, false);
    }

    /// What kube-apiserver `kube`, with its default feature gates, does differently from the
    /// newest version to a new Pod (`template: false`) or pod template, after the defaults: before
    /// v1.34 it copies a Pod's `appArmorProfile` fields to the deprecated annotations, and before
    /// v1.33 it drops `procMount` and `hostUsers`. For manifests only: stored Pods (what the
    /// operator watches) come as the server kept them.
    pub fn apply_version_skew(&mut self, kube: super::KubeVersion, template: bool) {
        if !template && kube.minor < 34 {
            self.copy_app_armor_fields_to_annotations();
        }
        self.spec.drop_fields_disabled_on(kube);
    }

    /// The other half of `applyAppArmorVersionSkew` before v1.34: a container without the
    /// deprecated annotation gets the one its own profile (else the pod's) means; a Localhost
    /// profile without a name, or an unknown type, gives none.
    fn copy_app_armor_fields_to_annotations(&mut self) {
        if self.spec.is_windows() {
            return;
        }
        let pod_profile = self
            .spec
            .security_context
            .as_ref()
            .and_then(|sc| sc.app_armor_profile.as_ref());
        for container in self
            .spec
            .init_containers
            .iter()
            .chain(&self.spec.containers)
            .chain(&self.spec.ephemeral_containers)
        {
            let key = format!(
                "container.apparmor.security.beta.kubernetes.io/{}",
                container.name
            );
            if self.metadata.annotations.contains_key(&key) {
                continue;
            }
            let profile = container
                .security_context
                .as_ref()
                .and_then(|sc| sc.app_armor_profile.as_ref())
                .or(pod_profile);
            let annotation = profile.and_then(|p| match p.type_.as_str() {
                "Unconfined" => Some("unconfined".to_owned()),
                "RuntimeDefault" => Some("runtime/default".to_owned()),
                "Localhost" => p
                    .localhost_profile
                    .as_ref()
                    .map(|l| format!("localhost/{l}")),
                _ => None,
            });
            if let Some(annotation) = annotation {
                self.metadata.annotations.insert(key, annotation);
            }
        }
    }

    /// kube-apiserver's `applyAppArmorVersionSkew` (pod strategy `PrepareForCreate`, before
    /// admission): a container with a deprecated `container.apparmor.security.beta.kubernetes.io/<name>`
    /// annotation and no `appArmorProfile` of its own gets the field the annotation means, unless
    /// that equals the pod-level profile. PodSecurity then reports the container as well as the
    /// annotation ("container \"c\" and annotation must not set ...").
    fn copy_app_armor_annotations_to_fields(&mut self) {
        if self.spec.is_windows() {
            return;
        }
        let pod_profile = self
            .spec
            .security_context
            .as_ref()
            .and_then(|sc| sc.app_armor_profile.clone());
        let annotations = &self.metadata.annotations;
        for container in self
            .spec
            .init_containers
            .iter_mut()
            .chain(&mut self.spec.containers)
            .chain(&mut self.spec.ephemeral_containers)
        {
            let key = format!(
                "container.apparmor.security.beta.kubernetes.io/{}",
                container.name
            );
            let Some(annotation) = annotations.get(&key) else {
                continue;
            };
            let has_own_profile = container
                .security_context
                .as_ref()
                .is_some_and(|sc| sc.app_armor_profile.is_some());
            if has_own_profile {
                continue;
            }
            // Upstream `ApparmorFieldForAnnotation`, then `ValidateAppArmorProfileField` (an
            // invalid result is not copied).
            let field = match annotation.as_str() {
                "unconfined" => Some(("Unconfined", None)),
                "runtime/default" => Some(("RuntimeDefault", None)),
                other => other
                    .strip_prefix("localhost/")
                    .filter(|p| !p.is_empty() && p.trim() == *p && p.len() <= 4095)
                    .map(|p| ("Localhost", Some(p.to_string()))),
            }
            .map(|(type_, localhost_profile)| ProfileType {
                type_: type_.to_string(),
                localhost_profile,
            });
            if field.is_some() && field != pod_profile {
                container
                    .security_context
                    .get_or_insert_with(Default::default)
                    .app_armor_profile = field;
            }
        }
    }
}

/// The metadata evaluation reads: names for reports, annotations for AppArmor/seccomp checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct PodMeta {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, rename = "generateName", deserialize_with = "nullable")]
    pub generate_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(default, deserialize_with = "nullable_string_map")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub host_network: bool,
    #[serde(default, rename = "hostPID", deserialize_with = "nullable")]
    pub host_pid: bool,
    #[serde(default, rename = "hostIPC", deserialize_with = "nullable")]
    pub host_ipc: bool,
    #[serde(default)]
    pub host_users: Option<bool>,
    #[serde(default)]
    pub os: Option<PodOs>,
    /// No check reads it; PodSecurity admission skips Pods whose RuntimeClass its configuration
    /// exempts.
    #[serde(default)]
    pub runtime_class_name: Option<Box<str>>,
    /// Boxed, like the optional parts of [`Container`]: absent in many Pods, and inline they
    /// made every distinct Pod the operator keeps ~400 bytes larger.
    #[serde(default)]
    pub security_context: Option<Box<PodSecurityContext>>,
    #[serde(default, deserialize_with = "nullable")]
    pub volumes: Vec<Volume>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub ephemeral_containers: Vec<Container>,
}

impl PodSpec {
    /// Every container in the order PSA visits them: init, regular, ephemeral.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers
            .iter()
            .chain(&self.containers)
            .chain(&self.ephemeral_containers)
    }

    /// What kube-apiserver `kube` drops from a new Pod or template with its default feature gates,
    /// before admission sees it: before v1.33 the `ProcMountType` and `UserNamespacesSupport`
    /// gates are off by default, so `procMount` and `hostUsers` never reach PodSecurity. For
    /// manifests only: stored Pods (what the operator watches) come as the server kept them.
    pub fn drop_fields_disabled_on(&mut self, kube: super::KubeVersion) {
        if kube.minor >= 33 {
            return;
        }
        self.host_users = None;
        for c in self
            .init_containers
            .iter_mut()
            .chain(&mut self.containers)
            .chain(&mut self.ephemeral_containers)
        {
            if let Some(sc) = c.security_context.as_mut() {
                sc.proc_mount = None;
            }
        }
    }

    /// Defaulting kube-apiserver applies to every pod spec, templates included: a volume with no
    /// source becomes an `emptyDir`.
    pub fn apply_template_defaults(&mut self) {
        for volume in &mut self.volumes {
            if volume.sources.is_empty() {
                volume.sources = VolumeSources::EMPTY_DIR;
            }
        }
    }

    /// `spec.os.name == "windows"`.
    pub fn is_windows(&self) -> bool {
        self.os.as_ref().is_some_and(|os| os.name == "windows")
    }

    /// `spec.hostUsers == false`: the pod runs in a user namespace.
    pub fn in_user_namespace(&self) -> bool {
        self.host_users == Some(false)
    }

    /// Containers (of any kind) that set `securityContext.privileged: true`.
    pub fn privileged_containers(&self) -> usize {
        self.all_containers().filter(|c| c.is_privileged()).count()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct PodOs {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    #[serde(default)]
    pub run_as_non_root: Option<bool>,
    #[serde(default)]
    pub run_as_user: Option<i64>,
    #[serde(default, rename = "seLinuxOptions")]
    pub se_linux_options: Option<SeLinuxOptions>,
    #[serde(default)]
    pub seccomp_profile: Option<ProfileType>,
    #[serde(default)]
    pub app_armor_profile: Option<ProfileType>,
    #[serde(default)]
    pub windows_options: Option<WindowsOptions>,
    #[serde(default, deserialize_with = "nullable")]
    pub sysctls: Vec<Sysctl>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub security_context: Option<Box<SecurityContext>>,
    #[serde(default)]
    pub liveness_probe: Option<Box<Handler>>,
    #[serde(default)]
    pub readiness_probe: Option<Box<Handler>>,
    #[serde(default)]
    pub startup_probe: Option<Box<Handler>>,
    #[serde(default)]
    pub lifecycle: Option<Box<Lifecycle>>,
}

impl Container {
    pub fn is_privileged(&self) -> bool {
        self.security_context
            .as_ref()
            .is_some_and(|sc| sc.privileged == Some(true))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, deserialize_with = "nullable")]
    pub container_port: i32,
    #[serde(default, deserialize_with = "nullable")]
    pub host_port: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    #[serde(default)]
    pub privileged: Option<bool>,
    #[serde(default)]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub proc_mount: Option<String>,
    #[serde(default)]
    pub run_as_non_root: Option<bool>,
    #[serde(default)]
    pub run_as_user: Option<i64>,
    #[serde(default, rename = "seLinuxOptions")]
    pub se_linux_options: Option<SeLinuxOptions>,
    #[serde(default)]
    pub seccomp_profile: Option<ProfileType>,
    #[serde(default)]
    pub app_armor_profile: Option<ProfileType>,
    #[serde(default)]
    pub windows_options: Option<WindowsOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct Capabilities {
    #[serde(default, deserialize_with = "nullable")]
    pub add: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct SeLinuxOptions {
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub type_: String,
    #[serde(default, deserialize_with = "nullable")]
    pub user: String,
    #[serde(default, deserialize_with = "nullable")]
    pub role: String,
}

/// A `seccompProfile` or `appArmorProfile`: checks read only its `type`; `localhostProfile` is
/// kept for the API server's AppArmor annotation-to-field copy, which compares whole profiles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileType {
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub type_: String,
    #[serde(default)]
    pub localhost_profile: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowsOptions {
    #[serde(default)]
    pub host_process: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct Sysctl {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

/// A probe or lifecycle handler: only the `host` of `httpGet` and `tcpSocket` matters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handler {
    #[serde(default)]
    pub http_get: Option<HostField>,
    #[serde(default)]
    pub tcp_socket: Option<HostField>,
}

impl Handler {
    /// The non-empty hosts this handler targets.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        [&self.http_get, &self.tcp_socket]
            .into_iter()
            .flatten()
            .map(|h| h.host.as_str())
            .filter(|h| !h.is_empty())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    #[serde(default)]
    pub post_start: Option<Handler>,
    #[serde(default)]
    pub pre_stop: Option<Handler>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct HostField {
    #[serde(default, deserialize_with = "nullable")]
    pub host: String,
}

/// Every inline volume source of the 1.37 API, in upstream's `restrictedVolumes` order.
/// The first nine are the sources `restricted` allows.
pub const VOLUME_SOURCES: [&str; 30] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
    // Restricted, in the order upstream names the first one a volume uses.
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

const ALLOWED_SOURCE_COUNT: usize = 9;

/// The set of sources a volume sets (non-null), one bit per [`VOLUME_SOURCES`] entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VolumeSources(u32);

impl VolumeSources {
    pub const EMPTY_DIR: VolumeSources = VolumeSources(1 << 3);
    const ALLOWED_MASK: u32 = (1 << ALLOWED_SOURCE_COUNT) - 1;
    const HOST_PATH: u32 = 1 << ALLOWED_SOURCE_COUNT;

    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        VolumeSources(
            names
                .into_iter()
                .filter_map(|n| VOLUME_SOURCES.iter().position(|s| *s == n))
                .fold(0, |bits, i| bits | 1 << i),
        )
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn has_host_path(self) -> bool {
        self.0 & Self::HOST_PATH != 0
    }

    /// Whether `restricted` allows this volume (it sets at least one allowed source).
    pub fn restricted_allows(self) -> bool {
        self.0 & Self::ALLOWED_MASK != 0
    }

    /// The type `restricted` names for a volume it refuses: its first restricted source, or
    /// `unknown` when it sets none.
    pub fn restricted_type(self) -> &'static str {
        let restricted = self.0 & !Self::ALLOWED_MASK;
        if restricted == 0 {
            "unknown"
        } else {
            VOLUME_SOURCES[restricted.trailing_zeros() as usize]
        }
    }
}

/// A pod volume: its name and which sources it sets; the sources' contents are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Volume {
    pub name: String,
    pub sources: VolumeSources,
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VolumeVisitor;
        impl<'de> Visitor<'de> for VolumeVisitor {
            type Value = Volume;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a volume object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Volume, A::Error> {
                let mut volume = Volume::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "name" {
                        volume.name = map.next_value::<Option<String>>()?.unwrap_or_default();
                    } else if let Some(i) = VOLUME_SOURCES.iter().position(|s| *s == key) {
                        if map.next_value::<Option<IgnoredAny>>()?.is_some() {
                            volume.sources.0 |= 1 << i;
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(volume)
            }
        }
        deserializer.deserialize_map(VolumeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_read_as_unset_and_unknown_fields_are_skipped() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"name":"p","annotations":{"a":null},"labels":{"x":"y"}},
                "spec":{"hostNetwork":null,"containers":[{"name":"c","image":"i","securityContext":null,"ports":null}],
                        "volumes":[{"name":"v","hostPath":{"path":"/"},"extra":1},{"name":"w","nfs":null}],
                        "initContainers":null,"nodeName":"n"}}"#,
        )
        .expect("valid pod");
        assert_eq!(pod.metadata.annotations["a"], "");
        assert!(!pod.spec.host_network);
        assert_eq!(pod.spec.containers[0].name, "c");
        assert!(pod.spec.volumes[0].sources.has_host_path());
        assert!(pod.spec.volumes[1].sources.is_empty());
    }

    #[test]
    fn defaulting_mirrors_the_api_server() {
        let mut pod: Pod = serde_json::from_str(
            r#"{"spec":{"hostNetwork":true,"volumes":[{"name":"v"}],
                "containers":[{"name":"c","ports":[{"containerPort":80},{"containerPort":81,"hostPort":9}]}]}}"#,
        )
        .expect("valid pod");
        let mut template = pod.spec.clone();
        template.apply_template_defaults();
        assert_eq!(
            template.containers[0].ports[0].host_port, 0,
            "templates keep their ports"
        );
        pod.apply_api_server_defaults();
        assert_eq!(pod.spec.volumes[0].sources, VolumeSources::EMPTY_DIR);
        assert_eq!(pod.spec.containers[0].ports[0].host_port, 80);
        assert_eq!(pod.spec.containers[0].ports[1].host_port, 9);
    }

    #[test]
    fn app_armor_annotations_become_container_fields_like_the_api_server() {
        let mut pod: Pod = serde_json::from_str(
            r#"{"metadata":{"annotations":{
                  "container.apparmor.security.beta.kubernetes.io/a":"unconfined",
                  "container.apparmor.security.beta.kubernetes.io/b":"localhost/p",
                  "container.apparmor.security.beta.kubernetes.io/c":"unconfined",
                  "container.apparmor.security.beta.kubernetes.io/d":"localhost/",
                  "container.apparmor.security.beta.kubernetes.io/e":"unconfined"}},
                "spec":{"securityContext":{"appArmorProfile":{"type":"Unconfined"}},
                  "initContainers":[{"name":"a"}],
                  "containers":[{"name":"b"},{"name":"c"},{"name":"d"},
                    {"name":"e","securityContext":{"appArmorProfile":{"type":"RuntimeDefault"}}}]}}"#,
        )
        .expect("valid pod");
        pod.apply_api_server_defaults();
        fn profile(c: &Container) -> Option<(&str, Option<&str>)> {
            c.security_context
                .as_ref()
                .and_then(|sc| sc.app_armor_profile.as_ref())
                .map(|p| (p.type_.as_str(), p.localhost_profile.as_deref()))
        }
        // Equal to the pod-level profile: not copied.
        assert_eq!(profile(&pod.spec.init_containers[0]), None);
        assert_eq!(
            profile(&pod.spec.containers[0]),
            Some(("Localhost", Some("p")))
        );
        assert_eq!(profile(&pod.spec.containers[1]), None);
        // Invalid (empty localhost profile): not copied.
        assert_eq!(profile(&pod.spec.containers[2]), None);
        // A container's own field wins.
        assert_eq!(
            profile(&pod.spec.containers[3]),
            Some(("RuntimeDefault", None))
        );
    }

    #[test]
    fn volume_types_follow_upstream_order() {
        let v = VolumeSources::from_names(["nfs", "hostPath"]);
        assert_eq!(v.restricted_type(), "hostPath");
        assert!(!v.restricted_allows());
        assert!(VolumeSources::from_names(["nfs", "secret"]).restricted_allows());
        assert_eq!(VolumeSources::default().restricted_type(), "unknown");
        assert_eq!(
            VolumeSources::from_names(["storageos"]).restricted_type(),
            "storageos"
        );
    }

    #[test]
    fn wrong_types_are_errors_with_a_path() {
        let err =
            serde_path_to_error::deserialize::<_, Pod>(&mut serde_json::Deserializer::from_str(
                r#"{"spec":{"containers":[{"name":"c","securityContext":{"privileged":"yes"}}]}}"#,
            ))
            .expect_err("a string is not a bool");
        assert_eq!(
            err.path().to_string(),
            "spec.containers[0].securityContext.privileged"
        );
    }
}
