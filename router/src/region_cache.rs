//! The region cache: which region holds a key, by key (ordered on each
//! region's end key) and by id, with the leader each region was last seen
//! with. Filled from PD on demand and corrected from the region errors
//! stores answer with. Never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use concord_common::pd_client::RegionInfo;
use concord_proto::{kvrpcpb, metapb};
use parking_lot::RwLock;

/// A cached region and its last known leader.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRegion {
    /// Range, epoch and peers.
    pub region: metapb::Region,
    /// The peer last known to lead the region, if any.
    pub leader: Option<metapb::Peer>,
}

impl From<RegionInfo> for CachedRegion {
    fn from(info: RegionInfo) -> Self {
        CachedRegion {
            region: info.region,
            leader: info.leader.filter(|p| p.id != 0),
        }
    }
}

fn is_voter(peer: &metapb::Peer) -> bool {
    peer.role() != metapb::PeerRole::Learner
}

fn epoch(region: &metapb::Region) -> (u64, u64) {
    region
        .region_epoch
        .as_ref()
        .map_or((0, 0), |e| (e.version, e.conf_ver))
}

impl CachedRegion {
    /// The region id.
    pub fn id(&self) -> u64 {
        self.region.id
    }

    /// Whether `key` lies in `[start_key, end_key)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.region.start_key.as_slice()
            && (self.region.end_key.is_empty() || key < self.region.end_key.as_slice())
    }

    /// The peer to send the next request to: the leader unless its store is
    /// suspected down, else the first voter on a store not suspected, else
    /// the leader or first voter anyway.
    pub fn target_peer(&self, suspect: impl Fn(u64) -> bool) -> Option<metapb::Peer> {
        let voters = || self.region.peers.iter().filter(|p| is_voter(p));
        if let Some(leader) = &self.leader {
            if !suspect(leader.store_id) {
                return Some(*leader);
            }
        }
        voters()
            .find(|p| !suspect(p.store_id))
            .or(self.leader.as_ref())
            .or_else(|| voters().next())
            .copied()
    }

    /// The request context for sending to `peer`.
    pub fn context(&self, peer: metapb::Peer) -> kvrpcpb::Context {
        kvrpcpb::Context {
            region_id: self.region.id,
            region_epoch: self.region.region_epoch,
            peer: Some(peer),
        }
    }
}

/// An end key in range order: a bounded key sorts before "unbounded".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum EndKey {
    Key(Vec<u8>),
    Unbounded,
}

impl EndKey {
    fn of(end: &[u8]) -> EndKey {
        if end.is_empty() {
            EndKey::Unbounded
        } else {
            EndKey::Key(end.to_vec())
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Region id by end key; the region holding `k` is the first entry with
    /// an end key above `k`, if its start key is not above `k`.
    by_end: BTreeMap<EndKey, u64>,
    by_id: HashMap<u64, CachedRegion>,
}

impl Inner {
    fn remove(&mut self, region_id: u64) -> Option<CachedRegion> {
        let cached = self.by_id.remove(&region_id)?;
        let end = EndKey::of(&cached.region.end_key);
        if self.by_end.get(&end) == Some(&region_id) {
            self.by_end.remove(&end);
        }
        Some(cached)
    }

    /// Ids of cached regions overlapping `[start, end)`.
    fn overlapping(&self, start: &[u8], end: &[u8]) -> Vec<u64> {
        let from = Bound::Excluded(EndKey::Key(start.to_vec()));
        self.by_end
            .range((from, Bound::Unbounded))
            .map(|(_, id)| *id)
            .take_while(|id| {
                self.by_id
                    .get(id)
                    .is_some_and(|c| end.is_empty() || c.region.start_key.as_slice() < end)
            })
            .collect()
    }
}

/// The region cache. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct RegionCache {
    inner: RwLock<Inner>,
}

impl RegionCache {
    /// An empty cache.
    pub fn new() -> RegionCache {
        RegionCache::default()
    }

