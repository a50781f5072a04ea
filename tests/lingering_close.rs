//! A close the server starts reaches a client that is still sending: herald sends the close frame, keeps
//! reading and discarding until the client's close frame (or `session.close_linger_ms`), and only then
//! drops the socket. Dropping it at once makes the kernel answer the client's unread data with a reset,
//! and the client sees an abnormal closure (and reconnects) instead of 1009, 1002 or 4000.

mod common;

use std::time::Duration;

use common::raw::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as TCloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A node with a 64 KiB frame limit and the given linger.
fn node(linger_ms: u64) -> (herald::server::RunningNode, tempfile::TempDir) {
    let (mut cfg, dir) = test_config();
    cfg.limits.max_frame_bytes = 64 * 1024;
    cfg.session.close_linger_ms = linger_ms;
    (start(cfg), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_an_8_mib_message_gets_1009_not_a_reset() {
    let (node, _dir) = node(5_000);
    for round in 0..3 {
        let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
        // tungstenite writes the whole 8 MiB frame before it reads anything: herald refuses the frame on
        // its header, long before the client is done sending it.
        let sent = c.ws.send(Message::Binary(vec![b'x'; 8 << 20].into())).await;
        assert!(
            sent.is_ok(),
            "round {round}: the client could send it all: {sent:?}"
        );
        let mut disconnect = None;
        let close = loop {
            match tokio::time::timeout(TIMEOUT, c.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    disconnect = Some(serde_json::from_str::<serde_json::Value>(&t).unwrap())
                }
                Ok(Some(Ok(Message::Close(f)))) => break f,
                Ok(Some(Ok(_))) => {}
                other => panic!("round {round}: no close frame, got {other:?}"),
            }
        };
        let close = close.expect("the close frame carries a code");
        assert_eq!(close.code, TCloseCode::Size, "round {round}: {close:?}");
        let d = disconnect.expect("a disconnect frame comes first");
        assert_eq!(d["code"], 1009, "{d}");
        assert_eq!(d["reconnect"], false, "{d}");
    }
    shutdown(node).await;
}

/// Writes `junk` forever (until the socket fails) on a raw connection's write half.
fn keep_sending(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    junk: Vec<u8>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut sent = 0;
        while w.write_all(&junk).await.is_ok() {
            sent += junk.len();
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_after_a_protocol_error_gets_1002() {
    let (node, _dir) = node(2_000);
    let ws = raw_connect(node.client_addr).await;
    let (mut reader, w) = ws.split();
    // An unmasked frame (1002), then megabytes of more frames.
    let mut junk = encode_frame(true, 0x1, br#"{"v":1,"type":"ping","id":1}"#, false);
    junk.extend(encode_frame(true, 0x2, &vec![7; 60_000], true).repeat(20));
    let sender = keep_sending(w, junk);
    let closing = reader.read_to_close().await;
    assert!(
        closing.close_frame,
        "a close frame, not a reset: {closing:?}"
    );
    closing.assert_code(1002, false);
    // The framing is lost after a malformed header: herald reads until the linger ends, then drops.
    let waited = reader.time_to_eof(Duration::from_secs(10)).await;
    assert!(
        waited >= Duration::from_millis(1_000),
        "dropped after {waited:?}"
    );
    let sent = sender.await.unwrap();
    assert!(
        sent > 2_400_000,
        "the client kept sending while herald lingered: {sent} bytes"
    );
    shutdown(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_garbage_gets_4000() {
    let (mut cfg, _dir) = test_config();
    cfg.limits.max_bad_frames = 3;
    cfg.limits.messages_per_second = 1_000_000;
    cfg.limits.messages_burst = 1_000_000;
    let node = start(cfg);
    let ws = raw_connect(node.client_addr).await;
    let (mut reader, w) = ws.split();
    let junk = encode_frame(true, 0x1, b"not json at all", true).repeat(5_000);
    let sender = keep_sending(w, junk);
    let closing = reader.read_to_close().await;
    assert!(
        closing.close_frame,
        "a close frame, not a reset: {closing:?}"
    );
    closing.assert_code(4000, false);
    drop(reader);
    sender.abort();
    shutdown(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_dropped_as_soon_as_the_client_answers_the_close() {
    // A long linger: only the client's close frame can end it early.
    let (node, _dir) = node(30_000);
    let ws = raw_connect(node.client_addr).await;
    let (mut reader, mut w) = ws.split();
    // The header and the first 100 KiB of a 1 MiB frame (over the limit), then nothing more yet.
    let big = encode_frame(true, 0x2, &vec![0x88; 1 << 20], true);
    w.write_all(&big[..100 * 1024]).await.unwrap();
    let closing = reader.read_to_close().await;
    assert_eq!(closing.code, Some(1009), "{closing:?}");
    // The rest of the refused frame (its payload is full of bytes that look like close headers), then
    // the close frame that answers herald's.
    w.write_all(&big[100 * 1024..]).await.unwrap();
    w.write_all(&encode_frame(true, 0x8, &1009u16.to_be_bytes(), true))
        .await
        .unwrap();
    let waited = reader.time_to_eof(Duration::from_secs(20)).await;
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    shutdown(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_is_dropped_after_the_linger() {
    let (node, _dir) = node(500);
    let mut ws = raw_connect(node.client_addr).await;
    ws.write_frame(true, 0x2, &vec![0; 100_000], true).await;
    let (mut reader, _w) = ws.split();
    let closing = reader.read_to_close().await;
    assert_eq!(closing.code, Some(1009), "{closing:?}");
    // The client reads the close frame and never answers it.
    let waited = reader.time_to_eof(Duration::from_secs(10)).await;
    assert!(
        waited >= Duration::from_millis(300),
        "dropped after {waited:?}, before the linger"
    );
    shutdown(node).await;
}
