//! End-to-end tests against a real kube-apiserver (see e2e/README.md).
//!
//! `cargo test --test e2e` starts a private control plane for the run; set
//! `PSS_E2E_USE_KUBECONFIG=1` to use the cluster `KUBECONFIG` points at instead.

mod apiserver_parity;
mod harness;
mod operator;
mod podgen;
mod seed;
