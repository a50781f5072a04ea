//! Nodes sharing channels through RabbitMQ streams (the shared RabbitMQ on 127.0.0.1:5672; each test has
//! its own cluster name and deletes its streams after).
//!
//! A publish on any node reaches subscribers on every node, and every node sees one order: the same
//! `(offset, id)` sequence, with the offsets the log gave (gaps allowed).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

use common::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_reaches_subscribers_on_every_node_in_one_order() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let (cfg_a, _da) = cluster_config(&name);
    let (cfg_b, _db) = cluster_config(&name);
    let (cfg_c, _dc) = cluster_config(&name);
    let a = start(cfg_a);
    let b = start(cfg_b);
    let c = start(cfg_c);
    let channel = "room:one";

    let mut pa = Client::connect(&a.ws_url(), Enc::Json).await;
    let mut pb = Client::connect(&b.ws_url(), Enc::Msgpack).await;
    // Both nodes connected and agreed (a publish through each comes back applied).
    let first = publish_when_ready(&mut pa, channel, json!({"from": "a", "i": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    let second = publish_when_ready(&mut pb, channel, json!({"from": "b", "i": 0})).await;
    assert_eq!(second["epoch"], epoch, "one epoch on both nodes");

    let mut sa = Client::connect(&a.ws_url(), Enc::Json).await;
    let mut sb = Client::connect(&b.ws_url(), Enc::Json).await;
    let mut sc = Client::connect(&c.ws_url(), Enc::Msgpack).await;
    // Node c connected too (until it knows the cluster's generation, it answers `unavailable`).
    let mut pc = Client::connect(&c.ws_url(), Enc::Json).await;
    publish_when_ready(&mut pc, "room:warm", json!(1)).await;
    drop(pc);
    let head_a = sa.subscribe(channel).await["offset"].as_u64().unwrap();
    // The other nodes may still be applying the first two entries: subscribe from the same position.
    let since = json!({"epoch": epoch, "offset": head_a});
    for s in [&mut sb, &mut sc] {
        let r = s
            .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
            .await;
        assert_eq!(r["recovered"], true, "{r}");
    }

    // Two publishers on two nodes, concurrently.
    const N: u64 = 100;
    let ta = tokio::spawn(async move {
        for i in 1..=N {
            pa.publish(channel, json!({"from": "a", "i": i})).await;
        }
    });
    let tb = tokio::spawn(async move {
        for i in 1..=N {
            pb.publish(channel, json!({"from": "b", "i": i})).await;
        }
    });
    ta.await.unwrap();
    tb.await.unwrap();

    let mut seen = Vec::new();
    let mut data = Vec::new();
    for s in [&mut sa, &mut sb, &mut sc] {
        let mut got: Vec<(u64, String)> = Vec::new();
        let mut last = head_a;
        while got.len() < (2 * N) as usize {
            let m = s.next_message().await;
            let off = m["offset"].as_u64().unwrap();
            assert!(off > last, "offsets increase: {off} after {last}");
            assert_eq!(m["epoch"], epoch.as_str());
            last = off;
            got.push((off, m["id"].as_str().unwrap().to_string()));
            data.push(m["data"].clone());
        }
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "every node delivers one sequence of (offset, id)"
    );
    assert_eq!(seen[0], seen[2], "node c too");
    // Each publisher's messages keep its order (as node a delivered them).
    for from in ["a", "b"] {
        let is: Vec<u64> = data[..(2 * N) as usize]
            .iter()
            .filter(|d| d["from"] == from)
            .map(|d| d["i"].as_u64().unwrap())
            .collect();
        assert_eq!(is, (1..=N).collect::<Vec<_>>(), "publisher {from}'s order");
    }

    drop((sa, sb, sc));
    for n in [a, b, c] {
        n.shutdown().expect("node stops");
    }
    delete_streams(&name, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_used_through_two_nodes_gives_one_message() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let (cfg_a, _da) = cluster_config(&name);
    let (cfg_b, _db) = cluster_config(&name);
    let a = start(cfg_a);
    let b = start(cfg_b);
    let channel = "room:idem";
    let mut pa = Client::connect(&a.ws_url(), Enc::Json).await;
    let mut pb = Client::connect(&b.ws_url(), Enc::Json).await;
    let first = publish_when_ready(&mut pa, channel, json!({"warm": 1})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    publish_when_ready(&mut pb, channel, json!({"warm": 2})).await;
    // The same anonymous publisher, the same key and data, through both nodes at once.
    let cmd = json!({"type": "publish", "channel": channel, "data": {"n": 1}, "key": "k1"});
    let (ra, rb) = tokio::join!(pa.ok(cmd.clone()), pb.ok(cmd.clone()));
    assert_eq!(ra, rb, "one message, the same answer through both nodes");
    let other = pb
        .request(json!({"type": "publish", "channel": channel, "data": {"n": 2}, "key": "k1"}))
        .await;
    assert_eq!(other["code"], "conflict", "{other}");
    for node in [&a, &b] {
        let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
        let h = c
            .ok(json!({"type": "history", "channel": channel, "limit": 100}))
            .await;
        let keyed = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["data"]["n"] == 1)
            .count();
        assert_eq!(keyed, 1, "{h}");
    }
    a.shutdown().expect("node a stops");
    b.shutdown().expect("node b stops");
    delete_streams(&name, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_catches_up_from_its_position() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let (cfg_a, _da) = cluster_config(&name);
    let (cfg_b, _db) = cluster_config(&name);
    let a = start(cfg_a);
    let b = start(cfg_b.clone());
    let channel = "room:down";
    let mut pa = Client::connect(&a.ws_url(), Enc::Msgpack).await;
    let mut pb = Client::connect(&b.ws_url(), Enc::Msgpack).await;
    let first = publish_when_ready(&mut pa, channel, json!({"i": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    publish_when_ready(&mut pb, channel, json!({"i": -1})).await;
    drop(pb);
    b.shutdown().expect("node b stops");

    // 10,000 messages while node b is down (pipelined, 200 in flight).
    const N: u64 = 10_000;
    let (mut sent, mut acked, mut head) = (0u64, 0u64, 0u64);
    while acked < N {
        while sent < N && sent - acked < 200 {
            sent += 1;
            pa.send(
                json!({"v": 1, "type": "publish", "id": sent, "channel": channel,
                           "data": {"i": sent}}),
            )
            .await;
        }
        let r = pa.next_frame().await;
        assert_eq!(r["type"], "reply", "{r}");
        acked += 1;
        head = head.max(r["result"]["offset"].as_u64().unwrap());
    }

    // Node b restarts on its data dir and applies from where it stopped.
    let b = start(cfg_b);
    let mut c = Client::connect(&b.ws_url(), Enc::Json).await;
    let since = json!({"epoch": epoch, "offset": first["offset"]});
    let r = c
        .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let mut i_seen = Vec::new();
    loop {
        let m = c.next_message().await;
        i_seen.push(m["data"]["i"].as_i64().unwrap());
        if m["offset"].as_u64().unwrap() >= head {
            break;
        }
    }
    let mut expected: Vec<i64> = vec![-1];
    expected.extend(1..=N as i64);
    assert_eq!(
        i_seen, expected,
        "everything after the position, once, in order"
    );
    drop(c);
    a.shutdown().expect("node a stops");
    b.shutdown().expect("node b stops");
    delete_streams(&name, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let (cfg_a, _da) = cluster_config(&name);
    let (cfg_b, _db) = cluster_config(&name);
    let a = start(cfg_a);
    let b = start(cfg_b);
    let channel = "room:resume";
    let mut p = Client::connect(&a.ws_url(), Enc::Msgpack).await;
    let first = publish_when_ready(&mut p, channel, json!({"i": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    // Node b connected too (until it knows the cluster's generation, it answers `unavailable`).
    let mut pb = Client::connect(&b.ws_url(), Enc::Msgpack).await;
    publish_when_ready(&mut pb, "room:warm", json!(1)).await;

    // Reads on node a, then leaves.
    let mut c = Client::connect(&a.ws_url(), Enc::Json).await;
    c.subscribe(channel).await;
    for i in 1..=10 {
        p.publish(channel, json!({"i": i})).await;
    }
    let mut last = 0;
    for _ in 1..=10 {
        last = c.next_message().await["offset"].as_u64().unwrap();
    }
    drop(c);
    for i in 11..=60 {
        p.publish(channel, json!({"i": i})).await;
    }
    // Resumes on node b.
    let mut c = Client::connect(&b.ws_url(), Enc::Json).await;
    let since = json!({"epoch": epoch, "offset": last});
    let r = c
        .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    assert_eq!(r["recovered"], true, "since {since}: {r}");
    // Counted up to what node b had applied when it answered; the rest follows live.
    let replayed = r["replayed"].as_u64().unwrap();
    assert!((1..=50).contains(&replayed), "{r}");
    for i in 11..=60 {
        let m = c.next_message().await;
        assert_eq!(m["data"]["i"], i, "{m}");
    }
    drop(c);
    a.shutdown().expect("node a stops");
    b.shutdown().expect("node b stops");
    delete_streams(&name, &epoch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_saw_nothing_resumes_on_another_node() {
    // A subscribe to a channel with no message answers offset 0; the channel's first message then lands
    // at a sparse offset (256 or more). Resuming from offset 0 on another node must replay it (it was
    // `recovered: false`: the store's oldest offset was not 1, which looked like trimmed history;
    // seen by herald-check's kill9 scenario).
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let (cfg_a, _da) = cluster_config(&name);
    let (cfg_b, _db) = cluster_config(&name);
    let a = start(cfg_a);
    let b = start(cfg_b);
    let mut pb = Client::connect(&b.ws_url(), Enc::Json).await;
    let warm = publish_when_ready(&mut pb, "room:warm", json!(1)).await;
    let epoch_warm = warm["epoch"].as_str().unwrap().to_string();
    let mut pa = Client::connect(&a.ws_url(), Enc::Json).await;
    publish_when_ready(&mut pa, "room:warm", json!(2)).await;

    let channel = "room:fresh";
    let mut c = Client::connect(&a.ws_url(), Enc::Json).await;
    let r = c.subscribe(channel).await;
    assert_eq!(r["offset"], 0, "{r}");
    let since = json!({"epoch": r["epoch"], "offset": 0});
    drop(c);
    let first = pa.publish(channel, json!({"i": 1})).await;
    assert!(first["offset"].as_u64().unwrap() > 1, "sparse: {first}");

    let mut c = Client::connect(&b.ws_url(), Enc::Json).await;
    let r = c
        .ok(json!({"type": "subscribe", "channel": channel, "since": since}))
        .await;
    assert_eq!(r["recovered"], true, "since {since}: {r}");
    let m = c.next_message().await;
    assert_eq!(
        (m["data"]["i"].as_u64(), &m["offset"]),
        (Some(1), &first["offset"])
    );
    drop(c);
    a.shutdown().expect("node a stops");
    b.shutdown().expect("node b stops");
    delete_streams(&name, &epoch_warm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fail_fast_when_rabbitmq_is_unreachable() {
    let (mut cfg, _d) = cluster_config(&format!("test-{}", ulid::Ulid::new()));
    // Nothing listens there.
    cfg.cluster.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let node = start(cfg);
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    let t0 = std::time::Instant::now();
    let r = c
        .request(json!({"type": "publish", "channel": "x:y", "data": 1}))
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(r["retry_after_ms"].as_u64().is_some(), "{r}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "fast: {:?}",
        t0.elapsed()
    );
    // A node that never reached RabbitMQ does not know the cluster's epochs: a new channel's subscribe
    // is `unavailable` too, rather than an epoch of its own that the cluster would not share. (A node
    // that was connected keeps serving subscribes, history and resume during an outage: see
    // tests/cluster_broker.rs.)
    let r = c
        .request(json!({"type": "subscribe", "channel": "x:y"}))
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    let r = common::http::http(node.admin_addr, "GET", "/readyz", None, None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["status"], "log_unavailable");
    node.shutdown().expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_position_fell_out_of_retention_records_where_its_history_starts() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let tiny = |c: &mut herald::config::Config| {
        // Segments of ~10 KB and 30 KB per shard: retention drops old segments as new ones roll.
        c.cluster.segment_bytes = 10_000;
        c.cluster.max_bytes = 30_000;
        c.cluster.batch_max = 1;
    };
    let (mut cfg_a, _da) = cluster_config(&name);
    let (mut cfg_b, _db) = cluster_config(&name);
    tiny(&mut cfg_a);
    tiny(&mut cfg_b);
    let a = start(cfg_a);
    let b = start(cfg_b.clone());
    let channel = "room:trunc";
    let mut pa = Client::connect(&a.ws_url(), Enc::Msgpack).await;
    let mut pb = Client::connect(&b.ws_url(), Enc::Msgpack).await;
    let first = publish_when_ready(&mut pa, channel, json!({"i": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    publish_when_ready(&mut pb, channel, json!({"i": -1})).await;
    drop(pb);
    b.shutdown().expect("node b stops");

    // Far more than the stream keeps, while node b is away.
    let pad = "x".repeat(500);
    let mut last = first.clone();
    for i in 1..=400 {
        last = pa.publish(channel, json!({"i": i, "pad": pad})).await;
    }
    let b = start(cfg_b);
    let mut c = Client::connect(&b.ws_url(), Enc::Json).await;
    // A fresh publish through b proves it caught up with what the stream still has.
    let mut pb = Client::connect(&b.ws_url(), Enc::Msgpack).await;
    let after = publish_when_ready(&mut pb, channel, json!({"i": 401})).await;
    let hub = &b.node().hub;
    let truncated = hub
        .store
        .truncated_below(hub.log.shard_of(channel))
        .unwrap();
    eprintln!("node b's history of the shard starts again at {truncated}");
    assert!(
        truncated > first["offset"].as_u64().unwrap(),
        "the truncation was recorded"
    );
    // From before the lost part: not recoverable on this node.
    let before = json!({"epoch": epoch, "offset": first["offset"]});
    let r = c
        .ok(json!({"type": "subscribe", "channel": channel, "since": before}))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    c.ok(json!({"type": "unsubscribe", "channel": channel}))
        .await;
    // From inside what it has: recoverable.
    let recent = json!({"epoch": epoch, "offset": last["offset"]});
    let r = c
        .ok(json!({"type": "subscribe", "channel": channel, "since": recent}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let m = c.next_message().await;
    assert_eq!(m["offset"], after["offset"], "{m}");
    drop((c, pb));
    a.shutdown().expect("node a stops");
    b.shutdown().expect("node b stops");
    delete_streams(&name, &epoch).await;
}

/// `GET /api/cluster` of a node.
async fn cluster_view(node: &herald::server::RunningNode) -> serde_json::Value {
    let r = common::http::http(
        node.admin_addr,
        "GET",
        "/api/cluster",
        Some("admin-t"),
        None,
    )
    .await;
    r.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_each_other_and_a_stopped_node_turns_dead() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 1..=3 {
        let (mut cfg, dir) = cluster_config(&name);
        cfg.server.node_id = format!("n{i}");
        cfg.admin.token = "admin-t".into();
        nodes.push(start(cfg));
        dirs.push(dir);
    }
    let mut p = Client::connect(&nodes[0].ws_url(), Enc::Json).await;
    let first = publish_when_ready(&mut p, "room:members", json!(1)).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();

    // Every node lists all three, alive, with addresses and applied positions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = cluster_view(&nodes[0]).await;
        let alive: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] != "dead")
            .map(|n| n["node_id"].as_str().unwrap())
            .collect();
        if alive == ["n1", "n2", "n3"] {
            assert_eq!(v["nodes"][0]["state"], "self", "{v}");
            assert_eq!(v["nodes"][1]["state"], "alive", "{v}");
            assert_eq!(
                v["nodes"][1]["applied"].as_array().unwrap().len(),
                SHARDS as usize
            );
            assert_eq!(
                v["nodes"][2]["lag"].as_array().map(Vec::len),
                Some(SHARDS as usize),
                "{v}"
            );
            assert!(v["nodes"][2]["address"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1:"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "membership: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node 2 hears the others too (a heartbeat later at most than node 1 did).
    let metrics = loop {
        let m = common::http::http(nodes[1].admin_addr, "GET", "/metrics", None, None).await;
        if m.body.contains("herald_cluster_nodes 3") {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", m.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics
        .body
        .contains("herald_cluster_shard_lag{shard=\"0\"}"));

    // Node 3 stops: the others see it dead within 3 heartbeats (and a bit of scheduling).
    let n3 = nodes.pop().unwrap();
    let stopped = tokio::time::Instant::now();
    n3.shutdown().expect("node 3 stops");
    loop {
        let v = cluster_view(&nodes[0]).await;
        let n3 = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == "n3")
            .cloned()
            .unwrap_or_default();
        if n3["state"] == "dead" {
            eprintln!("node 3 dead after {:?}", stopped.elapsed());
            assert!(stopped.elapsed() < Duration::from_secs(6), "{v}");
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "never dead: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = common::http::http(nodes[0].admin_addr, "GET", "/metrics", None, None).await;
    assert!(
        metrics.body.contains("herald_cluster_nodes 2"),
        "{}",
        metrics.body
    );
    drop(p);
    for n in nodes {
        n.shutdown().expect("node stops");
    }
    delete_streams(&name, &epoch).await;
}

/// One AMQP message of a shard stream, as herald writes it (`cluster/stream.rs`, `Batch`).
#[derive(serde::Serialize)]
struct RawBatch {
    node: String,
    entries: Vec<herald::cluster::Entry>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_stream_recreated_under_a_node_stops_that_shard_there() {
    let name = format!("test-{}", ulid::Ulid::new());
    let _cleanup = StreamsGuard(name.clone());
    let (mut cfg, _d) = cluster_config(&name);
    cfg.cluster.batch_max = 1;
    let node = start(cfg.clone());
    let channel = "room:recreated";
    let mut p = Client::connect(&node.ws_url(), Enc::Json).await;
    let mut last = publish_when_ready(&mut p, channel, json!({"i": 0})).await;
    for i in 1..=5 {
        last = p.publish(channel, json!({"i": i})).await;
    }
    let epoch = last["epoch"].as_str().unwrap().to_string();
    let shard = node.node().hub.log.shard_of(channel);
    drop(p);
    node.shutdown().expect("node stops");

    // Someone deletes the shard stream and creates it again, and other entries fill it past this
    // node's stored position.
    let generation = epoch.split('.').next().unwrap();
    let stream = herald::cluster::StreamNames {
        cluster: name.clone(),
    }
    .shard(generation, shard);
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(stream.as_str().into(), Default::default())
        .await
        .unwrap();
    // The same arguments herald declares its streams with (else the node's own declare fails).
    let mut args = lapin::types::FieldTable::default();
    use lapin::types::AMQPValue;
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(format!("{}s", cfg.cluster.max_age_secs).into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(cfg.cluster.max_bytes as i64),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(cfg.cluster.segment_bytes as i64),
    );
    ch.queue_declare(
        stream.as_str().into(),
        lapin::options::QueueDeclareOptions::durable(),
        args,
    )
    .await
    .unwrap();
    for i in 0..20 {
        let mut data = Vec::new();
        rmpv::encode::write_value(
            &mut data,
            &rmpv::Value::Map(vec![("foreign".into(), rmpv::Value::from(i))]),
        )
        .unwrap();
        let batch = RawBatch {
            node: "elsewhere".into(),
            entries: vec![herald::cluster::Entry {
                id: ulid::Ulid::new().to_string(),
                ts: herald::protocol::now_ms(),
                channel: channel.into(),
                publisher: "anonymous".into(),
                from: None,
                key: None,
                kind: herald::cluster::EntryKind::Publish { data },
            }],
        };
        ch.basic_publish(
            "".into(),
            stream.as_str().into(),
            Default::default(),
            &rmp_serde::to_vec_named(&batch).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;

    // The node restarts: another entry sits at its stored position, so it applies nothing of that shard
    // (other shards go on: a publish to a channel of another shard is applied).
    let node = start(cfg);
    let other = (0..)
        .map(|i| format!("room:other{i}"))
        .find(|c| node.node().hub.log.shard_of(c) != shard)
        .unwrap();
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    publish_when_ready(&mut c, &other, json!(1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let h = c
        .ok(json!({"type": "history", "channel": channel, "limit": 100}))
        .await;
    let foreign = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["data"]["foreign"].is_number())
        .count();
    assert_eq!(
        foreign, 0,
        "nothing of the re-created stream was applied: {h}"
    );
    assert_eq!(h["head"], last["offset"], "{h}");
    drop(c);
    node.shutdown().expect("node stops");
}
