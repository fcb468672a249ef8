//! The Redis client's RESP reply parser (src/redis/resp.rs).
//!
//! Input: `[limits, nsizes, split sizes (nsizes & 15)..., bytes...]`. The
//! `limits` byte picks small bounds (bit 0: max_reply 64..=1024 from the
//! next bits, else the defaults) so that the limits are reached by inputs
//! of a few KB.
//!
//! Invariants:
//! - the parser never panics, nor allocates more than the input's size
//!   would need (the targets' allocator aborts on any allocation over 1 MiB,
//!   and the input announces sizes up to 2^63);
//! - fed the input in the split's pieces (dropping each reply as it comes),
//!   it yields the same replies and the same final outcome as fed the
//!   whole input at once;
//! - a reply of `n` bytes is decided at exactly byte `n` (the prefix one
//!   byte shorter needs more), and `n` is within `max_reply`;
//! - a reply re-serialised parses to the same value; a command encoded with
//!   `encode` parses back to an array of the same bulk strings;
//! - the typed readers (XADD, XRANGE, XREAD, OK, integer) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_fuzz::{split, Input};

#[path = "../../src/redis/resp.rs"]
#[allow(dead_code)]
mod resp;

use resp::{Limits, Parser, RespError, Value};

type Step = Result<Option<(Value, usize)>, RespError>;

fn serialize(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Simple(s) => {
            out.push(b'+');
            out.extend_from_slice(s);
        }
        Value::Error(s) => {
            out.push(b'-');
            out.extend_from_slice(s);
        }
        Value::Integer(n) => out.extend_from_slice(format!(":{n}").as_bytes()),
        Value::Bulk(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Value::Nil => out.extend_from_slice(b"*-1"),
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                serialize(item, out);
            }
            return;
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Every reply in `buf` in turn, then the outcome that ended the run.
fn parse_all(limits: Limits, buf: &[u8]) -> (Vec<Value>, Step) {
    let mut p = Parser::new(limits);
    let mut at = 0;
    let mut replies = Vec::new();
    loop {
        match p.parse(&buf[at..]) {
            Ok(Some((v, n))) => {
                assert!(n > 0 && n <= buf.len() - at && n <= limits.max_reply);
                // Decided at exactly its last byte, by a fresh parser too.
                assert_eq!(Parser::new(limits).parse(&buf[at..at + n - 1]), Ok(None));
                assert_eq!(
                    Parser::new(limits).parse(&buf[at..at + n]),
                    Ok(Some((v.clone(), n)))
                );
                check_value(limits, &v);
                replies.push(v);
                at += n;
            }
            other => return (replies, other),
        }
    }
}

fn check_value(limits: Limits, v: &Value) {
    let mut again = Vec::new();
    serialize(v, &mut again);
    if again.len() < limits.max_reply {
        let (value, n) = Parser::new(limits)
            .parse(&again)
            .expect("re-serialised reply parses")
            .expect("re-serialised reply is complete");
        assert_eq!(n, again.len());
        assert_eq!(&value, v);
    }
    let _ = resp::ok(v);
    let _ = resp::integer(v);
    let _ = resp::xadd_id(v);
    let _ = resp::entries(v);
    if let Ok(streams) = resp::xread(v) {
        for (_, entries) in streams {
            for e in entries {
                let _ = e.field(b"d");
                assert!(resp::StreamId::parse(e.id.to_string().as_bytes()) == Some(e.id));
                if let Some(p) = e.id.pack() {
                    assert!(resp::StreamId::unpack(p) == e.id);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let nsizes = input.byte();
    let sizes = input.take(usize::from(nsizes & 15));
    let bytes = input.rest();
    let limits = if flags & 1 != 0 {
        Limits {
            max_reply: 64 + usize::from(flags >> 1) * 8,
            max_bulk: 32,
            max_elements: 8,
            max_depth: 4,
        }
    } else {
        Limits::default()
    };

    let (whole, end) = parse_all(limits, bytes);

    // Fed piece by piece, as reads would bring it.
    let mut p = Parser::new(limits);
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut outcome: Option<Step> = None;
    'feed: for chunk in split(bytes, sizes) {
        buf.extend_from_slice(chunk);
        loop {
            match p.parse(&buf) {
                Ok(Some((v, n))) => {
                    replies.push(v);
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(e) => {
                    outcome = Some(Err(e));
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(replies, whole, "replies fed in pieces");
    match outcome {
        Some(err) => assert_eq!(err, end),
        None => assert_eq!(end, Ok(None)),
    }

    // Commands made of the input's bytes parse back as bulk strings.
    let args: Vec<&[u8]> = bytes.split(|&b| b == b' ').take(16).collect();
    let mut wire = Vec::new();
    resp::encode(&args, &mut wire);
    let (value, n) = Parser::new(Limits::default())
        .parse(&wire)
        .expect("an encoded command parses")
        .expect("an encoded command is complete");
    assert_eq!(n, wire.len());
    let want = if args.is_empty() {
        Value::Array(vec![])
    } else {
        Value::Array(args.iter().map(|a| Value::Bulk(a.to_vec())).collect())
    };
    assert_eq!(value, want);
});
