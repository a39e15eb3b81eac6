//! Checks every request goes through (epoch, key range) and the region
//! arithmetic of splits.

use concord_proto::errorpb::{self, error::Kind};
use concord_proto::metapb;
use concord_proto::raft_cmdpb::{request, BatchSplitRequest, Request};

use super::msg::{CmdError, KeyRange};
use crate::engine::DATA_CFS;

/// `EpochNotMatch` carrying `current` as the regions to use instead.
pub fn epoch_not_match(region_id: u64, current: Vec<metapb::Region>) -> CmdError {
    CmdError::region(
        format!("region {region_id} has a newer epoch than the request"),
        Kind::EpochNotMatch(errorpb::EpochNotMatch {
            current_regions: current,
        }),
    )
}

/// Checks a request's epoch against the region's. Data requests only need
/// the version (the key range) to match; admin requests also the conf_ver.
pub fn check_epoch(
    region: &metapb::Region,
    epoch: Option<&metapb::RegionEpoch>,
    check_conf_ver: bool,
) -> Result<(), CmdError> {
    let current = region.region_epoch.unwrap_or_default();
    let Some(epoch) = epoch else {
        return Err(CmdError::InvalidArgument(
            "request carries no region epoch".into(),
        ));
    };
    let stale =
        epoch.version != current.version || (check_conf_ver && epoch.conf_ver != current.conf_ver);
    if stale {
        return Err(epoch_not_match(region.id, vec![region.clone()]));
    }
    Ok(())
}

/// Whether `key` is inside the region.
pub fn key_in_region(key: &[u8], region: &metapb::Region) -> bool {
    key >= region.start_key.as_slice()
        && (region.end_key.is_empty() || key < region.end_key.as_slice())
}

fn key_not_in_region(key: &[u8], region: &metapb::Region) -> CmdError {
    CmdError::region(
        format!("key {key:?} is not in region {}", region.id),
        Kind::KeyNotInRegion(errorpb::KeyNotInRegion {
            key: key.to_vec(),
            region_id: region.id,
            start_key: region.start_key.clone(),
            end_key: region.end_key.clone(),
        }),
    )
}

/// Checks that every key or range lies inside the region.
pub fn check_ranges(region: &metapb::Region, ranges: &[KeyRange]) -> Result<(), CmdError> {
    for r in ranges {
        if !key_in_region(&r.start, region) {
            return Err(key_not_in_region(&r.start, region));
        }
        if r.is_range {
            let end_ok = if region.end_key.is_empty() {
                true
            } else {
                !r.end.is_empty() && r.end.as_slice() <= region.end_key.as_slice()
            };
            if !end_ok {
                return Err(key_not_in_region(&r.end, region));
            }
        }
    }
    Ok(())
}

/// The keys a write request touches.
pub fn request_ranges(req: &Request) -> Vec<KeyRange> {
    match &req.cmd {
        Some(request::Cmd::Put(p)) => vec![KeyRange::point(&p.key)],
        Some(request::Cmd::Delete(d)) => vec![KeyRange::point(&d.key)],
        Some(request::Cmd::Cas(c)) => vec![KeyRange::point(&c.key)],
        Some(request::Cmd::DeleteRange(d)) => vec![KeyRange::range(&d.start_key, &d.end_key)],
        None => Vec::new(),
    }
}

/// Checks that a write request names a data column family: apply would
/// refuse it otherwise, after its entry committed.
pub fn check_request_cf(req: &Request) -> Result<(), CmdError> {
    let cf = match &req.cmd {
        Some(request::Cmd::Put(p)) => &p.cf,
        Some(request::Cmd::Delete(d)) => &d.cf,
        Some(request::Cmd::Cas(c)) => &c.cf,
        Some(request::Cmd::DeleteRange(d)) => &d.cf,
        None => return Err(CmdError::InvalidArgument("empty request".into())),
    };
    if DATA_CFS.contains(&cf.as_str()) {
        Ok(())
    } else {
        Err(CmdError::InvalidArgument(format!(
            "unknown column family {cf:?}"
        )))
    }
}

/// Checks that a write request stays inside the region.
pub fn check_request_keys(region: &metapb::Region, req: &Request) -> Result<(), CmdError> {
    check_ranges(region, &request_ranges(req))
}

