//! The timestamp oracle: `physical_ms << 18 | logical`, strictly increasing,
//! also across restarts. Before a timestamp with physical part `p` is issued,
//! a window end greater than `p` is persisted; a restarted oracle starts at
//! or after the persisted end.

use std::time::{SystemTime, UNIX_EPOCH};

use concord_proto::pdpb::Timestamp;

use crate::error::{PdServerError, Result};
use crate::storage::MetaStorage;

/// Bits of the logical part of a timestamp.
pub const LOGICAL_BITS: u32 = 18;
const MAX_LOGICAL: i64 = 1 << LOGICAL_BITS;

/// Packs a timestamp into one `u64`.
pub fn compose(ts: &Timestamp) -> u64 {
    ((ts.physical as u64) << LOGICAL_BITS) | ts.logical as u64
}

/// Splits a packed timestamp.
pub fn decompose(ts: u64) -> Timestamp {
    Timestamp {
        physical: (ts >> LOGICAL_BITS) as i64,
        logical: (ts & (MAX_LOGICAL as u64 - 1)) as i64,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The timestamp oracle's state.
pub struct TsoOracle {
    physical: i64,
    logical: i64,
    /// Persisted: no timestamp with a physical part >= this was issued.
    window_end: i64,
    window_ms: i64,
}

impl TsoOracle {
    /// Resumes after the window persisted in `storage`; each disk write
    /// reserves `window_ms` milliseconds ahead.
    pub fn load(storage: &MetaStorage, window_ms: u64) -> Result<Self> {
        if window_ms < 2 {
            return Err(PdServerError::Config("TSO window must be >= 2 ms".into()));
        }
        let saved = storage.load_tso_window()? as i64;
        let physical = now_ms().max(saved);
        let mut oracle = TsoOracle {
            physical,
            logical: 0,
            window_end: saved,
            window_ms: window_ms as i64,
        };
        oracle.extend_window(storage, physical)?;
        Ok(oracle)
    }

    fn extend_window(&mut self, storage: &MetaStorage, physical: i64) -> Result<()> {
        let end = physical + self.window_ms;
        storage.save_tso_window(end as u64)?;
        self.window_end = end;
        Ok(())
    }

    /// Issues `count` consecutive timestamps and returns the last of them;
    /// the batch is `logical - count + 1 ..= logical` at the same physical.
    pub fn next(&mut self, storage: &MetaStorage, count: u32) -> Result<Timestamp> {
        let count = i64::from(count);
        if count == 0 || count >= MAX_LOGICAL {
            return Err(PdServerError::InvalidArgument(format!(
                "TSO count must be in 1..{MAX_LOGICAL}, got {count}"
            )));
        }
        let now = now_ms();
        let (mut physical, mut logical) = if now > self.physical {
            (now, 0)
        } else {
            (self.physical, self.logical)
        };
        if logical + count >= MAX_LOGICAL {
            // Logical space of this millisecond is used up: borrow the next.
            physical += 1;
            logical = 0;
        }
        logical += count;
        // Keep at least half a window of slack so the disk write is rare.
        if physical + self.window_ms / 2 >= self.window_end {
            self.extend_window(storage, physical)?;
        }
        self.physical = physical;
        self.logical = logical;
        Ok(Timestamp { physical, logical })
    }

    /// The persisted end of the current window, in ms.
    pub fn window_end(&self) -> i64 {
        self.window_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0u64;
        for _restart in 0..3 {
            let storage = MetaStorage::open(dir.path()).unwrap();
            let mut tso = TsoOracle::load(&storage, 3000).unwrap();
            for count in [1u32, 5, 1000, 1] {
                let ts = tso.next(&storage, count).unwrap();
                let packed = compose(&ts);
                let first = packed - u64::from(count) + 1;
                assert!(first > last, "{first} not after {last}");
                assert!(ts.physical < tso.window_end());
                last = packed;
            }
        }
    }

    #[test]
    fn logical_overflow_moves_to_next_millisecond() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MetaStorage::open(dir.path()).unwrap();
        let mut tso = TsoOracle::load(&storage, 3000).unwrap();
        let mut prev = compose(&tso.next(&storage, 1).unwrap());
        for _ in 0..8 {
            let ts = tso.next(&storage, (MAX_LOGICAL - 1) as u32).unwrap();
            assert!(ts.logical < MAX_LOGICAL);
            let packed = compose(&ts);
            assert!(packed - (MAX_LOGICAL as u64 - 2) > prev);
            prev = packed;
        }
    }

    #[test]
    fn bad_counts_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MetaStorage::open(dir.path()).unwrap();
        let mut tso = TsoOracle::load(&storage, 3000).unwrap();
        assert!(tso.next(&storage, 0).is_err());
        assert!(tso.next(&storage, MAX_LOGICAL as u32).is_err());
    }

    #[test]
    fn compose_round_trips() {
        let ts = Timestamp {
            physical: 1_700_000_000_000,
            logical: 12345,
        };
        assert_eq!(decompose(compose(&ts)), ts);
    }
}
