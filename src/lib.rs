//! pss-operator: continuous Pod Security Standards compliance for Kubernetes.
//!
//! - [`pss`]: the exact Pod Security Standards evaluator (pure, no I/O).
//! - [`manifest`]: reading Kubernetes manifests (YAML/JSON) into pod templates.
//! - [`operator`]: the PodSecurityProfile operator (pure planner, index and status; I/O edges).
//! - [`cli`]: the subcommands of the binary (`check`, `crd`, `run`, `plan`, `status`, `completions`;
//!   as `kubectl-pss`, the kubectl plugin).
#![forbid(unsafe_code)]

// The global allocator of musl builds (the container image), for every binary linking this
// library (the operator, its tests and benchmarks). musl's own malloc made the operator's hot
// paths several times slower (BENCHMARKS.md, "musl and the allocator"); glibc builds keep glibc's.
#[cfg(all(
    target_env = "musl",
    feature = "musl-jemalloc",
    not(feature = "musl-mimalloc")
))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(target_env = "musl", feature = "musl-mimalloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cli;
pub mod manifest;
pub mod operator;
pub mod pss;
