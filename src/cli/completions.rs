//! `pss-operator completions SHELL`: the completion script clap_complete generates from the
//! command line definition.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the script for `shell` to `out`.
pub fn write(shell: Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "pss-operator", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        write(shell, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn bash_zsh_and_fish_scripts_know_the_subcommands_and_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell);
            for word in [
                "check",
                "plan",
                "status",
                "run",
                "completions",
                "admission-config",
            ] {
                assert!(s.contains(word), "{shell}: {word} missing");
            }
        }
        assert!(script(Shell::Bash).contains("complete -F _pss__operator"));
        assert!(script(Shell::Zsh).starts_with("#compdef pss-operator"));
        assert!(script(Shell::Fish).contains("complete -c pss-operator"));
    }
}
