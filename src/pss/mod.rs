//! The Pod Security Standards evaluator: pure functions of (pod metadata + spec, level, version),
//! byte-identical to kube-apiserver's PodSecurity admission. No I/O here.

pub mod level;

pub use level::{Level, LevelVersion, Mode, ParseError, Policy, Version, policy_from_labels};