/// The regions a batch split of `parent` produces, in key order: new regions
/// take the ranges before each split key and the parent keeps the last one.
pub fn split_regions(
    parent: &metapb::Region,
    req: &BatchSplitRequest,
) -> Result<Vec<metapb::Region>, CmdError> {
    if req.requests.is_empty() {
        return Err(CmdError::InvalidArgument("split without split keys".into()));
    }
    let mut prev: &[u8] = &parent.start_key;
    for r in &req.requests {
        let key = r.split_key.as_slice();
        if key <= prev || !key_in_region(key, parent) {
            return Err(CmdError::InvalidArgument(format!(
                "split key {key:?} is not strictly inside region {} after {prev:?}",
                parent.id
            )));
        }
        if r.new_peer_ids.len() != parent.peers.len() {
            return Err(CmdError::InvalidArgument(format!(
                "split of region {} needs {} peer ids, got {}",
                parent.id,
                parent.peers.len(),
                r.new_peer_ids.len()
            )));
        }
        prev = key;
    }
    let mut epoch = parent.region_epoch.unwrap_or_default();
    epoch.version += req.requests.len() as u64;
    let mut regions = Vec::with_capacity(req.requests.len() + 1);
    let mut start = parent.start_key.clone();
    for r in &req.requests {
        let peers = parent
            .peers
            .iter()
            .zip(&r.new_peer_ids)
            .map(|(p, id)| metapb::Peer { id: *id, ..*p })
            .collect();
        regions.push(metapb::Region {
            id: r.new_region_id,
            start_key: start,
            end_key: r.split_key.clone(),
            region_epoch: Some(epoch),
            peers,
        });
        start = r.split_key.clone();
    }
    regions.push(metapb::Region {
        start_key: start,
        region_epoch: Some(epoch),
        ..parent.clone()
    });
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::raft_cmdpb::SplitRequest;

    fn region(start: &[u8], end: &[u8]) -> metapb::Region {
        metapb::Region {
            id: 1,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver: 3,
                version: 4,
            }),
            peers: vec![
                metapb::Peer {
                    id: 10,
                    store_id: 1,
                    role: 0,
                },
                metapb::Peer {
                    id: 11,
                    store_id: 2,
                    role: 0,
                },
            ],
        }
    }

    #[test]
    fn a_write_must_name_a_data_column_family() {
        let put = |cf: &str| Request {
            cmd: Some(request::Cmd::Put(concord_proto::raft_cmdpb::PutRequest {
                cf: cf.into(),
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            })),
        };
        for cf in DATA_CFS {
            assert!(check_request_cf(&put(cf)).is_ok(), "{cf}");
        }
        for bad in [put("raft"), put("nope"), Request { cmd: None }] {
            assert!(matches!(
                check_request_cf(&bad),
                Err(CmdError::InvalidArgument(_))
            ));
        }
    }

    fn split(key: &[u8], id: u64) -> SplitRequest {
        SplitRequest {
            split_key: key.to_vec(),
            new_region_id: id,
            new_peer_ids: vec![id * 10, id * 10 + 1],
        }
    }

    #[test]
    fn batch_split_produces_adjacent_regions_with_bumped_versions() {
        let parent = region(b"a", b"z");
        let req = BatchSplitRequest {
            requests: vec![split(b"f", 2), split(b"m", 3)],
        };
        let regions = split_regions(&parent, &req).unwrap();
        let ranges: Vec<_> = regions
            .iter()
            .map(|r| (r.id, r.start_key.clone(), r.end_key.clone()))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (2, b"a".to_vec(), b"f".to_vec()),
                (3, b"f".to_vec(), b"m".to_vec()),
                (1, b"m".to_vec(), b"z".to_vec())
            ]
        );
        for r in &regions {
            assert_eq!(r.region_epoch.as_ref().unwrap().version, 6);
            assert_eq!(r.region_epoch.as_ref().unwrap().conf_ver, 3);
        }
        assert_eq!(
            regions[0].peers[1],
            metapb::Peer {
                id: 21,
                store_id: 2,
                role: 0
            }
        );
    }

    #[test]
    fn bad_split_keys_are_refused() {
        let parent = region(b"b", b"y");
        for keys in [
            vec![b"a".to_vec()],
            vec![b"b".to_vec()],
            vec![b"z".to_vec()],
            vec![b"m".to_vec(), b"c".to_vec()],
        ] {
            let req = BatchSplitRequest {
                requests: keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| split(k, i as u64 + 2))
                    .collect(),
            };
            assert!(split_regions(&parent, &req).is_err(), "{keys:?}");
        }
        let mut req = BatchSplitRequest {
            requests: vec![split(b"m", 2)],
        };
        req.requests[0].new_peer_ids.pop();
        assert!(split_regions(&parent, &req).is_err());
    }

    #[test]
    fn epochs_and_ranges_are_checked() {
        let r = region(b"b", b"y");
        let mut epoch = r.region_epoch.unwrap();
        assert!(check_epoch(&r, Some(&epoch), true).is_ok());
        epoch.conf_ver += 1;
        assert!(check_epoch(&r, Some(&epoch), false).is_ok());
        assert!(check_epoch(&r, Some(&epoch), true).is_err());
        epoch.version -= 1;
        assert!(matches!(
            check_epoch(&r, Some(&epoch), false),
            Err(CmdError::Region(_))
        ));
        assert!(check_ranges(&r, &[KeyRange::point(b"b")]).is_ok());
        assert!(check_ranges(&r, &[KeyRange::point(b"y")]).is_err());
        assert!(check_ranges(&r, &[KeyRange::range(b"c", b"y")]).is_ok());
        assert!(check_ranges(&r, &[KeyRange::range(b"c", b"")]).is_err());
        assert!(check_ranges(&region(b"", b""), &[KeyRange::range(b"", b"")]).is_ok());
    }
}
