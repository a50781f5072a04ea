//! The first hour with herald: what a new user runs into, each against a real node or the real binary.
//! Handshake refusals are counted by reason and logged, the 401 for an HS256 token names the missing
//! secret, the production example starts as shipped, configuration errors name keys as the files write
//! them, silent clients are closed at the heartbeat timeout, a client's close is answered with a close
//! only, a frame without an envelope gets one error naming everything missing, the OpenAPI document
//! lists every admin endpoint, and logs into a pipe carry no colour codes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::http;
use common::*;
use futures_util::{SinkExt, StreamExt};
use herald::auth::{Authenticator, Claims};
use herald::config::AuthConfig;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::MaybeTlsStream;

const SECRET: &str = "first-hour-secret";

/// A throwaway RSA public key: enough for a node that verifies RS256 only.
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuDrqQtQpEPYftp82BzBC
yCeF5C/QZiFX4jhyZdWOnKeQa4qvb31VYN0fPPZBsg4vZWZxVlQ+O3QWPUGdqvPC
g0HJ0GQ7iQSkPaMHWWSlN7NEODSziO70VE3c9OJyiVzfV+2G/zrrXC6tHrSi+KCc
4wqEZdNVIqvKGtN74I01otUD3Y/euq0XCmZN0YguwK6kQ2tyGJt6CODa3egQghxM
MxKaX4WFMp0AQ1LFEvTSiN79AlkTJekbKoO8CGEM249VazVM/qUjrkT4qI/wiQq4
e9RVH7DuL3hhUxAZAGLOmJq/IMsrMQ8STduETEpRrEXE298Xpj8r0RzqQ1L1FzPx
twIDAQAB
-----END PUBLIC KEY-----
";

/// An HS256 token for `sub` signed with `secret`, valid for a minute.
fn hs256_token(secret: &str, sub: &str) -> String {
    let auth = Authenticator::from_config(&AuthConfig {
        hmac_secret: secret.into(),
        ..Default::default()
    })
    .unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    auth.mint(&Claims {
        sub: sub.into(),
        exp,
        subscribe: None,
        publish: None,
    })
    .unwrap()
}

