//! Operating a cluster (3 real `herald` processes, the shared RabbitMQ, a cluster name of the test's own):
//! presence seen from every node, a killed node's members leaving once, the per-user connection limit
//! across nodes, and the admin API answering for the whole cluster (and naming nodes that do not answer).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::cluster::{publish_when_ready, StreamsGuard, AMQP, SHARDS};
use common::http::http;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "cluster-ops-test-secret";
const ADMIN: &str = "cluster-ops-admin-token-0123456789";

struct Node {
    child: tokio::process::Child,
    url: String,
    admin: SocketAddr,
}

/// Starts node `id` of `cluster` (the real binary, port 0, tokens required, 3 connections per user).
async fn node(base: &Path, id: &str, cluster: &str) -> Node {
    let dir = base.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = serve_command(&dir);
    cmd.current_dir(base)
        .env("HERALD_SERVER__NODE_ID", id)
        .env("HERALD_AUTH__ANONYMOUS", "false")
        .env("HERALD_AUTH__HMAC_SECRET", SECRET)
        .env("HERALD_ADMIN__TOKEN", ADMIN)
        .env("HERALD_LIMITS__MAX_CONNECTIONS_PER_USER", "3")
        .env("HERALD_NAMESPACES__DEFAULT__JOIN_LEAVE", "true")
        .env("HERALD_NAMESPACES__DEFAULT__PRESENCE", "true")
        .env("HERALD_CLUSTER__ENABLED", "true")
        .env("HERALD_CLUSTER__AMQP_URL", AMQP)
        .env("HERALD_CLUSTER__NAME", cluster)
        .env("HERALD_CLUSTER__SHARDS", SHARDS.to_string())
        .env("RUST_LOG", "warn");
    let (child, ws, admin) = start_binary_addrs(cmd).await;
    Node {
        child,
        url: format!("ws://{ws}/ws"),
        admin,
    }
}

async fn three_nodes(base: &Path, cluster: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(node(base, id, cluster).await);
    }
    // Every node hears the other two.
    for n in &nodes {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = http(n.admin, "GET", "/api/cluster", Some(ADMIN), None).await;
            let alive = v.json()["nodes"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|m| m["state"] != "dead").count());
            if alive == 3 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}", v.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nodes
}

fn token(sub: &str) -> String {
    hs256_token(SECRET, sub)
}

async fn connect_as(
    url: &str,
    user: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let auth = format!("Bearer {}", token(user));
    Client::try_connect(url, Enc::Json, &[("authorization", &auth)]).await
}

