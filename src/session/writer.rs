//! The one task that owns a connection's `actix_ws::Session` and writes to the socket.
//!
//! Everything a connection sends goes through its bounded outbox, filled with `try_send` by the session
//! actor and by channel actors, so nobody ever awaits a socket on their own thread. This task drains the
//! outbox in order; actix-ws encodes every frame that is ready into one buffer, so frames queued together
//! leave in one write. A close request takes priority over queued frames: a slow consumer is not made to
//! read its backlog before it learns it is being cut off.

use std::time::Duration;

use actix_ws::{CloseCode as WsCloseCode, CloseReason};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::Outgoing;

/// How long a close may take before the socket is dropped without one.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A request to close the connection: an optional last frame (the `disconnect` frame), then a close frame.
pub struct CloseRequest {
    pub last: Option<Outgoing>,
    pub code: u16,
    pub reason: String,
}

async fn write(ws: &mut actix_ws::Session, frame: Outgoing) -> Result<(), actix_ws::Closed> {
    match frame {
        Outgoing::Text(t) => ws.text(t).await,
        Outgoing::Binary(b) => ws.binary(b).await,
        Outgoing::Ping => ws.ping(b"").await,
        Outgoing::Pong(p) => ws.pong(&p).await,
    }
}

/// What ended a wait of the writer.
enum Step {
    Frame(Option<Outgoing>),
    Wrote(Result<(), actix_ws::Closed>),
    Close(Result<CloseRequest, oneshot::error::RecvError>),
}

/// Drains `outbox` into `ws` until the connection closes or a close is requested. A close request also
/// interrupts a write that is waiting for room (a client that stopped reading).
pub async fn run(
    mut ws: actix_ws::Session,
    mut outbox: mpsc::Receiver<Outgoing>,
    mut close: oneshot::Receiver<CloseRequest>,
) {
    loop {
        let step = tokio::select! {
            biased;
            req = &mut close => Step::Close(req),
            frame = outbox.recv() => Step::Frame(frame),
        };
        let step = match step {
            Step::Frame(Some(frame)) => {
                let write = write(&mut ws, frame);
                tokio::select! {
                    biased;
                    req = &mut close => Step::Close(req),
                    done = write => Step::Wrote(done),
                }
            }
            other => other,
        };
        match step {
            Step::Frame(None) | Step::Wrote(Err(_)) => return,
            Step::Wrote(Ok(())) | Step::Frame(Some(_)) => {}
            Step::Close(req) => return close_with(ws, req).await,
        }
    }
}

async fn close_with(
    mut ws: actix_ws::Session,
    req: Result<CloseRequest, oneshot::error::RecvError>,
) {
    let Ok(req) = req else {
        // The session actor is gone without asking for a close: the peer went away.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
        return;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async move {
        if let Some(last) = req.last {
            let _ = write(&mut ws, last).await;
        }
        let reason = CloseReason {
            code: WsCloseCode::from(req.code),
            description: Some(req.reason),
        };
        let _ = ws.close(Some(reason)).await;
    })
    .await;
}
