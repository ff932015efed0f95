//! Hot-path benchmark: route lookup followed by a balancer ranking on a
//! four-member pool, once per balancing policy.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use sluice::config::{Policy, RouteConfig};
use sluice::router::Router;
use sluice::upstream::balance::{balancer_for, PickContext};
use sluice::upstream::member::Member;

fn route(name: &str, hosts: &[&str], prefix: &str, pool: &str) -> RouteConfig {
    RouteConfig {
        name: name.to_string(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: prefix.to_string(),
        pool: pool.to_string(),
        rate_limit: None,
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
    let ctx = PickContext {
        client_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23)),
    };

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
                let pool = route.map_or(0, |r| r.pool);
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

criterion_group!(benches, hot_path);
criterion_main!(benches);
