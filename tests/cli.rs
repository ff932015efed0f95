//! The command line: `--version`, `--check` on good and broken configs, the
//! default config path, and start-up failures.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const VALID: &str = r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "app"

[pool.app]
servers = [ { addr = "127.0.0.1:9001" } ]
"#;

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in config"));
    line_col(text, at)
}

/// 1-based line and column of the last occurrence of `needle` in `text`.
fn pos_last(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .rfind(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in config"));
    line_col(text, at)
}

fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Writes `text` to `dir/name` and runs `sluice --check --config <it>`.
fn check(dir: &Path, name: &str, text: &str) -> (PathBuf, i32, String, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    let (code, out, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir);
    (path, code, out, err)
}

/// Runs `--check` on a config that must be rejected, returning its path and
/// stderr after checking the exit code and that nothing claims success.
fn check_fails(dir: &Path, name: &str, text: &str) -> (PathBuf, String) {
    let (path, code, out, err) = check(dir, name, text);
    assert_eq!(code, 1, "exit code; stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("config OK"), "stdout:\n{out}");
    assert!(err.contains("config invalid"), "stderr:\n{err}");
    (path, err)
}

/// Asserts that `stderr` has a line `<file>:<line>:<col>: <key>: ...` that
/// contains `message`.
fn assert_error(stderr: &str, file: &Path, at: Option<(usize, usize)>, key: &str, message: &str) {
    let mut prefix = file.display().to_string();
    if let Some((line, col)) = at {
        prefix.push_str(&format!(":{line}:{col}"));
    }
    prefix.push_str(": ");
    if !key.is_empty() {
        prefix.push_str(key);
        prefix.push_str(": ");
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(message)),
        "expected a line starting {prefix:?} containing {message:?} in stderr:\n{stderr}"
    );
}

fn error_count(stderr: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("config invalid: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"));
    line["config invalid: ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad summary line {line:?}"))
}

/// A TLS listener config with one `{ cert, key }` pair.
fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        r#"
[[listener]]
name = "https"
listen = "127.0.0.1:0"
[listener.tls]
certs = [ {{ cert = '{}', key = '{}' }} ]

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "127.0.0.1:9001" }} ]
"#,
        cert.display(),
        key.display()
    )
}

// ------------------------------------------------------------ version --

#[test]
fn version_prints_name_and_version() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--version", "-V"] {
        let (code, out, err) = run_cli(&[flag], dir.path());
        assert_eq!(code, 0, "{flag}: {err}");
        assert_eq!(
            out.trim_end(),
            format!("sluice {}", env!("CARGO_PKG_VERSION"))
        );
        let version = out.trim_end().strip_prefix("sluice ").unwrap();
        let parts: Vec<&str> = version.split('.').collect();
        assert_eq!(parts.len(), 3, "{out:?}");
        assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "{out:?}");
    }
}

#[test]
fn help_lists_config_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run_cli(&["--help"], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("--config"), "{out}");
    assert!(out.contains("--check"), "{out}");
    assert!(
        out.contains("config/sluice.toml"),
        "default path not shown:\n{out}"
    );
}

// ---------------------------------------------------------- check: OK --

#[test]
fn check_accepts_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let (_, code, out, err) = check(dir.path(), "ok.toml", VALID);
    assert_eq!(code, 0, "stderr:\n{err}");
    assert_eq!(out.trim(), "config OK");
    assert!(!err.contains("invalid"), "{err}");
}