/// A handshake that must be refused: its HTTP status and body.
async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match Client::try_connect(url, Enc::Json, headers).await {
        Ok(_) => panic!("the handshake with {headers:?} was accepted"),
        Err(WsError::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

async fn metrics(admin: SocketAddr) -> String {
    let r = http(admin, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handshake_refusal_is_counted_under_its_reason() {
    let (mut cfg, _dir) = test_config();
    cfg.server.allowed_origins = vec!["http://localhost:5173".into()];
    let node = start(cfg);
    let url = node.ws_url();
    let (status, _) = refused(&url, &[("origin", "http://evil.example")]).await;
    assert_eq!(status, 403);
    let (status, _) = refused(&url, &[("sec-websocket-protocol", "chat.v9")]).await;
    assert_eq!(status, 400);
    // The allowed origin still connects.
    Client::try_connect(&url, Enc::Json, &[("origin", "http://localhost:5173")])
        .await
        .expect("the allowed origin connects");

    let text = metrics(node.admin_addr).await;
    let name = "herald_connections_refused_total";
    for (reason, want) in [
        ("origin", 1),
        ("subprotocol", 1),
        ("draining", 0),
        ("auth", 0),
        ("node_full", 0),
        ("per_ip", 0),
        ("per_user", 0),
        ("rate", 0),
    ] {
        let line = format!("{name}{{reason=\"{reason}\"}} {want}");
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for head in ["# HELP", "# TYPE"] {
        let n = text
            .lines()
            .filter(|l| l.starts_with(&format!("{head} {name} ")))
            .count();
        assert_eq!(n, 1, "{head} {name} once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_token_on_an_rs256_only_node_is_told_the_node_has_no_hmac_secret() {
    let (mut cfg, dir) = test_config();
    let key = dir.path().join("jwt-public.pem");
    std::fs::write(&key, RSA_PUBLIC_PEM).unwrap();
    cfg.auth = AuthConfig {
        anonymous: false,
        rsa_public_key: key.display().to_string(),
        ..Default::default()
    };
    let node = start(cfg);
    let token = hs256_token(SECRET, "alice");
    let (status, body) = refused(
        &node.ws_url(),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("auth.hmac_secret"), "{body}");
    let text = metrics(node.admin_addr).await;
    assert!(
        text.lines()
            .any(|l| l == r#"herald_connections_refused_total{reason="auth"} 1"#),
        "{text}"
    );
}

/// Runs the real binary to its exit (it must fail at start-up) and returns its exit code and stderr.
async fn failed_start(mut cmd: Command) -> (Option<i32>, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("herald started although its configuration is broken")
    .expect("run herald");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn production_example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_example_starts_as_shipped_and_a_missing_key_file_is_a_config_error() {
    // Run where no config/default.toml is found: only the example and the environment count.
    let dir = tempfile::tempdir().unwrap();
    let example = || {
        let mut cmd = serve_command(&dir.path().join("data"));
        cmd.arg("--config")
            .arg(production_example())
            .current_dir(dir.path())
            .env("HERALD_AUTH__HMAC_SECRET", SECRET);
        cmd
    };
    let (child, url) = start_binary(example()).await;
    let token = hs256_token(SECRET, "alice");
    let mut c = Client::try_connect(
        &url,
        Enc::Json,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .expect("a token signed with HERALD_AUTH__HMAC_SECRET connects");
    assert_eq!(c.welcome["user"], "alice");
    c.subscribe("chat:lobby").await;
    drop(child);

    let mut cmd = example();
    cmd.env("HERALD_AUTH__RSA_PUBLIC_KEY", "/nonexistent.pem");
    let (code, stderr) = failed_start(cmd).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.rsa_public_key") && stderr.contains("/nonexistent.pem"),
        "{stderr}"
    );

    // Without the secret nobody could connect: exit 2, saying which variable to set.
    let mut cmd = example();
    cmd.env_remove("HERALD_AUTH__HMAC_SECRET");
    let (code, stderr) = failed_start(cmd).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("HERALD_AUTH__HMAC_SECRET"), "{stderr}");
}

#[tokio::test]
async fn configuration_errors_name_keys_without_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[server]\nlisten_addr = \"127.0.0.1:9000\"\n").unwrap();
    let mut cmd = serve_command(&dir.path().join("data"));
    cmd.arg("--config").arg(&file).current_dir(dir.path());
    let (code, stderr) = failed_start(cmd).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("server.listen_addr"), "{stderr}");
    assert!(!stderr.contains("default."), "{stderr}");

    let mut cmd = serve_command(&dir.path().join("data"));
    cmd.current_dir(dir.path())
        .env("HERALD_AUTH__ANONYMOUS", "true")
        .env("HERALD_SESSION__HEARTBEAT_MS", "often");
    let (code, stderr) = failed_start(cmd).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("session.heartbeat_ms") && stderr.contains("HERALD_SESSION__HEARTBEAT_MS"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_heartbeat_timeout_not_at_the_next_ping() {
    let (mut cfg, _dir) = test_config();
    // Pings every 900 ms: checking only on the ping tick would close at 1800 ms.
    cfg.session.heartbeat_ms = 900;
    cfg.session.heartbeat_timeout_ms = 1000;
    let node = start(cfg);
    let t0 = Instant::now();
    let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
    // From here on read the socket below the WebSocket library, which would answer pings.
    let MaybeTlsStream::Plain(tcp) = c.ws.get_mut() else {
        panic!("plain TCP expected")
    };
    let mut raw = Vec::new();
    // A close frame (FIN + opcode 8, short length) whose code is 4002.
    let close_4002 = |raw: &[u8]| {
        raw.windows(4)
            .any(|w| w[0] == 0x88 && w[1] < 126 && w[2..] == [0x0f, 0xa2])
    };
    let elapsed = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk))
            .await
            .expect("the silent client was never closed")
            .expect("read");
        raw.extend_from_slice(&chunk[..n]);
        if n == 0 || close_4002(&raw) {
            break t0.elapsed();
        }
    };
    assert!(close_4002(&raw), "close 4002 expected: {raw:?}");
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(1500),
        "closed after {elapsed:?}; the timeout is 1000 ms"
    );
    assert!(String::from_utf8_lossy(&raw).contains(r#""code":4002"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_a_close_carrying_its_code_and_nothing_else() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    for code in [1000u16, 4321] {
        let mut c = Client::connect(&node.ws_url(), Enc::Json).await;
        c.subscribe("bye").await;
        c.ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        })))
        .await
        .unwrap();
        loop {
            let m = tokio::time::timeout(TIMEOUT, c.ws.next())
                .await
                .expect("no answer to the close")
                .expect("connection ended without a close frame")
                .expect("read");
            match m {
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(Some(f)) => {
                    assert_eq!(u16::from(f.code), code);
                    break;
                }
                other => {
                    panic!("expected only a close frame after the client's close, got {other:?}")
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_without_its_envelope_gets_one_error_naming_every_missing_field() {
    let (cfg, _dir) = test_config();
    let node = start(cfg);
    for enc in [Enc::Json, Enc::Msgpack] {
        let mut c = Client::connect(&node.ws_url(), enc).await;
        c.send(json!({"cmd": "subscribe", "channel": "x"})).await;
        let e = c.next_frame().await;
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!("bad_request")),
            "{e}"
        );
        assert!(e["id"].is_null(), "{e}");
        let msg = e["message"].as_str().unwrap();
        for needle in ["`v`", "`type`", "`id`", "docs/protocol.md"] {
            assert!(msg.contains(needle), "{enc:?}: {needle} not in {msg}");
        }
        // `type` and `id` but no `v`: the documented unsupported_version, with the id echoed.
        c.send(json!({"type": "ping", "id": 7})).await;
        let e = c.next_frame().await;
        assert_eq!(e["code"], "unsupported_version", "{enc:?}: {e}");
        assert_eq!(e["id"], 7);
        let r = c.request(json!({"type": "ping"})).await;
        assert_eq!(r["type"], "reply", "the connection stays usable: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_admin_endpoint() {
    let (mut cfg, _dir) = test_config();
    cfg.admin.token = "admin-token".into();
    let node = start(cfg);
    let r = http(
        node.admin_addr,
        "GET",
        "/api/openapi.json",
        Some("admin-token"),
        None,
    )
    .await;
    let doc = r.ok();
    let paths = doc["paths"].as_object().unwrap();
    for path in ["/metrics", "/healthz", "/readyz", "/api/openapi.json"] {
        assert!(paths[path]["get"].is_object(), "GET {path} missing");
    }
}

/// Starts the real binary with stdout and stderr piped (killed if dropped); returns it and its ws:// URL.
async fn spawn_piped(mut cmd: Command) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herald");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = tokio::time::timeout(TIMEOUT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("herald did not print its listening line in time")
        .expect("read stdout")
        .expect("herald exited before listening");
    let (ws, _) = parse_listening(&line);
    (child, format!("ws://{ws}/ws"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_once_a_second_with_the_origin_and_logs_into_a_pipe_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve_command(&dir.path().join("data"));
    cmd.current_dir(dir.path())
        .env("HERALD_AUTH__ANONYMOUS", "true")
        .env(
            "HERALD_SERVER__ALLOWED_ORIGINS",
            r#"["http://localhost:5173"]"#,
        )
        .env("RUST_LOG", "info");
    let (child, url) = spawn_piped(cmd).await;
    let t0 = Instant::now();
    for _ in 0..3 {
        let (status, _) = refused(&url, &[("origin", "http://evil.example:1234")]).await;
        assert_eq!(status, 403);
    }
    let within_a_second = t0.elapsed() < Duration::from_millis(900);
    Client::try_connect(&url, Enc::Json, &[("origin", "http://localhost:5173")])
        .await
        .expect("the configured origin connects");
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let pid = child.id().expect("herald is running") as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("herald did not exit after SIGTERM")
        .expect("herald's logs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("\x1b["),
        "ANSI escapes in piped logs:\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    assert!(!lines.is_empty(), "no log line for the refusals:\n{stderr}");
    assert!(
        lines[0].contains(" INFO ")
            && lines[0].contains("reason=origin")
            && lines[0].contains(r#"origin="http://evil.example:1234""#),
        "{}",
        lines[0]
    );
    if within_a_second {
        assert_eq!(lines.len(), 1, "at most one line per second: {lines:?}");
    }
}
