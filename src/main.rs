use clap::Parser;

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