    /// Number of cached regions.
    pub fn len(&self) -> usize {
        self.inner.read().by_id.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached region holding `key`.
    pub fn locate(&self, key: &[u8]) -> Option<CachedRegion> {
        let inner = self.inner.read();
        let from = Bound::Excluded(EndKey::Key(key.to_vec()));
        let (_, id) = inner.by_end.range((from, Bound::Unbounded)).next()?;
        let cached = inner.by_id.get(id)?;
        cached.contains(key).then(|| cached.clone())
    }

    /// The cached region holding the keys just below `end` (empty `end`:
    /// the last region), i.e. where a reverse scan ending at `end` starts.
    pub fn locate_before(&self, end: &[u8]) -> Option<CachedRegion> {
        let inner = self.inner.read();
        let from = Bound::Included(EndKey::of(end));
        let (_, id) = inner.by_end.range((from, Bound::Unbounded)).next()?;
        let cached = inner.by_id.get(id)?;
        let starts_below = end.is_empty() || cached.region.start_key.as_slice() < end;
        starts_below.then(|| cached.clone())
    }

    /// The cached region with this id.
    pub fn get(&self, region_id: u64) -> Option<CachedRegion> {
        self.inner.read().by_id.get(&region_id).cloned()
    }

    /// Caches `region`, replacing every cached region it overlaps. Refused
    /// (returns false) if an overlapping cached region is newer, so a late
    /// answer from PD cannot undo what a store already told us. A region
    /// without a leader keeps the leader cached for the same region id if
    /// that peer is still a member.
    pub fn insert(&self, mut region: CachedRegion) -> bool {
        let mut inner = self.inner.write();
        let (start, end) = (&region.region.start_key, &region.region.end_key);
        let overlapping = inner.overlapping(start, end);
        let new_epoch = epoch(&region.region);
        for id in &overlapping {
            let Some(old) = inner.by_id.get(id) else {
                continue;
            };
            let old_epoch = epoch(&old.region);
            let stale = if *id == region.id() {
                old_epoch > new_epoch
            } else {
                old_epoch.0 > new_epoch.0
            };
            if stale {
                return false;
            }
        }
        if let Some(old) = inner.by_id.get(&region.id()) {
            if region.leader.is_none() {
                region.leader = old
                    .leader
                    .filter(|l| region.region.peers.iter().any(|p| p.id == l.id));
            }
        }
        for id in overlapping {
            inner.remove(id);
        }
        // The same id may still be cached under an old range.
        inner.remove(region.id());
        inner
            .by_end
            .insert(EndKey::of(&region.region.end_key), region.id());
        inner.by_id.insert(region.id(), region);
        true
    }

    /// Forgets a region, so the next lookup asks PD.
    pub fn remove(&self, region_id: u64) -> Option<CachedRegion> {
        self.inner.write().remove(region_id)
    }

    /// Records `leader` as the region's leader (a `NotLeader` hint). Returns
    /// false if the region is not cached.
    pub fn update_leader(&self, region_id: u64, leader: metapb::Peer) -> bool {
        let mut inner = self.inner.write();
        match inner.by_id.get_mut(&region_id) {
            Some(cached) => {
                cached.leader = Some(leader);
                true
            }
            None => false,
        }
    }

    /// After `peer` answered "not leader" without knowing the leader: try
    /// the next voter after it on the next attempt.
    pub fn rotate_leader_after(&self, region_id: u64, peer: &metapb::Peer) {
        let mut inner = self.inner.write();
        let Some(cached) = inner.by_id.get_mut(&region_id) else {
            return;
        };
        let voters: Vec<metapb::Peer> = cached
            .region
            .peers
            .iter()
            .filter(|p| is_voter(p))
            .copied()
            .collect();
        let next = voters
            .iter()
            .position(|p| p.id == peer.id)
            .map_or(0, |i| (i + 1) % voters.len().max(1));
        cached.leader = voters.get(next).copied();
    }

    /// Applies an `EpochNotMatch`: the store that answered (`store_id`)
    /// reported the regions now covering the range of `stale`. Each is
    /// cached with its peer on that store as leader guess (it led the
    /// region we asked). Returns how many were cached; when none could be,
    /// the stale region is dropped so the next attempt asks PD.
    pub fn on_epoch_not_match(
        &self,
        stale: &CachedRegion,
        current: &[metapb::Region],
        store_id: u64,
    ) -> usize {
        let mut inserted = 0;
        for region in current {
            let leader = region
                .peers
                .iter()
                .find(|p| p.store_id == store_id)
                .copied();
            if self.insert(CachedRegion {
                region: region.clone(),
                leader,
            }) {
                inserted += 1;
            }
        }
        if inserted == 0 {
            let mut inner = self.inner.write();
            let same = inner
                .by_id
                .get(&stale.id())
                .is_some_and(|c| epoch(&c.region) <= epoch(&stale.region));
            if same {
                inner.remove(stale.id());
            }
        }
        inserted
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn peer(id: u64, store_id: u64) -> metapb::Peer {
        metapb::Peer {
            id,
            store_id,
            role: metapb::PeerRole::Voter as i32,
        }
    }

    /// A region over `[start, end)` with version `ver` and three peers on
    /// stores 1, 2, 3 (peer ids `id*10 + store`).
    pub(crate) fn region(id: u64, start: &[u8], end: &[u8], ver: u64) -> metapb::Region {
        metapb::Region {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver: 1,
                version: ver,
            }),
            peers: (1..=3).map(|s| peer(id * 10 + s, s)).collect(),
        }
    }

    pub(crate) fn cached(id: u64, start: &[u8], end: &[u8], ver: u64) -> CachedRegion {
        CachedRegion {
            region: region(id, start, end, ver),
            leader: Some(peer(id * 10 + 1, 1)),
        }
    }

    fn ids(cache: &RegionCache, keys: &[&[u8]]) -> Vec<Option<u64>> {
        keys.iter()
            .map(|k| cache.locate(k).map(|c| c.id()))
            .collect()
    }

