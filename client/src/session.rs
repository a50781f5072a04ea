//! The online half of the driver: one connected session.
//!
//! Exists to keep the frame-by-frame work (answers matched to commands, messages passed through
//! duplicate suppression, heartbeat deadline, `disconnect` advice) apart from the reconnect loop in
//! `driver.rs`.

use super::*;

impl Driver {
    /// Serves one connection until it is lost or the client is closed.
    pub(super) async fn session(&mut self, mut conn: Conn) -> End {
        self.resubscribe();
        let dead_after =
            Duration::from_millis(conn.heartbeat_ms.saturating_mul(2)) + self.opts.heartbeat_margin;
        let mut last_rx = tokio::time::Instant::now();
        let mut disconnect: Option<(u16, String, bool, Option<u64>)> = None;
        if let Err(e) = self.flush(&mut conn).await {
            return lost(None, e, &disconnect);
        }
        loop {
            let deadline = last_rx + dead_after;
            let due = self.next_due();
            // While the application has not made room for what it was given, the socket is not read.
            let backlogged = self.backlogged();
            let room = wait_for_room(self.waiting_for_room());
            tokio::select! {
                _ = room, if backlogged => {
                    self.move_overflow();
                    // Not reading was our choice, not the server's silence.
                    last_rx = tokio::time::Instant::now();
                }
                msg = conn.ws.next(), if !backlogged => match msg {
                    Some(Ok(WsMessage::Close(cf))) => {
                        let (code, reason) = match cf {
                            Some(cf) => (Some(u16::from(cf.code)), cf.reason.to_string()),
                            None => (None, "closed without code".to_string()),
                        };
                        return lost(code, reason, &disconnect);
                    }
                    Some(Ok(m)) => {
                        last_rx = tokio::time::Instant::now();
                        self.on_ws_message(conn.encoding, m, &mut disconnect);
                    }
                    Some(Err(e)) => return lost(None, e.to_string(), &disconnect),
                    None => return lost(None, "connection closed".into(), &disconnect),
                },
                cmd = self.cmd_rx.recv() => match cmd {
                    None => {
                        close(&mut conn).await;
                        return End::Closed;
                    }
                    Some(Cmd::Close { reply }) => {
                        close(&mut conn).await;
                        let _ = reply.send(());
                        return End::Closed;
                    }
                    Some(c) => self.on_cmd(c, true),
                },
                _ = tokio::time::sleep_until(deadline), if !backlogged => {
                    return End::Lost {
                        code: None,
                        reason: format!("no frame for {} ms: server presumed dead", dead_after.as_millis()),
                        advice: Advice::Reconnect,
                        retry_after: None,
                    };
                }
                _ = sleep_until_opt(due), if due.is_some() => {}
            }
            if let Err(e) = self.flush(&mut conn).await {
                return lost(None, e, &disconnect);
            }
        }
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.ops
            .values()
            .filter(|op| !op.sent)
            .filter_map(|op| op.not_before)
            .min()
            .map(tokio::time::Instant::from_std)
    }

    /// Sends every queued command that is due.
    async fn flush(&mut self, conn: &mut Conn) -> Result<(), String> {
        let now = Instant::now();
        let mut any = false;
        let ids: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| !op.sent && op.not_before.is_none_or(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            match frame::encode(conn.encoding, id, &op.cmd) {
                Ok(msg) => {
                    op.sent = true;
                    op.not_before = None;
                    any = true;
                    conn.ws.feed(msg).await.map_err(|e| e.to_string())?;
                }
                Err(e) => {
                    if let Some(op) = self.ops.remove(&id) {
                        answer_err(op.reply, e);
                    }
                }
            }
        }
        if any {
            conn.ws.flush().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn on_ws_message(
        &mut self,
        enc: frame::Encoding,
        msg: WsMessage,
        disconnect: &mut Option<(u16, String, bool, Option<u64>)>,
    ) {
        let frame = match frame::decode(enc, &msg) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from server");
                return;
            }
        };
        match frame {
            ServerFrame::Reply { id, result } => {
                if let Some(op) = id.as_u64().and_then(|id| self.ops.remove(&id)) {
                    self.on_reply(op, result);
                }
            }
            ServerFrame::Error {
                id,
                code,
                message,
                retry_after_ms,
            } => {
                let Some(id) = id.as_ref().and_then(|i| i.as_u64()) else {
                    tracing::warn!(%code, %message, "server error without request id");
                    return;
                };
                if let Some(op) = self.ops.remove(&id) {
                    self.on_error(id, op, code, message, retry_after_ms);
                }
            }
            ServerFrame::Message(f) => self.on_message(f),
            ServerFrame::Join {
                channel,
                session,
                user,
            } => self.forward(&channel, SubscriptionEvent::Join { session, user }),
            ServerFrame::Leave {
                channel,
                session,
                user,
            } => self.forward(&channel, SubscriptionEvent::Leave { session, user }),
            ServerFrame::Disconnect {
                code,
                reason,
                reconnect,
                retry_after_ms,
            } => *disconnect = Some((code, reason, reconnect, retry_after_ms)),
            ServerFrame::Welcome { .. } | ServerFrame::Unknown => {}
        }
    }

