//! The server endpoints of a client and which one the next connection attempt goes to.
//!
//! Exists so that the clients of a cluster spread over its nodes and leave a node that goes away
//! (a rolling restart drains nodes one by one with close code 1001): the first attempt goes to a
//! uniformly random endpoint of the list, and every attempt after a failed one or after a lost
//! connection goes to another endpoint, picked uniformly among the others: the clients of a node that
//! drains spread evenly over the remaining nodes (round robin would send them all to the same next
//! one). When to attempt is the backoff's business, not this module's. A single URL is the list of
//! one, and then nothing changes.

use crate::error::{Error, Result};
use rand::Rng;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The list of endpoint URLs and the index of the one the next attempt uses.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    urls: Vec<String>,
    next: usize,
}

impl Endpoints {
    /// Validates `urls` (see [`validate`]) and starts at a uniformly random one.
    pub(crate) fn new(urls: Vec<String>) -> Result<Self> {
        validate(&urls)?;
        let start = rand::rng().random_range(0..urls.len());
        Ok(Endpoints { urls, next: start })
    }

    /// The URL of the next (or current) attempt.
    pub(crate) fn current(&self) -> &str {
        &self.urls[self.next]
    }

    /// Moves to another URL of the list, uniformly among the others (after a failed attempt or a lost
    /// connection).
    pub(crate) fn advance(&mut self) {
        let n = self.urls.len();
        if n > 1 {
            self.next = (self.next + rand::rng().random_range(1..n)) % n;
        }
    }
}

/// Checks that the list is not empty and that every entry is a `ws://` or `wss://` URL with a host.
pub(crate) fn validate(urls: &[String]) -> Result<()> {
    if urls.is_empty() {
        return Err(Error::Config("no server url given".into()));
    }
    for url in urls {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(Error::Config(format!("not a ws:// or wss:// url: {url}")));
        }
        url.as_str()
            .into_client_request()
            .map_err(|e| Error::Config(format!("bad url {url}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("ws://127.0.0.1:{}/ws", 9000 + i))
            .collect()
    }

    #[test]
    fn validation() {
        assert!(validate(&urls(3)).is_ok());
        assert!(validate(&["wss://example.com/ws".to_string()]).is_ok());
        for bad in [
            vec![],
            vec!["http://127.0.0.1/ws".to_string()],
            vec!["127.0.0.1:8000".to_string()],
            vec!["ws://".to_string()],
            vec!["ws://127.0.0.1:8000/ws".to_string(), "ftp://x".to_string()],
            vec![
                "ws://127.0.0.1:8000/ws".to_string(),
                "ws://a b/ws".to_string(),
            ],
        ] {
            assert!(
                matches!(validate(&bad), Err(Error::Config(_))),
                "{bad:?} accepted"
            );
            assert!(Endpoints::new(bad).is_err());
        }
    }

    #[test]
    fn a_move_goes_to_another_endpoint_spread_over_the_others() {
        let list = urls(3);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let mut e = Endpoints::new(list.clone()).expect("valid");
            while e.current() != list[0] {
                e.advance();
            }
            e.advance();
            let i = list.iter().position(|u| u == e.current()).expect("listed");
            counts[i] += 1;
        }
        // Never the same one; the others 1500 each (round robin would put all 3000 on one).
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(
            counts[1..].iter().all(|&n| (1350..1650).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn one_url_stays() {
        let mut e = Endpoints::new(urls(1)).expect("valid");
        for _ in 0..3 {
            assert_eq!(e.current(), "ws://127.0.0.1:9000/ws");
            e.advance();
        }
    }

    #[test]
    fn start_is_spread_over_the_list() {
        let list = urls(3);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let e = Endpoints::new(list.clone()).expect("valid");
            let i = list.iter().position(|u| u == e.current()).expect("listed");
            counts[i] += 1;
        }
        // Uniform: 1000 each; a start that ignored the RNG would put all 3000 in one.
        assert!(
            counts.iter().all(|&n| (850..1150).contains(&n)),
            "{counts:?}"
        );
    }
}
