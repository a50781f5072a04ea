//! herald-client's `close()` finishes the WebSocket closing handshake: after its Close frame it keeps the
//! socket open until the server's Close arrives (RFC 6455 5.5.1), instead of dropping it at once (which the
//! server saw as "payload reached EOF", a protocol error).
//!
//! The server here is a bare tokio-tungstenite peer, so the test controls when the server answers.

mod client_support;

use std::time::Duration;

use client_support::fast;
use futures_util::{SinkExt, StreamExt};
use herald_client::Client;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Callback = fn(&Request, Response) -> Result<Response, ErrorResponse>;

/// The client asks for the JSON subprotocol; a server must name it back.
#[allow(clippy::result_large_err)] // the signature tungstenite's accept callback requires
fn echo_protocol(_req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("herald.v1.json"),
    );
    Ok(resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_the_servers_close_frame() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, echo_protocol as Callback)
            .await
            .unwrap();
        let welcome = json!({"v":1,"type":"welcome","ts":1,"session":"S","node":"N",
                             "heartbeat_ms":25000,"encoding":"json","user":null});
        ws.send(Message::Text(welcome.to_string().into()))
            .await
            .unwrap();
        // Wait for the client's Close.
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => {
                    assert_eq!(f.map(|f| u16::from(f.code)), Some(1000));
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended before the client's Close: {other:?}"),
            }
        }
        // Hold our answer back: the client must keep the socket open meanwhile.
        let mut probe = [0u8; 1];
        let peeked =
            tokio::time::timeout(Duration::from_millis(300), ws.get_ref().peek(&mut probe)).await;
        assert!(
            peeked.is_err(),
            "the client dropped the socket before the server's Close: {peeked:?}"
        );
        // Now answer (tungstenite queued the Close reply); the client reads it and then closes.
        let end = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
        assert!(
            matches!(end, Ok(None) | Ok(Some(Err(_)))),
            "the connection ends after the handshake: {end:?}"
        );
    });
    let options = fast(50, 200, Some(1));
    let connect = Client::connect(&url, herald_client::no_token(), options);
    let (client, _states) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("connects in time")
        .expect("connects");
    tokio::time::timeout(Duration::from_secs(5), client.close())
        .await
        .expect("close returns");
    server.await.unwrap();
}
