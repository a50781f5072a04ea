//! A tiny in-memory herald stand-in (JSON only) for testing the client's reconnect, resume and
//! de-duplication logic without the real server.

#![allow(dead_code, clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as Ws;

#[derive(Default)]
pub struct State {
    pub epoch: String,
    pub log: HashMap<String, Vec<Value>>,
    pub keys: HashMap<(String, String), Value>,
    pub subs: HashMap<u64, (mpsc::UnboundedSender<Ws>, HashSet<String>)>,
    pub next_conn: u64,
    pub connections: u64,
    pub publishes_seen: u64,
    /// When set, the next connection gets this close code (after a disconnect frame) right after
    /// the welcome.
    pub close_next: Option<(u16, bool)>,
    /// When set, every connection is closed like `close_next`, right after the welcome.
    pub close_always: Option<(u16, bool)>,
    /// Drop a publish's reply (after storing) every N publishes (0 = never).
    pub lose_reply_every: u64,
}

pub struct Mock {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    kill: watch::Sender<u64>,
    drain: watch::Sender<u16>,
}

impl Mock {
    pub async fn start(heartbeat_ms: u64, ping: bool) -> Mock {
        let state = Arc::new(Mutex::new(State {
            epoch: "E1".into(),
            ..Default::default()
        }));
        Self::start_shared(heartbeat_ms, ping, state).await
    }

    /// A mock serving `state`: several mocks sharing one state are the nodes of a cluster (one
    /// channel log, a publish reaches the subscribers of every node).
    pub async fn start_shared(heartbeat_ms: u64, ping: bool, state: Arc<Mutex<State>>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (kill, kill_rx) = watch::channel(0u64);
        let (drain, drain_rx) = watch::channel(0u16);
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let st = st.clone();
                let kill_rx = kill_rx.clone();
                let drain_rx = drain_rx.clone();
                tokio::spawn(serve(tcp, st, kill_rx, drain_rx, heartbeat_ms, ping));
            }
        });
        Mock {
            port,
            state,
            kill,
            drain,
        }
    }

    /// A fresh state for [`Mock::start_shared`].
    pub fn shared_state() -> Arc<Mutex<State>> {
        Arc::new(Mutex::new(State {
            epoch: "E1".into(),
            ..Default::default()
        }))
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Abruptly drops every open connection.
    pub fn kill_all(&self) {
        self.kill.send_modify(|g| *g += 1);
    }

    /// Closes every open connection of this mock like a node that shuts down: a `disconnect` frame
    /// (`reconnect: true`) and a close frame with `code` (1001 going away).
    pub fn drain_all(&self, code: u16) {
        self.drain.send_replace(code);
    }

    /// Publishes from the "server" side.
    pub fn publish(&self, channel: &str, data: Value) {
        let mut st = self.state.lock().expect("lock");
        publish_locked(&mut st, channel, data, None);
    }
}

fn now() -> u64 {
    0
}

fn publish_locked(st: &mut State, channel: &str, data: Value, key: Option<&str>) -> Value {
    if let Some(k) = key {
        if let Some(ack) = st.keys.get(&(channel.to_string(), k.to_string())) {
            return ack.clone();
        }
    }
    let log = st.log.entry(channel.to_string()).or_default();
    let offset = log.len() as u64 + 1;
    let id = format!("M{:06}-{channel}-{}", offset, st.epoch);
    let msg = json!({"channel":channel,"id":id,"epoch":st.epoch,"offset":offset,"data":data});
    log.push(msg.clone());
    let ack = json!({"id":id,"epoch":st.epoch,"offset":offset});
    if let Some(k) = key {
        st.keys
            .insert((channel.to_string(), k.to_string()), ack.clone());
    }
    let mut frame = msg.clone();
    frame["v"] = json!(1);
    frame["type"] = json!("message");
    frame["ts"] = json!(now());
    let text = frame.to_string();
    for (tx, chans) in st.subs.values() {
        if chans.contains(channel) {
            let _ = tx.send(Ws::text(text.clone()));
        }
    }
    ack
}

