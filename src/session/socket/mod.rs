//! herald's own WebSocket connection, from the moment the handshake is answered.
//!
//! actix-web still does everything before the upgrade: routing, the Origin, subprotocol, token and
//! admission checks, and the `101` answer, in the ordinary handlers. What it cannot do is give a
//! connection back, and its HTTP/1 dispatcher keeps two 8 KiB buffers per connection for as long as the
//! connection lives: most of the memory of an idle WebSocket. So the client listener is an actix-http
//! service with an upgrade hook ([`upgrade_service`]): a request that asks for an upgrade is handed,
//! with its socket, to the same actix-web application; when the handler answers `101` and attaches an
//! [`Upgrade`], the answer is written, the dispatcher (and its buffers) is dropped, and the raw TCP
//! stream is given to the session:
//!
//! - [`reader::Reader`], a stream added to the connection's actor, reads through one buffer per worker
//!   thread and decodes frames with [`crate::protocol::ws::Decoder`] (limits, masking, UTF-8, close codes);
//! - [`writer::Writer`], one task, writes the session's frames with `writev` straight from their shared
//!   bytes, puts close frames first and lingers after a close the server started.
//!
//! An idle connection then owns no buffer at all, only its state. Any other answer to an upgrade
//! request (a refusal, a 404) is written with `Connection: close` and the socket is closed.

pub mod reader;
pub mod writer;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::{BodySize, BoxBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request};
use actix_service::{fn_factory, fn_service, IntoServiceFactory, Service, ServiceFactory};
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::HttpResponse;
use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub use crate::protocol::ws::{Incoming, WsError};
pub use writer::CloseRequest;

use crate::channel::OutboxReceiver;
use crate::protocol::ws;
use crate::session::output::Output;

/// The socket of an upgraded connection, shared by its reader (in the actor) and its writer task.
pub struct Conn {
    stream: TcpStream,
    /// Kept here rather than in the reader: after the actor stops, the writer lingers with the same
    /// framing.
    decoder: RefCell<ws::Decoder>,
}

/// How a connection reads and writes: from the node's config.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest frame, and message, accepted (`limits.max_frame_bytes`).
    pub max_frame_bytes: usize,
    /// Bytes gathered per `writev` (`session.write_buffer_bytes`).
    pub write_batch_bytes: usize,
    /// Longest wait for the client's close frame after a close the server started
    /// (`session.close_linger_ms`).
    pub linger: Duration,
}

impl Settings {
    pub fn of(config: &crate::config::Config) -> Settings {
        Settings {
            max_frame_bytes: config.limits.max_frame_bytes,
            write_batch_bytes: config.session.write_buffer_bytes,
            linger: Duration::from_millis(config.session.close_linger_ms),
        }
    }
}

/// An upgraded connection, handed to the code that starts its actor.
pub struct Socket {
    conn: Rc<Conn>,
    leftover: BytesMut,
    settings: Settings,
}

impl Socket {
    /// The incoming messages, for `ctx.add_stream`.
    pub fn reader(&mut self) -> reader::Reader {
        let leftover = std::mem::take(&mut self.leftover);
        reader::Reader::new(self.conn.clone(), &leftover)
    }

    /// Starts the task that writes the session's frames (and its close) on the socket.
    pub fn spawn_writer(self, outbox: OutboxReceiver, close: oneshot::Receiver<CloseRequest>) {
        actix_rt::spawn(writer::Writer::new(
            self.conn,
            Output::new(outbox),
            close,
            self.settings.write_batch_bytes,
            self.settings.linger,
        ));
    }
}

type Start = Box<dyn FnOnce(Socket)>;

/// Attached by a handler to its `101` answer: starts the connection's actor once the socket is ours.
pub struct Upgrade {
    start: Start,
    settings: Settings,
}

/// Makes `response` (a `101`) hand the socket to `start` once it is written.
pub fn hand_over(
    response: &mut HttpResponse,
    settings: Settings,
    start: impl FnOnce(Socket) + 'static,
) {
    response.extensions_mut().insert(Upgrade {
        start: Box::new(start),
        settings,
    });
}

/// Why an upgrade request could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    #[error("writing the handshake answer: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the answer's body: {0}")]
    Body(String),
}

impl From<UpgradeError> for actix_http::Response<BoxBody> {
    fn from(_: UpgradeError) -> Self {
        actix_http::Response::internal_server_error()
    }
}

/// The actix-http upgrade hook of the client listener: each worker builds its own instance of the
/// application (`make_app`) and runs every upgrade request through it.
pub fn upgrade_service<F, I, S>(
    make_app: F,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, Codec>),
    Config = (),
    Response = (),
    Error = UpgradeError,
    InitError = (),
>
where
    F: Fn() -> I + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    fn_factory(move || {
        let factory = make_app().into_factory();
        async move {
            let app = Rc::new(factory.new_service(AppConfig::default()).await?);
            Ok::<_, ()>(fn_service(move |(req, framed)| {
                let app = app.clone();
                async move { upgrade(&*app, req, framed).await }
            }))
        }
    })
}

/// Runs one upgrade request through the application and writes its answer; a `101` with an
/// [`Upgrade`] attached gives the socket to the connection's actor.
async fn upgrade<S>(
    app: &S,
    req: Request,
    mut framed: Framed<TcpStream, Codec>,
) -> Result<(), UpgradeError>
where
    S: Service<Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    let mut response = match app.call(req).await {
        Ok(res) => res.into_parts().1,
        Err(e) => e.error_response(),
    };
    let upgrade = response.extensions_mut().remove::<Upgrade>();
    let (mut head, body) = actix_http::Response::from(response).into_parts();
    let upgraded = upgrade.filter(|_| head.status() == actix_http::StatusCode::SWITCHING_PROTOCOLS);
    let Some(upgrade) = upgraded else {
        // Anything but an upgrade ends the connection: its answer, then close.
        head.head_mut().set_connection_type(ConnectionType::Close);
        let body = actix_http::body::to_bytes(body)
            .await
            .map_err(|e| UpgradeError::Body(e.to_string()))?;
        send(
            &mut framed,
            Message::Item((head, BodySize::Sized(body.len() as u64))),
        )?;
        send(&mut framed, Message::Chunk(Some(body)))?;
        send(&mut framed, Message::Chunk(None))?;
        return flush(&mut framed).await;
    };
    send(&mut framed, Message::Item((head, BodySize::None)))?;
    flush(&mut framed).await?;
    let parts = framed.into_parts();
    let socket = Socket {
        conn: Rc::new(Conn {
            stream: parts.io,
            decoder: RefCell::new(ws::Decoder::new(upgrade.settings.max_frame_bytes)),
        }),
        leftover: parts.read_buf,
        settings: upgrade.settings,
    };
    (upgrade.start)(socket);
    Ok(())
}

fn send(
    framed: &mut Framed<TcpStream, Codec>,
    msg: Message<(actix_http::Response<()>, BodySize)>,
) -> Result<(), UpgradeError> {
    std::pin::Pin::new(framed).write(msg)?;
    Ok(())
}

async fn flush(framed: &mut Framed<TcpStream, Codec>) -> Result<(), UpgradeError> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *framed).flush(cx)).await?;
    Ok(())
}
