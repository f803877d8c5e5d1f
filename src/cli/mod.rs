//! Subcommands of the `pss-operator` binary; each module owns its flags and its run function.
//! The same binary is the kubectl plugin `kubectl pss` when it is called as `kubectl-pss`
//! (a symlink or a copy, krew's convention): [`Plugin`] holds that command line.

pub mod check;
pub mod completions;
pub mod crd;
pub mod plan;
pub mod run;
pub mod status;

use clap::{Parser, Subcommand};

/// The single-threaded runtime of the one-shot client commands (`plan`, `status`); `None`, with
/// the error printed, when it cannot start.
fn client_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: starting the runtime: {e}"))
        .ok()
}

/// The git commit the binary was built from (`build.rs`: `PSS_OPERATOR_COMMIT`, else
/// `git rev-parse`, else `unknown`).
pub const COMMIT: &str = env!("PSS_OPERATOR_COMMIT");
/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What `--version` prints after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PSS_OPERATOR_COMMIT"),
    ")"
);

/// The name the binary answers to as a kubectl plugin (krew: `kubectl-<name>` on the PATH).
pub const PLUGIN_BINARY: &str = "kubectl-pss";

const MAIN_EXAMPLES: &str = "\
Examples:
  pss-operator check --level restricted k8s/         evaluate manifests offline (CI)
  pss-operator plan -f profile.yaml                  what raising the labels would refuse, live
  pss-operator status                                profiles and their namespaces, as tables
  pss-operator run --leader-elect                    the operator
  pss-operator completions bash > /etc/bash_completion.d/pss-operator
  ln -s \"$(command -v pss-operator)\" ~/.local/bin/kubectl-pss && kubectl pss status";

const CHECK_EXAMPLES: &str = "\
Examples:
  pss-operator check --level restricted deploy/
  helm template chart/ | pss-operator check --level baseline --kube-version v1.31 -
  pss-operator check -o json --admission-config admission.yaml k8s/app.yaml";

const CRD_EXAMPLES: &str = "\
Example:
  pss-operator crd | kubectl apply --server-side -f -";

const RUN_EXAMPLES: &str = "\
Examples:
  pss-operator run --metrics-secure=false --metrics-addr 127.0.0.1:8080
  pss-operator run --leader-elect --operator-namespace pss-system --admission-config /etc/pss-operator/admission.yaml";

const PLAN_EXAMPLES: &str = "\
Examples:
  pss-operator plan                                  the profiles in the cluster, as they stand
  pss-operator plan -f profiles/restricted.yaml      as if these profiles replaced those of the same name
  pss-operator plan -f profiles/ --only-files -o json --admission-config admission.yaml
Exit code: 0 nothing would be refused, 1 a running Pod or a workload template would be refused,
2 usage, input or API error.";

const STATUS_EXAMPLES: &str = "\
Examples:
  pss-operator status
  kubectl pss status --profile restricted-apps
  kubectl pss status -o json";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  pss-operator completions bash > ~/.local/share/bash-completion/completions/pss-operator
  pss-operator completions zsh > \"${fpath[1]}/_pss-operator\"
  pss-operator completions fish > ~/.config/fish/completions/pss-operator.fish";

#[derive(Debug, Parser)]
#[command(
    name = "pss-operator",
    version = LONG_VERSION,
    about = "Continuous Pod Security Standards compliance for Kubernetes",
    after_help = MAIN_EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate manifests offline against a Pod Security Standards level (for CI pipelines).
    ///
    /// Exit code: 0 all allowed, 1 something violates, 2 usage or input error.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(check::CheckArgs),
    /// Print the PodSecurityProfile CRD (YAML) generated from the Rust types.
    #[command(after_help = CRD_EXAMPLES)]
    Crd,
    /// Run the operator against the cluster of the current kubeconfig or the in-cluster account.
    #[command(after_help = RUN_EXAMPLES)]
    Run(run::RunArgs),
    /// Show, read-only, what the operator would do to the live cluster: label changes per
    /// namespace and the running Pods and workload templates the new enforce level would refuse.
    #[command(after_help = PLAN_EXAMPLES)]
    Plan(plan::PlanArgs),
    /// Show the PodSecurityProfiles' status: profiles, their namespaces, violating and blocked
    /// workloads (read-only).
    #[command(after_help = STATUS_EXAMPLES)]
    Status(status::StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(completions::CompletionsArgs),
}

const PLUGIN_EXAMPLES: &str = "\
Examples:
  kubectl pss status
  kubectl pss plan -f profile.yaml
  kubectl pss check --level restricted k8s/

Installed as `kubectl-pss` on the PATH (a symlink to pss-operator: `make install-kubectl-plugin`).";

/// `kubectl pss ...`: the subcommands a cluster user needs, under kubectl.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-pss",
    bin_name = "kubectl pss",
    version = LONG_VERSION,
    about = "Pod Security Standards: profile status, plans before enforcing, offline checks",
    after_help = PLUGIN_EXAMPLES
)]
pub struct Plugin {
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// The PodSecurityProfiles' status as tables: profiles, namespaces, violating and blocked
    /// workloads.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(status::StatusArgs),
    /// What the operator would do: label changes and what the new enforce level would refuse.
    #[command(after_help = PLAN_EXAMPLES)]
    Plan(plan::PlanArgs),
    /// Evaluate manifests offline against a Pod Security Standards level.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(check::CheckArgs),
}

/// Whether `argv0` (the program path it was called by) is the kubectl plugin's name.
pub fn called_as_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == PLUGIN_BINARY || n == "kubectl-pss.exe")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_version_names_the_commit() {
        assert!(!COMMIT.is_empty());
        let v = Cli::command().render_version();
        assert_eq!(
            v.trim(),
            format!("pss-operator {VERSION} (commit {COMMIT})")
        );
        let v = Plugin::command().render_version();
        assert!(v.contains(COMMIT), "{v}");
    }

    #[test]
    fn every_subcommand_help_has_an_example() {
        for mut cmd in [Cli::command(), Plugin::command()] {
            cmd.build();
            let name = cmd.get_name().to_owned();
            assert!(
                cmd.render_long_help().to_string().contains("Example"),
                "{name} --help"
            );
            for sub in cmd.get_subcommands_mut().filter(|s| s.get_name() != "help") {
                let help = sub.render_long_help().to_string();
                assert!(
                    help.contains("Example"),
                    "{name} {} --help has no example:\n{help}",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn the_command_lines_are_consistent() {
        Cli::command().debug_assert();
        Plugin::command().debug_assert();
    }

    #[test]
    fn the_plugin_is_recognised_by_its_name_only() {
        for yes in ["kubectl-pss", "/usr/local/bin/kubectl-pss", "./kubectl-pss"] {
            assert!(called_as_plugin(yes.as_ref()), "{yes}");
        }
        for no in ["pss-operator", "/bin/kubectl-pss-x", "kubectl", "pss"] {
            assert!(!called_as_plugin(no.as_ref()), "{no}");
        }
    }

    #[test]
    fn the_plugin_has_status_plan_and_check() {
        let names: Vec<String> = Plugin::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(names, ["status", "plan", "check"]);
        let p = Plugin::try_parse_from(["kubectl-pss", "check", "--level", "baseline", "x.yaml"])
            .expect("parses");
        assert!(matches!(p.command, PluginCommand::Check(_)));
    }
}
