//! Reloading the config file while serving: read and validate it again,
//! refuse what needs a restart (listeners, the admin listener), and swap a
//! new [`Snapshot`] in, or keep the running one and say why. SIGHUP (the
//! lifecycle) and `POST /reload` (the admin API) both come here; this
//! module knows neither of them.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::snapshot::Snapshot;

/// Loads the config file again and swaps it in, or keeps the old one and
/// returns why. SIGHUP and the admin API's `POST /reload` both come here.
pub(crate) fn reload(path: &Path, state: &ArcSwap<Snapshot>) -> Result<(), String> {
    // One reload at a time, whichever way it was asked for.
    static RELOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = RELOADING.lock().unwrap_or_else(|e| e.into_inner());
    // systemd shows the unit as reloading until READY=1 follows, whether
    // the reload came from `systemctl reload` or from the admin API.
    crate::notify::reloading();
    let result = try_reload(path, state);
    crate::metrics::get().reload(result.is_ok());
    crate::notify::reloaded(result.is_ok());
    result
}

fn try_reload(path: &Path, state: &ArcSwap<Snapshot>) -> Result<(), String> {
    let config = match crate::environment::load_config(path) {
        Ok(c) => c,
        Err(errors) => {
            tracing::error!("reload refused, keeping the running config:\n{errors}");
            return Err(errors.to_string());
        }
    };
    for line in config.warnings_text().lines() {
        tracing::warn!("{line}");
    }
    let current = state.load();
    let shape = |c: &Config| -> Vec<(String, std::net::SocketAddr, bool)> {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.listen, l.tls.is_some()))
            .collect()
    };
    if shape(&config) != shape(&current.config) {
        let why = format!(
            "{}; a reload cannot rebind listeners: send SIGUSR2 to start a new sluice \
             with this config on the same sockets (no connection is lost), or restart",
            listener_change(&shape(&current.config), &shape(&config))
        );
        tracing::error!("reload refused, keeping the running config: {why}");
        return Err(why);
    }
    let admin_listen = |c: &Config| c.admin.as_ref().map(|a| a.listen);
    if admin_listen(&config) != admin_listen(&current.config) {
        let why = "[admin] listen differs from the running one (or [admin] was added or \
                   removed); restart sluice to change the admin listener";
        tracing::error!("reload refused, keeping the running config: {why}");
        return Err(why.to_string());
    }
    for key in kept_until_restart(&current.config, &config) {
        tracing::warn!(
            "{key} changed: the running value stays until an upgrade in place \
             (SIGUSR2) or a restart"
        );
    }
    if config.access_log != current.config.access_log {
        if let Err(e) = crate::access_log::configure(config.access_log.as_ref()) {
            tracing::error!(error = %e, "reload refused, keeping the running config");
            return Err(e.to_string());
        }
    }
    match Snapshot::build(config, Some(&current)) {
        Ok(next) => {
            state.store(Arc::new(next));
            tracing::info!(config = %path.display(), "config reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused, keeping the running config");
            Err(e.to_string())
        }
    }
}

/// The settings that changed between the running (`old`) and the new
/// config but are set up once at start, so a reload cannot apply them:
/// each is named in a warning rather than taken in silence.
fn kept_until_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut kept = Vec::new();
    if old.server.workers != new.server.workers {
        kept.push("[server] workers".to_string());
    }
    if old.server.drain_timeout != new.server.drain_timeout {
        kept.push("[server] drain_timeout".to_string());
    }
    // Each listener's connection count is a semaphore made at start.
    for l in &new.listeners {
        if old.limits_for(&l.name).max_connections != new.limits_for(&l.name).max_connections {
            kept.push(format!("max_connections of listener \"{}\"", l.name));
        }
    }
    if old.log != new.log {
        kept.push("[log]".to_string());
    }
    // The purge subscription is set up at start.
    if old.cache.fanout != new.cache.fanout {
        kept.push("[cache.purge]".to_string());
    }
    kept
}

/// Which listener differs between the running (`old`) and the new config.
fn listener_change(
    old: &[(String, std::net::SocketAddr, bool)],
    new: &[(String, std::net::SocketAddr, bool)],
) -> String {
    for (name, addr, tls) in new {
        match old.iter().find(|(n, _, _)| n == name) {
            None => return format!("listener \"{name}\" ({addr}) is new"),
            Some((_, a, _)) if a != addr => {
                return format!("listener \"{name}\" moves from {a} to {addr}")
            }
            Some((_, _, t)) if t != tls => {
                let now = if *tls { "on" } else { "off" };
                return format!("listener \"{name}\" turns TLS {now}");
            }
            Some(_) => {}
        }
    }
    match old
        .iter()
        .find(|(n, _, _)| !new.iter().any(|(m, _, _)| m == n))
    {
        Some((name, addr, _)) => format!("listener \"{name}\" ({addr}) is gone"),
        None => "the listeners are in another order".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{kept_until_restart, listener_change};
    use crate::config::tests::{parse, MINIMAL};

    #[test]
    fn a_reload_names_each_setting_it_cannot_apply() {
        let old = parse(MINIMAL).unwrap();
        assert!(kept_until_restart(&old, &parse(MINIMAL).unwrap()).is_empty());
        let changed = parse(&format!(
            "[server]\nworkers = 3\ndrain_timeout = \"5s\"\n\
             [limits]\nmax_connections = 10\n\
             [log]\nlevel = \"debug\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(
            kept_until_restart(&old, &changed),
            [
                "[server] workers",
                "[server] drain_timeout",
                "max_connections of listener \"http\"",
                "[log]",
            ]
        );
        let purge = parse(&format!(
            "[cache.purge]\nfanout = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(kept_until_restart(&old, &purge), ["[cache.purge]"]);
        // What a reload applies is not named.
        let applied = parse(&format!("[limits]\nkeepalive_timeout = \"5s\"\n{MINIMAL}")).unwrap();
        assert!(kept_until_restart(&old, &applied).is_empty());
    }

    #[test]
    fn a_refused_reload_names_the_listener_that_differs() {
        let l = |name: &str, addr: &str, tls| (name.to_string(), addr.parse().unwrap(), tls);
        let old = [
            l("http", "127.0.0.1:80", false),
            l("https", "127.0.0.1:443", true),
        ];
        let moved = [
            l("http", "127.0.0.1:8080", false),
            l("https", "127.0.0.1:443", true),
        ];
        assert_eq!(
            listener_change(&old, &moved),
            "listener \"http\" moves from 127.0.0.1:80 to 127.0.0.1:8080"
        );
        let tls = [
            l("http", "127.0.0.1:80", true),
            l("https", "127.0.0.1:443", true),
        ];
        assert_eq!(
            listener_change(&old, &tls),
            "listener \"http\" turns TLS on"
        );
        let gone = [l("http", "127.0.0.1:80", false)];
        assert_eq!(
            listener_change(&old, &gone),
            "listener \"https\" (127.0.0.1:443) is gone"
        );
        let added = [
            old[0].clone(),
            old[1].clone(),
            l("alt", "127.0.0.1:81", false),
        ];
        assert_eq!(
            listener_change(&old, &added),
            "listener \"alt\" (127.0.0.1:81) is new"
        );
    }
}