    fn on_reply(&mut self, op: Op, result: Value) {
        match op.cmd {
            Command::Subscribe { channel, since } => {
                let Some(sub) = self
                    .subs
                    .get_mut(&channel)
                    .filter(|s| s.sub_id == op.sub_id)
                else {
                    // Dropped while the subscribe was in flight: undo it on the server.
                    self.push_op(Command::Unsubscribe { channel }, Reply::None, 0);
                    return;
                };
                let reply: SubscribeReply = match frame::result_as(result) {
                    Ok(r) => r,
                    Err(e) => {
                        self.end_sub(&channel, e);
                        return;
                    }
                };
                let outcome = sub.tracker.on_subscribed(&reply, since.is_some());
                sub.confirmed = true;
                if let Some(first) = sub.first.take() {
                    let _ = first.send(Ok(()));
                }
                if let ReplyOutcome::NotRecovered { epoch, head } = outcome {
                    self.forward(&channel, SubscriptionEvent::NotRecovered { epoch, head });
                }
            }
            Command::Unsubscribe { .. } => answer_unit(op.reply, Ok(())),
            _ => {
                if let Reply::Value(r) = op.reply {
                    let _ = r.send(Ok(result));
                }
            }
        }
    }

    fn on_error(
        &mut self,
        id: u64,
        mut op: Op,
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    ) {
        let retryable = code == "rate_limited" || code == "unavailable";
        if retryable && op.retries < self.opts.command_retries {
            op.retries += 1;
            op.sent = false;
            op.not_before =
                Some(Instant::now() + Duration::from_millis(retry_after_ms.unwrap_or(500)));
            self.ops.insert(id, op);
            return;
        }
        let err = Error::Server {
            code,
            message,
            retry_after_ms,
        };
        match op.cmd {
            Command::Subscribe { channel, .. } => {
                if self
                    .subs
                    .get(&channel)
                    .is_some_and(|s| s.sub_id == op.sub_id)
                {
                    self.end_sub(&channel, err);
                }
            }
            Command::Unsubscribe { .. } if err.code() == Some("not_subscribed") => {
                answer_unit(op.reply, Ok(()))
            }
            _ => answer_err(op.reply, err),
        }
    }

    fn on_message(&mut self, f: frame::MessageFields) {
        let Some(sub) = self.subs.get_mut(&f.channel) else {
            return;
        };
        if !sub.confirmed || !sub.tracker.accept(&f) {
            return;
        }
        let channel = f.channel.clone();
        if !deliver(sub, SubscriptionEvent::Message(Message::from(f))) {
            // The application dropped the stream: stop the subscription.
            self.subs.remove(&channel);
            self.push_op(Command::Unsubscribe { channel }, Reply::None, 0);
        }
    }

    fn forward(&mut self, channel: &str, ev: SubscriptionEvent) {
        if let Some(sub) = self.subs.get_mut(channel) {
            deliver(sub, ev);
        }
    }

    /// Whether some subscription holds events its application has not made room for yet.
    pub(super) fn backlogged(&self) -> bool {
        self.subs.values().any(|s| !s.overflow.is_empty())
    }

    /// The event buffers of the backlogged subscriptions, to wait for room in.
    fn waiting_for_room(&self) -> Vec<mpsc::Sender<SubscriptionEvent>> {
        self.subs
            .values()
            .filter(|s| !s.overflow.is_empty())
            .map(|s| s.events.clone())
            .collect()
    }

    /// Moves waiting events into the buffers that have room again.
    fn move_overflow(&mut self) {
        for sub in self.subs.values_mut() {
            while let Some(ev) = sub.overflow.pop_front() {
                match sub.events.try_send(ev) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(ev)) => {
                        sub.overflow.push_front(ev);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        sub.overflow.clear();
                        break;
                    }
                }
            }
        }
    }

    /// Ends a subscription with an error (its caller or its stream is told).
    fn end_sub(&mut self, channel: &str, err: Error) {
        if let Some(mut sub) = self.subs.remove(channel) {
            match sub.first.take() {
                Some(first) => {
                    let _ = first.send(Err(err));
                }
                None => {
                    let _ = sub.events.try_send(SubscriptionEvent::Ended(err));
                }
            }
        }
    }
}

fn answer_err(reply: Reply, err: Error) {
    match reply {
        Reply::Value(r) => {
            let _ = r.send(Err(err));
        }
        Reply::Unit(r) => {
            let _ = r.send(Err(err));
        }
        Reply::None => {}
    }
}

fn answer_unit(reply: Reply, res: Result<(), Error>) {
    if let Reply::Unit(r) = reply {
        let _ = r.send(res);
    }
}

fn lost(
    code: Option<u16>,
    reason: String,
    disconnect: &Option<(u16, String, bool, Option<u64>)>,
) -> End {
    let (code, reason, flag, retry_after) = match disconnect {
        Some((c, r, flag, ra)) => (Some(*c), r.clone(), Some(*flag), *ra),
        None => (code, reason, None, None),
    };
    End::Lost {
        code,
        reason,
        advice: connect::close_advice(code, flag),
        retry_after: retry_after.map(Duration::from_millis),
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Closes with 1000 and finishes the closing handshake (RFC 6455 5.5.1): reads until the server's Close
/// arrives, so the server sees a clean close instead of the socket ending under it. Bounded by 1 s.
async fn close(conn: &mut Conn) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "client closed".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if conn.ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(m)) = conn.ws.next().await {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Resolves once every one of `senders` has room for an event (or is closed).
async fn wait_for_room(senders: Vec<mpsc::Sender<SubscriptionEvent>>) {
    for tx in senders {
        let _ = tx.reserve().await;
    }
}

/// Queues an event for the application: into the subscription's buffer, or its overflow when the
/// buffer is full (the session then stops reading the socket). `false` when the application dropped
/// the stream.
fn deliver(sub: &mut Sub, ev: SubscriptionEvent) -> bool {
    if !sub.overflow.is_empty() {
        sub.overflow.push_back(ev);
        return !sub.events.is_closed();
    }
    match sub.events.try_send(ev) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(ev)) => {
            sub.overflow.push_back(ev);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
