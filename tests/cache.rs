//! The RFC 9111 cache of the real daemon, one test per rule, named after
//! the RFC section it checks. A scripted origin answers what each test sets
//! and counts what reaches it; staleness comes from the origin's `Age`
//! field (a response can be born stale), so no test waits for a clock.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// What the scripted origin answers next.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Answer 304 (with `headers`) when If-None-Match equals this.
    not_modified_for: Option<String>,
}

impl Answer {
    fn ok(body: &str, headers: &[(&str, &str)]) -> Answer {
        Answer {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
            not_modified_for: None,
        }
    }
    fn status(mut self, status: u16) -> Answer {
        self.status = status;
        self
    }
}

/// An origin whose answer the test changes as it goes.
struct Scripted {
    origin: Origin,
    answer: Arc<Mutex<Answer>>,
    /// Released by the test to let held requests answer (coalescing).
    gate: Arc<tokio::sync::Semaphore>,
    held: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(first: Answer) -> Scripted {
        Scripted::start_gated(first, false).await
    }

    /// With `gated`, every request waits until the test opens the gate.
    async fn start_gated(first: Answer, gated: bool) -> Scripted {
        let answer = Arc::new(Mutex::new(first));
        let gate = Arc::new(tokio::sync::Semaphore::new(if gated { 0 } else { 1 << 20 }));
        let held = Arc::new(AtomicUsize::new(0));
        let (a, g, h) = (answer.clone(), gate.clone(), held.clone());
        let origin = Origin::serve(move |req: Request<Incoming>, _| {
            let (a, g, h) = (a.clone(), g.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let _permit = g.acquire().await;
                let inm = req
                    .headers()
                    .get("if-none-match")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let _ = req.into_body().collect().await;
                let answer = a.lock().unwrap().clone();
                let mut b = Response::builder();
                for (k, v) in &answer.headers {
                    b = b.header(k.as_str(), v.as_str());
                }
                if inm.is_some() && inm == answer.not_modified_for {
                    return b.status(304).body(empty()).unwrap();
                }
                let b = b.status(answer.status);
                b.body(full(answer.body)).unwrap()
            }
        })
        .await;
        Scripted {
            origin,
            answer,
            gate,
            held,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> usize {
        self.origin.hits()
    }

    fn addr(&self) -> SocketAddr {
        self.origin.addr
    }
}

// ---------------------------------------------------------------- harness --

const HOST: &str = "example.com";

fn config(origin: SocketAddr, cache_extra: &str, route_extra: &str) -> String {
    admin_route_config(
        origin,
        &format!("cache = true\n{route_extra}"),
        &format!("[cache]\n{cache_extra}"),
    )
}

async fn start(origin: &Scripted) -> Daemon {
    Daemon::start(&config(origin.addr(), "", ""))
}

async fn send(d: &Daemon, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    h1(
        d.addr("http"),
        request_with_headers(method, path, HOST, headers),
    )
    .await
}

async fn get_with(d: &Daemon, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(d, Method::GET, path, headers).await
}

async fn fetch(d: &Daemon, path: &str) -> Reply {
    get_with(d, path, &[]).await
}

fn status_of(r: &Reply) -> &str {
    r.header("cache-status").unwrap_or("")
}

/// A response stored, then a second request answered from the cache.
async fn stored_then_hit(d: &Daemon, o: &Scripted, path: &str) -> (Reply, Reply) {
    let first = fetch(d, path).await;
    let second = fetch(d, path).await;
    assert_eq!(o.hits(), 1, "second request answered from the cache");
    (first, second)
}

/// Hits in quick succession share how their head is built (once per
/// second of age), never what is their own: each carries its own request
/// id (or the one its client sent) and one of each field, and a ranged,
/// conditional or HEAD request in between gets its own answer.
#[tokio::test]
async fn hits_in_one_second_share_a_head_but_not_their_request_ids() {
    let o = Scripted::start(Answer::ok(
        "0123456789",
        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
    ))
    .await;
    let d = start(&o).await;
    let (_, first_hit) = stored_then_hit(&d, &o, "/a").await;
    let names = |r: &Reply| r.headers.keys().cloned().collect::<Vec<_>>();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let r = fetch(&d, "/a").await;
        assert!(is_hit(&r), "{:?}", r.headers);
        assert_eq!(r.text(), "0123456789");
        for name in [
            "age",
            "cache-status",
            "x-request-id",
            "content-length",
            "etag",
        ] {
            assert_eq!(
                r.headers.get_all(name).iter().count(),
                1,
                "{name}: {:?}",
                r.headers
            );
        }
        assert_eq!(names(&r), names(&first_hit));
        let id = r.header("x-request-id").unwrap();
        assert_eq!(id.len(), 36, "a generated id: {id}");
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), 5, "every hit has its own id");
    let mine = get_with(&d, "/a", &[("x-request-id", "mine-1")]).await;
    assert_eq!(mine.header("x-request-id"), Some("mine-1"));
    let ranged = get_with(&d, "/a", &[("range", "bytes=0-3")]).await;
    assert_eq!(
        (ranged.status.as_u16(), ranged.text().as_str()),
        (206, "0123")
    );
    let matched = get_with(&d, "/a", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(matched.status.as_u16(), 304);
    let head = send(&d, Method::HEAD, "/a", &[]).await;
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("10"));
    let after = fetch(&d, "/a").await;
    assert_eq!(after.text(), "0123456789");
    assert_eq!(names(&after), names(&first_hit));
    assert_eq!(o.hits(), 1);
}

// ------------------------------------------------------------- §3 storing --

#[tokio::test]
async fn s3_fresh_response_is_stored_and_served_with_age() {
    let o = Scripted::start(Answer::ok(
        "cached body",
        &[("cache-control", "max-age=60"), ("age", "7")],
    ))
    .await;
    let d = start(&o).await;
    let (first, second) = stored_then_hit(&d, &o, "/a").await;
    assert_eq!(first.text(), "cached body");
    // The head goes out before the body is whole, so it promises nothing.
    assert_eq!(status_of(&first), "sluice; fwd=miss");
    assert_eq!(second.text(), "cached body");
    assert!(is_hit(&second), "{:?}", second.headers);
    // §4.2.3: the origin's Age is part of the stored response's age.
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!((7..60).contains(&age), "age {age}");
}