    #[test]
    fn locates_keys_by_range_with_unbounded_ends() {
        let cache = RegionCache::new();
        assert!(cache.insert(cached(1, b"", b"b", 1)));
        assert!(cache.insert(cached(2, b"b", b"d", 1)));
        assert!(cache.insert(cached(3, b"f", b"", 1)));
        assert_eq!(
            ids(&cache, &[b"", b"a", b"b", b"c", b"d", b"e", b"f", b"zzz"]),
            vec![
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                None,
                None,
                Some(3),
                Some(3)
            ]
        );
        assert_eq!(
            cache.get(2).map(|c| c.region.start_key),
            Some(b"b".to_vec())
        );
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn locate_before_finds_where_a_reverse_scan_starts() {
        let cache = RegionCache::new();
        cache.insert(cached(1, b"", b"b", 1));
        cache.insert(cached(2, b"b", b"d", 1));
        cache.insert(cached(3, b"d", b"", 1));
        let before = |end: &[u8]| cache.locate_before(end).map(|c| c.id());
        assert_eq!(before(b""), Some(3));
        assert_eq!(before(b"d"), Some(2));
        assert_eq!(before(b"c"), Some(2));
        assert_eq!(before(b"b"), Some(1));
        assert_eq!(before(b"e"), Some(3));
        cache.remove(2);
        assert_eq!(before(b"d"), None);
        assert_eq!(before(b"b\0"), None);
    }

    #[test]
    fn a_split_replaces_the_parent_and_stale_answers_are_refused() {
        let cache = RegionCache::new();
        cache.insert(cached(1, b"", b"", 1));
        // The split halves (version 2) replace the whole-range parent.
        assert!(cache.insert(cached(1, b"", b"m", 2)));
        assert!(cache.insert(cached(2, b"m", b"", 2)));
        assert_eq!(
            ids(&cache, &[b"a", b"m", b"z"]),
            vec![Some(1), Some(2), Some(2)]
        );
        // A late PD answer with the parent's old epoch must not undo it.
        assert!(!cache.insert(cached(1, b"", b"", 1)));
        assert_eq!(ids(&cache, &[b"a", b"z"]), vec![Some(1), Some(2)]);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_merge_replaces_both_halves() {
        let cache = RegionCache::new();
        cache.insert(cached(1, b"", b"m", 2));
        cache.insert(cached(2, b"m", b"", 2));
        assert!(cache.insert(cached(2, b"", b"", 3)));
        assert_eq!(ids(&cache, &[b"a", b"z"]), vec![Some(2), Some(2)]);
        assert_eq!(cache.get(1), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn leader_hints_and_rotation() {
        let cache = RegionCache::new();
        cache.insert(cached(1, b"", b"", 1));
        assert!(cache.update_leader(1, peer(13, 3)));
        assert_eq!(cache.get(1).and_then(|c| c.leader), Some(peer(13, 3)));
        cache.rotate_leader_after(1, &peer(13, 3));
        assert_eq!(cache.get(1).and_then(|c| c.leader), Some(peer(11, 1)));
        cache.rotate_leader_after(1, &peer(11, 1));
        assert_eq!(cache.get(1).and_then(|c| c.leader), Some(peer(12, 2)));
        assert!(!cache.update_leader(9, peer(1, 1)));
        // Re-inserting the same region without a leader keeps the known one.
        cache.insert(CachedRegion {
            region: region(1, b"", b"", 1),
            leader: None,
        });
        assert_eq!(cache.get(1).and_then(|c| c.leader), Some(peer(12, 2)));
    }

    #[test]
    fn target_peer_avoids_suspected_stores() {
        let c = cached(1, b"", b"", 1);
        assert_eq!(c.target_peer(|_| false), Some(peer(11, 1)));
        assert_eq!(c.target_peer(|s| s == 1), Some(peer(12, 2)));
        assert_eq!(c.target_peer(|s| s != 3), Some(peer(13, 3)));
        // Every store suspected: still try the leader.
        assert_eq!(c.target_peer(|_| true), Some(peer(11, 1)));
        let mut learner = cached(2, b"", b"", 1);
        learner.leader = None;
        learner.region.peers[0].role = metapb::PeerRole::Learner as i32;
        assert_eq!(learner.target_peer(|_| false), Some(peer(22, 2)));
    }

    #[test]
    fn epoch_not_match_installs_the_current_regions() {
        let cache = RegionCache::new();
        let stale = cached(1, b"", b"", 1);
        cache.insert(stale.clone());
        let current = [region(1, b"", b"k", 2), region(5, b"k", b"", 2)];
        assert_eq!(cache.on_epoch_not_match(&stale, &current, 2), 2);
        let left = cache.locate(b"a").expect("left half cached");
        assert_eq!((left.id(), left.leader), (1, Some(peer(12, 2))));
        let right = cache.locate(b"x").expect("right half cached");
        assert_eq!((right.id(), right.leader), (5, Some(peer(52, 2))));
    }

    #[test]
    fn epoch_not_match_without_usable_regions_drops_the_entry() {
        let cache = RegionCache::new();
        let stale = cached(1, b"", b"", 3);
        cache.insert(stale.clone());
        assert_eq!(cache.on_epoch_not_match(&stale, &[], 1), 0);
        assert_eq!(cache.locate(b"a"), None);
    }
}
