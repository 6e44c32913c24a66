use clap::Parser;

// jemalloc hands pages freed by stopped and resting call actors back to the system over time
// (background purging); with the system allocator most of that memory stayed in the process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cdr_service::cli::Cli::parse();
    match cdr_service::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cdr-service: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
