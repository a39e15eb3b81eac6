//! The fault schedule: a seeded loop that alternates calm and faults on a
//! [`Cluster`], writes down what it did and when, and heals everything
//! before it returns.

use std::time::{Duration, Instant};

use concord_pd::http_api::hex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::chaos::workload::{register_key, REGISTER_PREFIX};
use crate::cluster::{Cluster, Node};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a store, restart it a few seconds later.
    KillStore,
    /// SIGKILL a PD member, restart it a few seconds later.
    KillPd,
    /// SIGSTOP a store for longer than an election timeout, then SIGCONT.
    PauseStore,
    /// Move a random region's leadership to another voter (pd-ctl).
    TransferLeader,
    /// Split the region holding a register key at a random register key.
    Split,
    /// `pd-ctl store delete` a store, wait until it is a tombstone, stop
    /// it, and add a fresh store in its place.
    RemoveStore,
    /// Cut every link of the store holding the leader of the first
    /// register key's region, heal a few seconds later.
    IsolateLeader,
    /// Cut off a minority: one store and one PD member, each alone.
    IsolateMinority,
}

/// The seeded fault loop.
pub struct Nemesis<'a> {
    cluster: &'a mut dyn Cluster,
    rng: StdRng,
    keys: u64,
    started: Instant,
    /// What was done, one line per action, with the time since the start.
    pub schedule: Vec<String>,
    /// Faults injected.
    pub faults: usize,
}

/// Healing a fault.
enum Heal {
    Restart(Node),
    Resume(Node),
    Reconnect(Vec<Node>),
}

