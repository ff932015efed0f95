//! Config keys whose effect is not covered by a feature's own test file:
//! `server.workers`, `pool.*.idle_timeout`, `pool.*.max_idle_per_server`,
//! `limits.max_connections`; and that every key the parser accepts is
//! documented in docs/configuration.md.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An origin that counts TCP connections and reports each one's close.
struct CountingOrigin {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
}

async fn counting_origin() -> CountingOrigin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                let _ = tx.send(());
            });
        }
    });
    CountingOrigin {
        addr,
        accepted,
        closed,
    }
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sets_the_runtime_thread_count() {
    let origin = Origin::hello().await;
    let one = Daemon::start(&format!(
        "[server]\nworkers = 1\n{}",
        simple_config(&[origin.addr], "")
    ));
    let six = Daemon::start(&format!(
        "[server]\nworkers = 6\n{}",
        simple_config(&[origin.addr], "")
    ));
    assert_eq!(get(one.addr("http"), "/").await.status, 200);
    assert_eq!(get(six.addr("http"), "/").await.status, 200);
    let (t1, t6) = (threads_of(one.pid()), threads_of(six.pid()));
    // Main thread plus workers (blocking-pool threads only appear on demand).
    assert!(t6 >= 7, "workers = 6 gave {t6} threads");
    assert!(
        t6 >= t1 + 5,
        "workers = 1 gave {t1} threads, workers = 6 gave {t6}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_then_closed_after_idle_timeout() {
    let mut origin = counting_origin().await;
    // Idle connections are pooled per worker thread: one worker makes the
    // count exact.
    let d = Daemon::start(&one_worker(&simple_config(
        &[origin.addr],
        "idle_timeout = \"200ms\"",
    )));
    for _ in 0..5 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
    // The idle pooled connection is closed by sluice: the origin sees EOF.
    tokio::time::timeout(PATIENCE, origin.closed.recv())
        .await
        .expect("idle upstream connection closed")
        .unwrap();
    assert_eq!(get(d.addr("http"), "/").await.status, 200);
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        2,
        "a new connection after idle close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_per_server_zero_disables_pooling() {
    let origin = counting_origin().await;
    let d = Daemon::start(&simple_config(&[origin.addr], "max_idle_per_server = 0"));
    for _ in 0..4 {
        assert_eq!(get(d.addr("http"), "/").await.status, 200);
    }
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_max_idle_per_server_keeps_its_connections() {
    // The origin answers four requests at a time, together: four upstream
    // connections are in use at once, against one kept idle.
    let together = Arc::new(tokio::sync::Barrier::new(4));
    let origin = Origin::serve(move |_req, _addr| {
        let together = together.clone();
        async move {
            together.wait().await;
            http::Response::new(full("ok"))
        }
    })
    .await;
    let d = Daemon::start(&one_worker(&simple_config(
        &[origin.addr],
        "max_idle_per_server = 1",
    )));
    let addr = d.addr("http");
    for _ in 0..3 {
        let burst: Vec<_> = (0..4).map(|_| tokio::spawn(get(addr, "/"))).collect();
        for answer in burst {
            assert_eq!(answer.await.unwrap().status, 200);
        }
    }
    assert_eq!(
        origin.connections(),
        4,
        "each burst reuses the connections of the one before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_clients_until_one_leaves() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&format!(
        "{}\n[limits]\nmax_connections = 1\n",
        simple_config(&[origin.addr], "")
    ));
    let addr = d.addr("http");
    // First client: a keep-alive connection that stays open.
    let mut first = h1_conn(addr).await;
    let r = first
        .send_request(request(http::Method::GET, "/", "localhost", empty()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Second client: connected by the kernel, but not served while the first
    // holds the only slot.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "second connection served while the first was open"
    );
    assert_eq!(origin.hits(), 1);

    drop(first);
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, second.read_to_end(&mut out))
        .await
        .expect("served after the first left")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(origin.hits(), 2);
}

// ---------------------------------------------------- docs/configuration.md --

/// The keys the config parser accepts: the fields of every struct deriving
/// `Deserialize` in `source`, as serde names them (`rename` honoured,
/// `alias`es added, `skip` and `flatten` fields left out), each with its
/// struct's name. Enums name values, not keys; `#[cfg(test)]` code is not
/// read.
fn parser_keys(source: &str) -> Vec<(String, String)> {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut keys = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[derive(") {
        rest = &rest[at + "#[derive(".len()..];
        let (derive, after) = rest.split_at(rest.find(")]").expect("closed derive"));
        let Some(item) = after.find("struct ") else {
            break;
        };
        // Struct-level attributes between the derive and the item.
        let header = &after[..item];
        if !derive.contains("Deserialize") || header.contains("enum ") {
            continue;
        }
        assert!(
            !header.contains("rename_all"),
            "a config struct uses rename_all; teach this test to apply it:\n{header}"
        );
        let after = &after[item + "struct ".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let open = after.find(['{', ';', '(']).expect("struct body");
        if !after[open..].starts_with('{') {
            continue;
        }
        // The body between its braces, `//` comments dropped.
        let mut body = String::new();
        let mut depth = 0usize;
        'lines: for line in after[open..].lines() {
            for c in line.split("//").next().unwrap_or_default().chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break 'lines,
                    '}' => depth -= 1,
                    _ => {}
                }
                if !(depth == 1 && c == '{') {
                    body.push(c);
                }
            }
            body.push('\n');
        }
        for field in split_top_level(&body) {
            for key in serde_names(&field) {
                keys.push((name.clone(), key));
            }
        }
    }
    keys
}

