//! Running under a service manager or in a container: systemd's readiness
//! and reload notifications on `NOTIFY_SOCKET`, relative paths in a config
//! resolved against its own directory (whatever the working directory is),
//! the open-file limit raised to what `max_connections` needs, and
//! `--health-check URL` as a container's HEALTHCHECK.

mod common;
use common::*;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;

use http::Method;

/// A bound `NOTIFY_SOCKET` that the test reads the daemon's notifications
/// from, one datagram each.
struct Notifications {
    socket: UnixDatagram,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).expect("bind notify socket");
        socket.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Notifications { socket }
    }

    /// The next notification, as its `KEY=value` lines.
    fn next(&self, d: &Daemon) -> Vec<String> {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string)
                .collect(),
            Err(e) => panic!("no notification: {e}\n{}", d.log()),
        }
    }
}

#[test]
fn notify_socket_hears_ready_then_reloading_and_ready_on_sighup_then_stopping() {
    let notify_dir = tempfile::tempdir().unwrap();
    let socket_path = notify_dir.path().join("notify.sock");
    let notes = Notifications::bind(&socket_path);
    let config = simple_config(&[dead_addr()], "");
    let mut d = Daemon::start_with(tempfile::tempdir().unwrap(), &config, |c| {
        c.env("NOTIFY_SOCKET", &socket_path);
    });

    let ready = notes.next(&d);
    assert!(ready.contains(&"READY=1".to_string()), "{ready:?}");

    // A good reload: RELOADING=1 with the monotonic clock, then READY=1.
    d.signal("HUP");
    let reloading = notes.next(&d);
    assert!(
        reloading.contains(&"RELOADING=1".to_string()),
        "{reloading:?}"
    );
    assert!(
        reloading.iter().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "{reloading:?}"
    );
    let again = notes.next(&d);
    assert!(again.contains(&"READY=1".to_string()), "{again:?}");
    d.wait_for_log("config reloaded");

    // A refused reload: still serving, so READY=1 again, with a status.
    d.write_config("this is not toml");
    d.signal("HUP");
    let reloading = notes.next(&d);
    assert!(
        reloading.contains(&"RELOADING=1".to_string()),
        "{reloading:?}"
    );
    let refused = notes.next(&d);
    assert!(refused.contains(&"READY=1".to_string()), "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("refused")),
        "{refused:?}"
    );

    d.signal("TERM");
    let stopping = notes.next(&d);
    assert!(stopping.contains(&"STOPPING=1".to_string()), "{stopping:?}");
    assert!(d.wait_exit().success());
}

/// A TLS listener whose certificate pair and access log are named relative
/// to the config file's directory.
fn relative_paths_config(origin: std::net::SocketAddr) -> String {
    format!(
        r#"
[[listener]]
name = "tls"
listen = "127.0.0.1:0"
[listener.tls]
certs = [ {{ cert = "certs/site.pem", key = "certs/site.key" }} ]

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "{origin}" }} ]

[access_log]
path = "logs/access.log"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_cert_and_access_log_paths_resolve_against_the_config_files_directory() {
    let origin = answering_with(200, "hello").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let pki = TestPki::new();
    pki.issue(&dir.path().join("certs"), "site", &["localhost"]);
    let config = relative_paths_config(origin.addr);
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(&config_path, &config).unwrap();
    // Neither working directory holds certs/ or logs/.
    let elsewhere = tempfile::tempdir().unwrap();

    let (code, out, err) = run_cli(
        &["--check", "--config", config_path.to_str().unwrap()],
        elsewhere.path(),
    );
    assert_eq!((code, out.trim()), (0, "config OK"), "{err}");
    let parent = dir.path().parent().unwrap();
    let relative = Path::new(dir.path().file_name().unwrap()).join("sluice.toml");
    let (code, out, err) = run_cli(&["--check", "--config", relative.to_str().unwrap()], parent);
    assert_eq!((code, out.trim()), (0, "config OK"), "{err}");

    let logs = dir.path().join("logs/access.log");
    let d = Daemon::start_with(dir, &config, |c| {
        c.current_dir(elsewhere.path());
    });
    let client = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let conn = tls_connect(d.addr("tls"), "localhost", client)
        .await
        .expect("TLS handshake with the certificate from certs/");
    let reply = tls_send(conn, request(Method::GET, "/", "localhost", empty())).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello");
    let lines = file_lines(&logs, 1);
    assert!(lines[0].contains("\"status\":200"), "{lines:?}");
    assert!(!elsewhere.path().join("logs").exists());
}

/// Starts sluice with `config` under a soft and hard `RLIMIT_NOFILE`.
fn start_with_nofile(config: &str, soft: u64, hard: u64) -> Daemon {
    Daemon::start_with(tempfile::tempdir().unwrap(), config, move |c| {
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            c.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    })
}

/// The daemon's soft and hard "Max open files".
fn nofile(d: &Daemon) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[test]
fn a_low_soft_open_file_limit_is_raised_to_what_max_connections_needs() {
    // 1000 connections × 2 + 64 idle upstream connections (one server, one
    // worker) + a reserve of 1024.
    let config = one_worker(&limits_config(dead_addr(), "max_connections = 1000"));
    let d = start_with_nofile(&config, 1024, 4096);
    assert_eq!(nofile(&d), (2000 + 64 + 1024, 4096), "{}", d.log());
    assert!(
        d.log().contains("raised the open-file limit"),
        "{}",
        d.log()
    );
}

#[test]
fn a_hard_open_file_limit_below_the_need_is_used_and_warned_about() {
    // The default max_connections (10,000) needs over 20,000.
    let config = one_worker(&simple_config(&[dead_addr()], ""));
    let d = start_with_nofile(&config, 1024, 2048);
    assert_eq!(nofile(&d), (2048, 2048), "{}", d.log());
    assert!(
        d.log()
            .contains("hard limit is below what max_connections needs"),
        "{}",
        d.log()
    );
}

#[test]
fn health_check_exits_0_on_a_2xx_from_the_admin_api_and_1_otherwise() {
    let config = simple_config(&[dead_addr()], "") + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let mut d = Daemon::start(&config);
    let admin = d.addr("admin");
    let anywhere = tempfile::tempdir().unwrap();
    let probe = |path: &str| {
        let url = format!("http://{admin}{path}");
        run_cli(&["--health-check", &url], anywhere.path())
    };

    for path in ["/healthz", "/readyz"] {
        let (code, out, err) = probe(path);
        assert_eq!(code, 0, "{path}: {err}");
        assert!(out.contains(" 200 "), "{path}: {out}");
    }
    let (code, _, err) = probe("/no-such-page");
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");

    d.signal("TERM");
    assert!(d.wait_exit().success());
    let (code, _, err) = probe("/healthz");
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");

    let (code, _, err) = run_cli(&["--health-check", "localhost:9090"], anywhere.path());
    assert_eq!(code, 1);
    assert!(err.contains("http://"), "{err}");
}