/// RFC 9111 §5.1: a list-valued Age counts by its first member; an
/// invalid one is ignored (the response is fresh, not stale).
#[tokio::test]
async fn s5_1_age_list_uses_its_first_member_and_an_invalid_age_is_ignored() {
    for (age, lowest) in [("5, 7200", 5), ("old", 0)] {
        let o = Scripted::start(Answer::ok(
            "aged",
            &[("cache-control", "max-age=600"), ("age", age)],
        ))
        .await;
        let d = start(&o).await;
        let (_, second) = stored_then_hit(&d, &o, "/a").await;
        assert!(is_hit(&second), "Age: {age}: {:?}", second.headers);
        let sent: u64 = second.header("age").unwrap().parse().unwrap();
        assert!((lowest..600).contains(&sent), "Age: {age} -> {sent}");
    }
}

#[tokio::test]
async fn s3_no_store_response_is_not_stored() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=60, no-store")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/a").await;
    let r = fetch(&d, "/a").await;
    assert_eq!(o.hits(), 2);
    assert!(!status_of(&r).contains("stored"));
}

#[tokio::test]
async fn s5_2_1_5_no_store_request_is_not_stored() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=60")])).await;
    let d = start(&o).await;
    get_with(&d, "/a", &[("cache-control", "no-store")]).await;
    fetch(&d, "/a").await;
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn s5_2_2_7_private_is_not_stored_by_a_shared_cache() {
    let o = Scripted::start(Answer::ok(
        "alice's page",
        &[("cache-control", "private, max-age=60")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/me").await;
    let bob = fetch(&d, "/me").await;
    assert_eq!(
        o.hits(),
        2,
        "a private response reached a second client from the cache"
    );
    assert!(!is_hit(&bob));
}

#[tokio::test]
async fn s3_5_authorization_is_stored_only_when_the_response_allows() {
    let o = Scripted::start(Answer::ok("secret", &[("cache-control", "max-age=60")])).await;
    let d = start(&o).await;
    get_with(&d, "/doc", &[("authorization", "Bearer alice")]).await;
    let anonymous = fetch(&d, "/doc").await;
    assert_eq!(o.hits(), 2, "an authorised response was replayed");
    assert!(!is_hit(&anonymous));

    o.set(Answer::ok(
        "public doc",
        &[("cache-control", "public, max-age=60")],
    ));
    get_with(&d, "/pub", &[("authorization", "Bearer alice")]).await;
    let r = fetch(&d, "/pub").await;
    assert_eq!(o.hits(), 3, "public lets a shared cache store it");
    assert!(is_hit(&r));
}

#[tokio::test]
async fn s3_set_cookie_is_not_stored_by_default() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=60"), ("set-cookie", "sid=alice")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/a").await;
    let r = fetch(&d, "/a").await;
    assert_eq!(o.hits(), 2);
    assert_eq!(
        r.header("set-cookie"),
        Some("sid=alice"),
        "from the origin, not the cache"
    );
}

#[tokio::test]
async fn s3_set_cookie_responses_stored_without_the_cookie_when_configured() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=60"), ("set-cookie", "sid=alice")],
    ))
    .await;
    let d = Daemon::start(&config(o.addr(), "store_set_cookie = true", ""));
    let first = fetch(&d, "/a").await;
    assert_eq!(
        first.header("set-cookie"),
        Some("sid=alice"),
        "the client that caused the fill keeps its cookie"
    );
    let second = fetch(&d, "/a").await;
    assert_eq!(o.hits(), 1);
    assert!(is_hit(&second));
    assert_eq!(
        second.header("set-cookie"),
        None,
        "a cookie must never be replayed"
    );
}

#[tokio::test]
async fn s3_status_codes_need_heuristic_cacheability_or_explicit_freshness() {
    let o =
        Scripted::start(Answer::ok("gone", &[("cache-control", "max-age=60")]).status(404)).await;
    let d = start(&o).await;
    let (_, r) = stored_then_hit(&d, &o, "/404").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // 302 is not heuristically cacheable: without freshness it is not stored.
    o.set(
        Answer::ok(
            "",
            &[
                ("location", "/x"),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
        )
        .status(302),
    );
    fetch(&d, "/302").await;
    fetch(&d, "/302").await;
    assert_eq!(o.hits(), 3);

    // 500 with explicit freshness may be stored; without it, never.
    o.set(Answer::ok("oops", &[]).status(500));
    fetch(&d, "/500").await;
    fetch(&d, "/500").await;
    assert_eq!(o.hits(), 5);
}

#[tokio::test]
async fn s3_3_partial_content_is_never_stored_as_complete() {
    let o = Scripted::start(
        Answer::ok(
            "01234",
            &[
                ("cache-control", "max-age=60"),
                ("content-range", "bytes 0-4/10"),
            ],
        )
        .status(206),
    )
    .await;
    let d = start(&o).await;
    fetch(&d, "/part").await;
    let r = fetch(&d, "/part").await;
    assert_eq!(o.hits(), 2);
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
}

#[tokio::test]
async fn s3_incomplete_body_is_never_stored() {
    // A raw origin: the first answer promises 20 bytes and closes after 10;
    // later answers are complete.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(k) = s.read(&mut buf).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..k]);
                }
                let head = "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 20\r\nconnection: close\r\n\r\n";
                let body = if n == 0 {
                    "0123456789"
                } else {
                    "0123456789abcdefghij"
                };
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let d = Daemon::start(&config(addr, "", ""));
    let mut conn = h1_conn(d.addr("http")).await;
    let resp = conn
        .send_request(request(Method::GET, "/cut", HOST, empty()))
        .await
        .unwrap();
    let got = resp.into_body().collect().await;
    assert!(
        got.is_err(),
        "the client sees the cut: {:?}",
        got.map(|c| c.to_bytes())
    );
    let r = fetch(&d, "/cut").await;
    assert_eq!(r.text(), "0123456789abcdefghij");
    assert_eq!(
        served.load(Ordering::SeqCst),
        2,
        "the cut response was not stored"
    );
    assert!(is_hit(&fetch(&d, "/cut").await));
}

#[tokio::test]
async fn max_object_size_streams_larger_responses_through() {
    let big = "x".repeat(4096);
    let o = Scripted::start(Answer::ok(&big, &[("cache-control", "max-age=60")])).await;
    let d = Daemon::start(&config(o.addr(), "max_object_size = \"1KiB\"", ""));
    let first = fetch(&d, "/big").await;
    assert_eq!(first.body.len(), 4096);
    let second = fetch(&d, "/big").await;
    assert_eq!(second.body.len(), 4096);
    assert_eq!(o.hits(), 2);
}

// ----------------------------------------------------------------- §4.1 --

