//! The operator (`pss-operator run`) against the real control plane: one operator process, running
//! as its ServiceAccount with only `config/rbac`, shared by these tests (see `support.rs`).

mod admission;
mod guard;
mod labels;
mod leader;
mod ledger;
mod plan;
mod policy;
mod rbac;
mod reporting;
mod reports;
mod support;
mod transport;
mod validation;
mod workloads;
