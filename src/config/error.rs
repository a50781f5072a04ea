//! Configuration errors, with keys named the way the files write them.

use super::ENV_PREFIX;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A layer could not be read or a key has an unknown name or a bad value; the message names the key
    /// as it is written in the files (`server.listen`) and where the value came from.
    #[error("configuration error: {0}")]
    Invalid(String),
    /// Values are individually well-formed but do not make sense together.
    #[error("configuration error: {key}: {reason}")]
    Semantic { key: String, reason: String },
}

/// Renders figment's errors (all of them, `; `-separated) with each key as written in the files:
/// `server.listen_addr`, not figment's `default.server.listen_addr` (the profile is not part of the key). A
/// value from the environment also names its variable.
pub(super) fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = e.metadata.as_ref().map(|md| {
                if md.name.contains("environment variable") {
                    let var: Vec<String> = e.path.iter().map(|p| p.to_ascii_uppercase()).collect();
                    format!("environment variable {ENV_PREFIX}{}", var.join("__"))
                } else {
                    match &md.source {
                        Some(source) => format!("{} {source}", md.name),
                        None => md.name.to_string(),
                    }
                }
            });
            let mut line = if key.is_empty() {
                e.kind.to_string()
            } else {
                format!("{key}: {}", e.kind)
            };
            if let Some(from) = from {
                line.push_str(&format!(" (in {from})"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ")
}
