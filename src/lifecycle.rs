//! Process lifecycle: start the runtime, bind listeners, then react to
//! signals. SIGHUP reloads the config file (an invalid one is refused and the
//! old config keeps serving); SIGTERM and SIGINT stop accepting and drain
//! in-flight requests for up to `drain_timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;
use crate::listener::{self, Listener};
use crate::proxy::State;
use crate::snapshot::Snapshot;

/// Runs the daemon with `config` (loaded from `path`, re-read on SIGHUP)
/// until a stop signal, then drains. Blocks the calling thread.
pub fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.server.workers > 0 {
        rt.worker_threads(config.server.workers);
    }
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(path, config))
}

async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let drain_timeout = config.server.drain_timeout;
    let mut bound = Vec::new();
    for l in &config.listeners {
        let socket = listener::bind(l.listen)
            .with_context(|| format!("listener \"{}\": cannot bind {}", l.name, l.listen))?;
        bound.push(Listener {
            name: Arc::from(l.name.as_str()),
            socket,
            tls: l.tls.is_some(),
        });
    }
    let snapshot = Snapshot::build(config, None).context("cannot load TLS certificates")?;
    let state: State = Arc::new(ArcSwap::from_pointee(snapshot));

    // Handlers go in before anything is served or "ready" is logged: until
    // then SIGHUP, SIGTERM and SIGINT would kill the process outright.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_loops = Vec::new();
    for l in bound {
        let addr = l.local_addr()?;
        tracing::info!(listener = %l.name, addr = %addr, tls = l.tls, "listening");
        let limits = state.load().config.limits_for(&l.name).clone();
        accept_loops.push(tokio::spawn(listener::serve(
            l,
            state.clone(),
            limits,
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    tracing::info!(config = %path.display(), "ready");

    loop {
        tokio::select! {
            _ = hup.recv() => reload(&path, &state),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!(timeout = ?drain_timeout, "stopping: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    for task in accept_loops {
        let _ = task.await;
    }
    tracing::info!("listeners closed");
    // Every accept loop has returned, so this is the last reference.
    let drain = async move {
        match Arc::try_unwrap(graceful) {
            Ok(g) => g.shutdown().await,
            Err(_) => tracing::warn!("connections still being accepted; not draining"),
        }
    };
    match tokio::time::timeout(drain_timeout, drain).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    Ok(())
}

/// Loads the config file again and swaps it in, or keeps the old one.
fn reload(path: &Path, state: &State) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            tracing::error!("reload refused, keeping the running config:\n{errors}");
            return;
        }
    };
    let current = state.load();
    let shape = |c: &Config| -> Vec<(String, std::net::SocketAddr, bool)> {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.listen, l.tls.is_some()))
            .collect()
    };
    if shape(&config) != shape(&current.config) {
        tracing::error!(
            "reload refused, keeping the running config: listener names, addresses or TLS on/off \
             differ from the running ones; restart sluice to change listeners"
        );
        return;
    }
    match Snapshot::build(config, Some(&current)) {
        Ok(next) => {
            state.store(Arc::new(next));
            tracing::info!(config = %path.display(), "config reloaded");
        }
        Err(e) => tracing::error!(error = %e, "reload refused, keeping the running config"),
    }
}
