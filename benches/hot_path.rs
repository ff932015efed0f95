//! Hot-path benchmark: route lookup followed by a balancer ranking on a
//! four-member pool, once per balancing policy; and what observability
//! adds per request (metrics, request id, access log line).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use http::HeaderValue;
use sluice::testing::config::{Policy, RouteConfig};
use sluice::testing::router::Router;
use sluice::testing::upstream::balance::{balancer_for, PickContext};
use sluice::testing::upstream::member::Member;

fn route(name: &str, hosts: &[&str], prefix: &str, pool: &str) -> RouteConfig {
    RouteConfig {
        name: name.to_string(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: prefix.to_string(),
        pool: Some(pool.to_string()),
        rate_limit: None,
        cache: None,
        compress: false,
        strip_request_headers: Vec::new().into(),
        rules: None,
    }
}

/// Twenty routes mixing exact hosts, wildcards, catch-alls and prefixes.
fn routes() -> Vec<RouteConfig> {
    vec![
        route("admin", &["admin.example.com"], "/", "p1"),
        route("api-v1", &["api.example.com"], "/v1/", "p0"),
        route("api-v2", &["api.example.com"], "/v2/", "p0"),
        route(
            "static",
            &["static.example.com", "cdn.example.com"],
            "/",
            "p1",
        ),
        route("shop-api", &["shop.example.org"], "/api/", "p0"),
        route("shop", &["shop.example.org"], "/", "p1"),
        route(
            "blog",
            &["blog.example.net", "www.blog.example.net"],
            "/",
            "p1",
        ),
        route("tenants-api", &["*.tenants.example.com"], "/api/", "p0"),
        route("tenants", &["*.tenants.example.com"], "/", "p1"),
        route("eu", &["*.eu.example.com"], "/", "p0"),
        route("us", &["*.us.example.com"], "/", "p0"),
        route("docs", &["docs.example.com"], "/", "p1"),
        route("status", &["status.example.com"], "/", "p1"),
        route(
            "auth",
            &["auth.example.com", "login.example.com"],
            "/",
            "p0",
        ),
        route("ws", &["*.example.com"], "/ws/", "p0"),
        route("metrics", &[], "/metrics", "p1"),
        route("health", &[], "/healthz", "p1"),
        route("assets", &[], "/assets/", "p1"),
        route("api-any", &[], "/api/", "p0"),
        route("fallback", &[], "/", "p1"),
    ]
}

fn pool_index(name: &str) -> Option<usize> {
    match name {
        "p0" => Some(0),
        "p1" => Some(1),
        _ => None,
    }
}

fn members() -> Vec<Arc<Member>> {
    (0..4u8)
        .map(|i| {
            Arc::new(Member::new(
                SocketAddr::from(([10, 0, 1, i + 1], 8080)),
                u32::from(i) + 1,
            ))
        })
        .collect()
}

fn hot_path(c: &mut Criterion) {
    let router = Router::new(&routes(), pool_index);
    let members = members();
    // A wildcard host whose route sits mid-table.
    let (host, path) = ("acme.tenants.example.com", "/api/orders/42");
    assert_eq!(
        router.lookup(host, path).map(|r| r.name.as_str()),
        Some("tenants-api")
    );
    let ctx = PickContext::client(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23)));

    let mut group = c.benchmark_group("lookup+pick");
    for (label, policy) in [
        ("round_robin", Policy::RoundRobin),
        ("weighted", Policy::Weighted),
        ("least_conn", Policy::LeastConn),
        ("ip_hash", Policy::IpHash),
    ] {
        let balancer = balancer_for(policy, &members);
        group.bench_function(label, |b| {
            b.iter(|| {
                let route = router.lookup(black_box(host), black_box(path));
                let pool = route.and_then(|r| r.pool).unwrap_or(0);
                let candidates = balancer.candidates(black_box(&members), black_box(&ctx));
                black_box((pool, candidates))
            })
        });
    }
    group.finish();

    // Lookup alone, for a first-route hit and a full miss.
    c.bench_function("lookup/first", |b| {
        b.iter(|| router.lookup(black_box("admin.example.com"), black_box("/")))
    });
    c.bench_function("lookup/fallback", |b| {
        b.iter(|| router.lookup(black_box("unknown.example.io"), black_box("/index.html")))
    });
}

