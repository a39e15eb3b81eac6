//! The region map: regions by id and by start key, answering "which region
//! holds this key", scans over a key range, and staleness checks on reports.

use std::collections::{BTreeMap, HashMap};

use concord_proto::{metapb, pdpb};

/// Load and health figures a leader reports with each region heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionStats {
    /// Approximate size of the region's data in bytes.
    pub approximate_size: u64,
    /// Approximate number of keys.
    pub approximate_keys: u64,
    /// Bytes written during the last interval.
    pub bytes_written: u64,
    /// Bytes read during the last interval.
    pub bytes_read: u64,
    /// Keys written during the last interval.
    pub keys_written: u64,
    /// Keys read during the last interval.
    pub keys_read: u64,
    /// Seconds covered by the read/write counters.
    pub interval_secs: u64,
    /// Peers the leader considers down.
    pub down_peers: Vec<pdpb::PeerStats>,
    /// Peers that lag behind the leader's log.
    pub pending_peers: Vec<metapb::Peer>,
    /// The leader's raft term.
    pub term: u64,
}

impl RegionStats {
    /// Extracts the figures from a heartbeat.
    pub fn from_heartbeat(hb: &pdpb::RegionHeartbeatRequest) -> Self {
        RegionStats {
            approximate_size: hb.approximate_size,
            approximate_keys: hb.approximate_keys,
            bytes_written: hb.bytes_written,
            bytes_read: hb.bytes_read,
            keys_written: hb.keys_written,
            keys_read: hb.keys_read,
            interval_secs: hb.interval_secs,
            down_peers: hb.down_peers.clone(),
            pending_peers: hb.pending_peers.clone(),
            term: hb.term,
        }
    }
}

/// A region with what PD learnt about it from heartbeats.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionEntry {
    /// Range, epoch and peers.
    pub region: metapb::Region,
    /// The peer that last reported itself leader.
    pub leader: Option<metapb::Peer>,
    /// Figures from the last heartbeat.
    pub stats: RegionStats,
}

fn epoch(region: &metapb::Region) -> metapb::RegionEpoch {
    region.region_epoch.unwrap_or_default()
}

/// Whether `end` (empty: unbounded) lies after `key`.
fn ends_after(end: &[u8], key: &[u8]) -> bool {
    end.is_empty() || end > key
}

/// Regions indexed by id and by start key.
#[derive(Debug, Default)]
pub struct RegionTree {
    regions: HashMap<u64, RegionEntry>,
    by_start: BTreeMap<Vec<u8>, u64>,
}

impl RegionTree {
    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are no regions.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The region with this id.
    pub fn get(&self, region_id: u64) -> Option<&RegionEntry> {
        self.regions.get(&region_id)
    }

    /// Mutable access to the region with this id (for leader and stats
    /// updates; the range and epoch must not be changed through it).
    pub fn get_mut(&mut self, region_id: u64) -> Option<&mut RegionEntry> {
        self.regions.get_mut(&region_id)
    }

    /// The region whose range holds `key`.
    pub fn get_by_key(&self, key: &[u8]) -> Option<&RegionEntry> {
        let (_, id) = self.by_start.range(..=key.to_vec()).next_back()?;
        let entry = self.regions.get(id)?;
        ends_after(&entry.region.end_key, key).then_some(entry)
    }

    /// Ids of the regions overlapping `[start, end)` (empty end: unbounded),
    /// in key order.
    fn overlapping(&self, start: &[u8], end: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        if let Some((_, id)) = self.by_start.range(..start.to_vec()).next_back() {
            if let Some(entry) = self.regions.get(id) {
                if ends_after(&entry.region.end_key, start) {
                    ids.push(*id);
                }
            }
        }
        for (key, id) in self.by_start.range(start.to_vec()..) {
            if !end.is_empty() && key.as_slice() >= end {
                break;
            }
            ids.push(*id);
        }
        ids
    }

