//! Process lifecycle: start the runtime, bind listeners, then react to
//! signals. SIGHUP reloads the config file (an invalid one is refused and the
//! old config keeps serving); SIGTERM and SIGINT stop accepting and drain
//! in-flight requests for up to `drain_timeout` (the admin `/readyz` turns
//! 503 at once). SIGUSR1 reopens the access log file. SIGUSR2 starts a new
//! sluice on the same listening sockets and, once it is ready, drains this
//! one ([`crate::handover`]). Under systemd each of these steps is reported
//! to the service manager ([`crate::notify`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::admin::{Admin, Health};
use crate::config::Config;
use crate::handover::Inherited;
use crate::listener::{self, Listener};
use crate::reload::reload;
use crate::snapshot::Snapshot;
use crate::snapshot::State;
use crate::workers;

/// Runs the daemon with `config` (loaded from `path`, re-read on SIGHUP)
/// until a stop signal, then drains. Blocks the calling thread, which
/// becomes the control thread; requests are served by the worker threads
/// ([`crate::workers`]).
pub fn run(path: PathBuf, config: Config) -> anyhow::Result<()> {
    workers::set_count(workers::resolve(config.server.workers));
    crate::fd_limit::raise(&config, workers::count());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(path, config))
}

async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let drain_timeout = config.server.drain_timeout;
    let mut inherited = Inherited::from_env();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let socket = take_or_bind(&mut inherited, &l.name, l.listen)
            .with_context(|| format!("listener \"{}\": cannot bind {}", l.name, l.listen))?;
        bound.push(Listener {
            name: Arc::from(l.name.as_str()),
            socket,
            tls: l.tls.is_some(),
        });
    }
    let admin_socket = match &config.admin {
        Some(a) => Some(
            take_or_bind(&mut inherited, ADMIN, a.listen)
                .with_context(|| format!("admin listener: cannot bind {}", a.listen))?,
        ),
        None => None,
    };
    inherited.close_rest();
    crate::access_log::configure(config.access_log.as_ref())?;
    let snapshot = Snapshot::build(config, None).context("cannot load TLS certificates")?;
    let state: State = Arc::new(ArcSwap::from_pointee(snapshot));
    let watched = state.clone();
    crate::metrics::get().watch_upstreams(Box::new(move || watched.load().pools.clone()));
    let health = Arc::new(Health::default());
    if let Some(f) = &state.load().config.cache.fanout {
        let watched = state.clone();
        crate::cache::fanout::start(f, Box::new(move || watched.load().cache.clone()));
    }

    // Handlers go in before anything is served or "ready" is logged: until
    // then SIGHUP, SIGTERM and SIGINT would kill the process outright.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;

    let drain = Arc::new(listener::Drain::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    // Every worker accepts from every listener: the sockets are shared (one
    // kernel accept queue each), as are the limits on what they accept.
    let mut sockets = Vec::new();
    // Copies of every listening socket, for a successor (SIGUSR2).
    let mut handed = Vec::new();
    for l in bound {
        let addr = l.local_addr()?;
        tracing::info!(listener = %l.name, addr = %addr, tls = l.tls, "listening");
        let limits = state.load().config.limits_for(&l.name).clone();
        let shared = listener::Shared::new(&l.name, &state, &limits);
        let socket = l.socket.into_std()?;
        handed.push((l.name.to_string(), socket.try_clone()?));
        sockets.push((l.name, l.tls, socket, shared));
    }
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut threads = Vec::new();
    for index in 0..workers::count() {
        let mut mine = Vec::new();
        for (name, tls, socket, shared) in &sockets {
            mine.push((name.clone(), *tls, socket.try_clone()?, shared.clone()));
        }
        let (state, drain, stop_rx, mut done_rx, closed_tx) = (
            state.clone(),
            drain.clone(),
            stop_rx.clone(),
            done_rx.clone(),
            closed_tx.clone(),
        );
        threads.push(workers::spawn(index, move || async move {
            let mut loops = Vec::new();
            for (name, tls, socket, shared) in mine {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(socket) => loops.push(tokio::spawn(listener::serve(
                        Listener { name, socket, tls },
                        state.clone(),
                        shared,
                        drain.clone(),
                        stop_rx.clone(),
                    ))),
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "worker cannot use listener")
                    }
                }
            }
            for task in loops {
                let _ = task.await;
            }
            drop(drain);
            drop(closed_tx);
            // Keep serving this worker's in-flight connections until the
            // control thread has drained (or given up on) them.
            let _ = done_rx.wait_for(|done| *done).await;
        })?);
    }
    drop(closed_tx);
    drop(sockets);
    if let Some(socket) = admin_socket {
        let socket = socket.into_std()?;
        handed.push((ADMIN.to_string(), socket.try_clone()?));
        let socket = tokio::net::TcpListener::from_std(socket)?;
        let addr = socket.local_addr()?;
        tracing::info!(listener = %"admin", addr = %addr, tls = false, "listening");
        let admin = Arc::new(Admin {
            state: state.clone(),
            health: health.clone(),
            config_path: path.clone(),
        });
        tokio::spawn(crate::admin::serve(socket, admin));
    }
    health.set_ready();
    tracing::info!(config = %path.display(), pid = std::process::id(), "ready");
    if crate::handover::is_successor() {
        crate::notify::took_over();
    } else {
        crate::notify::ready();
    }
    crate::handover::signal_ready();

    let mut handed_over = false;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let (path, state) = (path.clone(), state.clone());
                let _ = tokio::task::spawn_blocking(move || reload(&path, &state)).await;
            }
            _ = usr1.recv() => crate::access_log::reopen(),
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: starting a new sluice on these listening sockets");
                let sockets = handed
                    .iter()
                    .map(|(n, s)| Ok((n.clone(), s.try_clone()?)))
                    .collect::<std::io::Result<Vec<_>>>();
                let started = match sockets {
                    Ok(sockets) => tokio::task::spawn_blocking(move || {
                        crate::handover::start_successor(&sockets)
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(e) => Err(e.to_string()),
                };
                match started {
                    Ok(pid) => {
                        tracing::info!(pid, "the new sluice is ready; this one stops accepting and drains");
                        handed_over = true;
                        break;
                    }
                    Err(e) => tracing::error!(error = %e, "upgrade failed; this sluice keeps serving"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // The copies kept for a successor would keep the sockets open (and
    // connections queueing on them) after the workers close theirs.
    drop(handed);
    health.set_draining();
    if !handed_over {
        // After a handover the service goes on in the new process.
        crate::notify::stopping();
    }

    tracing::info!(timeout = ?drain_timeout, "stopping: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    // Every worker drops its sender once its accept loops have returned.
    let _ = closed_rx.recv().await;
    tracing::info!("listeners closed");
    match tokio::time::timeout(drain_timeout, drain.stop()).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    let _ = done_tx.send(true);
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    crate::access_log::shutdown();
    Ok(())
}

/// The handover name of the admin listener (not a valid listener name).
const ADMIN: &str = "@admin";

/// The socket a previous sluice (or systemd) handed over for listener
/// `name` at `addr`, else a newly bound one.
fn take_or_bind(
    inherited: &mut Inherited,
    name: &str,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    match inherited.take(name, addr) {
        Some(socket) => {
            tracing::info!(listener = %name, addr = %addr, "using the inherited socket");
            socket.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(socket)
        }
        None => listener::bind(addr),
    }
}
