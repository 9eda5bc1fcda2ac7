//! `spr`: the SPR Workbench command line (see `spr --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = spr_workbench::cli::Cli::parse();
    // Before any thread starts: how many threads one CPU operation uses.
    spr_workbench::cli::configure_threads(&cli);
    match spr_workbench::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
