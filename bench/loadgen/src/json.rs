//! JSON-like text messages for the compression benchmark (`--payload json`).
//!
//! A message is a header carrying its sequence number and send time, then one
//! of `POOL` pre-generated bodies: an order event with an id, a user, a time
//! stamp and as many line items as fit, then a free-text note that pads it to
//! the exact size. Keys repeat, values vary (random ids, numbers, names and
//! words from small vocabularies), so a 1 KiB message deflates about 2x on its
//! own at zlib level 1 and about 3.7x when the compressor keeps its context
//! across messages. Bodies are used in turn from a per-connection offset, so
//! a body comes back only after `POOL` messages (1 MiB, beyond any 32 KiB
//! deflate window).
//!
//! Checking an echo: the header's digits give the sequence number and the
//! send time, and the rest must equal the body that sequence number selects.

use bytes::{BufMut, Bytes, BytesMut};

/// Distinct bodies.
pub const POOL: usize = 1024;

const HEAD_SEQ: &[u8] = b"{\"seq\":\"";
const HEAD_TS: &[u8] = b"\",\"ts\":\"";
const HEAD_END: &[u8] = b"\",";
/// `{"seq":"<20 digits>","ts":"<20 digits>",`
pub const HEADER: usize = 8 + 20 + 8 + 20 + 2;

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "red", "green", "blue", "black",
    "white", "orange", "purple", "yellow", "silver", "golden", "wireless", "mouse", "keyboard",
    "monitor", "cable", "charger", "laptop", "phone", "tablet", "camera", "speaker", "headset",
    "router", "adapter",
];
const CITIES: &[&str] = &[
    "berlin", "paris", "london", "madrid", "rome", "vienna", "prague", "warsaw", "lisbon",
    "dublin", "oslo", "helsinki", "athens", "zurich", "amsterdam", "brussels", "copenhagen",
    "stockholm", "budapest", "munich",
];
const FIRST: &[&str] = &[
    "anna", "ben", "clara", "david", "emma", "felix", "greta", "hugo", "ida", "jonas", "karl",
    "lena", "max", "nora", "otto", "paula", "quinn", "rosa", "sven", "tara", "ulla", "vera",
    "walter", "yara",
];
const LAST: &[&str] = &[
    "keller", "novak", "smith", "garcia", "rossi", "muller", "dubois", "jansen", "silva",
    "kowalski", "nielsen", "berg", "costa", "weber", "fischer", "moreau",
];
const STATUS: &[&str] = &["pending", "paid", "shipped", "delivered", "cancelled", "refunded"];
const TYPES: &[&str] = &[
    "order.created", "order.updated", "order.shipped", "payment.captured", "cart.updated",
    "user.login",
];
const COUNTRIES: &[&str] = &["DE", "FR", "NL", "PL", "SE", "IT", "ES"];

