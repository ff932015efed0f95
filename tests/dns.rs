//! Servers by name through the real daemon: `addr = "localhost:PORT"` is
//! resolved at start (every address a member), a name that does not
//! resolve is a config error, and a reload follows a name to a new port.
//! With `[resolver] nameservers` pointing at a DNS server run by the test,
//! SRV records put two members on 127.0.0.1, so members that appear in DNS
//! join, members that vanish drain (their in-flight request finishes), and
//! a DNS outage keeps the pool as it was.

mod common;
use common::*;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http::{Method, Response};
use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, Notify};

/// An origin on `localhost:PORT`: 127.0.0.1, and ::1 on the same port when
/// the machine has IPv6 loopback, since `localhost` may resolve to both.
async fn on_localhost() -> (u16, Vec<Origin>) {
    let v4 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = v4.local_addr().unwrap().port();
    let mut origins = vec![Origin::hello_on(v4)];
    if let Ok(v6) = TcpListener::bind(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port))).await {
        origins.push(Origin::hello_on(v6));
    }
    (port, origins)
}

/// One listener, one route to pool `app` with the server table `entry`,
/// re-resolved every 100 ms, then `extra`.
fn pool_config(entry: &str, extra: &str) -> String {
    entries_config(
        &[entry.to_string()],
        &format!("resolve_interval = \"100ms\"\n{extra}"),
    )
}

