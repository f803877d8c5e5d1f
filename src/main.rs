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
    /// Print the PodSecurityProfile CRD (YAML) generated from the Rust types.
    Crd,
    /// Run the operator against the cluster of the current kubeconfig or the in-cluster account.
    Run(cli::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => cli::crd::run(),
        Command::Run(args) => cli::run::run(args),
    }
}
