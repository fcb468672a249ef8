//! RESP (the Redis serialization protocol, version 2), free of nginx types:
//! commands out as arrays of bulk strings, replies in through an
//! incremental parser, and typed readers of the stream replies the
//! channels need (`XADD`, `XRANGE`, `XREAD`).
//!
//! The parser is fed the connection's input buffer as it grows and answers
//! "need more" until a whole reply is there; it resumes where it stopped,
//! so a large reply arriving in many pieces is scanned once. Every size a
//! server announces is checked against [`Limits`] before it is believed:
//! a hostile or broken server cannot make it allocate more than the reply
//! it actually sent, nor recurse deeper than `max_depth`.
//!
//! This file uses nothing outside `std`: the fuzz target includes it as is.

use std::fmt;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(Vec<u8>),
    /// `-ERR ...`: the server refused the command.
    Error(Vec<u8>),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`: no value (XREAD BLOCK timed out, a missing key).
    Nil,
    /// `*2\r\n...`
    Array(Vec<Value>),
}

/// Bounds on what the parser accepts from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A whole reply, header lines included.
    pub max_reply: usize,
    /// One bulk string's announced length.
    pub max_bulk: usize,
    /// One array's announced element count.
    pub max_elements: usize,
    /// Arrays within arrays.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_reply: 64 << 20,
            max_bulk: 16 << 20,
            max_elements: 1 << 20,
            max_depth: 16,
        }
    }
}

/// Why a reply could not be parsed: the connection cannot be trusted after
/// it and must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespError {
    /// A type byte RESP2 does not have.
    UnknownType(u8),
    /// A length or integer line that is not a decimal number.
    BadInteger,
    /// A bulk string not followed by CRLF.
    BadBulkEnd,
    /// A line with a lone CR or LF.
    BadLine,
    /// A negative length other than -1.
    BadLength,
    BulkTooLarge,
    TooManyElements,
    TooDeep,
    ReplyTooLarge,
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::UnknownType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            RespError::BadInteger => f.write_str("malformed RESP integer"),
            RespError::BadBulkEnd => f.write_str("bulk string without its CRLF"),
            RespError::BadLine => f.write_str("malformed RESP line"),
            RespError::BadLength => f.write_str("negative RESP length"),
            RespError::BulkTooLarge => f.write_str("bulk string over the limit"),
            RespError::TooManyElements => f.write_str("array over the element limit"),
            RespError::TooDeep => f.write_str("arrays nested too deep"),
            RespError::ReplyTooLarge => f.write_str("reply over the size limit"),
        }
    }
}

impl std::error::Error for RespError {}

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.push(b'*');
    push_decimal(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.push(b'$');
        push_decimal(out, arg.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// An incremental parser of one reply at a time.
///
/// Call [`Parser::parse`] with the input received so far (starting at the
/// reply's first byte, each call's buffer extending the previous one's);
/// once it returns a reply and its length, drop that many bytes from the
/// buffer: the parser is ready for the next reply.
#[derive(Debug, Clone)]
pub struct Parser {
    limits: Limits,
    /// Where the scan stopped: the start of an element not yet complete.
    pos: usize,
    /// Elements still due in each open array, outermost first.
    open: Vec<usize>,
}

/// One element's header line, read without allocating.
enum Header {
    /// A complete element that ends at this offset.
    Leaf(usize),
    /// An array of this many (> 0) elements whose first starts at the offset.
    Array(usize, usize),
    /// Not all of it is there yet.
    Incomplete,
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            pos: 0,
            open: Vec::new(),
        }
    }

    /// Forgets a reply in progress (the connection was closed).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
    }

    /// `Ok(None)`: need more input. `Ok(Some((reply, n)))`: the first `n`
    /// bytes of `buf` are `reply`. Never reads past `max_reply` bytes.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
        let limited = &buf[..buf.len().min(self.limits.max_reply)];
        match self.scan(limited) {
            Ok(Some(end)) => {
                let mut at = 0;
                let value = build(&buf[..end], &mut at);
                debug_assert_eq!(at, end);
                self.reset();
                Ok(Some((value, end)))
            }
            Ok(None) if buf.len() >= self.limits.max_reply => {
                self.reset();
                Err(RespError::ReplyTooLarge)
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    /// Checks the reply's grammar and limits from where the last call
    /// stopped; the offset of its end once complete.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        loop {
            match self.header(buf, self.pos)? {
                Header::Incomplete => return Ok(None),
                Header::Array(n, first) => {
                    if self.open.len() >= self.limits.max_depth {
                        return Err(RespError::TooDeep);
                    }
                    self.open.push(n);
                    self.pos = first;
                }
                Header::Leaf(end) => {
                    self.pos = end;
                    loop {
                        match self.open.last_mut() {
                            None => return Ok(Some(end)),
                            Some(due) => {
                                *due -= 1;
                                if *due > 0 {
                                    break;
                                }
                                self.open.pop();
                            }
                        }
                    }
                }
            }
        }
    }

    fn header(&self, buf: &[u8], at: usize) -> Result<Header, RespError> {
        let Some(&kind) = buf.get(at) else {
            return Ok(Header::Incomplete);
        };
        if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
            return Err(RespError::UnknownType(kind));
        }
        let Some(line_end) = line_end(buf, at + 1)? else {
            return Ok(Header::Incomplete);
        };
        let line = &buf[at + 1..line_end];
        let next = line_end + 2;
        match kind {
            b'+' | b'-' => Ok(Header::Leaf(next)),
            b':' => parse_integer(line).map(|_| Header::Leaf(next)),
            b'$' => match parse_integer(line)? {
                -1 => Ok(Header::Leaf(next)),
                n if n < 0 => Err(RespError::BadLength),
                n if n as u64 > self.limits.max_bulk as u64 => Err(RespError::BulkTooLarge),
                n => {
                    let end = next + n as usize;
                    if buf.len() < end + 2 {
                        // A wrong byte already there fails now, not later.
                        if buf.len() > end && buf[end] != b'\r' {
                            return Err(RespError::BadBulkEnd);
                        }
                        return Ok(Header::Incomplete);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(RespError::BadBulkEnd);
                    }
                    Ok(Header::Leaf(end + 2))
                }
            },
            _ => match parse_integer(line)? {
                -1 | 0 => Ok(Header::Leaf(next)),
                n if n < 0 => Err(RespError::BadLength),
                n if n as u64 > self.limits.max_elements as u64 => Err(RespError::TooManyElements),
                n => Ok(Header::Array(n as usize, next)),
            },
        }
    }
}

/// The offset of the CRLF ending the line that starts at `from`.
fn line_end(buf: &[u8], from: usize) -> Result<Option<usize>, RespError> {
    for (i, &b) in buf[from.min(buf.len())..].iter().enumerate() {
        let at = from + i;
        match b {
            b'\r' => {
                return match buf.get(at + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(at)),
                    Some(_) => Err(RespError::BadLine),
                }
            }
            b'\n' => return Err(RespError::BadLine),
            _ => {}
        }
    }
    Ok(None)
}

/// A RESP integer: an optional `-` and 1 to 19 digits, within `i64`.
fn parse_integer(line: &[u8]) -> Result<i64, RespError> {
    let (negative, digits) = match line {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::BadInteger);
    }
    let magnitude = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return Err(RespError::BadInteger);
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).map_err(|_| RespError::BadInteger)
    }
}

/// Builds the value of a reply that `scan` found complete and well formed.
fn build(buf: &[u8], at: &mut usize) -> Value {
    let kind = buf[*at];
    let end = line_end(buf, *at + 1)
        .ok()
        .flatten()
        .expect("scanned reply");
    let line = &buf[*at + 1..end];
    *at = end + 2;
    match kind {
        b'+' => Value::Simple(line.to_vec()),
        b'-' => Value::Error(line.to_vec()),
        b':' => Value::Integer(parse_integer(line).expect("scanned reply")),
        b'$' => match parse_integer(line).expect("scanned reply") {
            -1 => Value::Nil,
            n => {
                let n = n as usize;
                let bytes = buf[*at..*at + n].to_vec();
                *at += n + 2;
                Value::Bulk(bytes)
            }
        },
        _ => match parse_integer(line).expect("scanned reply") {
            -1 => Value::Nil,
            n => {
                // Every element is in the buffer (at least 3 bytes each):
                // the capacity is bounded by what the server really sent.
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(build(buf, at));
                }
                Value::Array(items)
            }
        },
    }
}

// ------------------------------------------------------------- streams

/// A stream entry id, `milliseconds-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// `ms-seq` as Redis writes it (a bare `ms` means `ms-0`).
    pub fn parse(text: &[u8]) -> Option<StreamId> {
        fn number(digits: &[u8]) -> Option<u64> {
            if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            digits.iter().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        }
        match text.iter().position(|&b| b == b'-') {
            Some(dash) => Some(StreamId {
                ms: number(&text[..dash])?,
                seq: number(&text[dash + 1..])?,
            }),
            None => Some(StreamId {
                ms: number(text)?,
                seq: 0,
            }),
        }
    }
}

