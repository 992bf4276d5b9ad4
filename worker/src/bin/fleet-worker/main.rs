//! `fleet-worker`: serve as a fleet worker, run the engine over a folder, publish a model,
//! report the devices. `main` sets up tracing and runs one command ([`cli`]).

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Logs to stderr; spans over OTLP too where OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _traces = fleet_telemetry::traces::init("fleet-worker", "info");
    if let Err(e) = fleet_config::layer(&<cli::Cli as clap::CommandFactory>::command(), "worker") {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match cli::run(cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
