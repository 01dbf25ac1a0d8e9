//! `flotilla-agent`: parses the command line and hands over to [`flotilla_agent::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = flotilla_agent::cli::Cli::parse();
    match flotilla_agent::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
