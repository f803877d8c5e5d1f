//! The operator: keeps PSA labels on the namespaces `PodSecurityProfile`s select, repairs drift,
//! and reports the running Pods that break each level as status and metrics.
//!
//! Pure core (no I/O, unit-tested): [`crd`] (the resource), [`desired`] (who governs a namespace
//! and which labels it gets), [`index`] (Pod verdicts), [`status`] (bounded status and metric
//! values). I/O edges: [`controller`] (watches, label apply, status writes, events), [`server`]
//! (`/metrics`, `/healthz`, `/readyz`), [`leader`] (Lease-based leader election).

pub mod controller;
pub mod crd;
pub mod desired;
pub mod error;
pub mod index;
pub mod metrics;
pub mod pods;
pub mod server;
pub mod status;

pub use error::{Error, Result};