/// `--check`'s answer is its exit code: a script whose pipe reader went
/// away (`sluice --check | head -0`) still gets 0 or 1, not a panic's 101.
/// The shell makes a pipe with no reader from a FIFO: it opens it both
/// ways, then closes its reading end before sluice writes.
#[test]
fn check_exit_code_survives_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("ok.toml");
    std::fs::write(&good, VALID).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[listener]]\nname = 1\n").unwrap();
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    for (config, stream, want) in [(&good, "1", 0), (&bad, "2", 1)] {
        let script = format!(
            "exec 3<>\"$2\" 4>\"$2\" 3<&-; exec \"$0\" --check --config \"$1\" {stream}>&4 4>&-"
        );
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_sluice"))
            .arg(config)
            .arg(&fifo)
            .stdin(Stdio::null())
            .status()
            .expect("run sh");
        assert_eq!(
            status.code(),
            Some(want),
            "{} with fd {stream} on a pipe nobody reads",
            config.display()
        );
    }
}

#[test]
fn check_accepts_valid_tls_config() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.issue(dir.path(), "site", &["localhost"]);
    let (_, code, out, err) = check(dir.path(), "tls.toml", &tls_config(&cert, &key));
    assert_eq!(code, 0, "stderr:\n{err}");
    assert_eq!(out.trim(), "config OK");
}

#[test]
fn check_accepts_shipped_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [
        &["--check"][..],
        &["--check", "--config", "config/sluice.toml"],
        &["--check", "--config", "config/sluice.container.toml"],
    ] {
        let (code, out, err) = run_cli(args, root);
        assert_eq!(code, 0, "{args:?}: stderr:\n{err}");
        assert_eq!(out.trim(), "config OK", "{args:?}");
    }
}

#[test]
fn default_config_path_is_config_sluice_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/sluice.toml"), VALID).unwrap();
    let (code, out, err) = run_cli(&["--check"], dir.path());
    assert_eq!(code, 0, "stderr:\n{err}");
    assert_eq!(out.trim(), "config OK");

    // Without that file, the error names the default path.
    let empty = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(&["--check"], empty.path());
    assert_eq!(code, 1, "stdout:\n{out}");
    assert!(err.contains("config/sluice.toml"), "{err}");
}

#[test]
fn missing_config_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist.toml");
    for args in [
        vec!["--check", "--config", path.to_str().unwrap()],
        vec!["--config", path.to_str().unwrap()],
    ] {
        let (code, out, err) = run_cli(&args, dir.path());
        assert_eq!(code, 1, "{args:?}: stdout:\n{out}\nstderr:\n{err}");
        assert!(!out.contains("config OK"));
        assert_error(&err, &path, None, "", "cannot read file");
        assert!(err.contains("No such file"), "{err}");
    }
}

// ------------------------------------------------------ check: errors --

#[test]
fn check_reports_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace("servers = [", "polcy = \"weighted\"\nservers = [");
    let (path, err) = check_fails(dir.path(), "typo.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "polcy")),
        "pool.app.polcy",
        "unknown key \"polcy\"; did you mean \"policy\"?",
    );
    assert_eq!(error_count(&err), 1);
}

#[test]
fn check_reports_bad_server_addr() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace(
        "{ addr = \"127.0.0.1:9001\" }",
        "{ addr = \"127.0.0.1:9001\" }, { addr = \"nonsense\" }",
    );
    let (path, err) = check_fails(dir.path(), "addr.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"nonsense\"")),
        "pool.app.servers[1].addr",
        "\"nonsense\" is not an address such as \"127.0.0.1:9001\" or \"app.internal:8080\"",
    );
    assert_eq!(error_count(&err), 1);
}

#[test]
fn check_reports_bad_duration() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace(
        "servers = [",
        "connect_timeout = \"2 fortnights\"\nservers = [",
    );
    let (path, err) = check_fails(dir.path(), "duration.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"2 fortnights\"")),
        "pool.app.connect_timeout",
        "duration \"2 fortnights\"",
    );
    assert!(err.contains("ms, s, m or h"), "{err}");
}

#[test]
fn check_reports_bad_size() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{VALID}\n[limits]\nmax_body_bytes = \"10 parsecs\"\n");
    let (path, err) = check_fails(dir.path(), "size.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"10 parsecs\"")),
        "limits.max_body_bytes",
        "size \"10 parsecs\" has unknown unit \"parsecs\"",
    );
}