#[tokio::test]
async fn s4_1_vary_keeps_one_variant_per_header_value() {
    let o = Scripted::start(Answer::ok(
        "en",
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    ))
    .await;
    let d = start(&o).await;
    let en = get_with(&d, "/v", &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "en");
    o.set(Answer::ok(
        "de",
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    ));
    let de = get_with(&d, "/v", &[("accept-language", "de")]).await;
    assert_eq!(de.text(), "de");
    assert_eq!(status_of(&de), "sluice; fwd=vary-miss");
    let en2 = get_with(&d, "/v", &[("accept-language", "en")]).await;
    let de2 = get_with(&d, "/v", &[("accept-language", "de")]).await;
    assert_eq!((en2.text().as_str(), de2.text().as_str()), ("en", "de"));
    assert!(is_hit(&en2) && is_hit(&de2));
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn s4_1_vary_star_never_matches() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=60"), ("vary", "*")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/star").await;
    fetch(&d, "/star").await;
    assert_eq!(o.hits(), 2);
}

// --------------------------------------------------------------- §4.2 --

#[tokio::test]
async fn s4_2_1_s_maxage_wins_over_max_age() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=600, s-maxage=10"), ("age", "20")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/s").await;
    fetch(&d, "/s").await;
    assert_eq!(o.hits(), 2, "stale by s-maxage although fresh by max-age");
}

#[tokio::test]
async fn s4_2_1_expires_minus_date() {
    let now = std::time::SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let future = httpdate::fmt_http_date(now + std::time::Duration::from_secs(600));
    let o = Scripted::start(Answer::ok("x", &[("date", &date), ("expires", &future)])).await;
    let d = start(&o).await;
    stored_then_hit(&d, &o, "/e").await;

    let past = httpdate::fmt_http_date(now - std::time::Duration::from_secs(600));
    o.set(Answer::ok("x", &[("date", &date), ("expires", &past)]));
    fetch(&d, "/e2").await;
    fetch(&d, "/e2").await;
    assert_eq!(o.hits(), 3, "an Expires in the past is stale at once");

    o.set(Answer::ok("x", &[("date", &date), ("expires", "0")]));
    fetch(&d, "/e3").await;
    fetch(&d, "/e3").await;
    assert_eq!(o.hits(), 5, "an invalid Expires means already expired");
}

#[tokio::test]
async fn s4_2_2_heuristic_freshness_from_last_modified() {
    let lm = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400),
    );
    let o = Scripted::start(Answer::ok("x", &[("last-modified", &lm)])).await;
    let d = start(&o).await;
    let (_, r) = stored_then_hit(&d, &o, "/h").await;
    assert!(is_hit(&r));
}

#[tokio::test]
async fn s4_2_3_age_is_sent_on_every_hit() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    let (_, r) = stored_then_hit(&d, &o, "/age").await;
    assert!(r.header("age").is_some());
}

#[tokio::test]
async fn s5_2_1_1_request_max_age_forces_revalidation() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=600"), ("age", "30")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/m").await;
    let ok = get_with(&d, "/m", &[("cache-control", "max-age=60")]).await;
    assert!(is_hit(&ok));
    let r = get_with(&d, "/m", &[("cache-control", "max-age=10")]).await;
    assert_eq!(o.hits(), 2);
    assert!(status_of(&r).contains("fwd=request"), "{}", status_of(&r));
}

