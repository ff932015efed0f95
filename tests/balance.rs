//! Load balancing through the real daemon: every test counts what real
//! origins on 127.0.0.1 receive, and which origin answered each request
//! (`x-origin`, set by the origin itself).

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::{Method, Response};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;

/// A config with one listener, one route and pool `app` with `policy` over
/// `servers` (address, weight); `top` is TOML placed before everything else
/// (a `[server]` table, say).
fn pool_config(policy: &str, servers: &[(SocketAddr, u32)], top: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        r#"{top}

[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
name = "main"
pool = "app"

[pool.app]
policy = "{policy}"
servers = [ {} ]
"#,
        list.join(", ")
    )
}

/// `n` origins answering hello.
async fn hellos(n: usize) -> Vec<Origin> {
    let mut owned = Vec::with_capacity(n);
    for _ in 0..n {
        owned.push(Origin::hello().await);
    }
    owned
}

fn unweighted(origins: &[&Origin]) -> Vec<(SocketAddr, u32)> {
    origins.iter().map(|o| (o.addr, 1)).collect()
}

/// One keep-alive HTTP/1.1 client connection, used for sequential requests.
struct Conn(hyper::client::conn::http1::SendRequest<TestBody>);

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn(h1_conn(addr).await)
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.0.ready().await.expect("client connection usable");
        let req = request(Method::GET, path, "localhost", empty());
        let resp = tokio::time::timeout(PATIENCE, self.0.send_request(req))
            .await
            .expect("response in time")
            .expect("response");
        collect(resp).await
    }
}

/// `GET /` over a fresh connection whose source address is `ip`.
async fn get_from(ip: Ipv4Addr, addr: SocketAddr) -> Reply {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip.into(), 0))
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let stream = socket.connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let req = request(Method::GET, "/", "localhost", empty());
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    collect(resp).await
}

/// Index in `origins` of the origin that answered `r` (which must be a 200).
fn which(origins: &[&Origin], r: &Reply) -> usize {
    assert_eq!(r.status, 200, "unexpected reply: {r:?}");
    let o = r.header("x-origin").expect("x-origin header");
    origins
        .iter()
        .position(|x| x.addr.to_string() == o)
        .unwrap_or_else(|| panic!("reply from unknown origin {o}"))
}

