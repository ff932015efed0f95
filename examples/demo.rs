//! The demo: starts two small origin servers on 127.0.0.1:9001 and :9002,
//! then sluice with `config/sluice.toml` in front of them.
//!
//! ```text
//! cargo run --release --example demo                 # origins + sluice
//! curl -i http://127.0.0.1:8080/
//! cargo run --release --example demo -- --origin-only 127.0.0.1:9001   # origins only (benchmarks)
//! ```
//!
//! Each origin answers every request with a short text naming itself and
//! echoing the method, path and forwarding headers it received, except
//! `/static/page20k` and `/nostore/page20k`: a fixed ~20 KiB HTML page,
//! cacheable for a minute and `no-store` respectively (for
//! `benches/cache-load.sh`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// A fixed HTML page of about 20 KiB: a product table whose rows vary
/// (pseudo-random words and numbers), so it compresses like real markup
/// rather than like a run of one repeated line.
fn page20k() -> Bytes {
    static PAGE: OnceLock<Bytes> = OnceLock::new();
    PAGE.get_or_init(|| {
        const WORDS: [&str; 16] = [
            "copper", "kettle", "linen", "harbor", "maple", "signal", "velvet", "orbit", "granite",
            "meadow", "lantern", "cobalt", "saffron", "thistle", "ember", "quartz",
        ];
        let mut seed: u32 = 0x2545_f491;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed >> 8
        };
        let mut html = String::from(
            "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
             <title>Catalogue</title></head>\n<body>\n<h1>Catalogue</h1>\n<table>\n",
        );
        let mut row = 0;
        while html.len() < 20 * 1024 - 40 {
            row += 1;
            let (a, b, c) = (next(), next(), next());
            html.push_str(&format!(
                "<tr class=\"r{}\"><td>{row}</td><td><a href=\"/item/{}\">{} {}</a></td>\
                 <td>{}.{:02}</td></tr>\n",
                row % 2,
                a % 100_000,
                WORDS[(a % 16) as usize],
                WORDS[(b % 16) as usize],
                b % 500,
                c % 100,
            ));
        }
        html.push_str("</table>\n</body>\n</html>\n");
        Bytes::from(html)
    })
    .clone()
}

async fn answer(
    origin: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let page = match req.uri().path() {
        "/static/page20k" => Some("public, max-age=60"),
        "/nostore/page20k" => Some("no-store"),
        _ => None,
    };
    if let Some(cache_control) = page {
        let _ = req.into_body().collect().await?;
        return Ok(Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header("cache-control", cache_control)
            .header("x-origin", origin.to_string())
            .body(Full::new(page20k()))
            .unwrap_or_default());
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let text = format!(
        "hello from origin {origin}\n{} {} {:?}\nhost: {}\nx-forwarded-for: {}\nvia: {}\n",
        req.method(),
        req.uri(),
        req.version(),
        header("host"),
        header("x-forwarded-for"),
        header("via"),
    );
    // Under /static/ the demo says its answers may be cached for a minute
    // (the shipped config caches that route).
    let cache_control = if req.uri().path().starts_with("/static/") {
        "public, max-age=60"
    } else {
        "no-store"
    };
    // Drain any request body so the connection can be reused.
    let _ = req.into_body().collect().await?;
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", cache_control)
        .header("x-origin", origin.to_string())
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default())
}

async fn origin(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("demo origin listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(addr, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn start_origins(addrs: Vec<SocketAddr>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("demo origin: {e}");
                std::process::exit(1);
            }
        };
        rt.block_on(async move {
            let tasks: Vec<_> = addrs.into_iter().map(|a| tokio::spawn(origin(a))).collect();
            for t in tasks {
                if let Ok(Err(e)) = t.await {
                    eprintln!("demo origin: {e}");
                    std::process::exit(1);
                }
            }
        });
    })
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--origin-only") {
        let addrs: Vec<SocketAddr> = args[1..].iter().filter_map(|a| a.parse().ok()).collect();
        if addrs.is_empty() {
            eprintln!("usage: demo --origin-only ADDR [ADDR...]");
            return std::process::ExitCode::FAILURE;
        }
        let _ = start_origins(addrs).join();
        return std::process::ExitCode::SUCCESS;
    }

    let path = PathBuf::from(args.first().map_or("config/sluice.toml", String::as_str));
    let config = match sluice::load_config(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let addrs = sluice::upstream_addrs(&config);
    sluice::init_logging(&config);
    start_origins(addrs);
    eprintln!("try: curl -i http://127.0.0.1:8080/   or   curl -ik https://localhost:8443/");
    match sluice::run(path, config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