#[tokio::test]
async fn s5_2_1_3_min_fresh() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=60"), ("age", "50")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/mf").await;
    assert!(is_hit(
        &get_with(&d, "/mf", &[("cache-control", "min-fresh=5")]).await
    ));
    get_with(&d, "/mf", &[("cache-control", "min-fresh=20")]).await;
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn s5_2_1_2_max_stale_accepts_a_stale_response() {
    let o = Scripted::start(Answer::ok(
        "old",
        &[("cache-control", "max-age=10"), ("age", "30")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/ms").await;
    let r = get_with(&d, "/ms", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(o.hits(), 1);
    assert_eq!(r.text(), "old");
    let r = get_with(&d, "/ms", &[("cache-control", "max-stale=5")]).await;
    assert_eq!(o.hits(), 2, "too stale for max-stale=5");
    assert!(!is_hit(&r));
}

#[tokio::test]
async fn s5_2_1_4_request_no_cache_and_http10_pragma_revalidate() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    fetch(&d, "/nc").await;
    get_with(&d, "/nc", &[("cache-control", "no-cache")]).await;
    assert_eq!(o.hits(), 2);
    get_with(&d, "/nc", &[("pragma", "no-cache")]).await;
    assert_eq!(o.hits(), 3, "Pragma: no-cache without Cache-Control (§5.4)");
    let raw_reply = raw(
        d.addr("http"),
        b"GET /nc HTTP/1.0\r\nHost: example.com\r\nPragma: no-cache\r\n\r\n",
    )
    .await;
    assert!(raw_reply.starts_with("HTTP/1."), "{raw_reply}");
    assert_eq!(o.hits(), 4, "an HTTP/1.0 client's Pragma: no-cache");
    assert!(is_hit(&fetch(&d, "/nc").await));
}

#[tokio::test]
async fn s5_2_1_7_only_if_cached_answers_504_when_absent() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    let r = get_with(&d, "/oic", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(o.hits(), 0);
    fetch(&d, "/oic").await;
    let r = get_with(&d, "/oic", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn s5_2_2_4_response_no_cache_is_revalidated_every_time() {
    let mut a = Answer::ok("body", &[("cache-control", "no-cache"), ("etag", "\"e1\"")]);
    a.not_modified_for = Some("\"e1\"".into());
    let o = Scripted::start(a).await;
    let d = start(&o).await;
    fetch(&d, "/nc").await;
    let r = fetch(&d, "/nc").await;
    assert_eq!(o.hits(), 2);
    assert_eq!(r.text(), "body");
    assert_eq!(status_of(&r), "sluice; fwd=stale; fwd-status=304; stored");
}

// --------------------------------------------------------------- §4.3 --

#[tokio::test]
async fn s4_3_4_304_freshens_the_stored_head_and_keeps_the_body() {
    let mut a = Answer::ok(
        "v1 body",
        &[
            ("cache-control", "max-age=60"),
            ("age", "100"),
            ("etag", "\"v1\""),
            ("x-version", "1"),
        ],
    );
    a.not_modified_for = Some("\"v1\"".into());
    let o = Scripted::start(a).await;
    let d = start(&o).await;
    fetch(&d, "/r").await;
    let mut b = Answer::ok(
        "unused",
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("x-version", "2"),
        ],
    );
    b.not_modified_for = Some("\"v1\"".into());
    o.set(b);
    let r = fetch(&d, "/r").await;
    assert_eq!(o.hits(), 2);
    let seen = o.origin.seen();
    assert_eq!(
        seen[1]
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok()),
        Some("\"v1\""),
        "revalidated with the stored validator"
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "v1 body");
    assert_eq!(
        r.header("x-version"),
        Some("2"),
        "head updated from the 304"
    );
    assert_eq!(status_of(&r), "sluice; fwd=stale; fwd-status=304; stored");
    let again = fetch(&d, "/r").await;
    assert!(is_hit(&again), "fresh again after the 304");
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn s4_3_1_last_modified_validator() {
    let lm = "Mon, 01 Jan 2024 00:00:00 GMT";
    let o = Scripted::start(Answer::ok(
        "x",
        &[
            ("cache-control", "max-age=60"),
            ("age", "100"),
            ("last-modified", lm),
        ],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/lm").await;
    fetch(&d, "/lm").await;
    let seen = o.origin.seen();
    assert_eq!(
        seen[1]
            .headers
            .get("if-modified-since")
            .and_then(|v| v.to_str().ok()),
        Some(lm)
    );
}

#[tokio::test]
async fn s4_3_2_client_conditionals_answered_from_the_cache() {
    let lm = "Mon, 01 Jan 2024 00:00:00 GMT";
    let o = Scripted::start(Answer::ok(
        "x",
        &[
            ("cache-control", "max-age=600"),
            ("etag", "\"v1\""),
            ("last-modified", lm),
        ],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/c").await;
    let r = get_with(&d, "/c", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED, "weak comparison");
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = get_with(&d, "/c", &[("if-none-match", "\"v0\", \"v1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get_with(&d, "/c", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_with(
        &d,
        "/c",
        &[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get_with(
        &d,
        "/c",
        &[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn s4_3_2_client_conditional_on_a_miss_fills_the_cache() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
    ))
    .await;
    let d = start(&o).await;
    let r = get_with(&d, "/cm", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(
        o.origin.seen()[0].headers.get("if-none-match").is_none(),
        "the cache asked for the full response"
    );
    let full = fetch(&d, "/cm").await;
    assert!(is_hit(&full));
    assert_eq!(full.text(), "x");
}

// --------------------------------------------------------------- §4.4 --

#[tokio::test]
async fn s4_4_unsafe_methods_invalidate_the_target_and_location() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    fetch(&d, "/item").await;
    fetch(&d, "/other").await;
    fetch(&d, "/elsewhere").await;
    assert_eq!(o.hits(), 3);
    o.set(
        Answer::ok(
            "created",
            &[
                ("location", "/other"),
                ("content-location", "http://another.host/elsewhere"),
            ],
        )
        .status(201),
    );
    let r = send(&d, Method::POST, "/item", &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    o.set(Answer::ok("x", &[("cache-control", "max-age=600")]));
    fetch(&d, "/item").await;
    assert_eq!(o.hits(), 5, "the target was invalidated");
    fetch(&d, "/other").await;
    assert_eq!(o.hits(), 6, "Location on the same host was invalidated");
    assert!(
        is_hit(&fetch(&d, "/elsewhere").await),
        "another host's URI is left alone"
    );

    // An error response invalidates nothing.
    o.set(Answer::ok("no", &[]).status(500));
    send(&d, Method::DELETE, "/item", &[]).await;
    assert!(is_hit(&fetch(&d, "/item").await));
}

// ---------------------------------------------------------- RFC 5861 --

#[tokio::test]
async fn rfc5861_s3_stale_while_revalidate_serves_stale_and_refreshes_once() {
    let o = Scripted::start(Answer::ok(
        "old",
        &[
            ("cache-control", "max-age=10, stale-while-revalidate=600"),
            ("age", "20"),
        ],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/swr").await;
    o.set(Answer::ok("new", &[("cache-control", "max-age=600")]));
    let r = fetch(&d, "/swr").await;
    assert_eq!(r.text(), "old", "served stale at once");
    assert!(
        status_of(&r).contains("stale-while-revalidate"),
        "{}",
        status_of(&r)
    );
    // The refresh happens in the background: wait for it to reach the origin
    // and be stored.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let r = fetch(&d, "/swr").await;
        if r.text() == "new" {
            assert!(is_hit(&r));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::task::yield_now().await;
    }
    assert_eq!(o.hits(), 2, "one background refresh");
}

#[tokio::test]
async fn rfc5861_s4_stale_if_error_serves_stale_on_5xx_and_when_down() {
    let o = Scripted::start(Answer::ok(
        "old",
        &[
            ("cache-control", "max-age=10, stale-if-error=600"),
            ("age", "20"),
        ],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/sie").await;
    o.set(Answer::ok("broken", &[]).status(503));
    let r = fetch(&d, "/sie").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "old"));
    assert!(status_of(&r).contains("stale-if-error"));
    o.origin.stop();
    let r = fetch(&d, "/sie").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "old"),
        "origin down"
    );
}

#[tokio::test]
async fn s5_2_2_2_must_revalidate_forbids_serving_stale() {
    let o = Scripted::start(Answer::ok(
        "old",
        &[
            (
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=600",
            ),
            ("age", "20"),
        ],
    ))
    .await;
    let d = Daemon::start(&config(o.addr(), "serve_stale_on_error = \"1h\"", ""));
    fetch(&d, "/mr").await;
    o.set(Answer::ok("broken", &[]).status(503));
    let r = fetch(&d, "/mr").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn serve_stale_on_error_grace_without_the_directive() {
    let o = Scripted::start(Answer::ok(
        "old",
        &[("cache-control", "max-age=10"), ("age", "20")],
    ))
    .await;
    let without = start(&o).await;
    fetch(&without, "/g").await;
    o.set(Answer::ok("broken", &[]).status(502));
    assert_eq!(fetch(&without, "/g").await.status, StatusCode::BAD_GATEWAY);

    o.set(Answer::ok(
        "old",
        &[("cache-control", "max-age=10"), ("age", "20")],
    ));
    let with = Daemon::start(&config(o.addr(), "serve_stale_on_error = \"1h\"", ""));
    fetch(&with, "/g").await;
    o.set(Answer::ok("broken", &[]).status(502));
    let r = fetch(&with, "/g").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "old"));
}

/// RFC 9111 §4.2.4: with the origin unreachable (here: stopped, so every
/// connect is refused), a stale entry is served by default, for up to
/// `stale_if_unreachable` (1 h) past its freshness; never one whose
/// directives forbid it, and not with the grace set to 0s.
#[tokio::test]
async fn s4_2_4_stale_is_served_by_default_when_the_origin_is_unreachable() {
    let stale = |cc: &'static str| Answer::ok("old", &[("cache-control", cc), ("age", "20")]);
    let o = Scripted::start(stale("max-age=10")).await;
    let d = start(&o).await;
    let off = Daemon::start(&config(o.addr(), "stale_if_unreachable = \"0s\"", ""));
    fetch(&d, "/plain").await;
    fetch(&off, "/plain").await;
    o.set(stale("max-age=10, must-revalidate"));
    fetch(&d, "/must-revalidate").await;
    o.set(stale("max-age=10, no-cache"));
    fetch(&d, "/no-cache").await;
    o.set(stale("s-maxage=10"));
    fetch(&d, "/s-maxage").await;
    // Stale beyond the grace: 20 s old with a 0 s lifetime... plus an hour.
    o.set(Answer::ok(
        "ancient",
        &[("cache-control", "max-age=0"), ("age", "3700")],
    ));
    fetch(&d, "/ancient").await;
    o.origin.kill();

    let r = fetch(&d, "/plain").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "old"));
    assert_eq!(status_of(&r), "sluice; fwd=stale; detail=stale-if-error");
    assert!(r.header("warning").is_none());
    for path in ["/must-revalidate", "/no-cache", "/s-maxage", "/ancient"] {
        let r = fetch(&d, path).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}: {}", r.text());
    }
    let r = fetch(&off, "/plain").await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "stale_if_unreachable = 0s"
    );
}

/// A 5xx the origin sent is an answer, not an unreachable origin: it still
/// needs `stale-if-error` or `serve_stale_on_error`.
#[tokio::test]
async fn stale_if_unreachable_does_not_cover_a_5xx_answer() {
    let o = Scripted::start(Answer::ok(
        "old",
        &[("cache-control", "max-age=10"), ("age", "20")],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/5xx").await;
    o.set(Answer::ok("broken", &[]).status(503));
    let r = fetch(&d, "/5xx").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "broken")
    );
}

// ------------------------------------------------- RFC 9213 targeted --

/// RFC 9213 §2.1: `CDN-Cache-Control` is this cache's policy when present
/// and valid; `Cache-Control` then only speaks to the client.
#[tokio::test]
async fn rfc9213_2_1_cdn_cache_control_overrides_cache_control() {
    let o = Scripted::start(Answer::ok(
        "for the cdn",
        &[
            ("cdn-cache-control", "max-age=60"),
            ("cache-control", "no-store"),
        ],
    ))
    .await;
    let d = start(&o).await;
    let (_, second) = stored_then_hit(&d, &o, "/fresh-for-cdn").await;
    assert!(is_hit(&second));
    assert_eq!(
        second.header("cache-control"),
        Some("no-store"),
        "the client's field untouched"
    );
    assert_eq!(
        second.header("cdn-cache-control"),
        Some("max-age=60"),
        "passed on"
    );

    for (cdn, path) in [("no-store", "/ns"), ("private", "/pr"), ("no-cache", "/nc")] {
        o.set(Answer::ok(
            "not for the cdn",
            &[
                ("cdn-cache-control", cdn),
                ("cache-control", "max-age=3600"),
            ],
        ));
        let before = o.hits();
        fetch(&d, path).await;
        let r = fetch(&d, path).await;
        assert_eq!(
            o.hits(),
            before + 2,
            "CDN-Cache-Control: {cdn}: {:?}",
            r.headers
        );
    }
}

/// RFC 9213 §2.1: an invalid targeted field is ignored, as if absent.
#[tokio::test]
async fn rfc9213_2_1_an_invalid_targeted_field_is_ignored() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[
            ("cdn-cache-control", "max-age=600, &&&&"),
            ("cache-control", "no-store"),
        ],
    ))
    .await;
    let d = start(&o).await;
    fetch(&d, "/bad").await;
    fetch(&d, "/bad").await;
    assert_eq!(o.hits(), 2, "Cache-Control: no-store decides");
}

/// `targeted_fields` names the fields this cache obeys, first one first.
#[tokio::test]
async fn targeted_fields_are_obeyed_in_the_operators_order() {
    let o = Scripted::start(Answer::ok(
        "mine",
        &[
            ("sluice-cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
        ],
    ))
    .await;
    let d = Daemon::start(&config(
        o.addr(),
        "targeted_fields = [\"Sluice-Cache-Control\", \"CDN-Cache-Control\"]",
        "",
    ));
    let (_, second) = stored_then_hit(&d, &o, "/mine").await;
    assert!(is_hit(&second));
    // With the default list, CDN-Cache-Control: no-store decides.
    let default = start(&o).await;
    fetch(&default, "/mine").await;
    fetch(&default, "/mine").await;
    assert_eq!(o.hits(), 3);
}

// ---------------------------------------------------------- coalescing --

#[tokio::test]
async fn coalescing_100_concurrent_misses_reach_the_origin_once() {
    let o = Scripted::start_gated(
        Answer::ok("shared", &[("cache-control", "max-age=600")]),
        true,
    )
    .await;
    let d = start(&o).await;
    let addr = d.addr("http");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks.push(tokio::spawn(async move {
            h1(addr, request(Method::GET, "/hot", HOST, empty())).await
        }));
    }
    // The first miss is held at the origin; the gate opens once it arrived.
    // Whether the others are waiting on it or come after the fill, none
    // may reach the origin.
    let deadline = std::time::Instant::now() + PATIENCE;
    while o.held.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    o.gate.add_permits(1 << 20);
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "shared"));
        if status_of(&r).contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(o.hits(), 1, "the origin saw one request");
    eprintln!("{collapsed} of 100 waited for the leader");
}

#[tokio::test]
async fn coalesced_requests_go_upstream_alone_when_the_response_cannot_be_shared() {
    let o = Scripted::start_gated(Answer::ok("mine", &[("cache-control", "private")]), true).await;
    let d = Daemon::start(&config(o.addr(), "lock_timeout = \"30s\"", ""));
    let addr = d.addr("http");
    let first =
        tokio::spawn(async move { h1(addr, request(Method::GET, "/p", HOST, empty())).await });
    let deadline = std::time::Instant::now() + PATIENCE;
    while o.held.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let second =
        tokio::spawn(async move { h1(addr, request(Method::GET, "/p", HOST, empty())).await });
    o.gate.add_permits(1 << 20);
    assert_eq!(first.await.unwrap().text(), "mine");
    assert_eq!(second.await.unwrap().text(), "mine");
    assert_eq!(
        o.hits(),
        2,
        "a private answer is not shared with the waiter"
    );
}

// ---------------------------------------------------------- ranges, HEAD --

#[tokio::test]
async fn rfc9110_s14_ranges_served_from_a_complete_entry() {
    let o = Scripted::start(Answer::ok(
        "0123456789",
        &[("cache-control", "max-age=600"), ("etag", "\"r\"")],
    ))
    .await;
    let d = start(&o).await;
    // A Range request on a miss fetches the whole object and answers 206.
    let r = get_with(&d, "/range", &[("range", "bytes=2-4")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.text(), "234");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    assert!(o.origin.seen()[0].headers.get("range").is_none());
    let r = get_with(&d, "/range", &[("range", "bytes=-3")]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::PARTIAL_CONTENT, "789")
    );
    let r = get_with(&d, "/range", &[("range", "bytes=20-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    // If-Range with another validator: the whole body.
    let r = get_with(
        &d,
        "/range",
        &[("range", "bytes=0-1"), ("if-range", "\"other\"")],
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "0123456789")
    );
    assert_eq!(o.hits(), 1);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let o = Scripted::start(Answer::ok(
        "twelve bytes",
        &[("cache-control", "max-age=600")],
    ))
    .await;
    let d = start(&o).await;
    // A HEAD miss is fetched as GET, so it fills the entry for both.
    let head = send(&d, Method::HEAD, "/h", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("12"));
    assert_eq!(o.origin.seen()[0].method, Method::GET);
    let get = fetch(&d, "/h").await;
    assert!(is_hit(&get));
    assert_eq!(get.text(), "twelve bytes");
    let head = send(&d, Method::HEAD, "/h", &[]).await;
    assert!(is_hit(&head) && head.body.is_empty());
    assert_eq!(o.hits(), 1);
}

// ----------------------------------------------------------------- purge --

#[tokio::test]
async fn purge_by_url_prefix_tag_and_everything() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[
            ("cache-control", "max-age=600"),
            ("surrogate-key", "product-1 all"),
            ("cache-tag", "shop"),
        ],
    ))
    .await;
    let d = start(&o).await;
    for p in ["/p/1", "/p/2", "/p/3?x=1", "/q/1"] {
        let r = fetch(&d, p).await;
        assert!(
            r.header("surrogate-key").is_none() && r.header("cache-tag").is_none(),
            "tags are stripped"
        );
    }
    let url = admin_post(&d, "/cache/purge?url=http%3A%2F%2Fexample.com%2Fp%2F1").await;
    assert_eq!(
        (url.status, url.text().trim()),
        (StatusCode::OK, "{\"purged\":1}")
    );
    assert!(!is_hit(&fetch(&d, "/p/1").await));
    let prefix = admin_post(&d, "/cache/purge?prefix=http://example.com/p/").await;
    assert_eq!(prefix.text().trim(), "{\"purged\":3}");
    let tag = admin_post(&d, "/cache/purge?tag=shop").await;
    assert_eq!(tag.text().trim(), "{\"purged\":1}", "only /q/1 is left");
    fetch(&d, "/q/1").await;
    fetch(&d, "/p/2").await;
    let by_key = admin_post(&d, "/cache/purge?tag=product-1").await;
    assert_eq!(by_key.text().trim(), "{\"purged\":2}");
    fetch(&d, "/q/1").await;
    let all = admin_post(&d, "/cache/purge?all=true").await;
    assert_eq!(all.text().trim(), "{\"purged\":1}");
    let bad = admin_post(&d, "/cache/purge?colour=red").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let get = h1(
        d.addr("admin"),
        request(Method::GET, "/cache/purge?all=true", "admin", empty()),
    )
    .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// A soft purge marks entries stale instead of removing them: the next
/// request revalidates, and while the origin is unreachable they keep
/// serving (the unreachable grace).
#[tokio::test]
async fn soft_purge_keeps_entries_as_stale() {
    let o = Scripted::start(Answer::ok(
        "kept",
        &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
    ))
    .await;
    let d = Daemon::start(&config(o.addr(), "purge_allow = [\"127.0.0.1/32\"]", ""));
    for p in ["/s/1", "/s/2"] {
        fetch(&d, p).await;
    }
    let soft = admin_post(&d, "/cache/purge?url=http://example.com/s/1&soft=true").await;
    assert_eq!(
        (soft.status, soft.text().trim()),
        (StatusCode::OK, "{\"purged\":1,\"soft\":true}")
    );
    // Revalidated with the origin (If-None-Match), not fetched anew.
    let hits = o.hits();
    let r = fetch(&d, "/s/1").await;
    assert_eq!(o.hits(), hits + 1);
    assert!(status_of(&r).contains("fwd=stale"), "{}", status_of(&r));
    assert_eq!(r.text(), "kept");
    // PURGE with Sluice-Purge: soft, then the origin goes away.
    let r = send(
        &d,
        Method::from_bytes(b"PURGE").unwrap(),
        "/s/2",
        &[("sluice-purge", "soft")],
    )
    .await;
    assert_eq!(r.text().trim(), "{\"purged\":1,\"soft\":true}");
    o.origin.kill();
    let r = fetch(&d, "/s/2").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "kept"));
    assert_eq!(status_of(&r), "sluice; fwd=stale; detail=stale-if-error");
}

#[tokio::test]
async fn purge_method_only_from_allowed_clients() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let refused = start(&o).await;
    fetch(&refused, "/x").await;
    let r = send(&refused, Method::from_bytes(b"PURGE").unwrap(), "/x", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(is_hit(&fetch(&refused, "/x").await));

    let allowed = Daemon::start(&config(o.addr(), "purge_allow = [\"127.0.0.1/32\"]", ""));
    fetch(&allowed, "/x").await;
    let r = send(&allowed, Method::from_bytes(b"PURGE").unwrap(), "/x", &[]).await;
    assert_eq!(
        (r.status, r.text().trim()),
        (StatusCode::OK, "{\"purged\":1}")
    );
    assert!(!is_hit(&fetch(&allowed, "/x").await));
}

// -------------------------------------------------------------- the key --

#[tokio::test]
async fn key_is_scheme_host_path_and_query() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    fetch(&d, "/k?a=1").await;
    fetch(&d, "/k?a=2").await;
    let other_host = h1(
        d.addr("http"),
        request(Method::GET, "/k?a=1", "other.example", empty()),
    )
    .await;
    assert!(!is_hit(&other_host));
    assert_eq!(o.hits(), 3);
    let upper = h1(
        d.addr("http"),
        request(Method::GET, "/k?a=1", "EXAMPLE.com:80", empty()),
    )
    .await;
    assert!(is_hit(&upper), "the host is compared normalised");
}

