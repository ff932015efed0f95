//! Zero-downtime upgrades by handing the listening sockets to a new process
//! (as nginx's binary upgrade does): on SIGUSR2 sluice starts its own
//! executable again, with the same arguments, giving it every listening
//! socket; the new process reads the config, takes the sockets it still
//! needs (same listener name, same address) and binds the rest, and says
//! it is ready. Only then does the old process stop accepting and drain.
//! The sockets never close, so no connection in their accept queues is
//! lost, and a new binary, or a config whose listeners changed, takes over
//! without a refused connection.
//!
//! The sockets go to the new process as file descriptors 3, 4, ... with
//! `SLUICE_INHERITED_SOCKETS=name=fd,...`, and a pipe on which it writes
//! one byte once ready, named by `SLUICE_READY_FD`. systemd socket
//! activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) is read the
//! same way.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::time::Duration;

/// Names the inherited sockets: `name=fd,...`.
const INHERITED: &str = "SLUICE_INHERITED_SOCKETS";
/// The write end of the readiness pipe.
const READY_FD: &str = "SLUICE_READY_FD";
/// How long a new process may take to become ready before the old one
/// gives up on it (and kills it) and keeps serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Listening sockets this process was given at start, by listener name.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    sockets: HashMap<String, TcpListener>,
}

impl Inherited {
    /// The sockets handed over by an old sluice, or by systemd socket
    /// activation (`LISTEN_FDNAMES` naming listeners; unnamed sockets are
    /// matched by address). A process this one starts later gets its own
    /// values of these variables (and `LISTEN_PID` names this process
    /// only), so they are left as they are.
    pub(crate) fn from_env() -> Inherited {
        let mut out = Inherited::default();
        if let Ok(list) = std::env::var(INHERITED) {
            for item in list.split(',').filter(|s| !s.is_empty()) {
                if let Some((name, fd)) = item.split_once('=') {
                    if let Ok(fd) = fd.parse::<RawFd>() {
                        if let Some(socket) = adopt(fd) {
                            out.sockets.insert(name.to_string(), socket);
                        }
                    }
                }
            }
        }
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let count: RawFd = std::env::var("LISTEN_FDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
                .map(|n| n.split(':').map(str::to_string).collect())
                .unwrap_or_default();
            for i in 0..count.clamp(0, 1024) {
                if let Some(socket) = adopt(3 + i) {
                    let name = match names.get(i as usize) {
                        Some(n) if !n.is_empty() && n != "unknown" => n.clone(),
                        _ => format!("fd:{}", 3 + i),
                    };
                    out.sockets.insert(name, socket);
                }
            }
        }
        out
    }

    /// The inherited socket for listener `name` configured at `addr`: the
    /// one of that name (or an unnamed one) bound to `addr`, or to any port
    /// of its IP when `addr`'s port is 0.
    pub(crate) fn take(&mut self, name: &str, addr: SocketAddr) -> Option<TcpListener> {
        let fits = |s: &TcpListener| {
            s.local_addr()
                .is_ok_and(|a| a == addr || (addr.port() == 0 && a.ip() == addr.ip()))
        };
        if self.sockets.get(name).is_some_and(fits) {
            return self.sockets.remove(name);
        }
        let unnamed = self
            .sockets
            .iter()
            .find(|(n, s)| n.starts_with("fd:") && s.local_addr().is_ok_and(|a| a == addr))
            .map(|(n, _)| n.clone())?;
        self.sockets.remove(&unnamed)
    }

    /// Sockets no listener took: closed, and said so.
    pub(crate) fn close_rest(&mut self) {
        for (name, socket) in self.sockets.drain() {
            tracing::info!(listener = %name, addr = ?socket.local_addr().ok(), "inherited socket not used by this config; closed");
        }
    }
}

