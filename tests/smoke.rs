mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let origin = Origin::hello().await;
    let d = Daemon::start(&simple_config(&[origin.addr], ""));
    let r = get(d.addr("http"), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("origin {}", origin.addr.port()));
    let mut h2 = h2c_conn(d.addr("http")).await;
    let r = h2_send(
        &mut h2,
        h2_request(http::Method::GET, "http://localhost/x", empty()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 2);
}
