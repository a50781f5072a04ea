//! WebSocket close codes herald uses, with the reconnect advice that goes with each.

/// A close code and its meaning. `docs/protocol.md` holds the same table for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal,
    GoingAway,
    ProtocolError,
    InvalidPayload,
    TooBig,
    Internal,
    BadFrames,
    SlowConsumer,
    HeartbeatTimeout,
    TokenExpired,
    Disconnected,
    Forbidden,
    Idle,
    RateLimitExceeded,
}

impl CloseCode {
    /// The numeric code sent in the close frame and the `disconnect` frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::BadFrames => 4000,
            CloseCode::SlowConsumer => 4001,
            CloseCode::HeartbeatTimeout => 4002,
            CloseCode::TokenExpired => 4003,
            CloseCode::Disconnected => 4004,
            CloseCode::Forbidden => 4005,
            CloseCode::Idle => 4006,
            CloseCode::RateLimitExceeded => 4007,
        }
    }

    /// Whether a client should reconnect (with backoff) after this close.
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::GoingAway
                | CloseCode::Internal
                | CloseCode::SlowConsumer
                | CloseCode::HeartbeatTimeout
                | CloseCode::TokenExpired
                | CloseCode::Idle
                | CloseCode::RateLimitExceeded
        )
    }

    /// Short reason text for the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid payload",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::BadFrames => "too many bad frames",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Disconnected => "disconnected by operator",
            CloseCode::Forbidden => "forbidden",
            CloseCode::Idle => "idle",
            CloseCode::RateLimitExceeded => "kept sending after rate_limited",
        }
    }

    /// Maps a numeric code back (for operator-chosen codes); unknown codes are `None`.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        ALL.iter().copied().find(|c| c.code() == code)
    }
}

const ALL: [CloseCode; 14] = [
    CloseCode::Normal,
    CloseCode::GoingAway,
    CloseCode::ProtocolError,
    CloseCode::InvalidPayload,
    CloseCode::TooBig,
    CloseCode::Internal,
    CloseCode::BadFrames,
    CloseCode::SlowConsumer,
    CloseCode::HeartbeatTimeout,
    CloseCode::TokenExpired,
    CloseCode::Disconnected,
    CloseCode::Forbidden,
    CloseCode::Idle,
    CloseCode::RateLimitExceeded,
];
