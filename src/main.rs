//! The `sluice` command: parse the command line, load the config, run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc: measurably faster than glibc malloc on the proxy path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (not named in its Rust bindings).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory freed in whole pages waits before it goes back to the
/// system: reused sooner, it stays. 0 (at once) made a TLS + HTTP/2 load
/// give pages back and fault them in again (2,906 `madvise` calls per
/// 100,000 requests, -20% requests/s); 100 ms, 80 calls.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// How often pages whose delay has passed are given back. mimalloc does it
/// only when it is called again: a server that goes idle after a burst
/// would otherwise keep the burst's buffers (about 0.3 KiB per idle
/// connection at 10,000) until traffic came back.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

fn tune_allocator() {
    // SAFETY: sets one of mimalloc's process-wide options, which it reads
    // with atomics; called first thing in `main`.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Starts the thread that gives back what is due every [`PURGE_EVERY`]:
/// only for the server, not for `--check` or `--health-check`, which exit
/// at once.
fn start_purger() {
    let purger = std::thread::Builder::new()
        .name("sluice-purge".into())
        .spawn(|| loop {
            std::thread::sleep(PURGE_EVERY);
            // SAFETY: mimalloc's own collection, callable from any thread;
            // not forced, it only gives back what is due.
            unsafe { libmimalloc_sys::mi_collect(false) };
        });
    // Without it memory is given back later, as mimalloc does by default.
    drop(purger);
}

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
    tune_allocator();
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
    start_purger();
    match sluice::run(cli.config, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
