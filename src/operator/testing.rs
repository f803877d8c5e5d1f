//! Test-only helpers shared by the operator's unit tests: one way to build a profile, a label
//! set and a namespace.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;

use super::crd::{
    DeletionPolicy, FINALIZER, LevelName, LevelSpec, PodSecurityProfile, PodSecurityProfileSpec,
    ProfileMode, Rollout,
};
use super::desired::{Labels, NamespaceView};
use crate::pss::Mode;

/// A label set from `(key, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A namespace as the planner sees it.
pub fn namespace_view(name: &str, pairs: &[(&str, &str)]) -> NamespaceView {
    NamespaceView {
        name: name.to_owned(),
        labels: Arc::new(labels(pairs)),
    }
}

/// A profile named `name`, generation 1, selecting every namespace and declaring nothing yet.
pub fn profile(name: &str) -> ProfileBuilder {
    let mut p = PodSecurityProfile::new(name, PodSecurityProfileSpec::default());
    p.metadata.generation = Some(1);
    ProfileBuilder(p)
}

/// `"baseline"` or `"restricted:v1.30"` as a mode's spec.
pub fn level_spec(s: &str) -> LevelSpec {
    let (level, version) = s.split_once(':').unwrap_or((s, ""));
    LevelSpec {
        level: Some(match level {
            "privileged" => LevelName::Privileged,
            "baseline" => LevelName::Baseline,
            "restricted" => LevelName::Restricted,
            other => panic!("not a level: {other}"),
        }),
        version: (!version.is_empty()).then(|| version.to_owned()),
    }
}

pub struct ProfileBuilder(PodSecurityProfile);

impl ProfileBuilder {
    pub fn enforce(self, level: &str) -> Self {
        self.level(Mode::Enforce, level)
    }

    /// Declares `level` (`"baseline"`, `"restricted:v1.30"`) for `mode`.
    pub fn level(mut self, mode: Mode, level: &str) -> Self {
        let spec = Some(level_spec(level));
        match mode {
            Mode::Enforce => self.0.spec.enforce = spec,
            Mode::Audit => self.0.spec.audit = spec,
            Mode::Warn => self.0.spec.warn = spec,
        }
        self
    }

    /// Selects the namespaces labelled `team=<team>` (`""` keeps selecting every namespace).
    pub fn team(mut self, team: &str) -> Self {
        if !team.is_empty() {
            self.0.spec.namespace_selector = LabelSelector {
                match_labels: Some([("team".to_owned(), team.to_owned())].into()),
                ..Default::default()
            };
        }
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.0.spec.priority = priority;
        self
    }

    pub fn allow_stricter(mut self, allow: bool) -> Self {
        self.0.spec.allow_stricter = allow;
        self
    }

    pub fn mode(mut self, mode: ProfileMode) -> Self {
        self.0.spec.mode = mode;
        self
    }

    pub fn rollout(mut self, rollout: Rollout) -> Self {
        self.0.spec.rollout = rollout;
        self
    }

    pub fn deletion_policy(mut self, policy: DeletionPolicy) -> Self {
        self.0.spec.deletion_policy = policy;
        self
    }

    pub fn generation(mut self, generation: i64) -> Self {
        self.0.metadata.generation = Some(generation);
        self
    }

    /// Deleted, held by our finalizer.
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self.0.metadata.finalizers = Some(vec![FINALIZER.into()]);
        self
    }

    pub fn build(self) -> PodSecurityProfile {
        self.0
    }
}
