//! HTTP header helpers shared by the request and response checks.

/// Raw header (name, value) pairs; names compare case-insensitively.
pub(super) type RawHeaders<'h> = [(&'h [u8], &'h [u8])];

/// The values of every header called `name`, trimmed.
pub(super) fn values<'a: 'h, 'h>(
    headers: &'h RawHeaders<'a>,
    name: &'h str,
) -> impl Iterator<Item = &'a [u8]> + 'h {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|&(_, v)| trim(v))
}

/// The elements of a comma-separated list, trimmed; empty elements are skipped
/// as RFC 9110 §5.6.1 asks.
pub(super) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|item| !item.is_empty())
}

/// Whether any of the headers called `name` lists `token` (case-insensitively).
pub(super) fn has_token(headers: &RawHeaders<'_>, name: &str, token: &str) -> bool {
    values(headers, name)
        .any(|value| list_items(value).any(|item| item.eq_ignore_ascii_case(token.as_bytes())))
}

/// Strips optional whitespace (spaces and tabs) around a value.
pub(super) fn trim(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming() {
        assert_eq!(trim(b"  a b\t"), b"a b");
        assert_eq!(trim(b" \t "), b"");
        assert_eq!(trim(b""), b"");
        assert_eq!(trim(b"x"), b"x");
    }

    #[test]
    fn lists() {
        let items: Vec<&[u8]> = list_items(b" keep-alive ,, Upgrade,").collect();
        assert_eq!(items, vec![&b"keep-alive"[..], b"Upgrade"]);
        assert_eq!(list_items(b" , ").count(), 0);
    }

    #[test]
    fn tokens_across_repeated_headers() {
        let headers: &RawHeaders = &[
            (b"connection", b"keep-alive"),
            (b"CONNECTION", b"foo, UPGRADE"),
        ];
        assert!(has_token(headers, "Connection", "upgrade"));
        assert!(!has_token(headers, "Connection", "close"));
        assert!(!has_token(headers, "Upgrade", "upgrade"));
        // A token must match whole, not as a substring.
        let headers: &RawHeaders = &[(b"Connection", b"upgraded")];
        assert!(!has_token(headers, "Connection", "upgrade"));
    }
}
