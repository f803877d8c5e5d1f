//! Subcommands of the `pss-operator` binary; each module owns its flags and its run function.

pub mod check;
pub mod crd;
pub mod run;
