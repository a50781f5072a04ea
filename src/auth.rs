//! Authentication at the handshake and channel permissions from token claims.
//!
//! A client proves who it is with a JWT (HS256 with `auth.hmac_secret`, or RS256 with the PEM public key at
//! `auth.rsa_public_key`), sent as `Authorization: Bearer …` or, for browsers that cannot set headers, the
//! `token` query parameter. The key is chosen by the algorithm the server allows, never by the token: an
//! `alg: none` token, an algorithm that is not configured, or an HS256 token signed with the RSA public key
//! is refused. Claims may narrow what the user can do with glob patterns (`chat:*`).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// Why a token was refused. `reason()` is the short label used in HTTP bodies and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token algorithm is not accepted")]
    Algorithm,
    #[error("the token claims are invalid: {0}")]
    Claims(String),
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// The token's algorithm is one herald supports, but this node has no key for it.
    #[error("this node cannot verify {alg} tokens: it has no {key} configured")]
    NoKey {
        alg: &'static str,
        key: &'static str,
    },
}

impl AuthError {
    /// Every reason, in the order used by metrics.
    pub const REASONS: [&'static str; 7] = [
        "missing",
        "malformed",
        "expired",
        "bad_signature",
        "bad_algorithm",
        "invalid_claims",
        "not_yet_valid",
    ];

    /// Index into [`AuthError::REASONS`].
    pub fn index(&self) -> usize {
        match self {
            AuthError::Missing => 0,
            AuthError::Malformed => 1,
            AuthError::Expired => 2,
            AuthError::BadSignature => 3,
            AuthError::Algorithm | AuthError::NoKey { .. } => 4,
            AuthError::Claims(_) => 5,
            AuthError::NotYetValid => 6,
        }
    }

    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }
}

/// Why the auth configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    #[error("auth.rsa_public_key: cannot read {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.rsa_public_key: not an RSA public key in PEM: {0}")]
    BadKey(jsonwebtoken::errors::Error),
    #[error("auth.hmac_secret is needed to mint tokens")]
    NoSecret,
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// The claims herald reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Channel patterns the user may subscribe to; absent means the namespace options decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    /// Channel patterns the user may publish to; absent means the namespace options decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
}

impl Claims {
    pub fn may_subscribe(&self, channel: &str) -> bool {
        allowed(self.subscribe.as_deref(), channel)
    }

    pub fn may_publish(&self, channel: &str) -> bool {
        allowed(self.publish.as_deref(), channel)
    }
}

fn allowed(patterns: Option<&[String]>, channel: &str) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| glob_match(p, channel)))
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Verifies tokens (and mints them for development).
pub struct Authenticator {
    hs: Option<(DecodingKey, EncodingKey)>,
    rs: Option<DecodingKey>,
    pub anonymous: bool,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs.is_some())
            .field("rs256", &self.rs.is_some())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig) -> Result<Arc<Authenticator>, AuthSetupError> {
        let hs = (!cfg.hmac_secret.is_empty()).then(|| {
            (
                DecodingKey::from_secret(cfg.hmac_secret.as_bytes()),
                EncodingKey::from_secret(cfg.hmac_secret.as_bytes()),
            )
        });
        let rs = if cfg.rsa_public_key.is_empty() {
            None
        } else {
            let pem =
                std::fs::read(&cfg.rsa_public_key).map_err(|source| AuthSetupError::ReadKey {
                    path: cfg.rsa_public_key.clone(),
                    source,
                })?;
            Some(DecodingKey::from_rsa_pem(&pem).map_err(AuthSetupError::BadKey)?)
        };
        Ok(Arc::new(Authenticator {
            hs,
            rs,
            anonymous: cfg.anonymous,
            leeway: cfg.leeway_secs,
            issuer: (!cfg.issuer.is_empty()).then(|| cfg.issuer.clone()),
            audience: (!cfg.audience.is_empty()).then(|| cfg.audience.clone()),
        }))
    }

    /// Whether any verification key is configured.
    pub fn has_keys(&self) -> bool {
        self.hs.is_some() || self.rs.is_some()
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        // The header is read only to pick which configured key to try; the key type then pins the algorithm.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs.as_ref().map(|(d, _)| d).ok_or(AuthError::NoKey {
                alg: "HS256",
                key: "auth.hmac_secret",
            }),
            Algorithm::RS256 => self.rs.as_ref().ok_or(AuthError::NoKey {
                alg: "RS256",
                key: "auth.rsa_public_key",
            }),
            _ => Err(AuthError::Algorithm),
        }?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
            ErrorKind::InvalidIssuer => {
                AuthError::Claims("`iss` is not the configured issuer".into())
            }
            ErrorKind::InvalidAudience => {
                AuthError::Claims("`aud` does not name the configured audience".into())
            }
            ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => {
                AuthError::Claims(e.to_string())
            }
            _ => AuthError::Malformed,
        })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Claims("`sub` is empty".into()));
        }
        // RFC 7519: not accepted on or after `exp`. jsonwebtoken accepts the whole second `exp` itself;
        // the session's expiry timer closes at that second, so a reconnect then must be refused too.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        if data.claims.exp.saturating_add(self.leeway) <= now {
            return Err(AuthError::Expired);
        }
        Ok(data.claims)
    }

    /// Mints an HS256 token (development helper behind `herald token`).
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthSetupError> {
        let (_, key) = self.hs.as_ref().ok_or(AuthSetupError::NoSecret)?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key)
            .map_err(AuthSetupError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("chat:*", "chat:room1"));
        assert!(glob_match("chat:*", "chat:"));
        assert!(!glob_match("chat:*", "chatter"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    fn auth(secret: &str) -> Arc<Authenticator> {
        Authenticator::from_config(&AuthConfig {
            anonymous: false,
            hmac_secret: secret.into(),
            rsa_public_key: String::new(),
            leeway_secs: 0,
            ..Default::default()
        })
        .unwrap()
    }

    fn claims(exp_in: i64) -> Claims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Claims {
            sub: "alice".into(),
            exp: (now + exp_in) as u64,
            subscribe: Some(vec!["chat:*".into()]),
            publish: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let a = auth("s3cret");
        let t = a.mint(&claims(60)).unwrap();
        let c = a.verify(&t).unwrap();
        assert!(c.may_subscribe("chat:x") && !c.may_subscribe("news:x"));
        assert!(c.may_publish("anything"));
        assert_eq!(auth("other").verify(&t), Err(AuthError::BadSignature));
        assert_eq!(
            a.verify(&a.mint(&claims(-120)).unwrap()),
            Err(AuthError::Expired)
        );
        assert_eq!(a.verify("not.a.token"), Err(AuthError::Malformed));
        // RFC 7519: not accepted on its `exp` second (the session's expiry timer closes then).
        assert_eq!(
            a.verify(&a.mint(&claims(0)).unwrap()),
            Err(AuthError::Expired)
        );
        // alg: none and HS/RS confusion are covered end to end in tests/auth.rs.
    }
}