impl StreamId {
    /// Bits of `seq` in [`StreamId::pack`].
    pub const PACK_SEQ_BITS: u32 = 20;

    /// The id as one `u64` that orders as the id does (`ms` in the high 44
    /// bits, `seq` in the low 20), for a store that numbers its messages
    /// with a `u64`: `None` past year 2527 or beyond 2^20 entries in one
    /// millisecond of one stream.
    pub fn pack(self) -> Option<u64> {
        let seq_max = (1u64 << Self::PACK_SEQ_BITS) - 1;
        if self.ms >> (64 - Self::PACK_SEQ_BITS) != 0 || self.seq > seq_max {
            return None;
        }
        Some(self.ms << Self::PACK_SEQ_BITS | self.seq)
    }

    /// The id that [`StreamId::pack`] gave `packed`.
    pub fn unpack(packed: u64) -> StreamId {
        StreamId {
            ms: packed >> Self::PACK_SEQ_BITS,
            seq: packed & ((1u64 << Self::PACK_SEQ_BITS) - 1),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One stream entry: its id and its field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The value of the first field named `name`.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A reply that is not what the command should have answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The server's own error reply (`-ERR ...`, `-WRONGTYPE ...`).
    Server(String),
    /// A reply of the wrong shape.
    Unexpected(&'static str),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Server(text) => write!(f, "redis answered \"{text}\""),
            ReplyError::Unexpected(what) => write!(f, "unexpected redis reply: {what}"),
        }
    }
}

impl std::error::Error for ReplyError {}

fn server_error(v: &Value) -> Option<ReplyError> {
    match v {
        Value::Error(text) => Some(ReplyError::Server(
            String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned(),
        )),
        _ => None,
    }
}

/// `+OK` (SELECT and the like).
pub fn ok(v: &Value) -> Result<(), ReplyError> {
    if let Some(e) = server_error(v) {
        return Err(e);
    }
    match v {
        Value::Simple(s) if s == b"OK" => Ok(()),
        _ => Err(ReplyError::Unexpected("not +OK")),
    }
}

/// An integer reply (`CLIENT ID`, `DEL`, `XLEN`).
pub fn integer(v: &Value) -> Result<i64, ReplyError> {
    if let Some(e) = server_error(v) {
        return Err(e);
    }
    match v {
        Value::Integer(n) => Ok(*n),
        _ => Err(ReplyError::Unexpected("not an integer")),
    }
}

/// The id `XADD` answers.
pub fn xadd_id(v: &Value) -> Result<StreamId, ReplyError> {
    if let Some(e) = server_error(v) {
        return Err(e);
    }
    match v {
        Value::Bulk(id) => StreamId::parse(id).ok_or(ReplyError::Unexpected("XADD id")),
        _ => Err(ReplyError::Unexpected("XADD reply not a bulk string")),
    }
}

/// The entries `XRANGE`/`XREVRANGE` answer: `[[id, [field, value, ...]], ...]`.
pub fn entries(v: &Value) -> Result<Vec<Entry>, ReplyError> {
    if let Some(e) = server_error(v) {
        return Err(e);
    }
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            _ => Err(ReplyError::Unexpected("entries not an array")),
        };
    };
    items.iter().map(entry).collect()
}

