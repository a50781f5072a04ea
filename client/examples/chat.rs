//! Connects to a herald server, subscribes to a channel, publishes a few messages and prints
//! everything that arrives, together with the connection state changes.
//!
//! ```text
//! cargo run -p herald-client --example chat -- [ws://127.0.0.1:8000/ws] [chat:room1] [token]
//! ```
//!
//! The first argument may list several nodes of a cluster, separated by commas
//! (`ws://127.0.0.1:8081/ws,ws://127.0.0.1:8082/ws,ws://127.0.0.1:8083/ws`): the client starts at a
//! random one and moves to the next when its node goes away.

use futures_util::StreamExt;
use herald_client::{Client, ClientOptions, ConnectionState, SubscriptionEvent};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let urls: Vec<String> = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8000/ws".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let channel = args.next().unwrap_or_else(|| "chat:room1".into());
    let token = args.next();

    let options = ClientOptions {
        backoff: herald_client::BackoffPolicy {
            max_attempts: Some(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let (client, mut states) = Client::connect_any(
        urls,
        move || {
            let token = token.clone();
            async move { token }
        },
        options,
    )
    .await?;
    tokio::spawn(async move {
        while let Some(state) = states.next().await {
            match state {
                ConnectionState::Reconnecting { attempt, delay, .. } => {
                    println!(
                        "[state] reconnecting (attempt {attempt}) in {} ms",
                        delay.as_millis()
                    )
                }
                other => println!("[state] {other:?}"),
            }
        }
    });

    let mut sub = client.subscribe(channel.clone()).await?;
    for i in 1..=3 {
        let ack = client
            .publish(
                &channel,
                &serde_json::json!({"text": format!("hello #{i}")}),
            )
            .await?;
        println!(
            "published #{i} as {} at {}:{}",
            ack.id, ack.epoch, ack.offset
        );
    }
    let members = client.presence(&channel).await;
    println!("presence: {members:?}");

    // Print what arrives for ten seconds.
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            ev = sub.next() => match ev {
                Some(SubscriptionEvent::Message(m)) => {
                    println!("{} #{} from {:?}: {}", m.channel, m.offset, m.from, m.data_json()?)
                }
                Some(SubscriptionEvent::NotRecovered { epoch, head }) => {
                    println!("gap not recovered (epoch {epoch}, head {head}): refetch state")
                }
                Some(other) => println!("{other:?}"),
                None => break,
            },
        }
    }
    let page = client.history(&channel, Some(0), Some(10)).await?;
    println!(
        "history: {} messages, head {}",
        page.messages.len(),
        page.head
    );
    client.close().await;
    Ok(())
}