#[test]
fn check_reports_unknown_policy() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace("servers = [", "policy = \"fastest\"\nservers = [");
    let (path, err) = check_fails(dir.path(), "policy.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"fastest\"")),
        "pool.app.policy",
        "unknown policy \"fastest\"",
    );
    assert!(
        err.contains("round_robin, weighted, least_conn, ip_hash, hash or sticky_cookie"),
        "{err}"
    );
}

#[test]
fn check_reports_hashing_and_sticky_keys_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    // Keys of another policy, a hash key it cannot read, a factor below 1.
    let text = VALID.replace(
        "servers = [",
        "hash_key = \"uri\"\nservers = [",
    ) + "\n[pool.app.sticky]\ncookie = \"srv\"\n\n[pool.hashed]\npolicy = \"hash\"\nhash_key = \"path\"\nbalance_factor = 0.5\nservers = [ { addr = \"127.0.0.1:9002\" } ]\n";
    let (path, err) = check_fails(dir.path(), "hashing.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"uri\"")),
        "pool.app.hash_key",
        "has no effect unless policy = \"hash\"",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "[pool.app.sticky]")),
        "pool.app.sticky",
        "has no effect unless policy = \"sticky_cookie\"",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"path\"")),
        "pool.hashed.hash_key",
        "unknown hash key \"path\"",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "0.5")),
        "pool.hashed.balance_factor",
        "must be between 1.0",
    );
}

#[test]
fn check_reports_route_to_missing_pool() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace("pool = \"app\"", "pool = \"nope\"");
    let (path, err) = check_fails(dir.path(), "route.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"nope\"")),
        "route[0].pool",
        "no pool named \"nope\"",
    );
    assert_eq!(error_count(&err), 1);
}

#[test]
fn check_reports_missing_listener_and_route_sections() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[pool.app]\nservers = [ { addr = \"127.0.0.1:9001\" } ]\n";
    let (path, err) = check_fails(dir.path(), "sections.toml", text);
    assert_error(&err, &path, None, "", "no [[listener]] is configured");
    assert_error(&err, &path, None, "", "no [[route]] is configured");
    assert_eq!(error_count(&err), 2);

    // Only the route missing.
    let text = "[[listener]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\n";
    let (path, err) = check_fails(dir.path(), "noroute.toml", text);
    assert_error(&err, &path, None, "", "no [[route]] is configured");
    assert!(!err.contains("[[listener]] is configured"), "{err}");
    assert_eq!(error_count(&err), 1);
}

#[test]
fn check_reports_toml_syntax_error_position() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace("name = \"main\"", "name = \"main");
    let (path, err) = check_fails(dir.path(), "syntax.toml", &text);
    let (line, _) = pos(&text, "name = \"main");
    let prefix = format!("{}:{line}:", path.display());
    assert!(
        err.lines().any(|l| l.starts_with(&prefix)),
        "expected an error at line {line} ({prefix}) in:\n{err}"
    );
    assert_eq!(error_count(&err), 1);

    // A missing value: the column points past `listen = `.
    let text = VALID.replace("listen = \"127.0.0.1:0\"", "listen = ");
    let (path, err) = check_fails(dir.path(), "syntax2.toml", &text);
    let (line, col) = pos(&text, "listen = ");
    assert_error(&err, &path, Some((line, col + "listen = ".len())), "", "");
}

#[test]
fn check_reports_duplicate_listener_names() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace(
        "[[route]]",
        "[[listener]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]",
    );
    let (path, err) = check_fails(dir.path(), "dup.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos_last(&text, "\"http\"")),
        "listener[1].name",
        "duplicate listener name \"http\"",
    );
    assert_eq!(error_count(&err), 1);
}

