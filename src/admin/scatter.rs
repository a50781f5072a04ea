//! The admin API across the cluster: questions every node answers for itself.
//!
//! Subscribers and sessions live on the node a client is connected to, so an operator's view of a
//! channel, or a `disconnect` of a user, needs every node. The node that got the request answers for
//! itself and asks the others on the cluster bus ([`crate::cluster::Ask`]); each answers from its own
//! state within `cluster.admin_timeout_ms`. A node that does not answer in time, or is known but dead,
//! is named in the reply (`not_answering`), never silently left out. On a single node nobody else is
//! asked.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use serde::{Deserialize, Serialize};

use crate::channel::Inspect;
use crate::cluster::{Answerer, Ask};
use crate::node::Node;
use crate::protocol::CloseCode;

/// A question to every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Question {
    /// How many subscribers each of these channels has on the node.
    Subscribers { channels: Vec<String> },
    /// Close the sessions of `user` (or the one session `session`) on the node.
    Disconnect {
        user: Option<String>,
        session: Option<String>,
        code: u16,
        reason: Option<String>,
    },
}

/// One node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Subscribers(Vec<usize>),
    Disconnected(Vec<String>),
    /// The node could not read the question (another herald version).
    Unreadable(String),
}

/// The other nodes' answers.
#[derive(Debug, Default)]
pub struct Gathered {
    /// (node, answer), by node id.
    pub answers: Vec<(String, Answer)>,
    /// Nodes that did not answer in time (or are dead), by node id.
    pub not_answering: Vec<String>,
}

/// Asks every other node; returns at once on a single node.
pub async fn ask(node: &Node, question: &Question) -> Gathered {
    let Some(bus) = node.bus.get() else {
        return Gathered::default();
    };
    let Ok(body) = rmp_serde::to_vec_named(question) else {
        return Gathered::default();
    };
    let timeout = Duration::from_millis(node.config.cluster.admin_timeout_ms);
    let replies = bus.send(Ask { body, timeout }).await.unwrap_or_default();
    let mut out = Gathered::default();
    for r in replies {
        match r.body.map(|b| rmp_serde::from_slice::<Answer>(&b)) {
            Some(Ok(a)) => out.answers.push((r.node, a)),
            Some(Err(e)) => out
                .answers
                .push((r.node, Answer::Unreadable(e.to_string()))),
            None => out.not_answering.push(r.node),
        }
    }
    out
}

/// How this node answers the others' questions (wired into the bus at start).
pub fn answerer(node: Arc<Node>) -> Answerer {
    Arc::new(move |body: Vec<u8>| -> BoxFuture<'static, Vec<u8>> {
        let node = node.clone();
        Box::pin(async move {
            let answer = match rmp_serde::from_slice::<Question>(&body) {
                Ok(q) => answer_here(&node, q).await,
                Err(e) => Answer::Unreadable(e.to_string()),
            };
            rmp_serde::to_vec_named(&answer).unwrap_or_default()
        })
    })
}

async fn answer_here(node: &Node, q: Question) -> Answer {
    match q {
        Question::Subscribers { channels } => {
            Answer::Subscribers(subscribers_here(node, &channels).await)
        }
        Question::Disconnect {
            user,
            session,
            code,
            reason,
        } => {
            let target = match (user.as_deref(), session.as_deref()) {
                (Some(u), _) => super::sessions::Target::User(u),
                (None, Some(s)) => super::sessions::Target::Session(s),
                (None, None) => return Answer::Disconnected(Vec::new()),
            };
            let code = CloseCode::from_code(code).unwrap_or(CloseCode::Disconnected);
            Answer::Disconnected(super::sessions::disconnect_here(
                node, &target, code, reason,
            ))
        }
    }
}

/// Subscribers of each channel on this node (0 where no actor runs).
pub async fn subscribers_here(node: &Node, channels: &[String]) -> Vec<usize> {
    join_all(channels.iter().map(|name| async move {
        match node.channels.get(name) {
            Some(addr) => addr.send(Inspect).await.map_or(0, |i| i.subscribers.len()),
            None => 0,
        }
    }))
    .await
}