#[tokio::test]
async fn key_options_ignore_params_and_add_headers_and_cookies() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = Daemon::start(&config(
        o.addr(),
        "",
        "cache_key_ignore_params = [\"utm_source\"]\ncache_key_headers = [\"X-Tenant\"]\ncache_key_cookies = [\"lang\"]",
    ));
    fetch(&d, "/k?a=1&utm_source=mail").await;
    assert!(
        is_hit(&fetch(&d, "/k?a=1").await),
        "utm_source is not part of the key"
    );
    get_with(&d, "/k?a=1", &[("x-tenant", "acme")]).await;
    assert_eq!(o.hits(), 2, "a different tenant is a different key");
    assert!(is_hit(
        &get_with(&d, "/k?a=1", &[("x-tenant", "acme")]).await
    ));
    get_with(&d, "/k?a=1", &[("cookie", "sid=1; lang=de")]).await;
    assert_eq!(o.hits(), 3, "the lang cookie is part of the key");
    assert!(is_hit(
        &get_with(&d, "/k?a=1", &[("cookie", "lang=de; sid=2")]).await
    ));
}

#[tokio::test]
async fn unkeyed_forwarding_headers_cannot_poison_the_cache() {
    let o = Origin::serve(|req: Request<Incoming>, _| async move {
        // An origin that (unwisely) reflects X-Forwarded-Host into its page.
        let host = req
            .headers()
            .get("x-forwarded-host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        Response::builder()
            .header("cache-control", "max-age=600")
            .body(full(format!("<script src=//{host}/app.js>")))
            .unwrap()
    })
    .await;
    let d = Daemon::start(&config(o.addr, "", ""));
    let attack = get_with(&d, "/page", &[("x-forwarded-host", "evil.example")]).await;
    assert!(!attack.text().contains("evil"), "{}", attack.text());
    let victim = fetch(&d, "/page").await;
    assert!(!victim.text().contains("evil"));
}

// ------------------------------------------------- limits and reporting --

#[tokio::test]
async fn memory_stays_within_max_size_under_a_10x_working_set() {
    let body = "y".repeat(16 * 1024);
    let o = Scripted::start(Answer::ok(&body, &[("cache-control", "max-age=600")])).await;
    let d = Daemon::start(&config(
        o.addr(),
        "max_size = \"1MiB\"\nmax_object_size = \"64KiB\"",
        "",
    ));
    // 640 objects of 16 KiB: 10 MiB through a 1 MiB cache.
    for i in 0..640 {
        fetch(&d, &format!("/w/{i}")).await;
    }
    let value = scalars(&d).await;
    assert!(
        value("sluice_cache_bytes") <= (1 << 20) as f64,
        "{}",
        value("sluice_cache_bytes")
    );
    assert!(value("sluice_cache_entries") > 0.0);
    assert!(value("sluice_cache_evictions_total") > 0.0);
}

/// Scrapes `/metrics`; the returned function reads one label-less sample.
async fn scalars(d: &Daemon) -> impl Fn(&str) -> f64 {
    let metrics = h1(
        d.addr("admin"),
        request(Method::GET, "/metrics", "admin", empty()),
    )
    .await
    .text();
    move |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    }
}