/// The admin API binds beside the listeners: an address a listener holds
/// (exactly, or under a wildcard) would fail at start, so `--check` fails.
#[test]
fn check_refuses_an_admin_listen_a_listener_holds() {
    let dir = tempfile::tempdir().unwrap();
    let with_admin = |listener: &str, admin: &str| {
        VALID.replace("127.0.0.1:0", listener) + &format!("\n[admin]\nlisten = \"{admin}\"\n")
    };
    for (i, (listener, admin)) in [
        ("127.0.0.1:47001", "127.0.0.1:47001"),
        ("127.0.0.1:47001", "0.0.0.0:47001"),
        ("[::]:47001", "127.0.0.1:47001"),
    ]
    .into_iter()
    .enumerate()
    {
        let text = with_admin(listener, admin);
        let (path, err) = check_fails(dir.path(), &format!("admin{i}.toml"), &text);
        assert_error(
            &err,
            &path,
            Some(pos_last(&text, &format!("\"{admin}\""))),
            "admin.listen",
            "is used by listener \"http\"",
        );
        assert_eq!(error_count(&err), 1);
    }
    // Another port, or another address on the same port, starts.
    for (listener, admin) in [
        ("127.0.0.1:47001", "127.0.0.1:47002"),
        ("127.0.0.1:47001", "127.0.0.2:47001"),
    ] {
        let (_, code, out, err) = check(dir.path(), "admin_ok.toml", &with_admin(listener, admin));
        assert_eq!((code, out.trim()), (0, "config OK"), "{err}");
    }
}

/// An access log in a directory that does not exist cannot be opened at
/// start, so `--check` fails; `--check` creates no file where it can be.
#[test]
fn check_refuses_an_access_log_in_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("access.log");
    let text = format!("{VALID}\n[access_log]\npath = '{}'\n", missing.display());
    let (path, err) = check_fails(dir.path(), "log.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "'")),
        "access_log.path",
        "the access log cannot be opened",
    );
    assert_eq!(error_count(&err), 1);

    let fine = dir.path().join("access.log");
    let text = format!("{VALID}\n[access_log]\npath = '{}'\n", fine.display());
    let (_, code, out, err) = check(dir.path(), "log_ok.toml", &text);
    assert_eq!((code, out.trim()), (0, "config OK"), "{err}");
    assert!(!fine.exists(), "--check created the log file");
}

/// Numbers TOML cannot hold (an integer beyond 64 bits, a float beyond
/// f64) are reported with their file, position and key, every one of them.
#[test]
fn check_names_the_key_of_a_number_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace(
        "servers = [ { addr = \"127.0.0.1:9001\" } ]",
        "retry_budget = 1e309\nservers = [ { addr = \"127.0.0.1:9001\", weight = 99999999999999999999 } ]",
    ) + "\n[limits]\nmax_body_bytes = 18446744073709551616\n";
    let (path, err) = check_fails(dir.path(), "numbers.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "1e309")),
        "pool.app.retry_budget",
        "not a finite float",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "99999999999999999999")),
        "pool.app.servers[0].weight",
        "integer out of range",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "18446744073709551616")),
        "limits.max_body_bytes",
        "integer out of range",
    );
    assert_eq!(error_count(&err), 3);
}

#[test]
fn check_reports_missing_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (_, key) = pki.issue(dir.path(), "site", &["localhost"]);
    let missing = dir.path().join("missing.pem");
    let text = tls_config(&missing, &key);
    let (path, err) = check_fails(dir.path(), "cert.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, &format!("'{}'", missing.display()))),
        "listener[0].tls.certs[0].cert",
        &missing.display().to_string(),
    );
    assert_eq!(error_count(&err), 1);
}

#[test]
fn check_reports_key_file_that_is_not_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, _) = pki.issue(dir.path(), "site", &["localhost"]);
    // The certificate file itself in place of the key.
    let text = tls_config(&cert, &cert);
    let (path, err) = check_fails(dir.path(), "notkey.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos_last(&text, &format!("'{}'", cert.display()))),
        "listener[0].tls.certs[0].key",
        &cert.display().to_string(),
    );
    assert!(!err.contains("certs[0].cert"), "the cert is fine:\n{err}");
    assert_eq!(error_count(&err), 1);
}

