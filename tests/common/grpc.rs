//! A real gRPC server and client (tonic) for the tests: an h2c server on
//! 127.0.0.1 with a small `test.Echo` service (unary, client streaming,
//! server streaming, bidirectional streaming, a call that fails with a
//! status and message, a slow call) and the standard `grpc.health.v1.Health` service, whose
//! serving status a test flips. The messages are derived by hand with
//! prost, so no `protoc` is needed.
//!
//! Declared by the test files that use it (`#[path = "common/grpc.rs"]`),
//! so that the other test binaries do not compile tonic's code.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_prost::ProstCodec;

/// The one message every `test.Echo` method sends and receives.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Note {
    #[prost(string, tag = "1")]
    pub text: String,
    /// How many answers `Stream` sends.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// How long `Slow` waits before answering, in milliseconds.
    #[prost(uint64, tag = "3")]
    pub delay_ms: u64,
}

impl Note {
    pub fn text(text: &str) -> Note {
        Note {
            text: text.to_string(),
            ..Note::default()
        }
    }
}

/// `Fail` answers with this code...
pub const FAIL_CODE: Code = Code::FailedPrecondition;
/// ...and a trailer of its own besides `grpc-status` and `grpc-message`.
pub const FAIL_TRAILER: &str = "x-fail-detail";

pub const UNARY: &str = "/test.Echo/Unary";
pub const STREAM: &str = "/test.Echo/Stream";
pub const COLLECT: &str = "/test.Echo/Collect";
pub const CHAT: &str = "/test.Echo/Chat";
pub const FAIL: &str = "/test.Echo/Fail";
pub const SLOW: &str = "/test.Echo/Slow";

/// A running gRPC server; stopped on drop.
pub struct GrpcServer {
    pub addr: SocketAddr,
    health: tonic_health::server::HealthReporter,
    stop: Option<oneshot::Sender<()>>,
}

impl GrpcServer {
    /// Starts the server on an ephemeral port; the whole server (service
    /// `""`) and `test.Echo` report SERVING.
    pub async fn start() -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("test.Echo", ServingStatus::Serving)
            .await;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = Services {
            health: health_service,
        };
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        GrpcServer {
            addr,
            health,
            stop: Some(stop),
        }
    }

    /// Sets what `Health/Check` answers for `service` (`""`: the server).
    pub async fn set_serving(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status(service, status).await;
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Routes a call to `grpc.health.v1.Health` or to `test.Echo` by path.
#[derive(Clone)]
struct Services<H> {
    health: H,
}

impl<H> NamedService for Services<H> {
    const NAME: &'static str = "test.Echo";
}

impl<H> Service<http::Request<Body>> for Services<H>
where
    H: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            let mut health = self.health.clone();
            return Box::pin(async move { health.call(req).await });
        }
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<Note, Note>::default());
            Ok(match req.uri().path() {
                UNARY => grpc.unary(Unary, req).await,
                SLOW => grpc.unary(Slow, req).await,
                FAIL => grpc.unary(Fail, req).await,
                STREAM => grpc.server_streaming(Fanout, req).await,
                COLLECT => grpc.client_streaming(Collect, req).await,
                CHAT => grpc.streaming(Chat, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

type NoteStream = Pin<Box<dyn Stream<Item = Result<Note, Status>> + Send>>;

/// `Unary`: answers `echo: TEXT`.
struct Unary;

impl tonic::server::UnaryService<Note> for Unary {
    type Response = Note;
    type Future = BoxFuture<Response<Note>, Status>;
    fn call(&mut self, req: Request<Note>) -> Self::Future {
        let text = format!("echo: {}", req.into_inner().text);
        Box::pin(async move { Ok(Response::new(Note::text(&text))) })
    }
}

/// `Slow`: answers like `Unary` after `delay_ms`.
struct Slow;

impl tonic::server::UnaryService<Note> for Slow {
    type Response = Note;
    type Future = BoxFuture<Response<Note>, Status>;
    fn call(&mut self, req: Request<Note>) -> Self::Future {
        let note = req.into_inner();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(note.delay_ms)).await;
            Ok(Response::new(Note::text(&format!("slept: {}", note.text))))
        })
    }
}

/// `Fail`: [`FAIL_CODE`] with `refused: TEXT` and a [`FAIL_TRAILER`].
struct Fail;

impl tonic::server::UnaryService<Note> for Fail {
    type Response = Note;
    type Future = BoxFuture<Response<Note>, Status>;
    fn call(&mut self, req: Request<Note>) -> Self::Future {
        let text = req.into_inner().text;
        Box::pin(async move {
            let mut status = Status::new(FAIL_CODE, format!("refused: {text}"));
            status
                .metadata_mut()
                .insert(FAIL_TRAILER, "kept".parse().expect("ascii"));
            Err(status)
        })
    }
}

/// `Stream`: `count` answers, `TEXT 0`, `TEXT 1`, ...
struct Fanout;

impl tonic::server::ServerStreamingService<Note> for Fanout {
    type Response = Note;
    type ResponseStream = NoteStream;
    type Future = BoxFuture<Response<NoteStream>, Status>;
    fn call(&mut self, req: Request<Note>) -> Self::Future {
        let note = req.into_inner();
        Box::pin(async move {
            let notes = (0..note.count).map(move |i| Ok(Note::text(&format!("{} {i}", note.text))));
            Ok(Response::new(
                Box::pin(tokio_stream::iter(notes)) as NoteStream
            ))
        })
    }
}

