//! The `sluice` command: parse the command line, load the config, run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: measurably faster than glibc malloc on the proxy path.
#[global_allocator]
static GLOBAL: sluice::allocator::Mimalloc = sluice::allocator::Mimalloc;

/// A caching reverse proxy and load balancer.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Config file to load.
    #[arg(long, short, default_value = "config/sluice.toml")]
    config: PathBuf,
    /// Validate the config (including TLS certificates and keys) and exit.
    #[arg(long)]
    check: bool,
    /// GET URL (http://HOST:PORT/PATH, e.g. the admin API's /healthz) and
    /// exit 0 on a 2xx answer, 1 otherwise; no config is read. For a
    /// container's HEALTHCHECK.
    #[arg(long, value_name = "URL", conflicts_with = "check")]
    health_check: Option<String>,
}

fn main() -> ExitCode {
    sluice::allocator::tune();
    let cli = Cli::parse();
    if let Some(url) = &cli.health_check {
        return match sluice::health_check(url) {
            Ok(status) => {
                let _ = writeln!(std::io::stdout(), "{status}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                let _ = writeln!(std::io::stderr(), "unhealthy: {why}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match sluice::load_config(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            // The exit code is the answer: a closed pipe on stderr must not
            // turn it into a panic (as `eprintln!` would).
            let _ = writeln!(
                std::io::stderr(),
                "{errors}\nconfig invalid: {} error(s)",
                errors.errors.len()
            );
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        let warnings = config.warnings_text();
        let _ = write!(std::io::stderr(), "{warnings}");
        let ok = match config.warnings.len() {
            0 => "config OK".to_string(),
            n => format!("config OK, {n} warning(s)"),
        };
        let _ = writeln!(std::io::stdout(), "{ok}");
        return ExitCode::SUCCESS;
    }
    sluice::init_logging(&config);
    for line in config.warnings_text().lines() {
        tracing::warn!("{line}");
    }
    sluice::allocator::start_purger();
    match sluice::run(cli.config, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
