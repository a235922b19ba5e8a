//! `X-Request-Id`: keep a sane one from the client, otherwise make one.

use http::HeaderValue;

/// The header name, lowercase as HTTP/2 wants it.
pub const HEADER: &str = "x-request-id";

/// Longest client-supplied id that is kept.
pub const MAX_LEN: usize = 128;

/// The client's id when it sent exactly one that is 1..=128 visible ASCII characters.
pub fn from_client<'a>(mut values: impl Iterator<Item = &'a HeaderValue>) -> Option<HeaderValue> {
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let b = first.as_bytes();
    let sane = !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic());
    sane.then(|| first.clone())
}

/// A new random id: 32 lowercase hex digits (a v4 UUID without dashes).
pub fn generate() -> HeaderValue {
    let mut buf = [0u8; 32];
    let s = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(from_client([v("abc-123")].iter()), Some(v("abc-123")));
        assert_eq!(from_client([v("")].iter()), None);
        assert_eq!(from_client([v("has space")].iter()), None);
        assert_eq!(from_client([v(&"x".repeat(129))].iter()), None);
        assert_eq!(from_client([v("a"), v("b")].iter()), None);
        assert_eq!(
            from_client(HeaderValue::from_bytes(b"caf\xc3\xa9").iter()),
            None
        );
        let g = generate();
        assert_eq!(g.len(), 32);
        assert_ne!(g, generate());
    }
}
