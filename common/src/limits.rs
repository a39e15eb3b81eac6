//! Input limits of raw KV requests and their checks. The store enforces them
//! and the router and client check them before sending, with this one piece
//! of code, so bad input is refused with the same message wherever it stops.

/// Bad input, with the message the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

type Result<T> = std::result::Result<T, InvalidInput>;

/// Largest key accepted by default (8 KiB).
pub const DEFAULT_MAX_KEY_SIZE: usize = 8 << 10;
/// Largest value accepted by default (8 MiB).
pub const DEFAULT_MAX_VALUE_SIZE: usize = 8 << 20;
/// Largest request message a store decodes (64 MiB): a batch put over it
/// is refused whole.
pub const MAX_STORE_REQUEST_SIZE: usize = 64 << 20;

/// Size limits applied to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest key in bytes.
    pub max_key_size: usize,
    /// Largest value in bytes.
    pub max_value_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_size: DEFAULT_MAX_KEY_SIZE,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
        }
    }
}

impl Limits {
    /// A key must be non-empty and at most `max_key_size` bytes.
    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(InvalidInput("key must not be empty".into()));
        }
        if key.len() > self.max_key_size {
            return Err(InvalidInput(format!(
                "key is {} bytes, over the limit of {} bytes",
                key.len(),
                self.max_key_size
            )));
        }
        Ok(())
    }

    /// A value must be at most `max_value_size` bytes.
    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_size {
            return Err(InvalidInput(format!(
                "value is {} bytes, over the limit of {} bytes",
                value.len(),
                self.max_value_size
            )));
        }
        Ok(())
    }

    /// A range `[start, end)` (empty `end`: unbounded) must have bounds
    /// within the key limit and `start <= end`.
    pub fn check_range(&self, start: &[u8], end: &[u8]) -> Result<()> {
        if start.len() > self.max_key_size || end.len() > self.max_key_size {
            return Err(InvalidInput(format!(
                "range bound over the key limit of {} bytes",
                self.max_key_size
            )));
        }
        if !end.is_empty() && start > end {
            return Err(InvalidInput(format!(
                "range start {start:?} is after its end {end:?}"
            )));
        }
        Ok(())
    }

    /// Every key of a batch read.
    pub fn check_keys(&self, keys: &[Vec<u8>]) -> Result<()> {
        keys.iter().try_for_each(|k| self.check_key(k))
    }

    /// A batch write must have pairs, each with a valid key and value.
    pub fn check_pairs<'a>(
        &self,
        mut pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<()> {
        if pairs.len() == 0 {
            return Err(InvalidInput("batch put without pairs".into()));
        }
        pairs.try_for_each(|(k, v)| {
            self.check_key(k)?;
            self.check_value(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<()>) -> String {
        match r {
            Err(InvalidInput(msg)) => msg,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn keys_values_and_ranges_use_the_store_messages() {
        let l = Limits::default();
        assert_eq!(invalid(l.check_key(b"")), "key must not be empty");
        assert_eq!(
            invalid(l.check_key(&vec![b'k'; 8193])),
            "key is 8193 bytes, over the limit of 8192 bytes"
        );
        assert!(l.check_key(&vec![b'k'; 8192]).is_ok());
        assert_eq!(
            invalid(l.check_value(&vec![0; (8 << 20) + 1])),
            "value is 8388609 bytes, over the limit of 8388608 bytes"
        );
        assert!(l.check_value(b"").is_ok());
        assert_eq!(
            invalid(l.check_range(b"b", b"a")),
            "range start [98] is after its end [97]"
        );
        assert!(l.check_range(b"b", b"").is_ok());
        assert!(l.check_range(b"", b"").is_ok());
        assert_eq!(
            invalid(l.check_range(&vec![1; 9000], b"")),
            "range bound over the key limit of 8192 bytes"
        );
    }

    #[test]
    fn batch_put_needs_pairs() {
        let l = Limits::default();
        let none: Vec<(&[u8], &[u8])> = Vec::new();
        assert_eq!(
            invalid(l.check_pairs(none.into_iter())),
            "batch put without pairs"
        );
        let bad: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"", b"2")];
        assert_eq!(
            invalid(l.check_pairs(bad.into_iter())),
            "key must not be empty"
        );
    }
}