#[test]
fn check_reports_key_not_matching_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, _) = pki.issue(dir.path(), "one", &["localhost"]);
    let (_, other_key) = pki.issue(dir.path(), "two", &["localhost"]);
    let text = tls_config(&cert, &other_key);
    let (path, err) = check_fails(dir.path(), "mismatch.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, &format!("'{}'", other_key.display()))),
        "listener[0].tls.certs[0].key",
        "does not match certificate",
    );
    assert_eq!(error_count(&err), 1);
}

#[test]
fn check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.pem");
    let text = format!(
        r#"
[[listener]]
name = "web"
listen = "localhost:80"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
[listener.tls]
certs = [ {{ cert = '{m}', key = '{m}' }} ]

[[route]]
pool = "nope"

[pool.app]
policy = "fastest"
servers = [ {{ addr = "127.0.0.1:9001" }}, {{ addr = "bogus" }} ]
"#,
        m = missing.display()
    );
    let (path, err) = check_fails(dir.path(), "many.toml", &text);
    let cases = [
        (
            pos(&text, "\"localhost:80\""),
            "listener[0].listen",
            "is not an IP:port",
        ),
        (
            pos_last(&text, "\"web\""),
            "listener[1].name",
            "duplicate listener name",
        ),
        (
            pos(&text, &format!("'{}'", missing.display())),
            "listener[1].tls.certs[0].cert",
            "cannot read certificate file",
        ),
        (
            pos(&text, "\"nope\""),
            "route[0].pool",
            "no pool named \"nope\"",
        ),
        (
            pos(&text, "\"fastest\""),
            "pool.app.policy",
            "unknown policy",
        ),
        (
            pos(&text, "\"bogus\""),
            "pool.app.servers[1].addr",
            "\"bogus\"",
        ),
    ];
    for (at, key, message) in cases {
        assert_error(&err, &path, Some(at), key, message);
    }
    assert_eq!(error_count(&err), cases.len(), "{err}");
}

/// Errors found while deserialising (unknown keys, bad durations) do not
/// hide the semantic errors in the same file.
#[test]
fn check_lists_unknown_key_together_with_other_problems() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace("pool = \"app\"", "pool = \"nope\"").replace(
        "servers = [",
        "polcy = \"x\"\nconnect_timeout = \"2 fortnights\"\nservers = [",
    );
    let (path, err) = check_fails(dir.path(), "mixed.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "polcy")),
        "pool.app.polcy",
        "unknown key",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"2 fortnights\"")),
        "pool.app.connect_timeout",
        "fortnights",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"nope\"")),
        "route[0].pool",
        "no pool named",
    );
    assert_eq!(error_count(&err), 3, "{err}");
}

// ------------------------------------------------------------ start-up --

/// Runs the daemon with `config` and waits (up to [`PATIENCE`]) for it to
/// exit; a daemon that keeps running fails the test.
fn run_daemon_until_exit(dir: &Path, config: &str) -> (i32, String) {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.expect("wait for sluice"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("sluice kept running instead of failing to start");
        }
    };
    let status = out.status;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn address_in_use_fails_naming_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let config = format!(
        r#"
[[listener]]
name = "first"
listen = "127.0.0.1:0"

[[listener]]
name = "second"
listen = "{addr}"

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "127.0.0.1:9001" }} ]
"#
    );
    let (code, err) = run_daemon_until_exit(dir.path(), &config);
    assert_ne!(code, 0, "stderr:\n{err}");
    assert!(err.contains("listener \"second\""), "{err}");
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(!err.contains("listener \"first\""), "{err}");
    assert!(!err.contains(" ready "), "{err}");
    drop(taken);
}

