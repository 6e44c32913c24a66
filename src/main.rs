use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

// jemalloc hands pages freed by stopped and resting call actors back to the system over time
// (background purging); with the system allocator most of that memory stayed in the process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cdr_service::cli::Cli::parse();
    match cdr_service::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            // Not `eprintln!`: it panics when stderr is closed, which would turn this exit
            // code into a panic's.
            let _ = writeln!(std::io::stderr(), "cdr-service: {e:#}");
            ExitCode::FAILURE
        }
    }
}