/// moka cannot resize a store, so a reload with a new `max_size` builds a
/// new one: what was cached is copied in, not lost. Larger, then smaller
/// but still roomy: the entry is a hit after each reload, and the origin
/// saw one request.
#[tokio::test]
async fn reload_with_a_new_max_size_keeps_what_is_cached() {
    let o = Scripted::start(Answer::ok("kept", &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    stored_then_hit(&d, &o, "/k").await;
    for sizes in [
        "max_size = \"512MiB\"",
        "max_size = \"1MiB\"\nmax_object_size = \"64KiB\"",
    ] {
        d.write_config(&config(o.addr(), sizes, ""));
        let r = admin_post(&d, "/reload").await;
        assert_eq!(r.status, 200, "{sizes}: {r:?}");
        let again = fetch(&d, "/k").await;
        assert!(is_hit(&again), "{sizes}: {again:?}");
        assert_eq!(again.text(), "kept");
    }
    assert_eq!(o.hits(), 1);
}

/// A reload to a `max_size` below what is cached keeps only what fits.
#[tokio::test]
async fn reload_to_a_smaller_max_size_evicts_down_to_it() {
    let body = "z".repeat(40 * 1024);
    let o = Scripted::start(Answer::ok(&body, &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    // 1.2 MiB cached, then a 256 KiB store.
    for i in 0..30 {
        fetch(&d, &format!("/s/{i}")).await;
    }
    let before = scalars(&d).await("sluice_cache_bytes");
    assert!(before > (1 << 20) as f64, "{before}");
    d.write_config(&config(
        o.addr(),
        "max_size = \"256KiB\"\nmax_object_size = \"64KiB\"",
        "",
    ));
    assert_eq!(admin_post(&d, "/reload").await.status, 200);
    let value = scalars(&d).await;
    assert!(
        value("sluice_cache_bytes") <= (256 << 10) as f64,
        "{}",
        value("sluice_cache_bytes")
    );
    assert!(value("sluice_cache_entries") > 0.0);
    // only-if-cached: a miss is a 504 that neither reaches the origin nor
    // stores anything, so counting cannot evict what it counts.
    let mut kept = 0;
    for i in 0..30 {
        let r = get_with(
            &d,
            &format!("/s/{i}"),
            &[("cache-control", "only-if-cached")],
        )
        .await;
        if is_hit(&r) {
            kept += 1;
        }
    }
    assert_eq!(o.hits(), 30);
    assert!((1..=6).contains(&kept), "{kept} of 30 entries kept");
}

#[tokio::test]
async fn cache_lookups_are_counted_by_result() {
    let mut a = Answer::ok("x", &[("cache-control", "max-age=600"), ("etag", "\"a\"")]);
    a.not_modified_for = Some("\"a\"".into());
    let o = Scripted::start(a).await;
    let d = start(&o).await;
    fetch(&d, "/m").await; // miss
    fetch(&d, "/m").await; // hit
    fetch(&d, "/m").await; // hit
    get_with(&d, "/m", &[("cache-control", "no-cache")]).await; // revalidated
    send(&d, Method::POST, "/other", &[]).await; // bypass
    let metrics = h1(
        d.addr("admin"),
        request(Method::GET, "/metrics", "admin", empty()),
    )
    .await
    .text();
    for (result, n) in [
        ("hit", 2),
        ("miss", 1),
        ("revalidated", 1),
        ("bypass", 1),
        ("stale", 0),
        ("coalesced", 0),
    ] {
        let line = format!("sluice_cache_lookups_total{{result=\"{result}\",route=\"main\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn rfc9211_cache_status_can_be_turned_off() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = Daemon::start(&config(o.addr(), "status_header = false", ""));
    fetch(&d, "/a").await;
    let r = fetch(&d, "/a").await;
    assert_eq!(o.hits(), 1);
    assert!(r.header("cache-status").is_none());
    assert!(r.header("age").is_some());
}

#[tokio::test]
async fn routes_without_cache_never_store() {
    let o = Scripted::start(Answer::ok("x", &[("cache-control", "max-age=600")])).await;
    let d = Daemon::start(&simple_config(&[o.addr()], ""));
    fetch(&d, "/a").await;
    let r = fetch(&d, "/a").await;
    assert_eq!(o.hits(), 2);
    assert!(r.header("cache-status").is_none());
}

#[tokio::test]
async fn hits_over_http2_and_tls() {
    let o = Scripted::start(Answer::ok("over h2", &[("cache-control", "max-age=600")])).await;
    let d = start(&o).await;
    fetch(&d, "/h2").await;
    let mut send = h2c_conn(d.addr("http")).await;
    let r = h2_send(
        &mut send,
        h2_request(Method::GET, "http://example.com/h2", empty()),
    )
    .await;
    assert_eq!(r.text(), "over h2");
    assert!(is_hit(&r), "{:?}", r.headers);

    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.issue(dir.path(), "leaf", &["example.com"]);
    let tls = Daemon::start(&format!(
        "{}\n[[route]]\npool = \"app\"\ncache = true\n[pool.app]\nservers = [ {{ addr = \"{}\" }} ]\n",
        format_args!(
            "[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncerts = [ {{ cert = \"{}\", key = \"{}\" }} ]",
            cert.display(),
            key.display()
        ),
        o.addr()
    ));
    let versions = &[&rustls::version::TLS13];
    let h2 = tls_connect(tls.addr("tls"), HOST, pki.client_config(&[b"h2"], versions))
        .await
        .unwrap();
    let first = tls_send(
        h2,
        h2_request(Method::GET, "https://example.com/tls", empty()),
    )
    .await;
    let h1c = tls_connect(
        tls.addr("tls"),
        HOST,
        pki.client_config(&[b"http/1.1"], versions),
    )
    .await
    .unwrap();
    let second = tls_send(h1c, request(Method::GET, "/tls", HOST, empty())).await;
    assert_eq!(first.text(), "over h2");
    assert!(is_hit(&second), "{:?}", second.headers);
}

#[tokio::test]
async fn s3_empty_bodies_are_stored_too() {
    let o = Scripted::start(Answer::ok("", &[("cache-control", "max-age=600")]).status(204)).await;
    let d = start(&o).await;
    let (_, r) = stored_then_hit(&d, &o, "/empty").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(is_hit(&r), "{:?}", r.headers);
    o.set(Answer::ok(
        "",
        &[("cache-control", "max-age=600"), ("content-length", "0")],
    ));
    let (_, r) = {
        let first = fetch(&d, "/zero").await;
        let second = fetch(&d, "/zero").await;
        (first, second)
    };
    assert!(is_hit(&r));
    assert_eq!(o.hits(), 2);
}

#[tokio::test]
async fn surrogate_control_speaks_to_sluice_over_cache_control() {
    let o = Scripted::start(Answer::ok(
        "x",
        &[
            ("cache-control", "no-store"),
            ("surrogate-control", "max-age=600;sluice"),
        ],
    ))
    .await;
    let d = start(&o).await;
    let first = fetch(&d, "/sc").await;
    assert!(
        first.header("surrogate-control").is_none(),
        "never sent to clients"
    );
    assert_eq!(
        first.header("cache-control"),
        Some("no-store"),
        "browsers still get theirs"
    );
    let second = fetch(&d, "/sc").await;
    assert!(is_hit(&second) && second.header("surrogate-control").is_none());
    assert_eq!(o.hits(), 1);
    assert_eq!(
        o.origin.seen()[0]
            .headers
            .get("surrogate-capability")
            .and_then(|v| v.to_str().ok()),
        Some("sluice=\"Surrogate/1.0\"")
    );

    o.set(Answer::ok(
        "x",
        &[
            ("cache-control", "max-age=600"),
            ("surrogate-control", "no-store"),
        ],
    ));
    fetch(&d, "/sc-no").await;
    fetch(&d, "/sc-no").await;
    assert_eq!(o.hits(), 3, "Surrogate-Control: no-store wins over max-age");

    o.set(Answer::ok(
        "x",
        &[
            ("cache-control", "no-store"),
            ("surrogate-control", "max-age=600;other-cdn"),
        ],
    ));
    fetch(&d, "/sc-other").await;
    fetch(&d, "/sc-other").await;
    assert_eq!(o.hits(), 5, "directives for another device are ignored");
}

#[tokio::test]
async fn lock_timeout_bounds_the_wait_for_a_coalesced_miss() {
    // The leader's answer is held at the origin; the second request gives
    // up waiting after lock_timeout and goes upstream itself.
    let o = Scripted::start_gated(
        Answer::ok("late", &[("cache-control", "max-age=600")]),
        true,
    )
    .await;
    let d = Daemon::start(&config(o.addr(), "lock_timeout = \"100ms\"", ""));
    let addr = d.addr("http");
    let leader =
        tokio::spawn(async move { h1(addr, request(Method::GET, "/slow", HOST, empty())).await });
    let deadline = std::time::Instant::now() + PATIENCE;
    while o.held.load(Ordering::SeqCst) < 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    let follower =
        tokio::spawn(async move { h1(addr, request(Method::GET, "/slow", HOST, empty())).await });
    while o.held.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never went upstream"
        );
        tokio::task::yield_now().await;
    }
    o.gate.add_permits(1 << 20);
    assert_eq!(leader.await.unwrap().text(), "late");
    let f = follower.await.unwrap();
    assert_eq!(f.text(), "late");
    assert!(!status_of(&f).contains("collapsed"), "{}", status_of(&f));
    assert_eq!(o.hits(), 2);
}

/// A body of two frames with no length known: sent chunked.
struct TwoChunks(Vec<bytes::Bytes>);

impl http_body::Body for TwoChunks {
    type Data = bytes::Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let next = if self.0.is_empty() {
            None
        } else {
            Some(self.0.remove(0))
        };
        std::task::Poll::Ready(next.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn unknown_length_misses_stream_instead_of_buffering() {
    let o = Origin::serve(|req: Request<Incoming>, _| async move {
        let _ = req.into_body().collect().await;
        let body = TwoChunks(vec!["01234".into(), "56789".into()]);
        Response::builder()
            .header("cache-control", "max-age=600")
            .body(BodyExt::boxed(body))
            .unwrap()
    })
    .await;
    let d = Daemon::start(&config(o.addr, "", ""));
    // HEAD: the head at once, nothing stored (the body was not read).
    let head = send(&d, Method::HEAD, "/chunked-head", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert!(!status_of(&head).contains("stored"), "{}", status_of(&head));
    // A Range miss gets the whole 200 as it streams, and fills the cache...
    let r = get_with(&d, "/chunked", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "0123456789")
    );
    // ...so the next Range request is a 206 from the entry.
    let r = get_with(&d, "/chunked", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::PARTIAL_CONTENT, "01")
    );
    assert!(is_hit(&r));
    assert_eq!(o.hits(), 2);
}
