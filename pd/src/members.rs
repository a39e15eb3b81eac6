//! The PD members of a replicated PD: who they are (from
//! `--initial-cluster`), their raft ids, and where each serves, as learnt
//! from member-to-member traffic.

use std::collections::HashMap;

use concord_proto::pd_raftpb::MemberInfo;
use concord_proto::pdpb;
use parking_lot::RwLock;

use crate::config::PdConfig;
use crate::error::{PdServerError, Result};

/// A member named in the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// Raft id: the 1-based position of the name in the sorted member list,
    /// so every member derives the same ids from the same list.
    pub id: u64,
    /// Member name.
    pub name: String,
    /// Member-to-member gRPC URL.
    pub peer_url: String,
}

fn url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Parses `name1=addr1,name2=addr2,...` into member specs with ids.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<MemberSpec>> {
    let mut pairs = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, addr) = item.split_once('=').ok_or_else(|| {
            PdServerError::Config(format!(
                "initial-cluster entry {item:?} is not NAME=PEER-ADDR"
            ))
        })?;
        let (name, addr) = (name.trim(), addr.trim());
        if name.is_empty() || addr.is_empty() {
            return Err(PdServerError::Config(format!(
                "initial-cluster entry {item:?} has an empty name or address"
            )));
        }
        if pairs.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(PdServerError::Config(format!(
                "initial-cluster names {name:?} twice"
            )));
        }
        pairs.push((name.to_string(), url(addr)));
    }
    pairs.sort();
    Ok(pairs
        .into_iter()
        .enumerate()
        .map(|(i, (name, peer_url))| MemberSpec {
            id: i as u64 + 1,
            name,
            peer_url,
        })
        .collect())
}

/// The member list and what is known about each member.
pub struct Membership {
    me: MemberInfo,
    specs: Vec<MemberSpec>,
    known: RwLock<HashMap<u64, MemberInfo>>,
}

impl Membership {
    /// The members of `config.initial_cluster` (this member alone when it
    /// is empty); this member serves on the given bound addresses.
    pub fn new(
        config: &PdConfig,
        client_addr: &str,
        http_addr: &str,
        peer_addr: &str,
    ) -> Result<Self> {
        let specs = if config.initial_cluster.trim().is_empty() {
            vec![MemberSpec {
                id: 1,
                name: config.name.clone(),
                peer_url: url(peer_addr),
            }]
        } else {
            parse_initial_cluster(&config.initial_cluster)?
        };
        let spec = specs
            .iter()
            .find(|s| s.name == config.name)
            .ok_or_else(|| {
                PdServerError::Config(format!(
                    "name {:?} is not listed in initial-cluster",
                    config.name
                ))
            })?;
        let me = MemberInfo {
            id: spec.id,
            name: spec.name.clone(),
            client_url: url(client_addr),
            http_url: url(http_addr),
            peer_url: spec.peer_url.clone(),
        };
        Ok(Membership {
            me,
            specs,
            known: RwLock::new(HashMap::new()),
        })
    }

    /// This member.
    pub fn me(&self) -> &MemberInfo {
        &self.me
    }

    /// Raft ids of every member.
    pub fn voters(&self) -> Vec<u64> {
        self.specs.iter().map(|s| s.id).collect()
    }

    /// The other members' raft ids and peer URLs.
    pub fn peers(&self) -> Vec<(u64, String)> {
        self.specs
            .iter()
            .filter(|s| s.id != self.me.id)
            .map(|s| (s.id, s.peer_url.clone()))
            .collect()
    }

    /// Records what a member said about itself (ignored for unknown ids).
    pub fn record(&self, info: MemberInfo) {
        if info.id != self.me.id && self.specs.iter().any(|s| s.id == info.id) {
            self.known.write().insert(info.id, info);
        }
    }

    /// What is known about member `id`: its name and peer URL at least,
    /// its client and HTTP URLs once it was heard from.
    pub fn info(&self, id: u64) -> Option<MemberInfo> {
        if id == self.me.id {
            return Some(self.me.clone());
        }
        if let Some(info) = self.known.read().get(&id) {
            return Some(info.clone());
        }
        self.specs.iter().find(|s| s.id == id).map(|s| MemberInfo {
            id: s.id,
            name: s.name.clone(),
            peer_url: s.peer_url.clone(),
            ..Default::default()
        })
    }

    /// Every member as the PD protocol describes it.
    pub fn pd_members(&self) -> Vec<pdpb::Member> {
        self.specs
            .iter()
            .filter_map(|s| self.info(s.id))
            .map(|info| to_pd_member(&info))
            .collect()
    }
}

/// A member as the PD protocol describes it (no client URL while unknown).
pub fn to_pd_member(info: &MemberInfo) -> pdpb::Member {
    pdpb::Member {
        member_id: info.id,
        name: info.name.clone(),
        client_urls: if info.client_url.is_empty() {
            vec![]
        } else {
            vec![info.client_url.clone()]
        },
        peer_urls: vec![info.peer_url.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_sorted_names_and_bad_lists_are_rejected() {
        let specs = parse_initial_cluster("c=h3:1, a=h1:1,b=http://h2:1").unwrap();
        let got: Vec<_> = specs.iter().map(|s| (s.id, s.name.as_str())).collect();
        assert_eq!(got, vec![(1, "a"), (2, "b"), (3, "c")]);
        assert_eq!(specs[1].peer_url, "http://h2:1");
        assert!(parse_initial_cluster("a=h:1,a=h:2").is_err());
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("=h:1").is_err());
    }

    #[test]
    fn this_member_must_be_listed() {
        let config = PdConfig {
            name: "x".into(),
            initial_cluster: "a=h:1,b=h:2".into(),
            ..PdConfig::default()
        };
        assert!(Membership::new(&config, "c:1", "c:2", "c:3").is_err());
        let config = PdConfig {
            name: "b".into(),
            ..config
        };
        let members = Membership::new(&config, "c:1", "c:2", "h:2").unwrap();
        assert_eq!(members.me().id, 2);
        assert_eq!(members.peers(), vec![(1, "http://h:1".to_string())]);
        assert!(members.info(1).unwrap().client_url.is_empty());
    }
}
