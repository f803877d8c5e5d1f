//! The `pss-operator` binary: thin wrappers over the library's subcommands. Called as
//! `kubectl-pss` (a symlink or copy on the PATH) it is the kubectl plugin `kubectl pss`.

use std::process::ExitCode;

use clap::Parser;
use pss_operator::cli::{self, Cli, Command, Plugin, PluginCommand};

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if cli::called_as_plugin(&argv0) {
        return match Plugin::parse().command {
            PluginCommand::Status(args) => cli::status::run(args),
            PluginCommand::Plan(args) => cli::plan::run(args),
            PluginCommand::Check(args) => check(&args),
        };
    }
    match Cli::parse().command {
        Command::Check(args) => check(&args),
        Command::Crd => cli::crd::run(),
        Command::Run(args) => {
            one_malloc_arena();
            cli::run::run(args)
        }
        Command::Plan(args) => cli::plan::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Completions(args) => {
            cli::completions::write(args.shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

fn check(args: &cli::check::CheckArgs) -> ExitCode {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    match cli::check::run(
        args,
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
