//! systemd's service notifications (sd_notify(3)): `READY=1` once every
//! listener serves, `RELOADING=1` and `READY=1` around a config reload, and
//! `STOPPING=1` when the drain starts, so `Type=notify` units know when
//! sluice is up and `systemctl reload` can tell when the reload is over.
//!
//! Without `NOTIFY_SOCKET` in the environment (not started by systemd, or a
//! unit of another type) every function here does nothing.

use sd_notify::NotifyState;

/// Every listener is bound and the admin API answers.
pub(crate) fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// This process took over from an older sluice (`SIGUSR2`): it is the
/// service's main process from now on (the unit needs `NotifyAccess=all`
/// for systemd to take this from a process that is not yet its main one).
pub(crate) fn took_over() {
    send(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status("serving (upgraded in place)"),
    ]);
}

/// A reload begins. `MONOTONIC_USEC` goes with it because systemd 253 and
/// later need it to tell this reload from an earlier one
/// (`Type=notify-reload`).
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the config"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading the config"),
        ]),
    }
}

/// A reload is over: whether it was applied or refused, the process serves
/// (a refused config leaves the running one in place), so it is ready again.
pub(crate) fn reloaded(applied: bool) {
    let status = if applied {
        "serving"
    } else {
        "serving; the last reload was refused (see the log)"
    };
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The drain has started: systemd should not count the exit as a crash.
pub(crate) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining in-flight requests"),
    ]);
}

fn send(states: &[NotifyState<'_>]) {
    // A lost notification costs systemd's view of the state, never a request:
    // say so and carry on.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
