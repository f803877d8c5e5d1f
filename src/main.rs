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
        Command::Run(args) => cli::run::run(args),
    }
}
