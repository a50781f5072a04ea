//! Unit tests of the configuration: shipped files, ranges, and errors that name their keys.

use super::*;

#[test]
fn shipped_default_toml_matches_builtin_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let from_file: Config = Figment::from(Toml::file_exact(&path))
        .extract()
        .expect("config/default.toml parses");
    let mut builtin = Config::default();
    // The deliberate differences: the development file accepts anonymous clients...
    assert!(
        !builtin.auth.anonymous,
        "the built-in default refuses anonymous clients"
    );
    builtin.auth.anonymous = true;
    // And it serves the chat example at http://127.0.0.1:8000/, which needs that origin allowed.
    assert!(!builtin.server.examples && builtin.server.allowed_origins.is_empty());
    builtin.server.examples = true;
    builtin.server.allowed_origins = vec![
        "http://127.0.0.1:8000".to_string(),
        "http://localhost:8000".to_string(),
    ];
    assert_eq!(from_file, builtin);
}

#[test]
fn values_that_overflow_or_hang_are_refused_with_their_key() {
    type Breaker = fn(&mut Config);
    let cases: [(&str, Breaker); 10] = [
        ("server.shutdown_grace_ms", |c| {
            c.server.shutdown_grace_ms = u64::MAX
        }),
        ("storage.group_commit_ms", |c| {
            c.storage.group_commit_ms = u64::MAX
        }),
        ("storage.cache_mb", |c| c.storage.cache_mb = u64::MAX / 2),
        ("auth.leeway_secs", |c| c.auth.leeway_secs = u64::MAX),
        ("channel.window", |c| c.channel.window = 0),
        ("session.max_lag_ms", |c| c.session.max_lag_ms = 0),
        ("session.resume_wait_ms", |c| {
            c.session.resume_wait_ms = 60_001
        }),
        ("limits.max_channels", |c| c.limits.max_channels = 0),
        ("limits.max_publish_bytes", |c| {
            c.limits.max_publish_bytes = c.limits.max_frame_bytes + 1
        }),
        ("session.max_inflight", |c| c.session.max_inflight = 0),
    ];
    for (key, break_it) in cases {
        let mut c = Config::default();
        c.auth.anonymous = true;
        c.validate().expect("defaults (with anonymous) are valid");
        break_it(&mut c);
        let err = c.validate().expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn production_example_is_valid_once_the_secret_is_set() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
    let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::file_exact(&path));
    let cfg = extract(fig.clone()).expect("production example parses");
    let err = cfg.validate().expect_err("no secret: nobody could connect");
    let err = err.to_string();
    assert!(
        err.contains("auth.anonymous") && err.contains("HERALD_AUTH__HMAC_SECRET"),
        "{err}"
    );
    let cfg = extract(fig.merge(Serialized::default("auth.hmac_secret", "s3cret")))
        .expect("production example parses");
    cfg.validate()
        .expect("production example with a secret is valid");
    assert!(
        cfg.auth.rsa_public_key.is_empty(),
        "as shipped it needs no key file"
    );
}

fn toml_error(toml: &str) -> String {
    let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
    extract(fig).expect_err(toml).to_string()
}

#[test]
fn unknown_key_is_named_without_the_profile() {
    let err = toml_error("[server]\nlisten_addr = \"1.2.3.4:5\"\n");
    assert!(err.contains("server.listen_addr"), "{err}");
    assert!(!err.contains("default."), "{err}");
}

#[test]
fn bad_value_is_named_without_the_profile() {
    let err = toml_error("[session]\nheartbeat_ms = \"often\"\n");
    assert!(err.contains("session.heartbeat_ms"), "{err}");
    assert!(!err.contains("default."), "{err}");
}

#[test]
fn environment_values_name_their_variable() {
    // Only this test sets a HERALD_ variable, and no other unit test reads the environment.
    std::env::set_var("HERALD_SESSION__HEARTBEAT_MS", "often");
    let fig = Figment::from(Serialized::defaults(Config::default()))
        .merge(Env::prefixed(ENV_PREFIX).split("__"));
    let err = extract(fig).expect_err("bad env value").to_string();
    std::env::remove_var("HERALD_SESSION__HEARTBEAT_MS");
    assert!(err.contains("session.heartbeat_ms"), "{err}");
    assert!(
        err.contains("environment variable HERALD_SESSION__HEARTBEAT_MS"),
        "{err}"
    );
    assert!(!err.contains("default."), "{err}");
}

#[test]
fn namespace_inherits_from_default() {
    let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(
        "[namespaces.default]\njoin_leave = true\n[namespaces.feed]\nallow_publish = false\n",
    ));
    let cfg: Config = fig.extract().unwrap();
    let feed = cfg.namespace("feed");
    assert!(!feed.allow_publish);
    assert!(feed.join_leave, "inherited from default");
    assert!(cfg.namespace("unknown").allow_publish);
}
