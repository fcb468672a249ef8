//! The incremental UTF-8 validator against `std::str::from_utf8`.
//!
//! Input: `[n, split sizes (n & 15 of them)..., bytes...]`.
//!
//! The bytes are fed in the chunks the sizes give (and again whole, and byte
//! by byte), then `finish` is called. Oracle, from `from_utf8` on the whole:
//! - valid: every `feed` and `finish` succeed;
//! - invalid, first failing byte at `f` (the first byte after which no
//!   continuation can make the prefix valid): every chunk before the one
//!   holding `f` is accepted and that chunk is refused (fail-fast, and no
//!   false alarm);
//! - only truncated at the end: every `feed` succeeds and `finish` fails.
//!
//! `finish` resets the validator: a second stream through the same validator
//! gets the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_fuzz::protocol::Utf8Validator;
use ws_fuzz::{bytewise, first_invalid_utf8_byte, split, Input};

fn validate<'c>(
    validator: &mut Utf8Validator,
    chunks: impl IntoIterator<Item = &'c [u8]>,
    bytes: &[u8],
    verdict: &Expected,
) {
    let mut end = 0;
    for chunk in chunks {
        let start = end;
        end += chunk.len();
        let result = validator.feed(chunk);
        match verdict {
            Expected::FailsAt(f) if (start..end).contains(f) => {
                assert!(
                    result.is_err(),
                    "byte {f} (in {start}..{end}) accepted: {bytes:x?}"
                );
                return;
            }
            _ => assert!(result.is_ok(), "chunk {start}..{end} refused: {bytes:x?}"),
        }
    }
    let finished = validator.finish();
    match verdict {
        Expected::Valid => assert!(finished.is_ok()),
        Expected::Truncated => assert!(finished.is_err()),
        Expected::FailsAt(f) => panic!("byte {f} never refused"),
    }
}

#[derive(Debug)]
enum Expected {
    Valid,
    Truncated,
    FailsAt(usize),
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let n = input.byte() & 15;
    let sizes = input.take(usize::from(n));
    let bytes = input.rest();

    let expected = match (std::str::from_utf8(bytes), first_invalid_utf8_byte(bytes)) {
        (Ok(_), _) => Expected::Valid,
        (Err(_), Some(f)) => Expected::FailsAt(f),
        (Err(_), None) => Expected::Truncated,
    };

    let mut validator = Utf8Validator::new();
    validate(&mut validator, split(bytes, sizes), bytes, &expected);
    if !matches!(expected, Expected::FailsAt(_)) {
        // finish() ran and reset it.
        validate(&mut validator, [bytes], bytes, &expected);
    }
    validate(&mut Utf8Validator::new(), [bytes], bytes, &expected);
    validate(&mut Utf8Validator::new(), bytewise(bytes), bytes, &expected);
});
