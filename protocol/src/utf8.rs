//! Incremental UTF-8 validation of a text message that arrives in arbitrary chunks.

use super::error::ProtocolError;

/// Validates a byte stream as UTF-8 across chunk boundaries and fails at the
/// first byte after which the stream can no longer be valid (as Autobahn's
/// "fail fast" cases expect).
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// Leading bytes of a character cut by the end of the last chunk.
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next chunk of the stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let rest = self.complete_pending(bytes)?;
        // The bulk goes through the standard library's fast validator; only a
        // character cut at the end is kept for the next chunk.
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(err) if err.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(err) => {
                self.hold(&rest[err.valid_up_to()..]);
                Ok(())
            }
        }
    }

    /// Ends the stream: fails if it stopped inside a character. Resets either way.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let incomplete = self.pending_len != 0;
        *self = Self::default();
        if incomplete {
            Err(ProtocolError::InvalidUtf8)
        } else {
            Ok(())
        }
    }

    /// Feeds the held partial character the bytes it still needs; returns the
    /// part of `bytes` left after it.
    fn complete_pending<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b [u8], ProtocolError> {
        if self.pending_len == 0 {
            return Ok(bytes);
        }
        let held = usize::from(self.pending_len);
        let wanted = sequence_len(self.pending[0]) - held;
        let taken = wanted.min(bytes.len());
        let mut candidate = self.pending;
        candidate[held..held + taken].copy_from_slice(&bytes[..taken]);
        match std::str::from_utf8(&candidate[..held + taken]) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(&bytes[taken..])
            }
            Err(err) if err.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(_) => {
                // Still incomplete, so all of `bytes` was taken.
                self.hold(&candidate[..held + taken]);
                Ok(&[])
            }
        }
    }

    fn hold(&mut self, partial: &[u8]) {
        self.pending[..partial.len()].copy_from_slice(partial);
        self.pending_len = partial.len() as u8;
    }
}