/// splitmix64: small, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
    fn flag(&mut self) -> &'static str {
        if self.next() & 1 == 0 {
            "true"
        } else {
            "false"
        }
    }
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// Body number `i`, exactly `len` bytes (the rest of the message after the
/// header, up to and including the closing brace).
fn body(i: u64, len: usize) -> Result<Vec<u8>, String> {
    use std::fmt::Write;
    let mut r = Rng(i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
    let (first, last) = (r.pick(FIRST), r.pick(LAST));
    let mut s = String::with_capacity(len);
    let _ = write!(
        s,
        "\"type\":\"{}\",\"id\":\"{:08x}-{:04x}-{:04x}-{:04x}-{:012x}\",\
         \"user\":{{\"id\":{},\"name\":\"{} {}\",\"email\":\"{}.{}@example.org\",\"country\":\"{}\",\"verified\":{}}},\
         \"created_at\":\"2026-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z\",\"status\":\"{}\",\"items\":[",
        r.pick(TYPES),
        r.next() & 0xffff_ffff,
        r.next() & 0xffff,
        r.next() & 0xffff,
        r.next() & 0xffff,
        r.next() & 0xffff_ffff_ffff,
        1 + r.below(999_999),
        title(first),
        title(last),
        first,
        last,
        r.pick(COUNTRIES),
        r.flag(),
        1 + r.below(12),
        1 + r.below(28),
        r.below(24),
        r.below(60),
        r.below(60),
        r.below(1000),
        r.pick(STATUS),
    );
    // Line items while they fit, leaving room for the total and a short note.
    let budget = len.saturating_sub(40);
    let mut first_item = true;
    loop {
        let item = format!(
            "{{\"sku\":\"SKU-{:05}\",\"name\":\"{} {}\",\"qty\":{},\"price\":{}.{:02},\"currency\":\"EUR\",\
             \"in_stock\":{},\"discount\":null,\"warehouse\":\"{}-{}\"}}",
            r.below(100_000),
            r.pick(WORDS),
            r.pick(WORDS),
            1 + r.below(9),
            1 + r.below(499),
            r.below(100),
            r.flag(),
            r.pick(CITIES),
            1 + r.below(3),
        );
        if s.len() + item.len() + 1 > budget {
            break;
        }
        if !first_item {
            s.push(',');
        }
        first_item = false;
        s.push_str(&item);
    }
    let _ = write!(s, "],\"total\":{}.{:02},\"note\":\"", 1 + r.below(4999), r.below(100));
    let need = len
        .checked_sub(s.len() + 2)
        .ok_or_else(|| format!("--size {} is too small for --payload json", len + HEADER))?;
    let mut note = String::new();
    while note.len() < need {
        note.push_str(r.pick(WORDS));
        note.push(' ');
    }
    note.truncate(need);
    s.push_str(&note);
    s.push_str("\"}");
    debug_assert_eq!(s.len(), len);
    Ok(s.into_bytes())
}

pub struct JsonPool {
    size: usize,
    bodies: Vec<Bytes>,
}

fn put_digits(b: &mut BytesMut, mut v: u64) {
    let mut d = [b'0'; 20];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    b.put_slice(&d);
}

fn parse_digits(d: &[u8]) -> Option<u64> {
    d.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit()
            .then(|| acc.wrapping_mul(10).wrapping_add(u64::from(c - b'0')))
    })
}

impl JsonPool {
    /// Messages of exactly `size` bytes.
    pub fn new(size: usize) -> Result<JsonPool, String> {
        let len = size
            .checked_sub(HEADER)
            .ok_or_else(|| format!("--size {size} is too small for --payload json"))?;
        let bodies = (0..POOL as u64)
            .map(|i| body(i, len).map(Bytes::from))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JsonPool { size, bodies })
    }

    fn body_of(&self, seq: u64, salt: u64) -> &Bytes {
        &self.bodies[(seq.wrapping_add(salt) % POOL as u64) as usize]
    }

    /// The message with sequence number `seq` of the connection with `salt`.
    pub fn make(&self, seq: u64, sent_ns: u64, salt: u64) -> Bytes {
        let mut b = BytesMut::with_capacity(self.size);
        b.put_slice(HEAD_SEQ);
        put_digits(&mut b, seq);
        b.put_slice(HEAD_TS);
        put_digits(&mut b, sent_ns);
        b.put_slice(HEAD_END);
        b.put_slice(self.body_of(seq, salt));
        b.freeze()
    }

    /// Checks an echo: Ok(send time), Err(true) for another sequence number,
    /// Err(false) for a wrong length or content.
    pub fn check(&self, data: &[u8], expect: u64, salt: u64) -> Result<u64, bool> {
        if data.len() != self.size
            || &data[..8] != HEAD_SEQ
            || &data[28..36] != HEAD_TS
            || &data[56..58] != HEAD_END
        {
            return Err(false);
        }
        let seq = parse_digits(&data[8..28]).ok_or(false)?;
        if seq != expect {
            return Err(true);
        }
        let ts = parse_digits(&data[36..56]).ok_or(false)?;
        if data[HEADER..] != self.body_of(seq, salt)[..] {
            return Err(false);
        }
        Ok(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_and_round_trip() {
        for size in [400, 1024, 4096] {
            let p = JsonPool::new(size).unwrap();
            let m = p.make(42, 123_456_789, 7);
            assert_eq!(m.len(), size);
            assert!(std::str::from_utf8(&m).is_ok());
            assert_eq!(p.check(&m, 42, 7), Ok(123_456_789));
            assert_eq!(p.check(&m, 43, 7), Err(true));
            assert_eq!(p.check(&m, 42, 8), Err(false));
            let mut bad = m.to_vec();
            bad[size - 5] ^= 1;
            assert_eq!(p.check(&bad, 42, 7), Err(false));
        }
        assert!(JsonPool::new(200).is_err());
    }
}
