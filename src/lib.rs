//! pss-operator: continuous Pod Security Standards compliance for Kubernetes.
//!
//! - [`pss`]: the exact Pod Security Standards evaluator (pure, no I/O).
//! - [`manifest`]: reading Kubernetes manifests (YAML/JSON) into pod templates.
//! - [`operator`]: the PodSecurityProfile operator (pure planner, index and status; I/O edges).
//! - [`cli`]: the subcommands of the binary (`check`, `crd`, `run`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod manifest;
pub mod operator;
pub mod pss;
