//! The admin HTTP API and metrics against a real node with real WebSocket clients: auth, every endpoint,
//! counts after clients join and leave, pagination, disconnects, Prometheus output (checked with promtool
//! when it is installed), and a log test on the real binary that greps for the admin token.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::http::{http, Resp};
use common::*;
use herald::auth::{Authenticator, Claims};
use herald::config::{AuthConfig, Config};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";

/// The admin API of one node, with the right token.
struct Admin(SocketAddr, &'static str);

impl Admin {
    fn new(addr: SocketAddr) -> Admin {
        Admin(addr, TOKEN)
    }

    async fn get(&self, path: &str) -> Resp {
        http(self.0, "GET", path, Some(self.1), None).await
    }
    async fn post(&self, path: &str, body: Value) -> Resp {
        http(self.0, "POST", path, Some(self.1), Some(&body.to_string())).await
    }
    async fn delete(&self, path: &str) -> Resp {
        http(self.0, "DELETE", path, Some(self.1), None).await
    }
    async fn metrics(&self) -> String {
        let r = http(self.0, "GET", "/metrics", None, None).await;
        assert_eq!(r.status, 200);
        assert!(r.headers["content-type"].starts_with("text/plain; version=0.0.4"));
        r.body
    }
}

fn admin_config() -> (Config, tempfile::TempDir) {
    let (mut c, dir) = test_config();
    c.admin.token = TOKEN.into();
    (c, dir)
}

/// Samples of a Prometheus text exposition by `name{labels}`, checking every line parses.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        assert!(key.starts_with("herald_"), "{line}");
        out.insert(key.to_string(), v);
    }
    out
}

fn session_of(c: &Client) -> String {
    c.welcome["session"]
        .as_str()
        .expect("welcome.session")
        .to_string()
}

async fn channel_named(admin: &Admin, name: &str) -> Value {
    admin.get(&format!("/api/channels/{name}")).await.ok()
}

// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_requires_the_bearer_token() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let a = node.admin_addr;
    for path in [
        "/api/node",
        "/api/channels",
        "/api/connections",
        "/api/openapi.json",
    ] {
        let r = http(a, "GET", path, None, None).await;
        assert_eq!(r.error(401), "unauthorized", "{path}");
        assert!(r.headers.contains_key("www-authenticate"));
        let r = http(a, "GET", path, Some("wrong-token"), None).await;
        assert_eq!(r.error(401), "unauthorized", "{path}");
        let r = http(a, "GET", path, Some(&TOKEN[..TOKEN.len() - 1]), None).await;
        assert_eq!(r.error(401), "unauthorized", "{path}");
        http(a, "GET", path, Some(TOKEN), None).await.ok();
    }
    let r = http(
        a,
        "POST",
        "/api/publish",
        None,
        Some(r#"{"channel":"x","data":1}"#),
    )
    .await;
    r.error(401);
    let r = http(
        a,
        "POST",
        "/api/disconnect",
        Some("nope"),
        Some(r#"{"session":"x"}"#),
    )
    .await;
    r.error(401);
    // Probes and metrics need no token.
    assert_eq!(
        http(a, "GET", "/healthz", None, None).await.ok()["status"],
        "ok"
    );
    assert_eq!(
        http(a, "GET", "/readyz", None, None).await.ok()["status"],
        "ready"
    );
    assert_eq!(http(a, "GET", "/metrics", None, None).await.status, 200);
    // Unknown paths are JSON 404s (after auth under /api).
    assert_eq!(Admin::new(a).get("/api/nope").await.error(404), "not_found");
    assert_eq!(
        http(a, "GET", "/nope", None, None).await.error(404),
        "not_found"
    );
    // Refusals are counted by reason.
    let m = parse_metrics(&Admin::new(a).metrics().await);
    assert!(m[r#"herald_admin_auth_failures_total{reason="missing"}"#] >= 5.0);
    assert!(m[r#"herald_admin_auth_failures_total{reason="invalid"}"#] >= 9.0);
}

#[tokio::test]
async fn without_a_configured_token_the_api_refuses_everything() {
    let (cfg, _dir) = test_config();
    assert!(cfg.admin.token.is_empty());
    let node = start(cfg);
    let a = node.admin_addr;
    for token in [None, Some(""), Some("anything")] {
        let r = http(a, "GET", "/api/node", token, None).await;
        assert_eq!(r.error(403), "forbidden");
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin.token"));
    }
    assert_eq!(http(a, "GET", "/healthz", None, None).await.status, 200);
}

#[tokio::test]
async fn bad_parameters_are_400_never_500() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    admin
        .post("/api/publish", json!({"channel": "p:a", "data": 1}))
        .await
        .ok();
    for path in [
        "/api/channels?limit=abc",
        "/api/channels?limit=0",
        "/api/channels?limit=-5",
        "/api/channels?bogus=1",
        "/api/channels/p:a?limit=x",
        "/api/channels/p:a/history?since=-1",
        "/api/channels/p:a/history?since=abc",
        "/api/channels/p:a/history?limit=0",
        "/api/channels/bad%20name",
        "/api/channels/bad%20name/history",
        "/api/connections?limit=1.5",
    ] {
        let r = admin.get(path).await;
        assert_eq!(r.error(400), "bad_request", "{path}");
    }
    // Empty values mean "not given".
    admin.get("/api/channels?prefix=&limit=&cursor=").await.ok();
    // Unknown channels are 404.
    assert_eq!(
        admin.get("/api/channels/p:none").await.error(404),
        "not_found"
    );
    assert_eq!(
        admin.get("/api/channels/p:none/history").await.error(404),
        "not_found"
    );
    assert_eq!(
        admin.get("/api/channels/p:none/presence").await.error(404),
        "not_found"
    );
    assert_eq!(
        admin
            .delete("/api/channels/p:none/history")
            .await
            .error(404),
        "not_found"
    );
    // Bodies.
    for body in [
        json!({"data": 1}),
        json!({"channel": "bad name", "data": 1}),
        json!({"channel": "", "data": 1}),
        json!({"channel": "p:a", "data": 1, "extra": true}),
        json!({"channel": "p:a", "data": 1, "key": ""}),
        json!({"channel": "p:a", "data": 1, "key": "k".repeat(129)}),
    ] {
        let r = admin.post("/api/publish", body.clone()).await;
        assert_eq!(r.error(400), "bad_request", "{body}");
    }
    let r = http(
        node.admin_addr,
        "POST",
        "/api/publish",
        Some(TOKEN),
        Some("{not json"),
    )
    .await;
    r.error(400);
    let big = "x".repeat(40_000);
    let r = admin
        .post("/api/publish", json!({"channel": "p:a", "data": big}))
        .await;
    assert_eq!(r.error(413), "too_large");
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let r = admin
        .post("/api/publish", json!({"channel": "p:a", "data": deep}))
        .await;
    assert_eq!(r.error(400), "bad_request");
    for body in [
        json!({}),
        json!({"user": "u", "session": "s"}),
        json!({"user": ""}),
        json!({"session": "s", "code": 1234}),
        json!({"session": "s", "code": 1000}),
        json!({"session": "s", "reason": "r".repeat(200)}),
    ] {
        let r = admin.post("/api/disconnect", body.clone()).await;
        assert_eq!(r.error(400), "bad_request", "{body}");
    }
    // Nothing above started a channel or broke the node.
    admin.get("/api/node").await.ok();
    let list = admin.get("/api/channels").await.ok();
    assert_eq!(list["channels"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn channel_counts_follow_clients_joining_and_leaving() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    let url = node.ws_url();
    let mut c1 = Client::connect(&url, Enc::Json).await;
    let mut c2 = Client::connect(&url, Enc::Msgpack).await;
    let mut c3 = Client::connect(&url, Enc::Json).await;
    c1.subscribe("room:a").await;
    c2.subscribe("room:a").await;
    c3.subscribe("room:b").await;
    for i in 0..3 {
        c1.publish("room:a", json!({"n": i})).await;
    }
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let list = admin.get("/api/channels?prefix=room:").await.ok();
    let chans = list["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 2, "{list}");
    assert_eq!(list["next_cursor"], Value::Null);
    let a = &chans[0];
    assert_eq!(a["name"], "room:a");
    assert_eq!(a["namespace"], "room");
    assert_eq!(a["active"], true);
    assert_eq!(a["subscribers"], 2);
    assert_eq!(a["head"], 3);
    assert_eq!(a["oldest"], 1);
    assert_eq!(a["retained"], 3);
    assert!(a["epoch"].as_str().unwrap().len() == 26);
    assert!(a.as_object().unwrap().contains_key("bytes"));
    let last = a["last_publish_ms"].as_u64().expect("last publish time");
    assert!(last <= before && last + 60_000 > before);
    let b = &chans[1];
    assert_eq!(
        (b["name"].as_str(), b["subscribers"].as_u64()),
        (Some("room:b"), Some(1))
    );
    assert_eq!(
        (b["head"].as_u64(), b["retained"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(b["oldest"], Value::Null);

    // Detail: subscribers (session, user, since) and options.
    let d = channel_named(&admin, "room:a").await;
    let subs: BTreeSet<String> = d["subscribers_page"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["subscribed_at_ms"].as_u64().unwrap() > 0);
            assert!(s["connected_at_ms"].as_u64().unwrap() > 0);
            assert_eq!(s["user"], Value::Null);
            s["session"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(subs, BTreeSet::from([session_of(&c1), session_of(&c2)]));
    assert_eq!(d["options"]["history_size"], 1000);
    assert_eq!(d["options"]["presence"], true);
    assert_eq!(d["subscribers"], 2);
    // The subscriber list pages.
    let p1 = admin.get("/api/channels/room:a?limit=1").await.ok();
    assert_eq!(p1["subscribers_page"].as_array().unwrap().len(), 1);
    let cur = p1["next_cursor"].as_str().expect("cursor").to_string();
    let p2 = admin
        .get(&format!("/api/channels/room:a?limit=1&cursor={cur}"))
        .await
        .ok();
    assert_eq!(p2["subscribers_page"].as_array().unwrap().len(), 1);
    assert_eq!(p2["next_cursor"], Value::Null);
    assert_ne!(
        p1["subscribers_page"][0]["session"],
        p2["subscribers_page"][0]["session"]
    );

    // Presence.
    let p = admin.get("/api/channels/room:a/presence").await.ok();
    assert_eq!(p["members"].as_array().unwrap().len(), 2);
    assert_eq!(p["users"], 0);

    // Connections and node.
    let conns = admin.get("/api/connections").await.ok();
    assert_eq!(conns["total"], 3);
    let n = admin.get("/api/node").await.ok();
    assert_eq!(
        (n["sessions"].as_u64(), n["subscriptions"].as_u64()),
        (Some(3), Some(3))
    );

    // One leaves the channel, one disconnects.
    c2.ok(json!({"type": "unsubscribe", "channel": "room:a"}))
        .await;
    drop(c3);
    let d = channel_named(&admin, "room:a").await;
    assert_eq!(d["subscribers"], 1);
    assert_eq!(d["subscribers_page"][0]["session"], session_of(&c1));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let conns = admin.get("/api/connections").await.ok();
        let b = channel_named(&admin, "room:b").await;
        if conns["total"] == 2 && b["subscribers"] == 0 {
            let ids: BTreeSet<&str> = conns["connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["session"].as_str().unwrap())
                .collect();
            assert_eq!(
                ids,
                BTreeSet::from([session_of(&c1).as_str(), session_of(&c2).as_str()])
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counts never settled: {conns} {b}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = admin.get("/api/node").await.ok();
    assert_eq!(
        (n["sessions"].as_u64(), n["subscriptions"].as_u64()),
        (Some(2), Some(1))
    );
}

#[tokio::test]
async fn channel_listing_paginates_in_a_stable_order() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    let mut expected = BTreeSet::new();
    for i in 0..250 {
        let name = format!("page:{i:03}");
        admin
            .post("/api/publish", json!({"channel": name, "data": i}))
            .await
            .ok();
        expected.insert(name);
    }
    admin
        .post("/api/publish", json!({"channel": "other", "data": 0}))
        .await
        .ok();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/channels?prefix=page:&limit=100&cursor={c}"),
            None => "/api/channels?prefix=page:&limit=100".to_string(),
        };
        let page = admin.get(&path).await.ok();
        pages += 1;
        let chans = page["channels"].as_array().unwrap();
        assert!(chans.len() <= 100);
        for c in chans {
            assert_eq!(c["head"], 1);
            assert_eq!(c["retained"], 1);
            seen.push(c["name"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250, "no duplicates, nothing missing");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "name order");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected);
    // Without a prefix every channel is listed; an exact final page has no cursor.
    let all = admin.get("/api/channels?limit=1000").await.ok();
    assert_eq!(all["channels"].as_array().unwrap().len(), 251);
    assert_eq!(all["next_cursor"], Value::Null);
    let exact = admin.get("/api/channels?prefix=page:&limit=250").await.ok();
    assert_eq!(exact["next_cursor"], Value::Null);
}

#[tokio::test]
async fn publish_history_presence_and_reset() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    let mut sub = Client::connect(&node.ws_url(), Enc::Json).await;
    sub.subscribe("news:x").await;

    let r1 = admin
        .post(
            "/api/publish",
            json!({"channel": "news:x", "data": {"hello": [1, 2]}, "key": "k1"}),
        )
        .await
        .ok();
    assert_eq!(r1["offset"], 1);
    assert!(r1["id"].is_string() && r1["epoch"].is_string());
    // Same key: same result, no second message.
    let r2 = admin
        .post(
            "/api/publish",
            json!({"channel": "news:x", "data": {"hello": [1, 2]}, "key": "k1"}),
        )
        .await
        .ok();
    assert_eq!(r1, r2);
    let m = sub.next_message().await;
    assert_eq!(m["data"], json!({"hello": [1, 2]}));
    assert_eq!(m["offset"], 1);
    assert!(m.get("from").is_none_or(Value::is_null), "{m}");
    for i in 2..=5 {
        let r = admin
            .post("/api/publish", json!({"channel": "news:x", "data": i}))
            .await
            .ok();
        assert_eq!(r["offset"], i);
        assert_eq!(sub.next_message().await["data"], i);
    }
    // A channel nobody uses is created by a server publish.
    admin
        .post("/api/publish", json!({"channel": "fresh", "data": null}))
        .await
        .ok();
    assert_eq!(channel_named(&admin, "fresh").await["head"], 1);

    // History, paged.
    let h = admin.get("/api/channels/news:x/history?limit=2").await.ok();
    assert_eq!(h["head"], 5);
    assert_eq!(h["oldest"], 1);
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2]);
    assert_eq!(h["messages"][0]["data"], json!({"hello": [1, 2]}));
    assert_eq!(h["messages"][0]["from"], Value::Null);
    assert_eq!(h["messages"][0]["id"], r1["id"]);
    assert_eq!(h["next"], 2);
    let h = admin
        .get("/api/channels/news:x/history?since=2&limit=10")
        .await
        .ok();
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    assert_eq!(h["next"], Value::Null);

    // Presence.
    let p = admin.get("/api/channels/news:x/presence").await.ok();
    assert_eq!(
        p["members"],
        json!([{"session": session_of(&sub), "user": null}])
    );

    // Reset: new epoch, empty history, the subscriber stays and continues from offset 1.
    let reset = admin.delete("/api/channels/news:x/history").await.ok();
    assert_ne!(reset["epoch"], r1["epoch"]);
    let h = admin.get("/api/channels/news:x/history").await.ok();
    assert_eq!(
        (h["head"].as_u64(), h["messages"].as_array().unwrap().len()),
        (Some(0), 0)
    );
    assert_eq!(h["epoch"], reset["epoch"]);
    let d = channel_named(&admin, "news:x").await;
    assert_eq!(
        (d["retained"].as_u64(), d["subscribers"].as_u64()),
        (Some(0), Some(1))
    );
    let r = admin
        .post(
            "/api/publish",
            json!({"channel": "news:x", "data": "after"}),
        )
        .await
        .ok();
    assert_eq!(
        (r["offset"].as_u64(), &r["epoch"]),
        (Some(1), &reset["epoch"])
    );
    assert_eq!(sub.next_message().await["data"], "after");
}

#[tokio::test]
async fn disconnect_by_session_closes_only_that_session() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    let url = node.ws_url();
    let mut a = Client::connect(&url, Enc::Json).await;
    let mut b = Client::connect(&url, Enc::Msgpack).await;
    let r = admin
        .post("/api/disconnect", json!({"session": session_of(&a)}))
        .await
        .ok();
    assert_eq!(r["disconnected"], 1);
    assert_eq!(r["sessions"], json!([session_of(&a)]));
    let f = a.next_frame().await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_u64()),
        (Some("disconnect"), Some(4004))
    );
    assert_eq!(f["reconnect"], false);
    assert!(matches!(a.next_event().await, Event::Closed(Some(4004))));
    // A custom code and reason.
    let r = admin
        .post(
            "/api/disconnect",
            json!({"session": session_of(&b), "code": 4005, "reason": "banned"}),
        )
        .await
        .ok();
    assert_eq!(r["disconnected"], 1);
    let f = b.next_frame().await;
    assert_eq!(
        (f["code"].as_u64(), f["reason"].as_str()),
        (Some(4005), Some("banned"))
    );
    assert!(matches!(b.next_event().await, Event::Closed(Some(4005))));
    // Unknown sessions and users: nobody.
    let r = admin
        .post("/api/disconnect", json!({"session": "nope"}))
        .await
        .ok();
    assert_eq!(r["disconnected"], 0);
    let r = admin
        .post("/api/disconnect", json!({"user": "nobody"}))
        .await
        .ok();
    assert_eq!(r["disconnected"], 0);
    eventually("sessions gone", || node.node().sessions.is_empty()).await;
}

const JWT_SECRET: &str = "admin-test-jwt-secret-abcdef";

fn mint(user: &str) -> String {
    let auth = Authenticator::from_config(&AuthConfig {
        anonymous: false,
        hmac_secret: JWT_SECRET.into(),
        rsa_public_key: String::new(),
        leeway_secs: 0,
        ..Default::default()
    })
    .unwrap();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    auth.mint(&Claims {
        sub: user.into(),
        exp,
        subscribe: None,
        publish: None,
    })
    .unwrap()
}

#[tokio::test]
async fn disconnect_by_user_reaches_every_session_of_that_user() {
    let (mut cfg, _dir) = admin_config();
    cfg.auth.hmac_secret = JWT_SECRET.into();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    let url = node.ws_url();
    let alice = mint("alice");
    let bearer = format!("Bearer {alice}");
    let bob = format!("Bearer {}", mint("bob"));
    let mut a1 = Client::try_connect(&url, Enc::Json, &[("authorization", &bearer)])
        .await
        .unwrap();
    let mut a2 = Client::try_connect(&url, Enc::Msgpack, &[("authorization", &bearer)])
        .await
        .unwrap();
    let mut b1 = Client::try_connect(&url, Enc::Json, &[("authorization", &bob)])
        .await
        .unwrap();
    assert_eq!(a1.welcome["user"], "alice");
    a1.subscribe("team:x").await;
    b1.subscribe("team:x").await;

    // Users show up in connections, channel detail and presence.
    let conns = admin.get("/api/connections?user=alice").await.ok();
    assert_eq!(conns["total"], 2);
    let ids: BTreeSet<&str> = conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["session"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([session_of(&a1).as_str(), session_of(&a2).as_str()])
    );
    assert!(conns["connections"][0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let page = admin.get("/api/connections?user=alice&limit=1").await.ok();
    assert_eq!(page["connections"].as_array().unwrap().len(), 1);
    let cur = page["next_cursor"].as_str().unwrap();
    let page2 = admin
        .get(&format!("/api/connections?user=alice&limit=1&cursor={cur}"))
        .await
        .ok();
    assert_eq!(page2["connections"].as_array().unwrap().len(), 1);
    assert_eq!(page2["next_cursor"], Value::Null);
    let p = admin.get("/api/channels/team:x/presence").await.ok();
    assert_eq!(p["users"], 2);

    let r = admin
        .post("/api/disconnect", json!({"user": "alice"}))
        .await
        .ok();
    assert_eq!(r["disconnected"], 2);
    for c in [&mut a1, &mut a2] {
        let f = c.next_frame().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_u64()),
            (Some("disconnect"), Some(4004))
        );
        assert!(matches!(c.next_event().await, Event::Closed(Some(4004))));
    }
    // Bob is untouched.
    b1.ok(json!({"type": "ping"})).await;
    eventually("alice's sessions gone", || node.node().sessions.len() == 1).await;
    let conns = admin.get("/api/connections?user=alice").await.ok();
    assert_eq!(conns["total"], 0);
}

#[tokio::test]
async fn node_summary_redacts_secrets() {
    let (mut cfg, _dir) = admin_config();
    cfg.auth.hmac_secret = JWT_SECRET.into();
    cfg.server.node_id = "node-under-test".into();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    let _c = Client::connect(&node.ws_url(), Enc::Json).await;
    let r = admin.get("/api/node").await;
    assert!(!r.body.contains(TOKEN), "admin token leaked: {}", r.body);
    assert!(
        !r.body.contains(JWT_SECRET),
        "jwt secret leaked: {}",
        r.body
    );
    let n = r.ok();
    assert_eq!(n["node_id"], "node-under-test");
    assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(n["sessions"], 1);
    assert!(n["uptime_seconds"].is_u64());
    assert!(n["data_dir_bytes"].as_u64().unwrap() > 0);
    assert_eq!(n["config"]["admin"]["token"], "<redacted>");
    assert_eq!(n["config"]["auth"]["hmac_secret"], "<redacted>");
    assert_eq!(n["config"]["limits"]["max_publish_bytes"], 32768);
}

#[tokio::test]
async fn openapi_document_describes_every_endpoint() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let doc = Admin::new(node.admin_addr)
        .get("/api/openapi.json")
        .await
        .ok();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/channels", "get"),
        ("/api/channels/{name}", "get"),
        ("/api/channels/{name}/history", "get"),
        ("/api/channels/{name}/history", "delete"),
        ("/api/channels/{name}/presence", "get"),
        ("/api/publish", "post"),
        ("/api/disconnect", "post"),
        ("/api/connections", "get"),
        ("/api/node", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

const WS_CONNECTIONS: &str = r#"herald_connections{transport="websocket"}"#;

#[tokio::test]
async fn metrics_move_when_traffic_flows() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    let before = parse_metrics(&admin.metrics().await);
    for name in [
        r#"herald_connections{transport="websocket"}"#,
        r#"herald_connections{transport="long_polling"}"#,
        "herald_connections_opened_total",
        "herald_connections_closed_total",
        "herald_connection_lifetime_seconds_count",
        "herald_process_resident_memory_bytes",
        "herald_memory_per_connection_bytes",
        "herald_messages_received_total",
        "herald_messages_sent_total",
        "herald_subscriptions",
        "herald_channels_active",
        "herald_publish_to_deliver_seconds_count",
        "herald_slow_consumer_disconnects_total",
        "herald_rate_limit_refusals_total",
        r#"herald_auth_failures_total{reason="expired"}"#,
        "herald_history_appends_total",
        "herald_history_trimmed_messages_total",
        "herald_history_flush_seconds_count",
        r#"herald_history_flush_seconds_bucket{le="+Inf"}"#,
    ] {
        assert!(before.contains_key(name), "{name} missing");
    }
    assert!(before["herald_process_resident_memory_bytes"] > 1e6);
    assert_eq!(before[WS_CONNECTIONS], 0.0);

    let url = node.ws_url();
    let mut a = Client::connect(&url, Enc::Json).await;
    let mut b = Client::connect(&url, Enc::Json).await;
    a.subscribe("m:1").await;
    b.subscribe("m:1").await;
    for i in 0..10 {
        a.publish("m:1", json!(i)).await;
    }
    for _ in 0..10 {
        b.next_message().await;
    }
    let during = parse_metrics(&admin.metrics().await);
    assert_eq!(during[WS_CONNECTIONS], 2.0);
    assert_eq!(during["herald_subscriptions"], 2.0);
    assert!(during["herald_channels_active"] >= 1.0);
    assert!(during["herald_memory_per_connection_bytes"] > 0.0);
    let delta = |k: &str| during[k] - before[k];
    assert_eq!(delta("herald_connections_opened_total"), 2.0);
    assert!(delta("herald_messages_received_total") >= 12.0);
    assert!(delta("herald_messages_sent_total") >= 20.0);
    assert_eq!(delta("herald_history_appends_total"), 10.0);
    assert_eq!(delta("herald_publish_to_deliver_seconds_count"), 10.0);
    assert!(delta("herald_history_flush_seconds_count") >= 1.0);
    assert!(delta("herald_history_flushes_total") >= 1.0);

    drop(a);
    drop(b);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let after = parse_metrics(&admin.metrics().await);
        // Sessions and their subscriptions are released asynchronously: wait for all of it.
        let closed =
            after["herald_connections_closed_total"] - before["herald_connections_closed_total"];
        let lifetimes = after["herald_connection_lifetime_seconds_count"]
            - before["herald_connection_lifetime_seconds_count"];
        if after[WS_CONNECTIONS] == 0.0
            && after["herald_subscriptions"] == 0.0
            && closed == 2.0
            && lifetimes == 2.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections and subscriptions never reached 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `promtool check metrics` (Debian package `prometheus`) must accept the exposition. Skipped, loudly, when
/// promtool is not installed, unless `REQUIRE_PROMTOOL` is set (scripts/test installs it and sets it).
#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(promtool) = promtool else {
        assert!(
            std::env::var_os("REQUIRE_PROMTOOL").is_none(),
            "REQUIRE_PROMTOOL is set but promtool is not installed (apt-get install prometheus)"
        );
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    };
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    // Some traffic so histograms have observations.
    let mut a = Client::connect(&node.ws_url(), Enc::Json).await;
    a.subscribe("prom:x").await;
    a.publish("prom:x", json!(1)).await;
    drop(a);
    let text = admin.metrics().await;
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejected the metrics:\n{report}\n---\n{text}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}

/// The real binary at debug level: admin requests (right and wrong tokens) never put the admin token in the
/// logs, and clients connecting with a JWT (header and query parameter) never put theirs or the secret there.
#[test]
fn admin_token_never_appears_in_logs() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    const SECRET_TOKEN: &str = "sekrit-admin-token-123";
    let dir = tempfile::tempdir().unwrap();
    let jwt = mint("log-user");
    for format in ["text", "json"] {
        let mut child = serve_command(&dir.path().join(format))
            .args(["--log-format", format])
            .env("HERALD_ADMIN__TOKEN", SECRET_TOKEN)
            .env("HERALD_AUTH__HMAC_SECRET", JWT_SECRET)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herald");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let (ws, admin) = parse_listening(line.trim());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let _c = Client::connect(&format!("ws://{ws}/ws"), Enc::Json).await;
            let bearer = format!("Bearer {jwt}");
            let _u = Client::try_connect(
                &format!("ws://{ws}/ws"),
                Enc::Json,
                &[("authorization", &bearer)],
            )
            .await
            .unwrap();
            let _q = Client::try_connect(&format!("ws://{ws}/ws?token={jwt}"), Enc::Json, &[])
                .await
                .unwrap();
            let admin_api = Admin(admin, SECRET_TOKEN);
            admin_api.get("/api/node").await.ok();
            admin_api.get("/api/channels").await.ok();
            admin_api
                .post("/api/publish", json!({"channel": "log:x", "data": 1}))
                .await
                .ok();
            admin_api.get("/api/connections").await.ok();
            admin_api.get("/api/channels?limit=bad").await.error(400);
            let wrong = format!("{SECRET_TOKEN}-wrong");
            http(admin, "GET", "/api/node", Some(&wrong), None)
                .await
                .error(401);
            http(admin, "GET", "/api/node", Some(&SECRET_TOKEN[..5]), None)
                .await
                .error(401);
            http(admin, "GET", "/api/node", None, None).await.error(401);
            let node = http(admin, "GET", "/api/node", Some(SECRET_TOKEN), None).await;
            assert!(!node.body.contains(SECRET_TOKEN));
        });
        // SIGTERM for a graceful shutdown, then read everything it logged.
        unsafe_kill_term(child.id());
        let status = child.wait().unwrap();
        assert!(status.success(), "herald exited with {status}");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        assert!(
            stderr.contains("DEBUG") || stderr.contains("\"DEBUG\""),
            "debug logs expected:\n{stderr}"
        );
        assert!(
            !stderr.contains(SECRET_TOKEN),
            "admin token in logs ({format}):\n{stderr}"
        );
        assert!(
            !stderr.contains(&SECRET_TOKEN[..12]),
            "part of the admin token in logs ({format})"
        );
        assert!(
            !rest.contains(SECRET_TOKEN),
            "admin token on stdout ({format})"
        );
    }
}

fn unsafe_kill_term(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// `/` is allowed in channel names; in a path it is written `%2F`.
#[tokio::test]
async fn channel_names_with_slashes_are_reachable() {
    let (cfg, _dir) = admin_config();
    let node = start(cfg);
    let admin = Admin::new(node.admin_addr);
    admin
        .post("/api/publish", json!({"channel": "a/b", "data": 1}))
        .await
        .ok();
    assert_eq!(admin.get("/api/channels/a%2Fb").await.ok()["name"], "a/b");
    let h = admin.get("/api/channels/a%2Fb/history").await.ok();
    assert_eq!(h["messages"][0]["data"], 1);
    admin.get("/api/channels/a%2Fb/presence").await.ok();
    assert_eq!(admin.get("/api/channels/a/b").await.error(404), "not_found");
    let list = admin.get("/api/channels?prefix=a%2F").await.ok();
    assert_eq!(list["channels"][0]["name"], "a/b");
}