#[test]
fn check_reports_bad_cache_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace(
        "pool = \"app\"",
        "pool = \"app\"\ncache_key_headers = [\"x-tenant\"]",
    ) + "\n[cache]\nmax_size = \"1MiB\"\nmax_object_size = \"2MiB\"\nlock_timeout = \"0s\"\npurge_allow = [\"10.0.0.0/40\"]\n";
    let (path, err) = check_fails(dir.path(), "cache.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "[\"x-tenant\"]")),
        "route[0].cache_key_headers",
        "has no effect without cache = true",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"2MiB\"")),
        "cache.max_object_size",
        "more than max_size",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"0s\"")),
        "cache.lock_timeout",
        "must be more than 0s",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"10.0.0.0/40\"")),
        "cache.purge_allow[0]",
        "prefix length",
    );
    assert_eq!(error_count(&err), 4, "{err}");

    let bad_header = VALID.replace(
        "pool = \"app\"",
        "pool = \"app\"\ncache = true\ncache_key_headers = [\"bad header\"]",
    );
    let (path, err) = check_fails(dir.path(), "header.toml", &bad_header);
    assert_error(
        &err,
        &path,
        Some(pos(&bad_header, "\"bad header\"")),
        "route[0].cache_key_headers[0]",
        "not a valid header name",
    );

    let targeted = format!(
        "{VALID}\n[cache]\ntargeted_fields = [\"bad field\", \"Cache-Control\", \"X-CC\", \"x-cc\"]\n"
    );
    let (path, err) = check_fails(dir.path(), "targeted.toml", &targeted);
    assert_error(
        &err,
        &path,
        Some(pos(&targeted, "\"bad field\"")),
        "cache.targeted_fields[0]",
        "not a valid header name",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&targeted, "\"Cache-Control\"")),
        "cache.targeted_fields[1]",
        "Cache-Control is what targeted fields take precedence over",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&targeted, "\"x-cc\"")),
        "cache.targeted_fields[3]",
        "listed twice",
    );
    assert_eq!(error_count(&err), 3, "{err}");
}

#[test]
fn check_reports_bad_compression_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{VALID}\n[compression]\nalgorithms = [\"br\", \"lzma\", \"br\"]\ntypes = [\"text\"]\nlevel = \"max\"\nmin_size = \"1 furlong\"\n"
    );
    let (path, err) = check_fails(dir.path(), "compression.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"lzma\"")),
        "compression.algorithms[1]",
        "unknown algorithm \"lzma\"; use br, zstd or gzip",
    );
    assert_error(
        &err,
        &path,
        Some(pos_last(&text, "\"br\"")),
        "compression.algorithms[2]",
        "listed twice",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"text\"")),
        "compression.types[0]",
        "not a media type",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"max\"")),
        "compression.level",
        "use fast, default or best",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"1 furlong\"")),
        "compression.min_size",
        "unknown unit",
    );
    assert_eq!(error_count(&err), 5, "{err}");
}

/// Mistakes are told in the words of the file: what to write instead, and
/// the key or value most likely meant.
#[test]
fn check_speaks_plainly_and_suggests_what_was_meant() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID
        .replace(
            "pool = \"app\"",
            "pool = \"app\"\nhosts = \"example.com\"\ncache = \"yes\"",
        )
        .replace(
            "servers = [",
            "polcy = \"least_conn\"\nretries = -1\nservers = [",
        )
        + "\n[pool.spare]\npolicy = \"leastconn\"\nservers = [ { addr = \"127.0.0.1:9002\" } ]\n"
        + "\n[[route]]\npath_prefix = \"/spare/\"\npool = \"spare\"\n";
    let (path, err) = check_fails(dir.path(), "plain.toml", &text);
    let cases = [
        (
            "\"example.com\"",
            "route[0].hosts",
            "expected a list in brackets, found the string \"example.com\"; write [\"example.com\"]",
        ),
        (
            "\"yes\"",
            "route[0].cache",
            "expected true or false, found the string \"yes\"; write true",
        ),
        ("polcy", "pool.app.polcy", "unknown key \"polcy\"; did you mean \"policy\"?"),
        ("-1", "pool.app.retries", "expected a whole number, 0 or more, found the number -1"),
        (
            "\"leastconn\"",
            "pool.spare.policy",
            "unknown policy \"leastconn\"; did you mean \"least_conn\"?",
        ),
    ];
    for (at, key, message) in cases {
        assert_error(&err, &path, Some(pos(&text, at)), key, message);
    }
    assert!(!err.contains("sequence") && !err.contains("u32"), "{err}");
}