/// The sessions of a `presence` reply, sorted.
fn sessions(reply: &Value) -> Vec<String> {
    let mut s: Vec<String> = reply["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["session"].as_str().unwrap().to_string())
        .collect();
    s.sort();
    s
}

/// Asks `presence` until it lists exactly `want` (sorted).
async fn presence_becomes(c: &mut Client, channel: &str, want: &[String], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = c.ok(json!({"type": "presence", "channel": channel})).await;
        if sessions(&r) == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence is {r}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Collects `join`/`leave` frames of `channel` for `d`: (type, session).
async fn presence_frames(c: &mut Client, channel: &str, d: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(ev) = tokio::time::timeout_at(deadline, c.next_event()).await {
        match ev {
            Event::Frame(f) if (f["type"] == "join" || f["type"] == "leave") => {
                assert_eq!(f["channel"], channel, "{f}");
                out.push((
                    f["type"].as_str().unwrap().to_string(),
                    f["session"].as_str().unwrap().to_string(),
                ));
            }
            Event::Frame(_) => {}
            Event::Closed(code) => panic!("watcher closed: {code:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_spans_the_cluster_and_a_killed_nodes_members_leave_once() {
    let cluster = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(cluster.clone());
    let base = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(base.path(), &cluster).await;
    let room = "room:presence";

    let mut w1 = connect_as(&nodes[0].url, "w1").await.unwrap();
    let mut w2 = connect_as(&nodes[1].url, "w2").await.unwrap();
    w1.subscribe(room).await;
    w2.subscribe(room).await;
    let mut m3 = Vec::new();
    for user in ["c1", "c2"] {
        let mut c = connect_as(&nodes[2].url, user).await.unwrap();
        c.subscribe(room).await;
        m3.push(c);
    }
    let session = |c: &Client| c.welcome["session"].as_str().unwrap().to_string();
    let mut all: Vec<String> = [&w1, &w2].iter().map(|c| session(c)).collect();
    all.extend(m3.iter().map(session));
    all.sort();
    let mut gone: Vec<String> = m3.iter().map(session).collect();
    gone.sort();

    // Seen from every node, members of all nodes.
    presence_becomes(&mut w1, room, &all, Duration::from_secs(5)).await;
    presence_becomes(&mut w2, room, &all, Duration::from_secs(5)).await;
    presence_becomes(&mut m3[0], room, &all, Duration::from_secs(5)).await;
    let count = w1
        .ok(json!({"type": "presence_count", "channel": room}))
        .await;
    assert_eq!(
        (count["sessions"].as_u64(), count["users"].as_u64()),
        (Some(4), Some(4))
    );
    // Paginated: two pages of two.
    let p1 = w2
        .ok(json!({"type": "presence", "channel": room, "limit": 2}))
        .await;
    let next = p1["next"].as_str().expect("a next page").to_string();
    let p2 = w2
        .ok(json!({"type": "presence", "channel": room, "limit": 2, "after": next}))
        .await;
    assert!(p2["next"].is_null(), "{p2}");
    let mut paged = sessions(&p1);
    paged.extend(sessions(&p2));
    assert_eq!(paged, all);

    // The watchers heard node 3's members join (once each).
    for w in [&mut w1, &mut w2] {
        let frames = presence_frames(w, room, Duration::from_millis(500)).await;
        let mut joins: Vec<String> = frames
            .iter()
            .filter(|(t, s)| t == "join" && gone.contains(s))
            .map(|(_, s)| s.clone())
            .collect();
        joins.sort();
        assert_eq!(joins, gone, "{frames:?}");
    }

    // kill -9 of node 3: its members leave every other node's presence within the documented time
    // (dead after 3 s without a heartbeat, expired within 250 ms more), one `leave` each.
    nodes[2].child.start_kill().unwrap();
    nodes[2].child.wait().await.unwrap();
    let killed = tokio::time::Instant::now();
    let remaining: Vec<String> = all.iter().filter(|s| !gone.contains(s)).cloned().collect();
    presence_becomes(&mut w1, room, &remaining, Duration::from_secs(6)).await;
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    presence_becomes(&mut w2, room, &remaining, Duration::from_secs(2)).await;
    for w in [&mut w1, &mut w2] {
        let frames = presence_frames(w, room, Duration::from_secs(2)).await;
        let mut leaves: Vec<String> = frames
            .iter()
            .filter(|(t, _)| t == "leave")
            .map(|(_, s)| s.clone())
            .collect();
        leaves.sort();
        assert_eq!(
            leaves, gone,
            "exactly one leave per departed member: {frames:?}"
        );
    }
    let count = w2
        .ok(json!({"type": "presence_count", "channel": room}))
        .await;
    assert_eq!(count["sessions"], 2, "{count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_user_limit_and_an_admin_disconnect_span_the_cluster() {
    let cluster = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(cluster.clone());
    let base = tempfile::tempdir().unwrap();
    let nodes = three_nodes(base.path(), &cluster).await;

    // Three connections of alice, one per node (the limit is 3); counts propagate in milliseconds.
    let mut alice = Vec::new();
    for n in &nodes {
        alice.push(connect_as(&n.url, "alice").await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for n in &nodes {
        match connect_as(&n.url, "alice").await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 429)
            }
            Ok(_) => panic!("a 4th connection of alice was admitted"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    // Another user is not affected.
    let _bob = connect_as(&nodes[0].url, "bob").await.unwrap();

    // One closes on node 2: a new one is admitted on node 1 once the count propagated.
    let gone = alice.remove(1);
    drop(gone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let replacement = loop {
        match connect_as(&nodes[0].url, "alice").await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("never admitted again: {e}"),
        }
    };
    alice.push(replacement);

    // An admin disconnect on node 2 (which holds none of alice's connections now) closes all three.
    let r = http(
        nodes[1].admin,
        "POST",
        "/api/disconnect",
        Some(ADMIN),
        Some(&json!({"user": "alice"}).to_string()),
    )
    .await
    .ok();
    assert_eq!(r["disconnected"], 3, "{r}");
    assert_eq!(r["by_node"], json!({"n1": 2, "n2": 0, "n3": 1}), "{r}");
    assert_eq!(r["not_answering"], json!([]), "{r}");
    for c in &mut alice {
        loop {
            match c.next_event().await {
                Event::Frame(f) if f["type"] == "disconnect" => assert_eq!(f["code"], 4004),
                Event::Frame(_) => {}
                Event::Closed(code) => {
                    assert_eq!(code, Some(4004));
                    break;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_views_sum_over_nodes_and_name_a_stopped_node() {
    let cluster = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(cluster.clone());
    let base = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(base.path(), &cluster).await;
    let channel = "sum:one";

    // Subscribers: 1 on node 1, 2 on node 2, 1 on node 3.
    let mut subs = Vec::new();
    for (i, n) in [0usize, 1, 1, 2].into_iter().enumerate() {
        let mut c = connect_as(&nodes[n].url, &format!("s{i}")).await.unwrap();
        c.subscribe(channel).await;
        subs.push(c);
    }
    // Admin publish works on any node: one through node 2, one through node 3, both delivered.
    let mut p = connect_as(&nodes[0].url, "p").await.unwrap();
    publish_when_ready(&mut p, "sum:warm", json!(0)).await;
    for n in [1, 2] {
        let body = json!({"channel": channel, "data": {"via": n}}).to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = http(
                nodes[n].admin,
                "POST",
                "/api/publish",
                Some(ADMIN),
                Some(&body),
            )
            .await;
            if r.status == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for s in &mut subs {
        let a = s.next_message().await;
        let b = s.next_message().await;
        assert_eq!(
            (a["data"]["via"].as_u64(), b["data"]["via"].as_u64()),
            (Some(1), Some(2))
        );
    }

    let path = format!("/api/channels/{channel}");
    let d = http(nodes[0].admin, "GET", &path, Some(ADMIN), None)
        .await
        .ok();
    assert_eq!(d["subscribers"], 4, "{d}");
    assert_eq!(
        d["subscribers_by_node"],
        json!({"n1": 1, "n2": 2, "n3": 1}),
        "{d}"
    );
    assert_eq!(d["not_answering"], json!([]), "{d}");
    let l = http(
        nodes[2].admin,
        "GET",
        "/api/channels?prefix=sum:",
        Some(ADMIN),
        None,
    )
    .await
    .ok();
    let one = l["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == channel)
        .cloned()
        .expect("listed");
    assert_eq!(one["subscribers"], 4, "{l}");

    // Node 3 stopped: reported as not answering, before and after it is declared dead.
    nodes[2].child.start_kill().unwrap();
    nodes[2].child.wait().await.unwrap();
    let started = tokio::time::Instant::now();
    let d = http(nodes[0].admin, "GET", &path, Some(ADMIN), None)
        .await
        .ok();
    assert_eq!(d["not_answering"], json!(["n3"]), "{d}");
    assert_eq!(d["subscribers"], 3, "{d}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by admin_timeout_ms"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let d = http(nodes[1].admin, "GET", &path, Some(ADMIN), None)
        .await
        .ok();
    assert_eq!(d["not_answering"], json!(["n3"]), "{d}");
    assert_eq!(d["subscribers_by_node"], json!({"n1": 1, "n2": 2}), "{d}");
}