/// Length of the character a (valid) lead byte starts.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `bytes` split at `cuts`, then finishes; the verdict and the number
    /// of bytes seen before the first failure.
    fn validate_split(bytes: &[u8], cuts: &[usize]) -> Result<(), usize> {
        let mut validator = Utf8Validator::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            validator.feed(&bytes[start..cut]).map_err(|_| cut)?;
            start = cut;
        }
        validator.finish().map_err(|_| bytes.len())
    }

    /// Feeds one byte at a time; `Err(n)` when the n-th byte (1-based) failed,
    /// `Err(len + 1)` when only `finish` failed.
    fn first_failing_byte(bytes: &[u8]) -> Result<(), usize> {
        let mut validator = Utf8Validator::new();
        for (i, byte) in bytes.iter().enumerate() {
            validator
                .feed(std::slice::from_ref(byte))
                .map_err(|_| i + 1)?;
        }
        validator.finish().map_err(|_| bytes.len() + 1)
    }

    #[test]
    fn valid_sequences() {
        let table: &[&[u8]] = &[
            b"",
            b"Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!",
            "κόσμε".as_bytes(),
            b"\x00",
            b"\xc2\x80",
            b"\xe0\xa0\x80",
            b"\xf0\x90\x80\x80",
            b"\x7f",
            b"\xdf\xbf",
            b"\xef\xbf\xbf",
            b"\xf4\x8f\xbf\xbf",
            b"\xed\x9f\xbf",
            b"\xee\x80\x80",
            b"\xef\xbf\xbd",
            b"\xef\xbf\xbe",
            b"\xef\xbf\xbf",
            b"\xf0\x9f\xbf\xbe",
        ];
        for bytes in table {
            assert_eq!(first_failing_byte(bytes), Ok(()), "{bytes:x?}");
            assert_eq!(validate_split(bytes, &[]), Ok(()), "{bytes:x?}");
        }
    }

    /// Each invalid sequence with the 1-based index of the byte that must fail
    /// when bytes arrive one at a time (`len + 1`: only at the end).
    #[test]
    fn invalid_sequences_fail_at_the_earliest_byte() {
        let table: &[(&[u8], usize)] = &[
            // Autobahn 6.3: valid prefix, then a byte that cannot follow.
            (
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
                13,
            ),
            // Beyond U+10FFFF and lead bytes that never occur.
            (b"\xf4\x90\x80\x80", 2),
            (b"\xf5", 1),
            (b"\xf8\x88\x80\x80\x80", 1),
            (b"\xfc\x84\x80\x80\x80\x80", 1),
            (b"\xfe", 1),
            (b"\xff", 1),
            // Lonely continuation bytes.
            (b"\x80", 1),
            (b"\xbf", 1),
            (b"a\x80b", 2),
            // Lead byte followed by a non-continuation.
            (b"\xc2 ", 2),
            (b"\xe0\xa0 ", 3),
            (b"\xf0\x90\x80 ", 4),
            (b"\xdf\xdf", 2),
            // Truncated sequences at the end of the message.
            (b"\xc2", 2),
            (b"\xe0\xa0", 3),
            (b"\xf0\x90\x80", 4),
            (b"\xce\xba\xe1\xbd", 5),
            // Overlong encodings.
            (b"\xc0\xaf", 1),
            (b"\xc1\xbf", 1),
            (b"\xe0\x80\xaf", 2),
            (b"\xe0\x9f\xbf", 2),
            (b"\xf0\x80\x80\xaf", 2),
            (b"\xf0\x8f\xbf\xbf", 2),
            (b"\xc0\x80", 1),
            // UTF-16 surrogates, single and paired.
            (b"\xed\xa0\x80", 2),
            (b"\xed\xad\xbf", 2),
            (b"\xed\xbf\xbf", 2),
            (b"\xed\xa0\x80\xed\xb0\x80", 2),
            // A valid character followed by garbage.
            (b"\xf4\x8f\xbf\xbf\xff", 5),
        ];
        for (bytes, fail_at) in table {
            assert_eq!(first_failing_byte(bytes), Err(*fail_at), "{bytes:x?}");
            assert!(std::str::from_utf8(bytes).is_err());
        }
    }

    #[test]
    fn whole_chunk_verdicts() {
        assert_eq!(validate_split(b"\xce\xba\xe1\xbd\xb9\xcf\x83", &[]), Ok(()));
        assert_eq!(
            validate_split(b"\xce\xba\xe1\xbd\xb9\xcf\x83", &[3]),
            Ok(())
        );
        assert_eq!(validate_split(b"\xce\xba\xe1", &[]), Err(3));
        assert_eq!(validate_split(b"ab\xed\xa0\x80cd", &[3]), Err(7));
        assert_eq!(validate_split(b"ab\xed\xa0\x80cd", &[2]), Err(7));
    }

    #[test]
    fn finish_resets() {
        let mut validator = Utf8Validator::new();
        validator.feed(b"\xe2\x82").unwrap();
        assert_eq!(validator.finish(), Err(ProtocolError::InvalidUtf8));
        validator.feed(b"\xac").unwrap_err();

        let mut validator = Utf8Validator::new();
        validator.feed(b"\xe2\x82").unwrap();
        validator.finish().unwrap_err();
        validator.feed(b"plain").unwrap();
        assert_eq!(validator.finish(), Ok(()));
    }

    proptest! {
        #[test]
        fn any_split_of_valid_text_passes(text in "\\PC{0,40}",
                                          cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            prop_assert_eq!(validate_split(bytes, &points), Ok(()));
        }

        #[test]
        fn incremental_verdict_equals_std(bytes in proptest::collection::vec(
                                              prop_oneof![any::<u8>(), 0x80u8..0xc0, 0xc0u8..0xf8], 0..24),
                                          cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let whole = std::str::from_utf8(&bytes);
            prop_assert_eq!(validate_split(&bytes, &points).is_ok(), whole.is_ok());
            // Fed byte by byte, the failure is at the byte std points at.
            if let Err(err) = whole {
                // std reports a valid lead byte plus its valid continuations as the
                // bad sequence; incrementally, the byte after them is the one that fails.
                let at = err.valid_up_to();
                let expected = match err.error_len() {
                    Some(n) if (0xc2..=0xf4).contains(&bytes[at]) => at + n + 1,
                    Some(_) => at + 1,
                    None => bytes.len() + 1,
                };
                prop_assert_eq!(first_failing_byte(&bytes), Err(expected));
            }
        }

        #[test]
        fn valid_text_with_corruption(text in "\\PC{1,20}", at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = text.into_bytes();
            let at = at % bytes.len();
            bytes[at] = byte;
            prop_assert_eq!(first_failing_byte(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
        }
    }
}
