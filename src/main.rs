use clap::Parser;

fn main() -> std::process::ExitCode {
    // libtorch's OpenMP threads spin after each parallel region (GNU OpenMP: 300k spins by
    // default), stealing the cores the HTTP runtime, training or a load generator need between
    // batches; sleeping at once (PASSIVE) costs throughput instead. A short spin measured best
    // here (bench/serve_bench.sh); an explicit setting wins. Set before libtorch's pool starts.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() && std::env::var_os("GOMP_SPINCOUNT").is_none() {
        std::env::set_var("GOMP_SPINCOUNT", "20000");
    }
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