impl<'a> Nemesis<'a> {
    /// A nemesis on `cluster` with `seed`; splits fall among `keys`
    /// register keys.
    pub fn new(cluster: &'a mut dyn Cluster, seed: u64, keys: u64) -> Nemesis<'a> {
        Nemesis {
            cluster,
            rng: StdRng::seed_from_u64(seed),
            keys: keys.max(2),
            started: Instant::now(),
            schedule: Vec::new(),
            faults: 0,
        }
    }

    fn note(&mut self, line: String) {
        let line = format!("[{:6.1}s] {line}", self.started.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.schedule.push(line);
    }

    fn pause_for(&mut self, lo_ms: u64, hi_ms: u64, until: Instant) {
        let d = Duration::from_millis(self.rng.gen_range(lo_ms..=hi_ms));
        let left = until.saturating_duration_since(Instant::now());
        std::thread::sleep(d.min(left));
    }

    /// Injects faults from `kinds` until `until`, with calm between them,
    /// then heals whatever is still broken.
    pub fn run(&mut self, kinds: &[Fault], until: Instant) {
        // Load runs undisturbed for a moment first.
        self.pause_for(1000, 2000, until);
        while Instant::now() < until {
            let Some(&kind) = kinds.choose(&mut self.rng) else {
                return;
            };
            match self.inject(kind) {
                Ok((what, heal)) => {
                    self.faults += 1;
                    self.note(what);
                    if let Some(heal) = heal {
                        self.pause_for(2000, 5000, until);
                        self.heal(heal);
                    }
                }
                Err(e) => self.note(format!("{kind:?} not injected: {e}")),
            }
            self.pause_for(1000, 3000, until);
        }
    }

    fn heal(&mut self, heal: Heal) {
        let result = match &heal {
            Heal::Restart(n) => self.cluster.restart(*n).map(|()| format!("restart {n}")),
            Heal::Resume(n) => self.cluster.resume(*n).map(|()| format!("resume {n}")),
            Heal::Reconnect(nodes) => nodes
                .iter()
                .try_for_each(|n| self.cluster.heal(*n))
                .map(|()| format!("heal {}", names(nodes))),
        };
        match result {
            Ok(line) => self.note(line),
            Err(e) => self.note(format!("HEAL FAILED: {e}")),
        }
    }

    fn random_store(&mut self) -> Result<Node, String> {
        let live: Vec<usize> = self.live_stores()?;
        live.choose(&mut self.rng)
            .map(|&i| Node::Store(i))
            .ok_or_else(|| "no store is up".into())
    }

    /// Indexes of the stores PD lists as Up.
    fn live_stores(&self) -> Result<Vec<usize>, String> {
        let stores = self.cluster.pd_ctl(&["store"])?;
        Ok(list(&stores, "stores")
            .iter()
            .filter(|s| s["state"].as_str().is_none_or(|st| st == "Up"))
            .filter_map(|s| self.cluster.store_of_addr(s["address"].as_str()?))
            .collect())
    }

    fn inject(&mut self, kind: Fault) -> Result<(String, Option<Heal>), String> {
        match kind {
            Fault::KillStore => {
                let n = self.random_store()?;
                self.cluster.kill(n)?;
                Ok((format!("kill -9 {n}"), Some(Heal::Restart(n))))
            }
            Fault::KillPd => {
                let n = Node::Pd(self.rng.gen_range(0..self.cluster.pd_count()));
                self.cluster.kill(n)?;
                Ok((format!("kill -9 {n}"), Some(Heal::Restart(n))))
            }
            Fault::PauseStore => {
                let n = self.random_store()?;
                self.cluster.pause(n)?;
                Ok((format!("pause (SIGSTOP) {n}"), Some(Heal::Resume(n))))
            }
            Fault::TransferLeader => {
                let regions = self.cluster.pd_ctl(&["region"])?;
                let region = list(&regions, "regions")
                    .choose(&mut self.rng)
                    .cloned()
                    .ok_or("no regions")?;
                let leader = region["leader"]["store_id"].as_u64();
                let targets: Vec<u64> = list(&region, "peers")
                    .iter()
                    .filter(is_voter)
                    .filter_map(|p| p["store_id"].as_u64())
                    .filter(|s| Some(*s) != leader)
                    .collect();
                let to = *targets.choose(&mut self.rng).ok_or("no other voter")?;
                let id = region["id"]
                    .as_u64()
                    .ok_or("region without id")?
                    .to_string();
                self.cluster.pd_ctl(&[
                    "operator",
                    "add",
                    "transfer-leader",
                    &id,
                    &to.to_string(),
                ])?;
                Ok((
                    format!("transfer leader of region {id} to store {to}"),
                    None,
                ))
            }
            Fault::Split => {
                let at = register_key(self.rng.gen_range(1..self.keys));
                let region = self
                    .cluster
                    .pd_ctl(&["region", "key", "--hex", &hex(&at)])?;
                let id = region["id"]
                    .as_u64()
                    .ok_or("no region for the key")?
                    .to_string();
                self.cluster
                    .pd_ctl(&["operator", "add", "split-region", &id, &hex(&at)])?;
                Ok((
                    format!("split region {id} at {}", String::from_utf8_lossy(&at)),
                    None,
                ))
            }
            Fault::RemoveStore => self.remove_store(),
            Fault::IsolateLeader => {
                let key = register_key(0);
                let region = self
                    .cluster
                    .pd_ctl(&["region", "key", "--hex", &hex(&key)])?;
                let store = region["leader"]["store_id"]
                    .as_u64()
                    .ok_or("region has no leader")?;
                let n = self.store_node(store)?;
                self.cluster.isolate(n)?;
                Ok((
                    format!("isolate {n} (leader of {REGISTER_PREFIX}000's region)"),
                    Some(Heal::Reconnect(vec![n])),
                ))
            }
            Fault::IsolateMinority => {
                let s = self.random_store()?;
                let p = Node::Pd(self.rng.gen_range(0..self.cluster.pd_count()));
                self.cluster.isolate(s)?;
                if let Err(e) = self.cluster.isolate(p) {
                    let _ = self.cluster.heal(s);
                    return Err(e);
                }
                Ok((
                    format!("isolate the minority {s} + {p}"),
                    Some(Heal::Reconnect(vec![s, p])),
                ))
            }
        }
    }

    fn store_node(&self, store_id: u64) -> Result<Node, String> {
        let store = self.cluster.pd_ctl(&["store", &store_id.to_string()])?;
        let addr = store["address"].as_str().ok_or("store without address")?;
        self.cluster
            .store_of_addr(addr)
            .map(Node::Store)
            .ok_or_else(|| format!("store {store_id} ({addr}) is not ours"))
    }

    /// Scale-in and back out: deletes a store through PD, waits until its
    /// replicas moved away (Tombstone), stops it, and starts a new one.
    fn remove_store(&mut self) -> Result<(String, Option<Heal>), String> {
        let stores = self.cluster.pd_ctl(&["store"])?;
        let up: Vec<Value> = list(&stores, "stores")
            .into_iter()
            .filter(|s| s["state"] == "Up")
            .collect();
        if up.len() < 4 {
            return Err(format!("{} Up stores; removing one needs 4", up.len()));
        }
        let victim = up.choose(&mut self.rng).cloned().ok_or("no store")?;
        let id = victim["id"].as_u64().ok_or("store without id")?;
        let index = victim["address"]
            .as_str()
            .and_then(|a| self.cluster.store_of_addr(a))
            .ok_or("store is not ours")?;
        self.cluster.pd_ctl(&["store", "delete", &id.to_string()])?;
        self.note(format!("pd-ctl store delete {id} (store{})", index + 1));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.cluster.pd_ctl(&["store", &id.to_string()])?;
            if s["state"] == "Tombstone" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("store {id} is still {} after 120 s", s["state"]));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.note(format!("store {id} is Tombstone"));
        self.cluster.drop_store(index)?;
        let n = self.cluster.add_store()?;
        Ok((
            format!("stopped store{}, added store{}", index + 1, n + 1),
            None,
        ))
    }
}

fn names(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(Node::to_string)
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Whether a peer of a pd-ctl region is a voter.
pub fn is_voter(peer: &&Value) -> bool {
    peer["role"] == "VOTER"
}

/// The array under `field` of a pd-ctl answer.
pub fn list(v: &Value, field: &str) -> Vec<Value> {
    v[field].as_array().cloned().unwrap_or_default()
}
