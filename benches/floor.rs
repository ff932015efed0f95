//! The floor for `benches/race.sh`: hyper's HTTP/1.1 server alone, on one
//! current-thread tokio runtime, answering every request with the same 1 KiB
//! body and the headers a cached 1 KiB hit carries (content-type,
//! cache-control; content-length set by hyper). No routing, no cache, no
//! header work: what this machine does for the same bytes with hyper only.
//!
//! ```text
//! cargo build --release --example floor
//! target/release/examples/floor [ADDR]        # default 127.0.0.1:19280
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| std::io::Error::other(format!("{a}: {e}")))?,
        None => SocketAddr::from(([127, 0, 0, 1], 19280)),
    };
    let body = Bytes::from(vec![b'x'; 1024]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("floor listening on http://{addr}");
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: say so, back off, go on.
                    eprintln!("floor: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            // As sluice's listener does.
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let res = Response::builder()
                    .header("content-type", "text/plain")
                    .header("cache-control", "public, max-age=600")
                    .body(Full::new(body.clone()))
                    .expect("static response");
                async move { Ok::<_, Infallible>(res) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