/// A socket from file descriptor `fd`, if it is a listening TCP socket; it
/// is marked close-on-exec again.
fn adopt(fd: RawFd) -> Option<TcpListener> {
    // SAFETY: `fd` was handed to this process for this purpose (by the
    // old sluice or systemd) and nothing else in it owns the descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_raw_fd());
    let socket = TcpListener::from(owned);
    match socket.local_addr() {
        Ok(_) => Some(socket),
        Err(e) => {
            tracing::warn!(fd, error = %e, "inherited descriptor is not a TCP socket; ignored");
            None
        }
    }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this process owns; no memory involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Whether an older sluice started this one (on SIGUSR2).
pub(crate) fn is_successor() -> bool {
    std::env::var_os(READY_FD).is_some()
}

/// Tells the process that started this one (on SIGUSR2) that this one is
/// ready, when there is one.
pub(crate) fn signal_ready() {
    static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SIGNALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Some(fd) = std::env::var(READY_FD)
        .ok()
        .and_then(|f| f.parse::<RawFd>().ok())
    else {
        return;
    };
    // SAFETY: the descriptor was created for this by the old process and
    // is owned by nothing else here.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = pipe.write_all(b"1");
}

/// Why a new process did not take over.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoverError {
    #[error("cannot start {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("cannot pass the sockets on: {0}")]
    Io(#[from] std::io::Error),
    #[error("the new process exited before it was ready ({0})")]
    Exited(std::process::ExitStatus),
    #[error("the new process was not ready within {0:?}")]
    NotReady(Duration),
}

/// Starts this executable again with `sockets` (listener name, socket) and
/// waits until it says it is ready. Blocking: run it off the runtime.
pub(crate) fn start_successor(sockets: &[(String, TcpListener)]) -> Result<u32, HandoverError> {
    let exe = executable()?;
    // Copies above the range the child's descriptors are moved into, so
    // that moving one never overwrites another.
    let mut copies = Vec::new();
    for (name, socket) in sockets {
        copies.push((name.clone(), dup_above(socket.as_raw_fd(), 64)?));
    }
    let (mut ready_read, ready_write) = pipe()?;
    let ready_high = dup_above(ready_write.as_raw_fd(), 64)?;
    drop(ready_write);
    let targets: Vec<RawFd> = (0..copies.len() as RawFd).map(|i| 3 + i).collect();
    let ready_target = 3 + copies.len() as RawFd;
    let inherited: Vec<String> = copies
        .iter()
        .zip(&targets)
        .map(|((name, _), fd)| format!("{name}={fd}"))
        .collect();
    let sources: Vec<RawFd> = copies.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let ready_source = ready_high.as_raw_fd();
    let mut command = Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env(INHERITED, inherited.join(","))
        .env(READY_FD, ready_target.to_string());
    let moves: Vec<(RawFd, RawFd)> = sources
        .iter()
        .copied()
        .zip(targets.iter().copied())
        .chain([(ready_source, ready_target)])
        .collect();
    // SAFETY: between fork and exec the closure only calls dup2, which is
    // async-signal-safe, on descriptors this process owns; it allocates
    // nothing (`moves` is built before the fork).
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            for &(from, to) in &moves {
                // dup2 leaves the new descriptor without FD_CLOEXEC.
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| HandoverError::Spawn {
        exe: exe.display().to_string(),
        source,
    })?;
    drop(copies);
    drop(ready_high);
    wait_ready(&mut child, &mut ready_read)?;
    Ok(child.id())
}

/// The executable to start: this one's path, which is the new binary when
/// an upgrade replaced the file (Linux then reports the old one as
/// `PATH (deleted)`).
fn executable() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => std::path::PathBuf::from(path),
        None => exe,
    })
}

/// Waits for the child's byte on the readiness pipe (end of file: it
/// exited or closed it without being ready).
fn wait_ready(child: &mut Child, pipe: &mut std::fs::File) -> Result<(), HandoverError> {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let fd = pipe.as_raw_fd();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HandoverError::NotReady(READY_TIMEOUT));
        }
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(1000) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut poll, 1, ms) };
        if n > 0 {
            let mut byte = [0u8; 1];
            return match pipe.read(&mut byte) {
                Ok(1) => Ok(()),
                _ => {
                    let status = child.wait()?;
                    Err(HandoverError::Exited(status))
                }
            };
        }
        if let Some(status) = child.try_wait()? {
            return Err(HandoverError::Exited(status));
        }
    }
}

/// A copy of `fd` numbered at least `min`, close-on-exec.
fn dup_above(fd: RawFd, min: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an owned descriptor returns a new one
    // that we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(std::fs::File, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two descriptors it creates.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing
    // else.
    unsafe {
        Ok((
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        ))
    }
}