/// Asserts that `seq` repeats with period `n` and that each period visits
/// every one of the `n` members once.
fn assert_cycles(seq: &[usize], n: usize) {
    let first: BTreeSet<usize> = seq[..n].iter().copied().collect();
    assert_eq!(
        first.len(),
        n,
        "first {n} picks are not all different: {seq:?}"
    );
    for i in n..seq.len() {
        assert_eq!(seq[i], seq[i - n], "pick {i} breaks the cycle: {seq:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_sequential_requests_exactly_evenly() {
    let (a, b, c) = (
        Origin::hello().await,
        Origin::hello().await,
        Origin::hello().await,
    );
    let origins = [&a, &b, &c];
    let d = Daemon::start(&pool_config("round_robin", &unweighted(&origins), ""));
    let mut conn = Conn::open(d.addr("http")).await;
    let mut seq = Vec::new();
    for _ in 0..300 {
        seq.push(which(&origins, &conn.get("/").await));
    }
    assert_eq!([a.hits(), b.hits(), c.hits()], [100, 100, 100]);
    assert_cycles(&seq, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_smooth_weighted_round_robin() {
    let (a, b, c) = (
        Origin::hello().await,
        Origin::hello().await,
        Origin::hello().await,
    );
    let origins = [&a, &b, &c];
    let servers = [(a.addr, 5), (b.addr, 1), (c.addr, 1)];
    let d = Daemon::start(&pool_config("weighted", &servers, ""));
    let mut conn = Conn::open(d.addr("http")).await;

    let mut first = Vec::new();
    for _ in 0..7 {
        first.push(which(&origins, &conn.get("/").await));
    }
    // nginx's smooth weighted round-robin for 5,1,1: a,a,b,a,c,a,a.
    assert_eq!(first, [0, 0, 1, 0, 2, 0, 0]);

    let mut counts = [0usize; 3];
    for _ in 0..700 {
        counts[which(&origins, &conn.get("/").await)] += 1;
    }
    assert_eq!(counts, [500, 100, 100]);
    assert_eq!([a.hits(), b.hits(), c.hits()], [505, 101, 101]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_counts_are_exact_across_workers_and_concurrent_clients() {
    let (a, b, c) = (
        Origin::hello().await,
        Origin::hello().await,
        Origin::hello().await,
    );
    let servers = [(a.addr, 5), (b.addr, 1), (c.addr, 1)];
    let d = Daemon::start(&pool_config("weighted", &servers, "[server]\nworkers = 2"));
    let addr = d.addr("http");

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..7 {
        clients.spawn(async move {
            let mut conn = Conn::open(addr).await;
            for _ in 0..100 {
                let r = conn.get("/").await;
                assert_eq!(r.status, 200, "{r:?}");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    assert_eq!([a.hits(), b.hits(), c.hits()], [500, 100, 100]);
}

/// The first `/hold` request an origin of the pair receives reports the
/// origin's address and waits for the test to release it.
struct Hold {
    entered: Option<oneshot::Sender<SocketAddr>>,
    release: Option<oneshot::Receiver<()>>,
}

async fn holding_origin(hold: Arc<Mutex<Hold>>) -> Origin {
    Origin::serve(move |req, addr| {
        let hold = hold.clone();
        async move {
            let _ = req.into_body().collect().await;
            let held = {
                let mut h = hold.lock().unwrap();
                (h.entered.take(), h.release.take())
            };
            if let (Some(entered), Some(release)) = held {
                let _ = entered.send(addr);
                let _ = release.await;
            }
            Response::builder()
                .header("x-origin", addr.to_string())
                .body(full("ok"))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_member_and_alternates_when_idle() {
    let (entered_tx, entered_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let hold = Arc::new(Mutex::new(Hold {
        entered: Some(entered_tx),
        release: Some(release_rx),
    }));
    let a = holding_origin(hold.clone()).await;
    let b = holding_origin(hold).await;
    let origins = [&a, &b];
    let d = Daemon::start(&pool_config("least_conn", &unweighted(&origins), ""));
    let addr = d.addr("http");

    let held = tokio::spawn(async move { get(addr, "/hold").await });
    let busy_addr = tokio::time::timeout(PATIENCE, entered_rx)
        .await
        .expect("held request reached an origin in time")
        .expect("entered");
    let busy = origins.iter().position(|o| o.addr == busy_addr).unwrap();
    let idle = 1 - busy;

    // While one member holds a request, every new one goes to the other.
    let mut conn = Conn::open(addr).await;
    for i in 0..10 {
        let r = conn.get("/").await;
        assert_eq!(
            which(&origins, &r),
            idle,
            "request {i} went to the busy member"
        );
    }
    assert_eq!(origins[busy].hits(), 1);
    assert_eq!(origins[idle].hits(), 10);

    release_tx.send(()).expect("release");
    let r = held.await.expect("held request task");
    assert_eq!(which(&origins, &r), busy);

    // Both idle: equal loads alternate.
    let mut seq = Vec::new();
    for _ in 0..8 {
        seq.push(which(&origins, &conn.get("/").await));
    }
    for w in seq.windows(2) {
        assert_ne!(w[0], w[1], "idle members did not alternate: {seq:?}");
    }
    assert_eq!(origins[busy].hits(), 5);
    assert_eq!(origins[idle].hits(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_sticks_per_client_ip_and_moves_only_the_removed_members_clients() {
    let owned = hellos(4).await;
    let origins: Vec<&Origin> = owned.iter().collect();
    let d = Daemon::start(&pool_config("ip_hash", &unweighted(&origins), ""));
    let addr = d.addr("http");
    let ips: Vec<Ipv4Addr> = (2..=33).map(|k| Ipv4Addr::new(127, 0, 0, k)).collect();

    // Each IP sticks to one member over several connections.
    let mut home: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for &ip in &ips {
        let first = which(&origins, &get_from(ip, addr).await);
        for _ in 0..3 {
            let again = which(&origins, &get_from(ip, addr).await);
            assert_eq!(
                again, first,
                "client {ip} moved from member {first} to {again}"
            );
        }
        home.insert(ip, first);
    }
    // The daemon saw the addresses the clients bound to.
    let seen_ips: BTreeSet<String> = origins
        .iter()
        .flat_map(|o| o.seen())
        .filter_map(|s| {
            s.headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .collect();
    let want: BTreeSet<String> = ips.iter().map(|ip| ip.to_string()).collect();
    assert_eq!(seen_ips, want);

    // Several IPs spread over the members.
    let mut per_member: HashMap<usize, usize> = HashMap::new();
    for &m in home.values() {
        *per_member.entry(m).or_default() += 1;
    }
    assert!(
        per_member.len() >= 3,
        "32 client IPs landed on only {per_member:?}"
    );

    // Remove the member with the most clients; only its clients move.
    let removed = *per_member.iter().max_by_key(|(_, n)| **n).unwrap().0;
    let remaining: Vec<&Origin> = origins
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != removed)
        .map(|(_, o)| *o)
        .collect();
    d.write_config(&pool_config("ip_hash", &unweighted(&remaining), ""));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;

    let mut moved = 0;
    for &ip in &ips {
        let now = which(&origins, &get_from(ip, addr).await);
        let again = which(&origins, &get_from(ip, addr).await);
        assert_eq!(now, again, "client {ip} is not sticky after the reload");
        if home[&ip] == removed {
            assert_ne!(now, removed, "client {ip} still reaches the removed member");
            moved += 1;
        } else {
            assert_eq!(
                now, home[&ip],
                "client {ip} moved although its member stayed"
            );
        }
    }
    assert_eq!(moved, per_member[&removed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_on_one_connection_are_balanced() {
    let (a, b, c) = (
        Origin::hello().await,
        Origin::hello().await,
        Origin::hello().await,
    );
    let origins = [&a, &b, &c];
    let d = Daemon::start(&pool_config("round_robin", &unweighted(&origins), ""));
    let mut h2 = h2c_conn(d.addr("http")).await;

    let mut seq = Vec::new();
    for _ in 0..9 {
        let r = h2_send(
            &mut h2,
            h2_request(Method::GET, "http://localhost/", empty()),
        )
        .await;
        assert_eq!(r.version, http::Version::HTTP_2);
        seq.push(which(&origins, &r));
    }
    assert_cycles(&seq, 3);
    assert_eq!([a.hits(), b.hits(), c.hits()], [3, 3, 3]);

    // Concurrent streams on the same connection are balanced too.
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let mut send = h2.clone();
        streams.spawn(async move {
            let r = h2_send(
                &mut send,
                h2_request(Method::GET, "http://localhost/", empty()),
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
        });
    }
    while let Some(done) = streams.join_next().await {
        done.expect("stream task");
    }
    assert_eq!([a.hits(), b.hits(), c.hits()], [13, 13, 13]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_uri_keeps_each_uri_on_one_member_and_moves_only_a_removed_members_uris() {
    let owned = hellos(3).await;
    let origins: Vec<&Origin> = owned.iter().collect();
    let config = |origins: &[&Origin]| {
        pool_config("hash", &unweighted(origins), "").replace(
            "policy = \"hash\"",
            "policy = \"hash\"\nhash_key = \"uri\"\nbalance_factor = 1.25",
        )
    };
    let d = Daemon::start(&config(&origins));
    let addr = d.addr("http");
    let uris: Vec<String> = (0..30).map(|i| format!("/item/{i}?v=2")).collect();
    let mut conn = Conn::open(addr).await;
    let mut home: BTreeMap<String, usize> = BTreeMap::new();
    for uri in &uris {
        let first = which(&origins, &conn.get(uri).await);
        for _ in 0..2 {
            assert_eq!(which(&origins, &conn.get(uri).await), first, "{uri} moved");
        }
        home.insert(uri.clone(), first);
    }
    let mut per_member: HashMap<usize, usize> = HashMap::new();
    for &m in home.values() {
        *per_member.entry(m).or_default() += 1;
    }
    assert_eq!(per_member.len(), 3, "30 URIs on only {per_member:?}");

    // One member goes: only its URIs move.
    let removed = *per_member.iter().max_by_key(|(_, n)| **n).unwrap().0;
    let remaining: Vec<&Origin> = origins
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != removed)
        .map(|(_, o)| *o)
        .collect();
    d.write_config(&config(&remaining));
    d.signal("HUP");
    d.log_count("config reloaded", 1).await;
    let mut conn = Conn::open(addr).await;
    let mut moved = 0;
    for uri in &uris {
        let now = which(&origins, &conn.get(uri).await);
        if home[uri] == removed {
            assert_ne!(now, removed);
            moved += 1;
        } else {
            assert_eq!(now, home[uri], "{uri} moved although its member stayed");
        }
    }
    assert_eq!(moved, per_member[&removed]);
}

/// `hash_key = "header:X-Request-Id"` hashes the id the member is sent:
/// the one sluice makes for a request without one (so such requests
/// spread), and the client's own when it sent a well-formed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_by_a_header_hashes_the_value_the_member_is_sent() {
    let owned = hellos(3).await;
    let origins: Vec<&Origin> = owned.iter().collect();
    let d = Daemon::start(&pool_config("hash", &unweighted(&origins), "").replace(
        "policy = \"hash\"",
        "policy = \"hash\"\nhash_key = \"header:X-Request-Id\"",
    ));
    let addr = d.addr("http");
    let mut conn = Conn::open(addr).await;
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(which(&origins, &conn.get("/").await));
    }
    assert!(seen.len() > 1, "30 generated ids all hashed to {seen:?}");

    let mut homes = BTreeSet::new();
    for _ in 0..6 {
        let mut req = request(Method::GET, "/", "localhost", empty());
        req.headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("client-7"));
        homes.insert(which(&origins, &h1(addr, req).await));
    }
    assert_eq!(homes.len(), 1, "one client id on {homes:?}");
}

/// The `srv` cookie a response sets, as `name=value`.
fn set_cookie(r: &Reply) -> Option<String> {
    let v = r.header("set-cookie")?;
    assert!(v.contains("; Path=/"), "{v}");
    assert!(v.contains("; HttpOnly"), "{v}");
    v.split(';').next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_keeps_a_client_on_its_member_and_moves_it_when_the_member_goes() {
    let mut owned = hellos(3).await;
    let origins: Vec<&Origin> = owned.iter().collect();
    let config = pool_config("sticky_cookie", &unweighted(&origins), "").replace(
        "policy = \"sticky_cookie\"",
        "policy = \"sticky_cookie\"\nretries = 2",
    ) + "\n[pool.app.sticky]\ncookie = \"srv\"\n";
    let d = Daemon::start(&config);
    let addr = d.addr("http");
    let get_with_cookie = |cookie: Option<String>| async move {
        let headers: Vec<(&str, String)> = cookie.into_iter().map(|c| ("cookie", c)).collect();
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h1(
            addr,
            request_with_headers(Method::GET, "/", "localhost", &refs),
        )
        .await
    };
    // A new client is balanced and told where it went.
    let first = get_with_cookie(None).await;
    let home = which(&origins, &first);
    let cookie = set_cookie(&first).expect("a new client gets the cookie");
    assert!(cookie.starts_with("srv="), "{cookie}");
    assert!(
        !cookie.contains(&origins[home].addr.port().to_string()),
        "the cookie does not carry the address: {cookie}"
    );
    // With it, every request goes to the same member, and no new cookie.
    for _ in 0..6 {
        let r = get_with_cookie(Some(format!("a=1; {cookie}"))).await;
        assert_eq!(which(&origins, &r), home);
        assert_eq!(r.header("set-cookie"), None);
    }
    // Its member goes: the client moves, and gets a new cookie.
    owned.remove(home).kill();
    let origins: Vec<&Origin> = owned.iter().collect();
    let moved = get_with_cookie(Some(cookie.clone())).await;
    let now = which(&origins, &moved);
    let new_cookie = set_cookie(&moved).expect("a moved client gets a new cookie");
    assert_ne!(new_cookie, cookie);
    let again = get_with_cookie(Some(new_cookie)).await;
    assert_eq!(which(&origins, &again), now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_with_bounded_loads_spreads_a_hot_uri_within_the_factor() {
    // Every origin holds each request until the test has seen all 64.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut owned = Vec::new();
    for _ in 0..3 {
        let (gate, arrived) = (gate.clone(), arrived.clone());
        owned.push(
            Origin::serve(move |_req, addr| {
                let (gate, arrived) = (gate.clone(), arrived.clone());
                async move {
                    arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _permit = gate.acquire().await;
                    Response::builder()
                        .header("x-origin", addr.to_string())
                        .body(full("ok"))
                        .unwrap()
                }
            })
            .await,
        );
    }
    let origins: Vec<&Origin> = owned.iter().collect();
    let config = pool_config("hash", &unweighted(&origins), "[server]\nworkers = 1")
        .replace("policy = \"hash\"", "policy = \"hash\"\nmax_pending = 1000");
    let d = Daemon::start(&config);
    let addr = d.addr("http");
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(tokio::spawn(async move { get(addr, "/hot").await }));
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    while arrived.load(std::sync::atomic::Ordering::SeqCst) < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "64 requests in flight"
        );
        tokio::task::yield_now().await;
    }
    // 64 in flight over 3 members: none holds more than ceil(1.25 * 64 / 3).
    let per_member: Vec<usize> = origins.iter().map(|o| o.hits()).collect();
    assert_eq!(per_member.iter().sum::<usize>(), 64);
    assert!(
        per_member.iter().all(|&n| n <= 27),
        "a member over the bound: {per_member:?}"
    );
    assert!(
        per_member.contains(&27),
        "the URI's own member takes its full share: {per_member:?}"
    );
    gate.add_permits(64);
    for c in clients {
        assert_eq!(c.await.unwrap().status, 200);
    }
}
