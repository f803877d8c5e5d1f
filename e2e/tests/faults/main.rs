//! Reliability and security under faults, load and hostile input (issue 7), on a real control plane.
//!
//! This test binary starts its OWN private control plane (the shared harness, one per test binary),
//! because its tests stop and restart kube-apiserver and etcd, change the CRD's schema and kill
//! operator processes: nothing here may disturb the `e2e` binary's tests. The tests of this binary
//! run one at a time (they take [`serial`]), each with its own `pss-operator run` processes (as the
//! ServiceAccount with only `config/rbac`), its own Lease name and its own tagged namespaces.
//!
//! After every fault the cluster is compared with a fresh evaluation by our evaluator
//! ([`check::converged`]): every label, every profile status count and every metric.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;
// Shared helpers of the operator tests (metrics parser, kubectl, token kubeconfig); this binary
// runs its own operator processes, so that module's shared operator is unused here.
#[allow(dead_code, unused_imports)]
#[path = "../operator/support.rs"]
mod support;

mod check;
mod crash;
mod hostile;
mod ledger;
mod load;
mod metrics_auth;
mod outage;
mod procs;
mod security;

/// The tests of this binary share one control plane they break on purpose: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}