    /// Up to `limit` regions (0: no limit) overlapping `[start, end)` in key
    /// order.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<&RegionEntry> {
        let mut out: Vec<&RegionEntry> = self
            .overlapping(start, end)
            .iter()
            .filter_map(|id| self.regions.get(id))
            .collect();
        if limit > 0 {
            out.truncate(limit);
        }
        out
    }

    /// Every region in key order.
    pub fn iter(&self) -> impl Iterator<Item = &RegionEntry> {
        self.by_start.values().filter_map(|id| self.regions.get(id))
    }

    /// Whether `region` is older than what the tree knows: the same region
    /// with a lower version or conf_ver, or an overlapping region with a
    /// newer version (the report predates a split or merge).
    pub fn is_stale(&self, region: &metapb::Region) -> bool {
        let new = epoch(region);
        if let Some(known) = self.regions.get(&region.id) {
            let old = epoch(&known.region);
            if new.version < old.version || new.conf_ver < old.conf_ver {
                return true;
            }
        }
        self.overlapping(&region.start_key, &region.end_key)
            .iter()
            .filter(|id| **id != region.id)
            .filter_map(|id| self.regions.get(id))
            .any(|other| epoch(&other.region).version > new.version)
    }

    /// Inserts or replaces a region, removing every other region its range
    /// overlaps. Returns the removed regions.
    pub fn insert(&mut self, entry: RegionEntry) -> Vec<metapb::Region> {
        let id = entry.region.id;
        if let Some(old) = self.regions.remove(&id) {
            if self.by_start.get(&old.region.start_key) == Some(&id) {
                self.by_start.remove(&old.region.start_key);
            }
        }
        let mut removed = Vec::new();
        for other in self.overlapping(&entry.region.start_key, &entry.region.end_key) {
            if let Some(old) = self.regions.remove(&other) {
                self.by_start.remove(&old.region.start_key);
                removed.push(old.region);
            }
        }
        self.by_start.insert(entry.region.start_key.clone(), id);
        self.regions.insert(id, entry);
        removed
    }

    /// Removes a region.
    pub fn remove(&mut self, region_id: u64) -> Option<RegionEntry> {
        let old = self.regions.remove(&region_id)?;
        if self.by_start.get(&old.region.start_key) == Some(&region_id) {
            self.by_start.remove(&old.region.start_key);
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &str, end: &str, version: u64, conf_ver: u64) -> metapb::Region {
        metapb::Region {
            id,
            start_key: start.as_bytes().to_vec(),
            end_key: end.as_bytes().to_vec(),
            region_epoch: Some(metapb::RegionEpoch { conf_ver, version }),
            peers: vec![],
        }
    }

    fn entry(region: metapb::Region) -> RegionEntry {
        RegionEntry {
            region,
            leader: None,
            stats: RegionStats::default(),
        }
    }

    fn ids(entries: Vec<&RegionEntry>) -> Vec<u64> {
        entries.iter().map(|e| e.region.id).collect()
    }

    #[test]
    fn lookup_by_key_and_scan() {
        let mut tree = RegionTree::default();
        tree.insert(entry(region(1, "", "b", 1, 1)));
        tree.insert(entry(region(2, "b", "d", 1, 1)));
        tree.insert(entry(region(3, "d", "", 1, 1)));
        assert_eq!(tree.get_by_key(b"").unwrap().region.id, 1);
        assert_eq!(tree.get_by_key(b"a").unwrap().region.id, 1);
        assert_eq!(tree.get_by_key(b"b").unwrap().region.id, 2);
        assert_eq!(tree.get_by_key(b"c").unwrap().region.id, 2);
        assert_eq!(tree.get_by_key(b"zzz").unwrap().region.id, 3);
        assert_eq!(ids(tree.scan(b"", b"", 0)), vec![1, 2, 3]);
        assert_eq!(ids(tree.scan(b"a", b"c", 0)), vec![1, 2]);
        assert_eq!(ids(tree.scan(b"b", b"d", 0)), vec![2]);
        assert_eq!(ids(tree.scan(b"c", b"", 2)), vec![2, 3]);
        assert_eq!(ids(tree.scan(b"", b"", 1)), vec![1]);
    }

    #[test]
    fn gap_is_not_found() {
        let mut tree = RegionTree::default();
        tree.insert(entry(region(1, "", "b", 1, 1)));
        tree.insert(entry(region(3, "d", "", 1, 1)));
        assert!(tree.get_by_key(b"c").is_none());
        assert_eq!(tree.get_by_key(b"d").unwrap().region.id, 3);
    }

    #[test]
    fn older_epoch_is_stale() {
        let mut tree = RegionTree::default();
        tree.insert(entry(region(1, "", "", 2, 5)));
        assert!(tree.is_stale(&region(1, "", "", 1, 5)));
        assert!(tree.is_stale(&region(1, "", "", 2, 4)));
        assert!(!tree.is_stale(&region(1, "", "", 2, 5)));
        assert!(!tree.is_stale(&region(1, "", "", 3, 5)));
    }

    #[test]
    fn split_replaces_parent_and_late_parent_report_is_stale() {
        let mut tree = RegionTree::default();
        tree.insert(entry(region(1, "", "", 1, 1)));
        // After a split at "m" the right half is reported first.
        let removed = tree.insert(entry(region(2, "m", "", 2, 1)));
        assert_eq!(removed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
        assert!(tree.get_by_key(b"a").is_none());
        tree.insert(entry(region(1, "", "m", 2, 1)));
        assert_eq!(ids(tree.scan(b"", b"", 0)), vec![1, 2]);
        // A late report of the unsplit parent is stale.
        assert!(tree.is_stale(&region(1, "", "", 1, 1)));
        // A region with another id overlapping newer regions is stale too.
        assert!(tree.is_stale(&region(9, "a", "z", 1, 1)));
    }

    #[test]
    fn merged_region_removes_covered_regions() {
        let mut tree = RegionTree::default();
        tree.insert(entry(region(1, "", "b", 2, 1)));
        tree.insert(entry(region(2, "b", "d", 2, 1)));
        tree.insert(entry(region(3, "d", "", 2, 1)));
        let removed = tree.insert(entry(region(2, "a", "", 3, 1)));
        let mut removed: Vec<u64> = removed.iter().map(|r| r.id).collect();
        removed.sort();
        assert_eq!(removed, vec![1, 3]);
        assert_eq!(ids(tree.scan(b"", b"", 0)), vec![2]);
        assert_eq!(tree.len(), 1);
    }
}