fn config(server: &str) -> String {
    pool_config(&format!("{{ addr = \"{server}\" }}"), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_is_resolved_at_start() {
    let (port, origins) = on_localhost().await;
    let d = Daemon::start(&config(&format!("localhost:{port}")));
    for _ in 0..4 {
        let r = get(d.addr("http"), "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), format!("origin {port}"));
    }
    assert_eq!(origins.iter().map(Origin::hits).sum::<usize>(), 4);
}

#[test]
fn a_name_that_does_not_resolve_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config("no-such-host.invalid:8080")).unwrap();
    let (code, _, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("pool.app.servers[0].addr"), "{err}");
    assert!(err.contains("cannot resolve"), "{err}");
    std::fs::write(&path, config("bad name:8080")).unwrap();
    let (code, _, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("pool.app.servers[0].addr"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_follows_a_name_to_another_port() {
    let (first, _a) = on_localhost().await;
    let (second, _b) = on_localhost().await;
    let d = Daemon::start(&config(&format!("localhost:{first}")));
    assert_eq!(
        get(d.addr("http"), "/").await.text(),
        format!("origin {first}")
    );
    d.write_config(&config(&format!("localhost:{second}")));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    for _ in 0..3 {
        assert_eq!(
            get(d.addr("http"), "/").await.text(),
            format!("origin {second}")
        );
    }
}

/// What the test DNS server answers; changed while the daemon runs.
#[derive(Default)]
struct Zone {
    a: HashMap<String, Ipv4Addr>,
    /// name -> (priority, port, target)
    srv: HashMap<String, Vec<(u16, u16, String)>>,
    /// Answer SERVFAIL to everything (an outage).
    failing: bool,
}

/// An authoritative DNS server on 127.0.0.1 (UDP), counting the queries it
/// answered so a test can wait for the daemon's next round of lookups.
struct Dns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    answered: Arc<AtomicUsize>,
}

impl Dns {
    async fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let answered = Arc::new(AtomicUsize::new(0));
        let (z, n) = (zone.clone(), answered.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let reply = answer(&z.lock().unwrap(), &query);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Dns {
            addr,
            zone,
            answered,
        }
    }

    fn edit(&self, f: impl FnOnce(&mut Zone)) {
        f(&mut self.zone.lock().unwrap());
    }

    /// Returns once `n` more queries than now have been answered.
    async fn queries(&self, n: usize) {
        let target = self.answered.load(Ordering::SeqCst) + n;
        while self.answered.load(Ordering::SeqCst) < target {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

fn answer(zone: &Zone, query: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_authoritative(true)
        .add_queries(query.queries().to_vec());
    let Some(q) = query.queries().first() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply;
    };
    if zone.failing {
        reply.set_response_code(ResponseCode::ServFail);
        return reply;
    }
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let record = |rdata| Record::from_rdata(q.name().clone(), 0, rdata);
    match (zone.a.get(&name), zone.srv.get(&name)) {
        (Some(ip), _) => {
            if q.query_type() == RecordType::A {
                reply.add_answer(record(RData::A(A(*ip))));
            }
        }
        (_, Some(targets)) => {
            if q.query_type() == RecordType::SRV {
                for (priority, port, target) in targets {
                    let target = Name::from_str(&format!("{target}.")).unwrap();
                    reply.add_answer(record(RData::SRV(SRV::new(*priority, 1, *port, target))));
                }
            }
        }
        (None, None) => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply
}

/// `a.app.test` at 127.0.0.1, and `_http._tcp.app.test` with `records`
/// (priority, port, target).
fn publish_srv(dns: &Dns, records: &[(u16, u16, &str)]) {
    dns.edit(|z| {
        z.a.insert("a.app.test".into(), Ipv4Addr::LOCALHOST);
        let records = records
            .iter()
            .map(|&(priority, port, target)| (priority, port, target.to_string()))
            .collect();
        z.srv.insert("_http._tcp.app.test".into(), records);
    });
}

/// A pool resolved through `dns` only, with an admin listener.
fn resolver_config(dns: &Dns, server: &str) -> String {
    let extra = format!(
        "[resolver]\nnameservers = [\"{}\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"",
        dns.addr
    );
    pool_config(server, &extra)
}

async fn members(admin: SocketAddr) -> Vec<Value> {
    let r = h1(
        admin,
        request(Method::GET, "/upstreams", "localhost", empty()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    v["pools"][0]["members"]
        .as_array()
        .expect("members")
        .clone()
}

fn state_of(members: &[Value], addr: SocketAddr) -> Option<String> {
    members
        .iter()
        .find(|m| m["addr"] == addr.to_string().as_str())
        .map(|m| m["state"].as_str().unwrap_or_default().to_string())
}

/// An origin that holds `GET /slow` until `release` is notified, telling
/// `held` when it has one; everything else is answered at once.
async fn holding_origin(held: mpsc::UnboundedSender<()>, release: Arc<Notify>) -> Origin {
    Origin::serve(move |req, addr| {
        let (held, release) = (held.clone(), release.clone());
        async move {
            if req.uri().path() == "/slow" {
                let _ = held.send(());
                release.notified().await;
            }
            Response::new(full(format!("origin {}", addr.port())))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_members_join_and_vanished_ones_drain_their_requests() {
    let (held_tx, mut held) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let one = Origin::hello().await;
    let two = holding_origin(held_tx, release.clone()).await;
    let three = Origin::hello().await;
    let dns = Dns::start().await;
    publish_srv(
        &dns,
        &[
            (10, one.addr.port(), "a.app.test"),
            (10, two.addr.port(), "a.app.test"),
            // A backup: not used while a priority-10 target resolves.
            (20, three.addr.port(), "a.app.test"),
        ],
    );
    let d = Daemon::start(&resolver_config(&dns, r#"{ srv = "_http._tcp.app.test" }"#));
    let shown = h1(
        d.addr("admin"),
        request(Method::GET, "/config", "localhost", empty()),
    )
    .await;
    assert!(
        shown.text().contains(r#"srv = "_http._tcp.app.test""#),
        "{}",
        shown.text()
    );
    assert!(
        shown
            .text()
            .contains(&format!(r#"nameservers = ["{}"]"#, dns.addr)),
        "{}",
        shown.text()
    );
    let m = members(d.addr("admin")).await;
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(state_of(&m, one.addr).as_deref(), Some("up"), "{m:?}");
    assert_eq!(state_of(&m, two.addr).as_deref(), Some("up"), "{m:?}");

    // Round robin over two members: within two requests, one is held by
    // member two.
    let proxy = d.addr("http");
    let in_flight = loop {
        let mut task = tokio::spawn(async move { get(proxy, "/slow").await });
        tokio::select! {
            _ = held.recv() => break task,
            r = &mut task => assert_eq!(r.unwrap().status, 200),
        }
    };

    // Member two vanishes from DNS: draining, out of rotation.
    dns.edit(|z| {
        z.srv.get_mut("_http._tcp.app.test").unwrap().remove(1);
    });
    d.log_count(&format!("member={} from=up to=draining", two.addr), 1)
        .await;
    let m = members(d.addr("admin")).await;
    assert_eq!(state_of(&m, two.addr).as_deref(), Some("draining"), "{m:?}");
    let before = two.hits();
    for _ in 0..6 {
        let r = get(proxy, "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("origin {}", one.addr.port()));
    }
    assert_eq!(
        two.hits(),
        before,
        "no new request reaches a draining member"
    );

    // Its in-flight request finishes, then it is gone.
    release.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("origin {}", two.addr.port()));
    d.log_count(
        &format!("upstream member removed pool=app member={}", two.addr),
        1,
    )
    .await;
    let m = members(d.addr("admin")).await;
    assert_eq!(state_of(&m, two.addr), None, "{m:?}");

    // A new priority-10 record joins the pool.
    let four = Origin::hello().await;
    dns.edit(|z| {
        z.srv.get_mut("_http._tcp.app.test").unwrap().push((
            10,
            four.addr.port(),
            "a.app.test".into(),
        ));
    });
    d.log_count(
        &format!("upstream member added pool=app member={}", four.addr),
        1,
    )
    .await;
    for _ in 0..4 {
        assert_eq!(get(proxy, "/").await.status, 200);
    }
    assert_eq!(four.hits(), 2, "round robin over the two members");
    assert_eq!(three.hits(), 0, "the backup priority is never used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_outage_keeps_the_members_and_a_backup_priority_fills_in() {
    let one = Origin::hello().await;
    let backup = Origin::hello().await;
    let dns = Dns::start().await;
    publish_srv(
        &dns,
        &[
            (10, one.addr.port(), "gone.app.test"),
            (20, backup.addr.port(), "a.app.test"),
        ],
    );
    let d = Daemon::start(&resolver_config(&dns, r#"{ srv = "_http._tcp.app.test" }"#));
    // The priority-10 target does not resolve: the backup is the member.
    let m = members(d.addr("admin")).await;
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(state_of(&m, backup.addr).as_deref(), Some("up"), "{m:?}");

    dns.edit(|z| z.failing = true);
    // Two more rounds of lookups, all failed.
    dns.queries(4).await;
    let m = members(d.addr("admin")).await;
    assert_eq!(state_of(&m, backup.addr).as_deref(), Some("up"), "{m:?}");
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.text(), format!("origin {}", backup.addr.port()));
    assert!(d
        .log()
        .contains("cannot resolve server; keeping its members"));

    // DNS is back and the primary target resolves: it replaces the backup.
    dns.edit(|z| {
        z.failing = false;
        z.a.insert("gone.app.test".into(), Ipv4Addr::LOCALHOST);
    });
    d.log_count(
        &format!("upstream member added pool=app member={}", one.addr),
        1,
    )
    .await;
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.text(), format!("origin {}", one.addr.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_asked_of_the_configured_nameserver() {
    let origin = Origin::hello().await;
    let dns = Dns::start().await;
    dns.edit(|z| {
        z.a.insert("app.test".into(), Ipv4Addr::LOCALHOST);
    });
    let server = format!(r#"{{ addr = "app.test:{}" }}"#, origin.addr.port());
    let d = Daemon::start(&resolver_config(&dns, &server));
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(origin.hits(), 1);

    // Names the nameserver does not know are config errors at --check,
    // for addr and srv alike.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    for (server, key) in [
        (r#"{ addr = "other.test:80" }"#, "pool.app.servers[0].addr"),
        (
            r#"{ srv = "_http._tcp.other.test" }"#,
            "pool.app.servers[0].srv",
        ),
    ] {
        std::fs::write(&path, resolver_config(&dns, server)).unwrap();
        let (code, _, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
        assert_ne!(code, 0, "{err}");
        assert!(err.contains(key), "{err}");
        assert!(err.contains("cannot resolve"), "{err}");
    }
}

#[test]
fn resolver_and_srv_mistakes_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let cases = [
        (
            r#"{ addr = "127.0.0.1:80", srv = "_http._tcp.app.test" }"#,
            "",
            "pool.app.servers[0].srv",
            "not both",
        ),
        (
            r#"{ weight = 2 }"#,
            "",
            "pool.app.servers[0].addr",
            "missing",
        ),
        (
            r#"{ srv = "_http._tcp.app.test:80" }"#,
            "",
            "pool.app.servers[0].srv",
            "not an SRV record name",
        ),
        (
            r#"{ addr = "127.0.0.1:80" }"#,
            "[resolver]\nnameservers = [\"dns.example\"]",
            "resolver.nameservers[0]",
            "not a DNS server address",
        ),
        (
            r#"{ addr = "127.0.0.1:80" }"#,
            "[resolver]\nretries = 3",
            "retries",
            "unknown key",
        ),
    ];
    for (server, extra, key, why) in cases {
        std::fs::write(&path, pool_config(server, extra)).unwrap();
        let (code, _, err) = run_cli(&["--check", "--config", path.to_str().unwrap()], dir.path());
        assert_ne!(code, 0, "{server} {extra}: {err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(err.contains(why), "{why}: {err}");
    }
}
