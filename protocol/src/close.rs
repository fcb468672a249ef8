//! Close frame payloads: a 2-byte status code followed by a UTF-8 reason (RFC 6455 §5.5.1, §7.4).

use super::error::ProtocolError;

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
/// A gateway or proxy got an invalid response from its upstream (IANA's
/// registry of RFC 6455 close codes).
pub const BAD_GATEWAY: u16 = 1014;

/// Largest payload of any control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Whether `code` may appear in a close frame on the wire.
///
/// 1000–1003 and 1007–1011 are RFC 6455's, 1012–1014 were registered with
/// IANA since (service restart, try again later, bad gateway); 1004 is
/// reserved, 1005/1006/1015 are for local reporting only, and the rest of
/// 1000–2999 is unassigned; 3000–4999 belong to libraries and apps.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Splits a received close payload into code and reason; `None` for an empty payload.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Builds a close payload, cutting `reason` so the payload fits a control frame.
pub fn build_close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    // Back off to a character boundary so the peer does not see broken UTF-8.
    while cut < reason.len() && cut > 0 && is_continuation_byte(reason[cut]) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason[..cut]);
    payload
}

fn is_continuation_byte(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes_on_the_wire() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ];
        let invalid = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            assert!(is_valid_close_code(code), "{code} should be valid");
        }
        for code in invalid {
            assert!(!is_valid_close_code(code), "{code} should be invalid");
        }
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(
            parse_close_payload(b"\x03"),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(parse_close_payload(b"\x03\xe8"), Ok(Some((1000, ""))));
        assert_eq!(parse_close_payload(b"\x0f\xa0bye"), Ok(Some((4000, "bye"))));
        assert_eq!(
            parse_close_payload(&[b"\x03\xe9", "héllo".as_bytes()].concat()),
            Ok(Some((1001, "héllo")))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xed"),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(b"\x00\x00"),
            Err(ProtocolError::InvalidCloseCode(0))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xce\xba\xe1\xbd"),
            Err(ProtocolError::InvalidCloseReason)
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidCloseReason)
        );
    }

    #[test]
    fn parse_errors_map_to_close_codes() {
        assert_eq!(parse_close_payload(b"\x03").unwrap_err().close_code(), 1002);
        assert_eq!(
            parse_close_payload(b"\x03\xee").unwrap_err().close_code(),
            1002
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xc0\xaf")
                .unwrap_err()
                .close_code(),
            1007
        );
    }

    #[test]
    fn build_short_reason() {
        assert_eq!(build_close_payload(NORMAL, b""), vec![0x03, 0xe8]);
        assert_eq!(
            build_close_payload(TOO_BIG, b"big"),
            b"\x03\xf1big".to_vec()
        );
    }

    #[test]
    fn build_truncates_to_125_bytes() {
        let reason = [b'a'; 200];
        let payload = build_close_payload(GOING_AWAY, &reason);
        assert_eq!(payload.len(), 125);
        assert_eq!(&payload[..2], &[0x03, 0xe9]);
        assert_eq!(&payload[2..], &reason[..123]);

        let exact = [b'b'; 123];
        assert_eq!(build_close_payload(GOING_AWAY, &exact).len(), 125);
    }

    #[test]
    fn build_truncation_keeps_utf8_whole() {
        // 122 ASCII bytes then a 3-byte character: only 1 byte of it would fit.
        let mut reason = "x".repeat(122);
        reason.push('€');
        let payload = build_close_payload(INTERNAL, reason.as_bytes());
        assert_eq!(payload.len(), 124);
        assert_eq!(
            parse_close_payload(&payload),
            Ok(Some((INTERNAL, "x".repeat(122).as_str())))
        );

        // 4-byte characters: 30 fit in 120 bytes, the 31st would need 124.
        let reason = "😀".repeat(40);
        let payload = build_close_payload(POLICY, reason.as_bytes());
        assert_eq!(payload.len(), 122);
        assert_eq!(
            parse_close_payload(&payload),
            Ok(Some((POLICY, "😀".repeat(30).as_str())))
        );
    }
}
