use clap::Parser;

fn main() -> std::process::ExitCode {
    // No OpenMP setting here: libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT when libtorch is
    // loaded, before main runs, so only the environment the process starts with can set them.
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