/// Warnings do not fail `--check`: a route an earlier one always answers
/// first, and a pool no route uses.
#[test]
fn check_warns_of_a_shadowed_route_and_an_unused_pool() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{VALID}\n[[route]]\nname = \"api\"\nhosts = [\"api.example.com\"]\npath_prefix = \"/v1/\"\npool = \"app\"\n\n[pool.spare]\nservers = [ {{ addr = \"127.0.0.1:9002\" }} ]\n"
    );
    let (path, code, out, err) = check(dir.path(), "warn.toml", &text);
    assert_eq!((code, out.trim()), (0, "config OK, 2 warning(s)"), "{err}");
    let line = |at: &str| {
        let (l, c) = pos(&text, at);
        format!("{}:{l}:{c}: warning: ", path.display())
    };
    assert!(
        err.lines()
            .any(|l| l.starts_with(&line("[[route]]\nname = \"api\""))
                && l.contains("route \"api\" is never used")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with(&line("[pool.spare]"))
                && l.contains("no route uses pool \"spare\"")),
        "{err}"
    );
    // Narrower first: no warning.
    let text = text
        .replace(
            "path_prefix = \"/v1/\"",
            "path_prefix = \"/v1/\"\n# narrower",
        )
        .replacen("[[route]]", "[[route]]\nhosts = [\"www.example.com\"]", 1);
    let (_, code, out, err) = check(dir.path(), "fine.toml", &text);
    assert_eq!((code, out.trim()), (0, "config OK, 1 warning(s)"), "{err}");
    assert!(!err.contains("never used"), "{err}");
}

#[test]
fn check_reports_bad_cache_l2_values() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{VALID}\n[cache.l2]\nkind = \"floppy\"\n");
    let (path, err) = check_fails(dir.path(), "l2-kind.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"floppy\"")),
        "cache.l2.kind",
        "\"floppy\" is not a cache tier; use \"disk\"",
    );

    let text = format!(
        "{VALID}\n[cache.l2]\nkind = \"disk\"\nmax_size = \"1MiB\"\nmax_object_size = \"2MiB\"\nstore_queue = 0\n"
    );
    let (path, err) = check_fails(dir.path(), "l2-disk.toml", &text);
    let named = |key: &str, message: &str| {
        err.lines().any(|l| {
            l.starts_with(path.to_str().unwrap())
                && l.contains(&format!("{key}: "))
                && l.contains(message)
        })
    };
    assert!(
        named("cache.l2.path", "is required for kind = \"disk\""),
        "{err}"
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"2MiB\"")),
        "cache.l2.max_object_size",
        "2097152 bytes is more than max_size (1048576 bytes)",
    );
    assert_error(
        &err,
        &path,
        Some(pos(&text, "0\n")),
        "cache.l2.store_queue",
        "must be at least 1",
    );

    // A path sluice cannot make a directory of.
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let text = format!("{VALID}\n[cache.l2]\nkind = \"disk\"\npath = \"a-file/cache\"\n");
    let (path, err) = check_fails(dir.path(), "l2-path.toml", &text);
    assert_error(
        &err,
        &path,
        Some(pos(&text, "\"a-file/cache\"")),
        "cache.l2.path",
        "cannot use",
    );
}
