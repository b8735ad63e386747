use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = flowscore::cli::Cli::parse();
    flowscore::cli::init_logging(cli.log_format);
    match flowscore::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
