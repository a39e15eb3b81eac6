//! Key encoding inside the store's one engine.
//!
//! User keys live in the data column families under [`DATA_PREFIX`], so that a
//! region's data is one contiguous range that can be scanned, snapshotted and
//! deleted on its own. Everything a store keeps about itself and its regions
//! (raft log, hard state, apply state, region state) is a *local* key under
//! [`LOCAL_PREFIX`] in the `raft` column family. Integers are big-endian so
//! that byte order is numeric order.

/// First byte of every data key.
pub const DATA_PREFIX: u8 = b'z';
/// Smallest key that sorts after every data key.
pub const DATA_MAX_KEY: &[u8] = &[DATA_PREFIX + 1];
/// First byte of every local (metadata) key.
pub const LOCAL_PREFIX: u8 = 0x01;

/// The store's identity (cluster id and store id).
pub const STORE_IDENT_KEY: &[u8] = &[LOCAL_PREFIX, 0x01];

const REGION_RAFT_PREFIX: u8 = 0x02;
const REGION_META_PREFIX: u8 = 0x03;

const RAFT_LOG_SUFFIX: u8 = 0x01;
const RAFT_STATE_SUFFIX: u8 = 0x02;
const APPLY_STATE_SUFFIX: u8 = 0x03;
const REGION_STATE_SUFFIX: u8 = 0x01;

/// Encodes a user key as a data key.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

/// Encodes a region's exclusive end key; an empty (unbounded) end maps to
/// [`DATA_MAX_KEY`].
pub fn data_end_key(end: &[u8]) -> Vec<u8> {
    if end.is_empty() {
        DATA_MAX_KEY.to_vec()
    } else {
        data_key(end)
    }
}

/// The user key inside a data key.
///
/// # Panics
/// If `key` is not a data key; data keys only come from [`data_key`].
pub fn origin_key(key: &[u8]) -> &[u8] {
    assert!(
        key.first() == Some(&DATA_PREFIX),
        "{key:?} is not a data key"
    );
    &key[1..]
}

fn region_key(prefix: u8, region_id: u64, suffix: u8, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + extra);
    k.push(LOCAL_PREFIX);
    k.push(prefix);
    k.extend_from_slice(&region_id.to_be_bytes());
    k.push(suffix);
    k
}

/// Key of the raft log entry at `index` of a region.
pub fn raft_log_key(region_id: u64, index: u64) -> Vec<u8> {
    let mut k = region_key(REGION_RAFT_PREFIX, region_id, RAFT_LOG_SUFFIX, 8);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Key of a region's persisted raft hard state and last index.
pub fn raft_state_key(region_id: u64) -> Vec<u8> {
    region_key(REGION_RAFT_PREFIX, region_id, RAFT_STATE_SUFFIX, 0)
}

/// Key of a region's apply state (applied index, truncated log position).
pub fn apply_state_key(region_id: u64) -> Vec<u8> {
    region_key(REGION_RAFT_PREFIX, region_id, APPLY_STATE_SUFFIX, 0)
}

/// Key of a region's local state (range, epoch, peers, tombstone flag).
pub fn region_state_key(region_id: u64) -> Vec<u8> {
    region_key(REGION_META_PREFIX, region_id, REGION_STATE_SUFFIX, 0)
}

/// The range holding the region states of every region on the store.
pub fn region_meta_range() -> (Vec<u8>, Vec<u8>) {
    (
        vec![LOCAL_PREFIX, REGION_META_PREFIX],
        vec![LOCAL_PREFIX, REGION_META_PREFIX + 1],
    )
}

/// The region id inside a region state key.
pub fn region_id_of_state_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(2..10)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The range holding every raft key (log, raft state, apply state) of a region.
pub fn region_raft_range(region_id: u64) -> (Vec<u8>, Vec<u8>) {
    let bound = |id: u64| {
        let mut k = vec![LOCAL_PREFIX, REGION_RAFT_PREFIX];
        k.extend_from_slice(&id.to_be_bytes());
        k
    };
    (bound(region_id), bound(region_id + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_round_trip_and_sort_inside_the_data_range() {
        let k = data_key(b"abc");
        assert_eq!(origin_key(&k), b"abc");
        assert!(data_key(b"") < data_key(b"\xff\xff"));
        assert!(data_key(b"\xff\xff\xff") < data_end_key(b""));
        assert_eq!(data_end_key(b"m"), data_key(b"m"));
    }

    #[test]
    fn local_keys_sort_before_data_keys_and_by_number() {
        assert!(raft_log_key(u64::MAX, u64::MAX) < data_key(b""));
        assert!(raft_log_key(1, 9) < raft_log_key(1, 10));
        assert!(raft_log_key(1, u64::MAX) < raft_state_key(1));
        assert!(apply_state_key(1) < raft_log_key(2, 0));
        assert_eq!(region_id_of_state_key(&region_state_key(77)), Some(77));
    }

    #[test]
    fn region_raft_range_covers_exactly_one_region() {
        let (start, end) = region_raft_range(5);
        for k in [
            raft_log_key(5, 0),
            raft_log_key(5, u64::MAX),
            raft_state_key(5),
            apply_state_key(5),
        ] {
            assert!(start <= k && k < end);
        }
        for k in [
            raft_log_key(4, u64::MAX),
            apply_state_key(4),
            raft_log_key(6, 0),
        ] {
            assert!(!(start <= k && k < end));
        }
        let (ms, me) = region_meta_range();
        assert!(ms <= region_state_key(5) && region_state_key(5) < me);
        assert!(!(ms <= raft_state_key(5) && raft_state_key(5) < me));
    }
}