/// `text` split at commas outside brackets of any kind.
fn split_top_level(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in text.chars() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts.retain(|p| !p.trim().is_empty());
    parts
}

/// The names serde accepts for one field declaration: its attributes, then
/// `[pub] name: Type`.
fn serde_names(field: &str) -> Vec<String> {
    let mut serde = String::new();
    let mut decl = field.trim();
    while let Some(attr) = decl.strip_prefix("#[") {
        let mut depth = 1;
        let end = attr
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '[' => 1,
                    ']' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("closed attribute");
        if attr.starts_with("serde(") {
            serde.push_str(&attr[..end]);
            serde.push(' ');
        }
        decl = attr[end + 1..].trim_start();
    }
    let word = |w: &str| {
        serde
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|t| t == w)
    };
    if word("skip") || word("skip_deserializing") || word("flatten") {
        return Vec::new();
    }
    let quoted_after = |marker: &str| -> Vec<String> {
        serde
            .match_indices(marker)
            .filter_map(|(i, _)| serde[i + marker.len()..].split('"').next())
            .map(str::to_string)
            .collect()
    };
    if let Some(vis) = decl.strip_prefix("pub(") {
        decl = &vis[vis.find(')').expect("closed visibility") + 1..];
    } else if let Some(vis) = decl.strip_prefix("pub ") {
        decl = vis;
    }
    let ident = decl.split(':').next().unwrap_or_default().trim();
    let ident = ident.trim_start_matches("r#").to_string();
    let renamed = quoted_after("rename = \"")
        .into_iter()
        .chain(quoted_after("deserialize = \""))
        .next();
    let mut names = vec![renamed.unwrap_or(ident)];
    names.extend(quoted_after("alias = \""));
    names
}

/// Whether `docs` names `key` in backticks outside code blocks: as `key`,
/// as `key = ...`, or as a part of a table header such as
/// `[pool.NAME.health]` or `[[route]]`.
fn documented(docs: &str, key: &str) -> bool {
    let mut in_fence = false;
    for line in docs.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            let header = span.starts_with('[') && span.ends_with(']');
            if span == key
                || span.starts_with(&format!("{key} ="))
                || (header && span.trim_matches(['[', ']']).split('.').any(|s| s == key))
            {
                return true;
            }
        }
    }
    false
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_config_key_is_in_docs_configuration_md() {
    // The scanner itself, on each case it handles.
    let sample = r#"
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawSample {
            /// A doc comment with { braces }, and a comma.
            #[serde(default = "d_1s", deserialize_with = "de_duration")]
            pub plain: Duration,
            #[serde(rename = "renamed")]
            pub original: Option<BTreeMap<String, u32>>,
            #[serde(alias = "old_name")] pub(crate) new_name: bool,
            #[serde(skip)]
            pub hidden: u8,
            public_key: String,
        }
        #[derive(Debug, Deserialize)]
        pub enum NotKeys { A, B }
        #[derive(Debug, Clone)]
        pub struct NotParsed { pub other: u8 }
    "#;
    let found: Vec<String> = parser_keys(sample).into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        found,
        ["plain", "renamed", "new_name", "old_name", "public_key"]
    );
    assert!(documented("| `cache` | x |", "cache"));
    assert!(documented("see `[pool.NAME.health]`", "health"));
    assert!(!documented("```toml\ncache = true\n```\n", "cache"));
    assert!(!documented(
        "the cache_key_headers key",
        "cache_key_headers"
    ));

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/config"), &mut files);
    files.sort();
    let mut keys = Vec::new();
    for f in &files {
        keys.extend(parser_keys(&std::fs::read_to_string(f).unwrap()));
    }
    // A scan that finds nothing after the code changes shape must fail,
    // not pass.
    for known in [
        "workers",
        "listen",
        "cache_key_ignore_params",
        "h2_max_frame_size",
        "consecutive_failures",
        "purge_allow",
        "nameservers",
    ] {
        assert!(
            keys.iter().any(|(_, k)| k == known),
            "the scan of src/config/ no longer finds the key `{known}`; found {keys:?}"
        );
    }
    let docs = std::fs::read_to_string(root.join("docs/configuration.md"))
        .expect("docs/configuration.md exists");
    let missing: std::collections::BTreeSet<String> = keys
        .iter()
        .filter(|(_, k)| !documented(&docs, k))
        .map(|(s, k)| format!("`{k}` (a field of {s})"))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys the parser accepts that docs/configuration.md does not \
         name in backticks (add each to its section's table):\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}
