//! `pss-operator crd`: prints the PodSecurityProfile CRD generated from the Rust types.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    match crate::operator::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: serializing the CRD: {e}");
            ExitCode::FAILURE
        }
    }
}
