//! What a region error means for the cache and for the next attempt.

use std::time::Duration;

use concord_proto::errorpb::{self, error::Kind};
use concord_proto::metapb;

use crate::region_cache::{CachedRegion, RegionCache};
use crate::retry::{Delay, Retry, RetryReason};

/// Updates `cache` from the region error `peer` answered for `asked`, and
/// says how to retry:
///
/// - `NotLeader` with a hint: switch the leader, retry at once;
///   without one (an election is running): try the next voter after a
///   backoff.
/// - `EpochNotMatch`: replace the stale entry with the current regions the
///   store reported and retry at once (or reload from PD if it sent none).
/// - `RegionNotFound`, `KeyNotInRegion`, `StoreNotMatch`: drop the entry so
///   the next attempt reloads it from PD.
/// - `ServerIsBusy`: back off at least the store's `backoff_ms`.
/// - `StaleCommand`: back off and retry against the same region.
pub fn apply_region_error(
    cache: &RegionCache,
    asked: &CachedRegion,
    peer: &metapb::Peer,
    error: errorpb::Error,
) -> Retry {
    let region_id = asked.id();
    let detail = |what: &str| {
        if error.message.is_empty() {
            format!("region {region_id} on store {}: {what}", peer.store_id)
        } else {
            format!(
                "region {region_id} on store {}: {what}: {}",
                peer.store_id, error.message
            )
        }
    };
    match &error.kind {
        Some(Kind::NotLeader(not_leader)) => match not_leader.leader.filter(|l| l.id != 0) {
            Some(leader) if leader.id != peer.id => {
                cache.update_leader(region_id, leader);
                Retry::immediate(
                    RetryReason::NotLeader,
                    detail(&format!(
                        "leader is peer {} on store {}",
                        leader.id, leader.store_id
                    )),
                )
            }
            _ => {
                cache.rotate_leader_after(region_id, peer);
                Retry::backoff(RetryReason::NotLeader, detail("no leader known"))
            }
        },
        Some(Kind::EpochNotMatch(epoch)) => {
            let installed = cache.on_epoch_not_match(asked, &epoch.current_regions, peer.store_id);
            let what = format!(
                "epoch not match; {} current region(s) reported",
                epoch.current_regions.len()
            );
            if installed > 0 {
                Retry::immediate(RetryReason::EpochNotMatch, detail(&what))
            } else {
                Retry::backoff(RetryReason::EpochNotMatch, detail(&what))
            }
        }
        Some(Kind::RegionNotFound(_)) => {
            cache.remove(region_id);
            Retry::backoff(RetryReason::RegionNotFound, detail("region not found"))
        }
        Some(Kind::KeyNotInRegion(_)) => {
            cache.remove(region_id);
            Retry::immediate(RetryReason::KeyNotInRegion, detail("key not in region"))
        }
        Some(Kind::ServerIsBusy(busy)) => Retry {
            reason: RetryReason::ServerIsBusy,
            detail: detail(&format!("server is busy ({})", busy.reason)),
            delay: Delay::AtLeast(Duration::from_millis(busy.backoff_ms)),
        },
        Some(Kind::StaleCommand(_)) => {
            Retry::backoff(RetryReason::StaleCommand, detail("stale command"))
        }
        Some(Kind::StoreNotMatch(_)) => {
            cache.remove(region_id);
            Retry::backoff(RetryReason::StoreNotMatch, detail("store not match"))
        }
        None => {
            cache.remove(region_id);
            Retry::backoff(RetryReason::StoreError, detail("region error"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region_cache::tests::{cached, peer, region};

    fn error(kind: Kind) -> errorpb::Error {
        errorpb::Error {
            message: "from the store".into(),
            kind: Some(kind),
        }
    }

    fn setup() -> (RegionCache, CachedRegion) {
        let cache = RegionCache::new();
        let asked = cached(1, b"a", b"z", 4);
        cache.insert(asked.clone());
        (cache, asked)
    }

    #[test]
    fn not_leader_with_hint_switches_leader_and_retries_at_once() {
        let (cache, asked) = setup();
        let retry = apply_region_error(
            &cache,
            &asked,
            &peer(11, 1),
            error(Kind::NotLeader(errorpb::NotLeader {
                region_id: 1,
                leader: Some(peer(13, 3)),
            })),
        );
        assert_eq!(
            (retry.reason, retry.delay),
            (RetryReason::NotLeader, Delay::Immediate)
        );
        assert_eq!(cache.get(1).and_then(|c| c.leader), Some(peer(13, 3)));
    }

    #[test]
    fn not_leader_without_hint_tries_the_next_peer_after_backoff() {
        let (cache, asked) = setup();
        let retry = apply_region_error(
            &cache,
            &asked,
            &peer(11, 1),
            error(Kind::NotLeader(errorpb::NotLeader {
                region_id: 1,
                leader: None,
            })),
        );
        assert_eq!(retry.delay, Delay::Backoff);
        assert_eq!(cache.get(1).and_then(|c| c.leader), Some(peer(12, 2)));
    }

    #[test]
    fn epoch_not_match_replaces_overlapping_entries() {
        let (cache, asked) = setup();
        cache.insert(cached(7, b"z", b"", 4));
        let retry = apply_region_error(
            &cache,
            &asked,
            &peer(12, 2),
            error(Kind::EpochNotMatch(errorpb::EpochNotMatch {
                current_regions: vec![region(1, b"a", b"m", 5), region(8, b"m", b"z", 5)],
            })),
        );
        assert_eq!(retry.delay, Delay::Immediate);
        assert_eq!(cache.locate(b"b").map(|c| c.id()), Some(1));
        assert_eq!(
            cache.locate(b"n").map(|c| c.leader),
            Some(Some(peer(82, 2)))
        );
        assert_eq!(cache.locate(b"zz").map(|c| c.id()), Some(7));
    }

    #[test]
    fn region_not_found_and_key_not_in_region_drop_the_entry() {
        for kind in [
            Kind::RegionNotFound(errorpb::RegionNotFound { region_id: 1 }),
            Kind::KeyNotInRegion(errorpb::KeyNotInRegion {
                key: b"b".to_vec(),
                region_id: 1,
                start_key: b"a".to_vec(),
                end_key: b"z".to_vec(),
            }),
            Kind::StoreNotMatch(errorpb::StoreNotMatch {
                request_store_id: 1,
                actual_store_id: 4,
            }),
        ] {
            let (cache, asked) = setup();
            apply_region_error(&cache, &asked, &peer(11, 1), error(kind));
            assert_eq!(cache.locate(b"b"), None);
        }
    }

    #[test]
    fn server_is_busy_backs_off_by_its_hint_and_keeps_the_entry() {
        let (cache, asked) = setup();
        let retry = apply_region_error(
            &cache,
            &asked,
            &peer(11, 1),
            error(Kind::ServerIsBusy(errorpb::ServerIsBusy {
                reason: "queue full".into(),
                backoff_ms: 250,
            })),
        );
        assert_eq!(retry.delay, Delay::AtLeast(Duration::from_millis(250)));
        assert!(retry.detail.contains("queue full"), "{}", retry.detail);
        assert!(cache.get(1).is_some());
    }

    #[test]
    fn stale_command_keeps_the_entry_and_backs_off() {
        let (cache, asked) = setup();
        let retry = apply_region_error(
            &cache,
            &asked,
            &peer(11, 1),
            error(Kind::StaleCommand(errorpb::StaleCommand {})),
        );
        assert_eq!(
            (retry.reason, retry.delay),
            (RetryReason::StaleCommand, Delay::Backoff)
        );
        assert!(cache.get(1).is_some());
    }
}
