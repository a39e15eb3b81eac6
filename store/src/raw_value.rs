//! How raw values are stored: the user's bytes followed by an 8-byte
//! big-endian expiry time in Unix seconds (0: never expires).

use std::time::{SystemTime, UNIX_EPOCH};

const SUFFIX: usize = 8;

/// Wall-clock Unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Encodes `value` with a time to live of `ttl` seconds from `now` (0: none).
pub fn encode(value: &[u8], ttl: u64, now: u64) -> Vec<u8> {
    let expire = if ttl == 0 { 0 } else { now.saturating_add(ttl) };
    let mut out = Vec::with_capacity(value.len() + SUFFIX);
    out.extend_from_slice(value);
    out.extend_from_slice(&expire.to_be_bytes());
    out
}

/// The live user value of a stored value at time `now`: `None` when it has
/// expired or is malformed.
pub fn decode(stored: &[u8], now: u64) -> Option<&[u8]> {
    let split = stored.len().checked_sub(SUFFIX)?;
    let (value, expire) = stored.split_at(split);
    let expire = u64::from_be_bytes(expire.try_into().ok()?);
    (expire == 0 || expire > now).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_expire() {
        assert_eq!(decode(&encode(b"v", 0, 100), u64::MAX), Some(&b"v"[..]));
        let with_ttl = encode(b"v", 10, 100);
        assert_eq!(decode(&with_ttl, 109), Some(&b"v"[..]));
        assert_eq!(decode(&with_ttl, 110), None);
        assert_eq!(decode(&encode(b"", 0, 0), 0), Some(&b""[..]));
        assert_eq!(decode(b"short", 0), None);
    }
}
