//! Authentication at the handshake, claims-based permissions, token expiry and refresh.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald::auth::{Authenticator, Claims};
use herald::config::{AuthConfig, Config};
use serde_json::json;

const SECRET: &str = "test-secret-please-ignore";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn secured(cfg: &mut Config) {
    cfg.auth = AuthConfig {
        anonymous: false,
        hmac_secret: SECRET.into(),
        rsa_public_key: String::new(),
        leeway_secs: 0,
        ..Default::default()
    };
}

fn mint(
    secret: &str,
    sub: &str,
    ttl: i64,
    subscribe: Option<Vec<&str>>,
    publish: Option<Vec<&str>>,
) -> String {
    let a = Authenticator::from_config(&AuthConfig {
        anonymous: false,
        hmac_secret: secret.into(),
        rsa_public_key: String::new(),
        leeway_secs: 0,
        ..Default::default()
    })
    .unwrap();
    a.mint(&Claims {
        sub: sub.into(),
        exp: (now() as i64 + ttl) as u64,
        subscribe: subscribe.map(|v| v.into_iter().map(String::from).collect()),
        publish: publish.map(|v| v.into_iter().map(String::from).collect()),
    })
    .unwrap()
}

/// The HTTP status of a handshake attempt (101 on success).
async fn status(url: &str, headers: &[(&str, &str)]) -> u16 {
    match Client::try_connect(url, Enc::Json, headers).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

fn b64url(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let (mut cfg, _dir) = test_config();
    secured(&mut cfg);
    let node = start(cfg);
    let url = node.ws_url();
    let good = mint(SECRET, "alice", 60, None, None);
    let bearer = |t: &str| format!("Bearer {t}");

    assert_eq!(status(&url, &[]).await, 401, "missing token");
    let forged = mint("another-secret", "alice", 60, None, None);
    assert_eq!(
        status(&url, &[("authorization", &bearer(&forged))]).await,
        401,
        "forged"
    );
    let expired = mint(SECRET, "alice", -30, None, None);
    assert_eq!(
        status(&url, &[("authorization", &bearer(&expired))]).await,
        401,
        "expired"
    );
    assert_eq!(
        status(&url, &[("authorization", "Bearer not-a-jwt")]).await,
        401,
        "malformed"
    );
    assert_eq!(
        status(&url, &[("authorization", "Basic YWxpY2U6eA==")]).await,
        401,
        "not bearer"
    );
    let none = format!(
        "{}.{}.",
        b64url(r#"{"alg":"none","typ":"JWT"}"#),
        b64url(&format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 60))
    );
    assert_eq!(
        status(&url, &[("authorization", &bearer(&none))]).await,
        401,
        "alg none"
    );
    // A token whose payload was edited after signing.
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = b64url(&format!(r#"{{"sub":"mallory","exp":{}}}"#, now() + 60));
    let tampered = parts.join(".");
    assert_eq!(
        status(&url, &[("authorization", &bearer(&tampered))]).await,
        401,
        "tampered"
    );

    // Good tokens work in the header and in the query parameter.
    let c = Client::try_connect(&url, Enc::Json, &[("authorization", &bearer(&good))])
        .await
        .unwrap();
    assert_eq!(c.welcome["user"], "alice");
    let c = Client::try_connect(&format!("{url}?token={good}"), Enc::Json, &[])
        .await
        .unwrap();
    assert_eq!(c.welcome["user"], "alice");
    let failures: u64 = node
        .node()
        .stats
        .auth_failures
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(failures, 7, "every refusal is counted by reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("public.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl is installed")
        .status
        .success();
    assert!(ok);
    let ok = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    let (mut cfg, _d) = test_config();
    cfg.auth = AuthConfig {
        anonymous: false,
        hmac_secret: String::new(),
        rsa_public_key: public.display().to_string(),
        leeway_secs: 0,
        ..Default::default()
    };
    let node = start(cfg);
    let claims = Claims {
        sub: "alice".into(),
        exp: now() + 60,
        subscribe: None,
        publish: None,
    };
    // The classic confusion attack: HS256 with the public key's PEM bytes as the HMAC secret.
    let pem = std::fs::read(&public).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&pem),
    )
    .unwrap();
    let url = node.ws_url();
    assert_eq!(
        status(&url, &[("authorization", &format!("Bearer {confused}"))]).await,
        401
    );
    // A real RS256 token works.
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        status(&url, &[("authorization", &format!("Bearer {good}"))]).await,
        101
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_limit_channels_with_forbidden() {
    let (mut cfg, _dir) = test_config();
    secured(&mut cfg);
    let node = start(cfg);
    let t = mint(
        SECRET,
        "bob",
        60,
        Some(vec!["chat:*"]),
        Some(vec!["chat:lobby"]),
    );
    let mut c = Client::try_connect(
        &node.ws_url(),
        Enc::Json,
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await
    .unwrap();
    c.subscribe("chat:room1").await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "news:x"}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    c.subscribe("chat:lobby").await;
    let p = c.publish("chat:lobby", json!("hi")).await;
    assert_eq!(p["offset"], 1);
    let m = c.next_message().await;
    assert_eq!(m["from"], "bob", "the publisher's user is attached");
    let r = c
        .request(json!({"type": "publish", "channel": "chat:room1", "data": 1}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = c.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_closes_with_4003_and_refresh_extends_it() {
    let (mut cfg, _dir) = test_config();
    secured(&mut cfg);
    let node = start(cfg);
    let url = node.ws_url();
    let short = mint(SECRET, "carol", 2, None, None);
    let auth = format!("Bearer {short}");

    // Refreshed connection: survives past the first expiry.
    let mut kept = Client::try_connect(&url, Enc::Json, &[("authorization", &auth)])
        .await
        .unwrap();
    let longer = mint(SECRET, "carol", 60, None, None);
    let r = kept.ok(json!({"type": "refresh", "token": longer})).await;
    assert!(r["expires_at"].as_u64().unwrap() > now() + 30);
    // Refresh with someone else's token or a bad one is forbidden.
    let other = mint(SECRET, "dave", 60, None, None);
    let r = kept
        .request(json!({"type": "refresh", "token": other}))
        .await;
    assert_eq!(r["code"], "forbidden");
    let r = kept
        .request(json!({"type": "refresh", "token": "garbage"}))
        .await;
    assert_eq!(r["code"], "forbidden");

    // Unrefreshed connection: closed with 4003, reconnect advised.
    let mut dropped = Client::try_connect(&url, Enc::Json, &[("authorization", &auth)])
        .await
        .unwrap();
    let f = dropped.next_frame().await;
    assert_eq!(f["type"], "disconnect", "{f}");
    assert_eq!(f["code"], 4003);
    assert_eq!(f["reconnect"], true);
    match dropped.next_event().await {
        Event::Closed(code) => assert_eq!(code, Some(4003)),
        Event::Frame(f) => panic!("expected close, got {f}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = kept.request(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "reply", "the refreshed connection is still open");
}

#[test]
fn token_command_mints_a_token_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "token",
            "--sub",
            "alice",
            "--subscribe",
            "chat:*",
            "--publish",
            "chat:*",
            "--ttl",
            "1h",
        ])
        .env("HERALD_AUTH__HMAC_SECRET", SECRET)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let a = Authenticator::from_config(&AuthConfig {
        anonymous: false,
        hmac_secret: SECRET.into(),
        rsa_public_key: String::new(),
        leeway_secs: 0,
        ..Default::default()
    })
    .unwrap();
    let c = a.verify(&token).unwrap();
    assert_eq!(c.sub, "alice");
    assert_eq!(c.subscribe, Some(vec!["chat:*".to_string()]));
    assert!(c.exp > now() + 3500 && c.exp <= now() + 3600);
    // Without a secret it refuses clearly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "alice"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hmac_secret"));
}
