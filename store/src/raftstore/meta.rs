//! What the store knows about all its regions at once: their ranges (to
//! refuse peers whose range overlaps an existing one) and which it leads.

use std::collections::{BTreeMap, HashMap, HashSet};

use concord_proto::metapb;

use crate::keys;

/// Ranges and leadership of the store's regions.
#[derive(Default)]
pub struct StoreMeta {
    regions: HashMap<u64, metapb::Region>,
    // data end key -> region id, for range lookups.
    ranges: BTreeMap<Vec<u8>, u64>,
    /// Regions whose peer on this store is the leader.
    pub leaders: HashSet<u64>,
    /// Entries the slowest follower is behind, per region led here.
    pub log_lag: HashMap<u64, u64>,
}

impl StoreMeta {
    /// Records `region` (initialized regions only), replacing its old range.
    pub fn set_region(&mut self, region: &metapb::Region) {
        if region.peers.is_empty() {
            return;
        }
        if let Some(old) = self.regions.get(&region.id) {
            let old_end = keys::data_end_key(&old.end_key);
            if self.ranges.get(&old_end) == Some(&region.id) {
                self.ranges.remove(&old_end);
            }
        }
        self.ranges
            .insert(keys::data_end_key(&region.end_key), region.id);
        self.regions.insert(region.id, region.clone());
    }

    /// Forgets a region.
    pub fn remove(&mut self, region_id: u64) {
        if let Some(old) = self.regions.remove(&region_id) {
            let end = keys::data_end_key(&old.end_key);
            if self.ranges.get(&end) == Some(&region_id) {
                self.ranges.remove(&end);
            }
        }
        self.leaders.remove(&region_id);
        self.log_lag.remove(&region_id);
    }

    /// The region with this id, if known.
    pub fn region(&self, region_id: u64) -> Option<&metapb::Region> {
        self.regions.get(&region_id)
    }

    /// The region whose range contains `key`.
    pub fn region_by_key(&self, key: &[u8]) -> Option<&metapb::Region> {
        let k = keys::data_key(key);
        let (_, id) = self
            .ranges
            .range((
                std::ops::Bound::Excluded(k.clone()),
                std::ops::Bound::Unbounded,
            ))
            .next()?;
        let region = &self.regions[id];
        (keys::data_key(&region.start_key) <= k).then_some(region)
    }

    /// Every initialized region, in no particular order.
    pub fn regions(&self) -> impl Iterator<Item = &metapb::Region> {
        self.regions.values()
    }

    /// Number of initialized regions.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Some region other than `except` whose range overlaps `[start, end)`.
    pub fn overlapping(&self, start: &[u8], end: &[u8], except: u64) -> Option<u64> {
        let start = keys::data_key(start);
        let end = keys::data_end_key(end);
        for (_, id) in self
            .ranges
            .range((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded))
        {
            let region = &self.regions[id];
            if keys::data_key(&region.start_key) >= end {
                break;
            }
            if *id != except {
                return Some(*id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &[u8], end: &[u8]) -> metapb::Region {
        metapb::Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            peers: vec![metapb::Peer::default()],
            ..Default::default()
        }
    }

    #[test]
    fn overlaps_follow_range_changes() {
        let mut meta = StoreMeta::default();
        meta.set_region(&region(1, b"", b"m"));
        meta.set_region(&region(2, b"m", b""));
        assert_eq!(meta.overlapping(b"a", b"b", 0), Some(1));
        assert_eq!(meta.overlapping(b"x", b"", 0), Some(2));
        assert_eq!(meta.overlapping(b"a", b"b", 1), None);
        meta.set_region(&region(1, b"", b"c"));
        assert_eq!(meta.overlapping(b"d", b"e", 0), None);
        meta.remove(2);
        assert_eq!(meta.overlapping(b"x", b"", 0), None);
        assert_eq!(meta.region_count(), 1);
    }
}
