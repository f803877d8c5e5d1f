//! The `pss-operator` binary: thin wrappers over the library's subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pss_operator::cli;

#[derive(Debug, Parser)]
#[command(
    name = "pss-operator",
    version,
    about = "Continuous Pod Security Standards compliance for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate manifests offline against a Pod Security Standards level (for CI pipelines).
    ///
    /// Exit code: 0 all allowed, 1 something violates, 2 usage or input error.
    Check(cli::check::CheckArgs),
    /// Print the PodSecurityProfile CRD (YAML) generated from the Rust types.
    Crd,
    /// Run the operator against the cluster of the current kubeconfig or the in-cluster account.
    Run(cli::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => {
            let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
            match cli::check::run(
                &args,
                &mut stdin.lock(),
                &mut stdout.lock(),
                &mut stderr.lock(),
            ) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("error: writing output: {e}");
                    ExitCode::from(cli::check::EXIT_INPUT_ERROR)
                }
            }
        }
        Command::Crd => cli::crd::run(),
        Command::Run(args) => {
            one_malloc_arena();
            cli::run::run(args)
        }
    }
}

/// glibc gives threads that allocate at the same time arenas of their own (up to 8 per core)
/// and keeps what each one freed for reuse by that arena: with the pass, the reporter and the
/// watches on different threads, the operator's RSS at 50k Pods reached 93-108 MB for a heap
/// of ~45 MB live; one arena kept it at 72-79 MB with the same latencies. A `MALLOC_ARENA_MAX`
/// the user sets wins. (musl builds, the container image, use jemalloc instead: src/lib.rs.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: sets a glibc malloc tunable; called before the runtime starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