async fn serve(
    tcp: tokio::net::TcpStream,
    st: Arc<Mutex<State>>,
    mut kill: watch::Receiver<u64>,
    mut drain: watch::Receiver<u16>,
    heartbeat_ms: u64,
    ping: bool,
) {
    let cb = |req: &Request, mut resp: Response| {
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            if p.to_str().unwrap_or("").contains("herald.v1.json") {
                resp.headers_mut().insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static("herald.v1.json"),
                );
            }
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
        return;
    };
    kill.borrow_and_update();
    drain.borrow_and_update();
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Ws>();
    let conn = {
        let mut st = st.lock().expect("lock");
        st.next_conn += 1;
        st.connections += 1;
        let c = st.next_conn;
        st.subs.insert(c, (tx.clone(), HashSet::new()));
        c
    };
    let welcome = json!({"v":1,"type":"welcome","ts":now(),"session":format!("S{conn}"),"node":"N","heartbeat_ms":heartbeat_ms,"encoding":"json","user":null});
    let _ = tx.send(Ws::text(welcome.to_string()));
    let close_now = {
        let mut g = st.lock().expect("lock");
        g.close_next.take().or(g.close_always)
    };
    if let Some((code, reconnect)) = close_now {
        let d = json!({"v":1,"type":"disconnect","ts":now(),"code":code,"reason":"test","reconnect":reconnect});
        let _ = tx.send(Ws::text(d.to_string()));
        let _ = tx.send(Ws::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: "test".into(),
            },
        )));
    }
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(heartbeat_ms.max(1)));
    loop {
        tokio::select! {
            _ = kill.changed() => break,
            _ = drain.changed() => {
                let code = *drain.borrow_and_update();
                let d = json!({"v":1,"type":"disconnect","ts":now(),"code":code,"reason":"going away","reconnect":true});
                let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: code.into(),
                    reason: "going away".into(),
                };
                let _ = sink.send(Ws::text(d.to_string())).await;
                let _ = sink.send(Ws::Close(Some(close))).await;
                // Finish the closing handshake: a socket closed with unread data is reset, and the
                // client would see the reset instead of the close code.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Ws::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
                break;
            }
            out = rx.recv() => match out {
                Some(m) => {
                    let is_close = matches!(m, Ws::Close(_));
                    if sink.send(m).await.is_err() || is_close { break; }
                }
                None => break,
            },
            _ = ticker.tick(), if ping => {
                if sink.send(Ws::Ping(vec![].into())).await.is_err() { break; }
            }
            inc = stream.next() => match inc {
                Some(Ok(Ws::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    handle(&st, conn, &tx, v);
                }
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    st.lock().expect("lock").subs.remove(&conn);
}

fn handle(st: &Arc<Mutex<State>>, conn: u64, tx: &mpsc::UnboundedSender<Ws>, v: Value) {
    let id = v["id"].clone();
    let ch = v["channel"].as_str().unwrap_or("").to_string();
    let mut st = st.lock().expect("lock");
    let reply = |result: Value| json!({"v":1,"type":"reply","ts":now(),"id":id,"result":result});
    match v["type"].as_str().unwrap_or("") {
        "subscribe" => {
            let log = st.log.get(&ch).cloned().unwrap_or_default();
            let head = log.len() as u64;
            let mut out = vec![];
            let res = if v.get("since").is_some() {
                let ok = v["since"]["epoch"].as_str() == Some(st.epoch.as_str());
                let from = v["since"]["offset"].as_u64().unwrap_or(0);
                if ok && from <= head {
                    for m in &log[from as usize..] {
                        let mut f = m.clone();
                        f["v"] = json!(1);
                        f["type"] = json!("message");
                        out.push(f);
                    }
                    json!({"channel":ch,"epoch":st.epoch,"offset":head,"recovered":true,"replayed":out.len()})
                } else {
                    json!({"channel":ch,"epoch":st.epoch,"offset":head,"recovered":false,"replayed":0})
                }
            } else {
                json!({"channel":ch,"epoch":st.epoch,"offset":head})
            };
            let _ = tx.send(Ws::text(reply(res).to_string()));
            for f in out {
                let _ = tx.send(Ws::text(f.to_string()));
            }
            if let Some((_, chans)) = st.subs.get_mut(&conn) {
                chans.insert(ch);
            }
        }
        "unsubscribe" => {
            if let Some((_, chans)) = st.subs.get_mut(&conn) {
                chans.remove(&ch);
            }
            let _ = tx.send(Ws::text(reply(json!({})).to_string()));
        }
        "publish" => {
            st.publishes_seen += 1;
            let key = v["key"].as_str().map(str::to_string);
            let ack = publish_locked(&mut st, &ch, v["data"].clone(), key.as_deref());
            let every = st.lose_reply_every;
            if every == 0 || !st.publishes_seen.is_multiple_of(every) {
                let _ = tx.send(Ws::text(reply(ack).to_string()));
            }
        }
        "presence" => {
            let _ = tx.send(Ws::text(
                reply(json!({"channel":ch,"members":[]})).to_string(),
            ));
        }
        "history" => {
            let log = st.log.get(&ch).cloned().unwrap_or_default();
            let head = log.len() as u64;
            let res = json!({"channel":ch,"epoch":st.epoch,"head":head,"oldest":1,"messages":log,"next":null});
            let _ = tx.send(Ws::text(reply(res).to_string()));
        }
        _ => {
            let _ = tx.send(Ws::text(reply(json!({})).to_string()));
        }
    }
}