/// `Collect`: one answer once the request stream ends, its texts joined
/// with `+`.
struct Collect;

impl tonic::server::ClientStreamingService<Note> for Collect {
    type Response = Note;
    type Future = BoxFuture<Response<Note>, Status>;
    fn call(&mut self, req: Request<Streaming<Note>>) -> Self::Future {
        let mut incoming = req.into_inner();
        Box::pin(async move {
            let mut texts = Vec::new();
            while let Some(note) = incoming.message().await? {
                texts.push(note.text);
            }
            Ok(Response::new(Note::text(&texts.join("+"))))
        })
    }
}

/// `Chat`: answers each message as it arrives with `echo: TEXT`.
struct Chat;

impl tonic::server::StreamingService<Note> for Chat {
    type Response = Note;
    type ResponseStream = NoteStream;
    type Future = BoxFuture<Response<NoteStream>, Status>;
    fn call(&mut self, req: Request<Streaming<Note>>) -> Self::Future {
        let incoming = req.into_inner();
        Box::pin(async move {
            let answers =
                incoming.map(|note| note.map(|n| Note::text(&format!("echo: {}", n.text))));
            Ok(Response::new(Box::pin(answers) as NoteStream))
        })
    }
}

/// Terminates TLS (with `cert` / `key`, offering ALPN `h2`) on an
/// ephemeral port and relays each connection's bytes to the gRPC server
/// at `backend`: the server behind TLS, for pools with `[pool.NAME.tls]`.
/// Stops with the returned task.
pub async fn tls_front(
    cert: &std::path::Path,
    key: &std::path::Path,
    backend: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut config = crate::common::tls_server_config(cert, key, None);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, task)
}

// ---------------------------------------------------------------- client --

/// A gRPC client over h2c to `addr` (a [`GrpcServer`], or sluice in front
/// of one).
pub struct GrpcClient {
    inner: tonic::client::Grpc<Channel>,
}

impl GrpcClient {
    pub async fn connect(addr: SocketAddr) -> GrpcClient {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        GrpcClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    async fn ready(&mut self) {
        self.inner.ready().await.expect("channel ready");
    }

    /// A unary call of `method` (`UNARY`, `SLOW`, `FAIL`).
    pub async fn unary(&mut self, method: &'static str, note: Note) -> Result<Note, Status> {
        self.unary_request(method, Request::new(note)).await
    }

    /// A unary call with the request's metadata set by the caller (say,
    /// `grpc-timeout`).
    pub async fn unary_request(
        &mut self,
        method: &'static str,
        req: Request<Note>,
    ) -> Result<Note, Status> {
        self.ready().await;
        let codec = ProstCodec::<Note, Note>::default();
        self.inner
            .unary(req, PathAndQuery::from_static(method), codec)
            .await
            .map(Response::into_inner)
    }

    /// `Stream`: every answer to one request, in order.
    pub async fn stream(&mut self, text: &str, count: u32) -> Result<Vec<String>, Status> {
        self.ready().await;
        let codec = ProstCodec::<Note, Note>::default();
        let note = Note {
            text: text.to_string(),
            count,
            ..Note::default()
        };
        let mut answers = self
            .inner
            .server_streaming(Request::new(note), PathAndQuery::from_static(STREAM), codec)
            .await?
            .into_inner();
        let mut texts = Vec::new();
        while let Some(note) = answers.message().await? {
            texts.push(note.text);
        }
        Ok(texts)
    }

    /// `Collect`: sends `texts` as a stream, returns the one answer.
    pub async fn collect(&mut self, texts: &[&str]) -> Result<String, Status> {
        self.ready().await;
        let codec = ProstCodec::<Note, Note>::default();
        let notes: Vec<Note> = texts.iter().map(|t| Note::text(t)).collect();
        self.inner
            .client_streaming(
                Request::new(tokio_stream::iter(notes)),
                PathAndQuery::from_static(COLLECT),
                codec,
            )
            .await
            .map(|r| r.into_inner().text)
    }

    /// Opens a `Chat`: send notes with [`Chat::say`], which waits for each
    /// answer before the next is sent, so the call is proved to stream
    /// both ways at once.
    pub async fn chat(&mut self) -> Result<ChatCall, Status> {
        self.ready().await;
        let codec = ProstCodec::<Note, Note>::default();
        let (tx, rx) = mpsc::channel(4);
        let answers = self
            .inner
            .streaming(
                Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(CHAT),
                codec,
            )
            .await?
            .into_inner();
        Ok(ChatCall {
            tx: Some(tx),
            answers,
        })
    }
}

/// A bidirectional `Chat` call in progress.
pub struct ChatCall {
    tx: Option<mpsc::Sender<Note>>,
    answers: Streaming<Note>,
}

impl ChatCall {
    /// Sends `text` and waits for its answer.
    pub async fn say(&mut self, text: &str) -> Result<String, Status> {
        let tx = self.tx.as_ref().expect("call still open");
        tx.send(Note::text(text))
            .await
            .expect("request stream open");
        match self.answers.message().await? {
            Some(note) => Ok(note.text),
            None => Err(Status::internal("the answer stream ended")),
        }
    }

    /// Ends the request stream and waits for the call's end: `Ok` when
    /// the server closed it with status OK and sent nothing more.
    pub async fn finish(mut self) -> Result<(), Status> {
        self.tx = None;
        match self.answers.message().await? {
            None => Ok(()),
            Some(extra) => Err(Status::internal(format!(
                "unexpected answer {}",
                extra.text
            ))),
        }
    }
}
