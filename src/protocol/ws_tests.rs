use super::*;

/// A client frame: masked with a fixed key.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn decode_all(d: &mut Decoder, bytes: &[u8]) -> (Vec<Incoming>, Result<(), WsError>) {
    let mut out = VecDeque::new();
    let r = d.feed(bytes, &mut out);
    (out.into_iter().collect(), r)
}

#[test]
fn frames_split_anywhere_decode_the_same() {
    let mut wire = frame(true, OP_TEXT, b"hello");
    wire.extend(frame(false, OP_BINARY, &[1, 2, 3]));
    wire.extend(frame(true, OP_PING, b"p"));
    wire.extend(frame(true, OP_CONTINUATION, &[4; 300]));
    wire.extend(frame(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
    let mut whole = [3u8, 2, 1].to_vec();
    whole.extend([4; 300]);
    let expected = vec![
        Incoming::Text(Bytes::from_static(b"hello")),
        Incoming::Ping(Bytes::from_static(b"p")),
        Incoming::Binary(Bytes::from(
            vec![1, 2, 3]
                .into_iter()
                .chain([4; 300])
                .collect::<Vec<_>>(),
        )),
        Incoming::Close(Some(1000)),
    ];
    for chunk in [1, 2, 3, 7, 64, wire.len()] {
        let mut d = Decoder::new(1 << 20);
        let mut got = VecDeque::new();
        for piece in wire.chunks(chunk) {
            d.feed(piece, &mut got).unwrap();
        }
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            expected,
            "chunk {chunk}"
        );
        assert!(
            d.pending.is_empty() && d.message.is_none(),
            "nothing kept when idle"
        );
    }
}

#[test]
fn an_oversized_frame_is_refused_on_its_header() {
    let mut d = Decoder::new(1024);
    // Only the header of an 8 MiB frame has arrived.
    let wire = frame(true, OP_BINARY, &vec![0; 8 << 20]);
    let (msgs, r) = decode_all(&mut d, &wire[..14]);
    assert!(msgs.is_empty());
    assert_eq!(r, Err(WsError::TooBig(1024)));
    assert_eq!(r.unwrap_err().close_code(), CloseCode::TooBig);
}

#[test]
fn an_oversized_fragmented_message_is_refused() {
    let mut d = Decoder::new(1024);
    let mut wire = frame(false, OP_TEXT, &[b'a'; 600]);
    wire.extend(frame(true, OP_CONTINUATION, &[b'a'; 600]));
    assert_eq!(decode_all(&mut d, &wire).1, Err(WsError::TooBig(1024)));
}

#[test]
fn protocol_violations_are_1002() {
    let unmasked = {
        let mut f = frame(true, OP_TEXT, b"x");
        f[1] &= 0x7f;
        f.drain(2..6);
        f
    };
    let rsv = {
        let mut f = frame(true, OP_TEXT, b"x");
        f[0] |= 0x40;
        f
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", unmasked),
        ("reserved bits", rsv),
        ("opcode 3", frame(true, 3, b"")),
        ("opcode 11", frame(true, 11, b"")),
        ("fragmented ping", frame(false, OP_PING, b"")),
        ("ping of 126 bytes", frame(true, OP_PING, &[0; 126])),
        ("continuation first", frame(true, OP_CONTINUATION, b"x")),
        ("close of 1 byte", frame(true, OP_CLOSE, &[3])),
        ("text inside a message", {
            let mut f = frame(false, OP_TEXT, b"a");
            f.extend(frame(true, OP_TEXT, b"b"));
            f
        }),
    ];
    for (name, wire) in cases {
        let r = decode_all(&mut Decoder::new(1024), &wire).1;
        assert!(matches!(r, Err(WsError::Protocol(_))), "{name}: {r:?}");
    }
}

#[test]
fn invalid_utf8_fails_at_the_fragment_that_breaks_it() {
    let mut d = Decoder::new(1 << 20);
    // "κ" is ce ba: a fragment may end inside a character...
    let (m, r) = decode_all(&mut d, &frame(false, OP_TEXT, &[b'a', 0xce]));
    assert!(m.is_empty() && r.is_ok(), "{r:?}");
    let (m, r) = decode_all(&mut d, &frame(false, OP_CONTINUATION, &[0xba, b'b']));
    assert!(m.is_empty() && r.is_ok(), "{r:?}");
    // ...but a byte that can never be valid fails at once, before the message ends.
    let (_, r) = decode_all(&mut d, &frame(false, OP_CONTINUATION, &[0xff]));
    assert_eq!(r, Err(WsError::InvalidUtf8));
    // An incomplete character at the end of the message fails too.
    let (_, r) = decode_all(&mut Decoder::new(64), &frame(true, OP_TEXT, &[b'a', 0xce]));
    assert_eq!(r, Err(WsError::InvalidUtf8));
    // So does a close reason that is not UTF-8 (1007).
    let (_, r) = decode_all(
        &mut Decoder::new(64),
        &frame(true, OP_CLOSE, &[3, 232, 0xff]),
    );
    assert_eq!(r.unwrap_err().close_code(), CloseCode::InvalidPayload);
}

#[test]
fn the_messages_before_a_violation_are_delivered() {
    let mut wire = frame(true, OP_TEXT, b"first");
    wire.extend(frame(true, 3, b""));
    let (m, r) = decode_all(&mut Decoder::new(64), &wire);
    assert_eq!(m, [Incoming::Text(Bytes::from_static(b"first"))]);
    assert!(r.is_err());
}

#[test]
fn lingering_skips_the_rest_of_a_refused_frame_and_stops_at_the_close_frame() {
    let mut d = Decoder::new(1024);
    let big = frame(true, OP_BINARY, &vec![7; 100_000]);
    let mut rest = big[2000..].to_vec();
    // After the big frame: a text frame, then the client's close frame.
    rest.extend(frame(true, OP_TEXT, b"after"));
    rest.extend(frame(true, OP_CLOSE, &[3, 232]));
    assert_eq!(
        decode_all(&mut d, &big[..2000]).1,
        Err(WsError::TooBig(1024))
    );
    assert!(!d.discard());
    // Payload bytes of the big frame happen to look like a close frame header: they are skipped.
    let mut seen = false;
    for piece in rest.chunks(997) {
        assert!(!seen, "nothing after the close frame is read");
        seen = d.skip(piece);
    }
    assert!(seen, "the close frame is found");
}

#[test]
fn lingering_after_an_incomplete_frame_keeps_the_framing() {
    let mut d = Decoder::new(1 << 20);
    let f = frame(true, OP_TEXT, &[b'a'; 500]);
    assert!(decode_all(&mut d, &f[..100]).1.is_ok());
    assert!(!d.discard());
    assert!(!d.skip(&f[100..]));
    let close = frame(true, OP_CLOSE, &[]);
    assert!(!d.skip(&close[..1]), "a split header is kept");
    assert!(d.skip(&close[1..]));
}

#[test]
fn lingering_after_a_malformed_header_never_trusts_the_bytes() {
    let mut d = Decoder::new(1024);
    assert!(decode_all(&mut d, &frame(true, 3, b"")).1.is_err());
    assert!(!d.discard());
    assert!(!d.skip(&frame(true, OP_CLOSE, &[])));
}