fn entry(v: &Value) -> Result<Entry, ReplyError> {
    let Value::Array(pair) = v else {
        return Err(ReplyError::Unexpected("entry not an array"));
    };
    let [Value::Bulk(id), fields] = pair.as_slice() else {
        return Err(ReplyError::Unexpected("entry not [id, fields]"));
    };
    let id = StreamId::parse(id).ok_or(ReplyError::Unexpected("entry id"))?;
    let fields = match fields {
        // An entry deleted meanwhile (XCLAIM and the like): no fields.
        Value::Nil => Vec::new(),
        Value::Array(flat) if flat.len() % 2 == 0 => flat
            .chunks(2)
            .map(|kv| match kv {
                [Value::Bulk(k), Value::Bulk(v)] => Ok((k.clone(), v.clone())),
                _ => Err(ReplyError::Unexpected("entry field not a bulk string")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ReplyError::Unexpected("entry fields")),
    };
    Ok(Entry { id, fields })
}

/// One stream of an `XREAD` reply: its key and its new entries.
pub type StreamEntries = (Vec<u8>, Vec<Entry>);

/// What `XREAD` answers: for each stream with new entries, its key and the
/// entries; none when `BLOCK` timed out (a nil reply).
pub fn xread(v: &Value) -> Result<Vec<StreamEntries>, ReplyError> {
    if let Some(e) = server_error(v) {
        return Err(e);
    }
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => streams
            .iter()
            .map(|s| match s {
                Value::Array(pair) => match pair.as_slice() {
                    [Value::Bulk(key), list] => Ok((key.clone(), entries(list)?)),
                    _ => Err(ReplyError::Unexpected("XREAD stream not [key, entries]")),
                },
                _ => Err(ReplyError::Unexpected("XREAD stream not an array")),
            })
            .collect(),
        _ => Err(ReplyError::Unexpected("XREAD reply")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
        Parser::new(Limits::default()).parse(input)
    }

    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn encodes_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&["SET", "key", ""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$0\r\n\r\n");
        out.clear();
        encode(&[b"a\r\nb".as_slice()], &mut out);
        assert_eq!(out, b"*1\r\n$4\r\na\r\nb\r\n");
        out.clear();
        encode::<&[u8]>(&[], &mut out);
        assert_eq!(out, b"*0\r\n");
        out.clear();
        encode(&[vec![b'x'; 1234]], &mut out);
        assert!(out.starts_with(b"*1\r\n$1234\r\nxxx"));
    }

    #[test]
    fn parses_every_type() {
        let cases: &[(&[u8], Value)] = &[
            (b"+OK\r\n", Value::Simple(b"OK".to_vec())),
            (b"+\r\n", Value::Simple(Vec::new())),
            (b"-ERR bad\r\n", Value::Error(b"ERR bad".to_vec())),
            (b":0\r\n", Value::Integer(0)),
            (b":-42\r\n", Value::Integer(-42)),
            (b":9223372036854775807\r\n", Value::Integer(i64::MAX)),
            (b":-9223372036854775808\r\n", Value::Integer(i64::MIN)),
            (b"$5\r\nhello\r\n", bulk("hello")),
            (b"$0\r\n\r\n", bulk("")),
            (b"$4\r\na\r\nb\r\n", Value::Bulk(b"a\r\nb".to_vec())),
            (b"$-1\r\n", Value::Nil),
            (b"*-1\r\n", Value::Nil),
            (b"*0\r\n", Value::Array(vec![])),
            (
                b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n",
                Value::Array(vec![
                    Value::Integer(1),
                    bulk("x"),
                    Value::Array(vec![Value::Simple(b"y".to_vec())]),
                ]),
            ),
            (
                b"*2\r\n*0\r\n*1\r\n*1\r\n$-1\r\n",
                Value::Array(vec![
                    Value::Array(vec![]),
                    Value::Array(vec![Value::Array(vec![Value::Nil])]),
                ]),
            ),
        ];
        for (input, want) in cases {
            let mut with_tail = input.to_vec();
            with_tail.extend_from_slice(b"+next\r\n");
            assert_eq!(
                parse_all(&with_tail),
                Ok(Some((want.clone(), input.len()))),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn rejects_malformed_replies() {
        let cases: &[(&[u8], RespError)] = &[
            (b"!oops\r\n", RespError::UnknownType(b'!')),
            (b"_\r\n", RespError::UnknownType(b'_')),
            (b":\r\n", RespError::BadInteger),
            (b":1x\r\n", RespError::BadInteger),
            (b":+1\r\n", RespError::BadInteger),
            (b":9223372036854775808\r\n", RespError::BadInteger),
            (b":-9223372036854775809\r\n", RespError::BadInteger),
            (b":99999999999999999999\r\n", RespError::BadInteger),
            (b"$-2\r\n", RespError::BadLength),
            (b"*-5\r\n", RespError::BadLength),
            (b"$3\r\nabcd\r\n", RespError::BadBulkEnd),
            (b"$3\r\nabc\rx", RespError::BadBulkEnd),
            (b"+a\nb\r\n", RespError::BadLine),
            (b"+a\rb\r\n", RespError::BadLine),
            (b"*1\r\n!x\r\n", RespError::UnknownType(b'!')),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_all(input),
                Err(*want),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partial_input_needs_more() {
        let input: &[u8] = b"*2\r\n$5\r\nhello\r\n*2\r\n:1\r\n+ok\r\n";
        for end in 0..input.len() {
            assert_eq!(parse_all(&input[..end]), Ok(None), "cut at {end}");
        }
        // Fed piece by piece to one parser, it answers once, at the end.
        let mut p = Parser::new(Limits::default());
        for end in 0..input.len() {
            assert_eq!(p.parse(&input[..end]), Ok(None), "fed to {end}");
        }
        let (v, n) = p.parse(input).unwrap().unwrap();
        assert_eq!(n, input.len());
        assert_eq!(v, parse_all(input).unwrap().unwrap().0);
        // And is ready for the next reply.
        assert_eq!(p.parse(b":7\r\n"), Ok(Some((Value::Integer(7), 4))));
    }

    #[test]
    fn hostile_sizes_are_refused_before_allocating() {
        let limits = Limits {
            max_reply: 1000,
            max_bulk: 100,
            max_elements: 10,
            max_depth: 3,
        };
        let refuse = |input: &[u8]| Parser::new(limits).parse(input);
        assert_eq!(refuse(b"$101\r\n"), Err(RespError::BulkTooLarge));
        assert_eq!(
            refuse(b"$9223372036854775807\r\n"),
            Err(RespError::BulkTooLarge)
        );
        assert_eq!(refuse(b"*11\r\n"), Err(RespError::TooManyElements));
        assert_eq!(refuse(b"*2000000000\r\n"), Err(RespError::TooManyElements));
        assert_eq!(refuse(b"*1\r\n*1\r\n*1\r\n"), Ok(None));
        assert_eq!(refuse(b"*1\r\n*1\r\n*1\r\n*1\r\n"), Err(RespError::TooDeep));
        // A line that never ends, or many small elements, stop at max_reply.
        assert_eq!(refuse(&[b'+'; 999]), Ok(None));
        assert_eq!(refuse(&[b'+'; 1000]), Err(RespError::ReplyTooLarge));
        let mut many = b"*10\r\n".to_vec();
        for _ in 0..10 {
            many.extend_from_slice(b"$95\r\n");
            many.extend_from_slice(&[b'a'; 95]);
            many.extend_from_slice(b"\r\n");
        }
        assert_eq!(refuse(&many), Err(RespError::ReplyTooLarge));
        // Up to the limit, fine.
        assert!(matches!(refuse(&many[..5 + 102 * 9]), Ok(None)));
    }

    #[test]
    fn stream_ids() {
        assert_eq!(
            StreamId::parse(b"1526919030474-55"),
            Some(StreamId {
                ms: 1526919030474,
                seq: 55
            })
        );
        assert_eq!(StreamId::parse(b"7"), Some(StreamId { ms: 7, seq: 0 }));
        assert_eq!(
            StreamId::parse(b"18446744073709551615-18446744073709551615"),
            Some(StreamId {
                ms: u64::MAX,
                seq: u64::MAX
            })
        );
        for bad in [
            &b""[..],
            b"-",
            b"1-",
            b"-1",
            b"1-2-3",
            b"a-1",
            b"18446744073709551616-0",
            b" 1-2",
        ] {
            assert_eq!(
                StreamId::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(StreamId { ms: 5, seq: 9 }.to_string(), "5-9");
        assert!(StreamId { ms: 1, seq: 9 } < StreamId { ms: 2, seq: 0 });
    }

    #[test]
    fn packed_ids_order_as_ids() {
        let ids = [
            StreamId::ZERO,
            StreamId { ms: 0, seq: 1 },
            StreamId { ms: 1, seq: 0 },
            StreamId {
                ms: 1_796_447_255_718,
                seq: 0,
            },
            StreamId {
                ms: 1_796_447_255_718,
                seq: (1 << 20) - 1,
            },
            StreamId {
                ms: 1_796_447_255_719,
                seq: 0,
            },
            StreamId {
                ms: (1 << 44) - 1,
                seq: (1 << 20) - 1,
            },
        ];
        let packed: Vec<u64> = ids.iter().map(|id| id.pack().unwrap()).collect();
        assert!(packed.windows(2).all(|w| w[0] < w[1]));
        for (id, p) in ids.iter().zip(&packed) {
            assert_eq!(StreamId::unpack(*p), *id);
        }
        assert_eq!(
            StreamId {
                ms: 1 << 44,
                seq: 0
            }
            .pack(),
            None
        );
        assert_eq!(
            StreamId {
                ms: 5,
                seq: 1 << 20
            }
            .pack(),
            None
        );
    }

    fn reply(input: &[u8]) -> Value {
        let (v, n) = parse_all(input).unwrap().unwrap();
        assert_eq!(n, input.len());
        v
    }

    #[test]
    fn typed_stream_replies() {
        assert_eq!(
            xadd_id(&reply(b"$15\r\n1700000000000-3\r\n")),
            Ok(StreamId {
                ms: 1700000000000,
                seq: 3
            })
        );
        assert_eq!(
            xadd_id(&reply(
                b"-ERR The ID specified in XADD is equal or smaller\r\n"
            )),
            Err(ReplyError::Server(
                "ERR The ID specified in XADD is equal or smaller".into()
            ))
        );
        assert!(xadd_id(&reply(b":1\r\n")).is_err());
        assert!(xadd_id(&reply(b"$3\r\nabc\r\n")).is_err());

        let range = reply(
            b"*2\r\n\
              *2\r\n$3\r\n1-0\r\n*4\r\n$1\r\nd\r\n$2\r\nhi\r\n$1\r\nt\r\n$1\r\n1\r\n\
              *2\r\n$3\r\n2-5\r\n*0\r\n",
        );
        let got = entries(&range).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, StreamId { ms: 1, seq: 0 });
        assert_eq!(got[0].field(b"d"), Some(&b"hi"[..]));
        assert_eq!(got[0].field(b"t"), Some(&b"1"[..]));
        assert_eq!(got[0].field(b"x"), None);
        assert_eq!(got[1].id, StreamId { ms: 2, seq: 5 });
        assert!(got[1].fields.is_empty());
        assert_eq!(entries(&reply(b"*0\r\n")), Ok(vec![]));
        // Odd field lists and wrong shapes are refused.
        assert!(entries(&reply(b"*1\r\n*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\nd\r\n")).is_err());
        assert!(entries(&reply(b"*1\r\n*1\r\n$3\r\n1-0\r\n")).is_err());
        assert!(entries(&reply(b"*1\r\n*2\r\n:1\r\n*0\r\n")).is_err());

        let read = reply(
            b"*2\r\n\
              *2\r\n$2\r\nch\r\n*1\r\n*2\r\n$3\r\n3-1\r\n*2\r\n$1\r\nd\r\n$0\r\n\r\n\
              *2\r\n$2\r\nzz\r\n*0\r\n",
        );
        let got = xread(&read).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b"ch");
        assert_eq!(got[0].1[0].id, StreamId { ms: 3, seq: 1 });
        assert_eq!(got[0].1[0].field(b"d"), Some(&b""[..]));
        assert_eq!(got[1].0, b"zz");
        // BLOCK timed out.
        assert_eq!(xread(&reply(b"*-1\r\n")), Ok(vec![]));
        assert!(xread(&reply(b"*1\r\n$2\r\nch\r\n")).is_err());
        assert_eq!(ok(&reply(b"+OK\r\n")), Ok(()));
        assert!(ok(&reply(b"+QUEUED\r\n")).is_err());
        assert_eq!(integer(&reply(b":12\r\n")), Ok(12));
    }

    /// A tiny deterministic generator (xorshift), so that the property
    /// test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_value(rng: &mut Rng, depth: usize) -> Value {
        let bytes = |rng: &mut Rng, crlf: bool| -> Vec<u8> {
            let len = rng.below(12) as usize;
            (0..len)
                .map(|_| {
                    let b = rng.below(256) as u8;
                    if !crlf && (b == b'\r' || b == b'\n') {
                        b'x'
                    } else {
                        b
                    }
                })
                .collect()
        };
        match rng.below(if depth >= 4 { 5 } else { 7 }) {
            0 => Value::Simple(bytes(rng, false)),
            1 => Value::Error(bytes(rng, false)),
            2 => Value::Integer(rng.next() as i64),
            3 => Value::Bulk(bytes(rng, true)),
            4 => Value::Nil,
            _ => Value::Array(
                (0..rng.below(5))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
        }
    }

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
            Value::Nil => out.extend_from_slice(b"$-1"),
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

    #[test]
    fn random_replies_round_trip_in_any_split() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let values: Vec<Value> = (0..1 + rng.below(3))
                .map(|_| random_value(&mut rng, 0))
                .collect();
            let mut wire = Vec::new();
            for v in &values {
                serialize(v, &mut wire);
            }
            // Fed in random pieces to one parser, as a connection would.
            let mut p = Parser::new(Limits::default());
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let step = 1 + rng.below(8) as usize;
                let end = (at + step).min(wire.len());
                buf.extend_from_slice(&wire[at..end]);
                at = end;
                while let Some((v, n)) = p.parse(&buf).unwrap() {
                    got.push(v);
                    buf.drain(..n);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(got, values);
        }
    }
}