/// The per-request cost of observability, each part alone and together:
/// request counter and duration histogram, upstream counter and histogram,
/// a request id, and an access log entry handed to the writer thread.
fn observability(c: &mut Criterion) {
    use std::time::{Duration, Instant, SystemTime};

    use http::{HeaderValue, Method, Version};
    use sluice::testing::access_log::{self, Entry};
    use sluice::testing::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget, Config};
    use sluice::testing::metrics::{class_index, method_index, SnapshotMetrics};
    use sluice::testing::upstream::pool::Pool;

    let config = Config::parse(
        std::path::Path::new("bench.toml"),
        "[[listener]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"main\"\npool = \"app\"\n\n\
         [pool.app]\nservers = [ { addr = \"10.0.0.1:80\" }, { addr = \"10.0.0.2:80\" } ]\n",
        &sluice::testing::environment::System,
    )
    .expect("bench config");
    let pools = vec![Arc::new(Pool::new(&config.pools[0]))];
    let metrics = SnapshotMetrics::build(&config, &pools);
    let member: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let get = method_index(&Method::GET);
    let ok = class_index(200);
    let elapsed = Duration::from_micros(420);

    let mut group = c.benchmark_group("observe");
    group.bench_function("metrics", |b| {
        b.iter(|| {
            let m = metrics.requests(0, Some(0)).expect("slot");
            m.record(black_box(get), black_box(ok), black_box(elapsed));
            metrics.upstream(0, "app", black_box(member), 200, black_box(elapsed));
        })
    });
    group.bench_function("request_id", |b| {
        b.iter(|| black_box(sluice::testing::request_id::generate()))
    });
    let client: SocketAddr = "192.0.2.1:50000".parse().unwrap();
    let entry = || {
        Box::new(Entry {
            ts: SystemTime::now(),
            client: client.ip(),
            peer: client.ip(),
            method: Method::GET,
            uri: http::Uri::from_static("/assets/app.js?v=3"),
            host_header: Some(HeaderValue::from_static("example.com")),
            version: Version::HTTP_11,
            status: 200,
            bytes: 5120,
            duration: Duration::from_micros(420),
            upstream: Some(member),
            upstream_time: Some(Duration::from_micros(300)),
            cache: None,
            upstream_path: None,
            error: None,
            request_id: HeaderValue::from_static("7f0c1b7e-3a57-4c0e-9d7e-4f7c2c1d2e3f"),
            referer: None,
            user_agent: Some(HeaderValue::from_static("bench/1.0")),
        })
    };
    // Formatting alone: one entry, a reused formatter and buffer.
    group.bench_function("access_log_format", |b| {
        let e = entry();
        let mut f = access_log::Formatter::default();
        let mut out = Vec::with_capacity(1 << 20);
        b.iter(|| {
            if out.len() > (1 << 20) - 1024 {
                out.clear();
            }
            f.line(&mut out, black_box(&e), AccessLogFormat::Json);
        })
    });
    access_log::configure(Some(&AccessLogConfig {
        format: AccessLogFormat::Json,
        target: AccessLogTarget::File("/dev/null".into()),
    }))
    .expect("access log to /dev/null");
    // Paced so the writer keeps up and lines are written, not dropped.
    group.bench_function("access_log_line", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let start = Instant::now();
                access_log::send(black_box(&entry()), AccessLogFormat::Json);
                spent += start.elapsed();
                if i % 1024 == 1023 {
                    access_log::flush();
                }
            }
            spent
        })
    });
    group.bench_function("all", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let start = Instant::now();
                let id = sluice::testing::request_id::generate();
                let m = metrics.requests(0, Some(0)).expect("slot");
                m.record(get, ok, elapsed);
                metrics.upstream(0, "app", member, 200, elapsed);
                let mut e = entry();
                e.request_id = id;
                access_log::send(&e, AccessLogFormat::Json);
                spent += start.elapsed();
                if i % 1024 == 1023 {
                    access_log::flush();
                }
            }
            spent
        })
    });
    group.finish();
    let dropped = sluice::testing::metrics::get().access_log_dropped.get();
    eprintln!("access log lines dropped during the benchmark: {dropped}");
}

/// The cache's per-request work on a hit: key, lookup, freshness check and
/// the response head built from the entry; and choosing a coding.
fn cache(c: &mut Criterion) {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};
    use sluice::testing::cache::policy;
    use sluice::testing::cache::store::{Entry, MemoryStore, Object, Store};
    use sluice::testing::cache::{key, serve};
    use sluice::testing::config::{Coding, KeySpec};
    use sluice::testing::headers::cache_control::CacheControl;

    let mut req = HeaderMap::new();
    req.insert("host", HeaderValue::from_static("example.com"));
    req.insert(
        "accept-encoding",
        HeaderValue::from_static("gzip, deflate, br, zstd"),
    );
    req.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    let mut head = HeaderMap::new();
    head.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=600"),
    );
    head.insert("content-type", HeaderValue::from_static("text/html"));
    head.insert("etag", HeaderValue::from_static("\"v1\""));
    let store = MemoryStore::new(64 << 20, || {});
    let spec = KeySpec::default();
    let primary = key::primary(false, "example.com", "/static/page?x=1", &req, &spec);
    store.insert(
        primary.clone(),
        Arc::new(Object::Response(Entry {
            status: StatusCode::OK,
            cc: CacheControl::parse(&head),
            headers: head,
            body: Bytes::from(vec![b'x'; 20 * 1024]),
            request_time: SystemTime::now(),
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(600),
            tags: Box::new([]),
            copies: Default::default(),
            hit_head: Default::default(),
        })),
    );
    let mut group = c.benchmark_group("cache");
    group.bench_function("key", |b| {
        b.iter(|| {
            key::primary(
                false,
                "example.com",
                black_box("/static/page?x=1"),
                &req,
                &spec,
            )
        })
    });
    group.bench_function("hit", |b| {
        b.iter(|| {
            let k = key::primary(
                false,
                "example.com",
                black_box("/static/page?x=1"),
                &req,
                &spec,
            );
            let object = store.get(&k).expect("stored");
            let Object::Response(entry) = &*object else {
                panic!("not a response")
            };
            let req_cc = CacheControl::parse(&req);
            let age = entry.age(SystemTime::now());
            let usable = policy::usable(&req_cc, false, &entry.cc, entry.lifetime, age);
            let resp = serve::from_entry(entry, &http::Method::GET, &req, age, None);
            black_box((usable, resp))
        })
    });
    let row = b"<tr><td>sluice row</td><td>value</td></tr>\n";
    let page: Vec<u8> = (0..20_000usize)
        .map(|i| row[i % row.len()] ^ ((i / 997) as u8 & 1))
        .collect();
    group.bench_function("gzip_fast_20k", |b| {
        b.iter(|| {
            sluice::testing::compress::codec::compress_all(
                black_box(&page),
                Coding::Gzip,
                sluice::testing::config::Level::Fast,
            )
        })
    });
    group.bench_function("negotiate", |b| {
        b.iter(|| sluice::testing::compress::Accepted::parse(black_box(&req)).choose(&Coding::ALL))
    });
    group.finish();
}

criterion_group!(benches, hot_path, observability, cache);
criterion_main!(benches);
