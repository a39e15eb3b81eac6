//! The client side of a chaos run: register clients that read, write and
//! compare-and-swap a few keys and record every operation in a
//! [`History`], and set writers that insert unique keys and remember which
//! were acknowledged, for the read-back at the end.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_router::{Client, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Call, History, Outcome};

/// Deadline of one client operation; past it the outcome is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Prefix of the register keys.
pub const REGISTER_PREFIX: &str = "chaos/r/";
/// Prefix of the set workload's keys.
pub const SET_PREFIX: &str = "chaos/s/";

/// The key of register `k`.
pub fn register_key(k: u64) -> Vec<u8> {
    format!("{REGISTER_PREFIX}{k:03}").into_bytes()
}

fn encode(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// A value as read back; one that is not a number we wrote becomes
/// `u64::MAX`, which no write ever wrote, so the checker rejects it.
fn decode(v: Option<Vec<u8>>) -> Option<u64> {
    v.map(|b| {
        std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX)
    })
}

/// What a failed write means: an invalid request was refused before it
/// could take effect; anything else (unavailable, timed out) may or may
/// not have been applied.
fn write_failure(e: &Error) -> Outcome {
    match e {
        Error::InvalidArgument(_) | Error::Config(_) => Outcome::Failed,
        Error::Unavailable(_) => Outcome::Unknown,
    }
}

async fn with_deadline<T>(
    f: impl std::future::Future<Output = concord_router::Result<T>>,
) -> concord_router::Result<T> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(Error::Unavailable("client deadline passed".into())))
}

/// Shared state of the register clients.
#[derive(Clone)]
pub struct Registers {
    /// Every operation, for the checker.
    pub history: History,
    keys: u64,
    next_value: Arc<AtomicU64>,
}

impl Registers {
    /// Registers over `keys` keys.
    pub fn new(keys: u64) -> Registers {
        Registers {
            history: History::new(),
            keys: keys.max(1),
            next_value: Arc::new(AtomicU64::new(1)),
        }
    }

    /// One client: random reads (50 %), writes of unique values (30 %) and
    /// compare-and-swaps from the value it last read (20 %) until `stop`.
    /// After an operation with an unknown outcome the client continues as
    /// a new process, as the old one may still be "in" that operation.
    pub async fn client(
        self,
        client: Client,
        mut process: usize,
        stride: usize,
        seed: u64,
        stop: Arc<AtomicBool>,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last_read: Vec<Option<u64>> = vec![None; self.keys as usize];
        while !stop.load(Ordering::Relaxed) {
            let k = rng.gen_range(0..self.keys);
            let key = register_key(k);
            let roll: f64 = rng.gen();
            let outcome = if roll < 0.5 {
                let pending = self.history.invoke(process, k, Call::Read);
                let outcome = match with_deadline(client.get(&key)).await {
                    Ok(v) => {
                        let v = decode(v);
                        last_read[k as usize] = v;
                        Outcome::Read(v)
                    }
                    // A read that failed had no effect.
                    Err(_) => Outcome::Failed,
                };
                pending.complete(outcome.clone());
                outcome
            } else if roll < 0.8 {
                let v = self.next_value.fetch_add(1, Ordering::Relaxed);
                let pending = self.history.invoke(process, k, Call::Write(v));
                let outcome = match with_deadline(client.put(&key, &encode(v))).await {
                    Ok(()) => Outcome::Written,
                    Err(e) => write_failure(&e),
                };
                pending.complete(outcome.clone());
                outcome
            } else {
                let expect = last_read[k as usize];
                let new = self.next_value.fetch_add(1, Ordering::Relaxed);
                let pending = self.history.invoke(process, k, Call::Cas { expect, new });
                let previous = expect.map(encode);
                let outcome = match with_deadline(client.compare_and_swap(
                    &key,
                    previous.as_deref(),
                    &encode(new),
                ))
                .await
                {
                    Ok(o) => {
                        last_read[k as usize] = if o.succeed {
                            Some(new)
                        } else {
                            decode(o.previous)
                        };
                        Outcome::Cas(o.succeed)
                    }
                    Err(e) => write_failure(&e),
                };
                pending.complete(outcome.clone());
                outcome
            };
            if outcome == Outcome::Unknown {
                process += stride;
            }
        }
    }
}

/// Keys the set writers inserted, by what their clients were told.
#[derive(Default)]
pub struct SetLog {
    /// Acknowledged: must be present at the end.
    pub acked: BTreeSet<Vec<u8>>,
    /// Outcome unknown: may be present.
    pub unknown: BTreeSet<Vec<u8>>,
    /// Refused: must be absent.
    pub failed: BTreeSet<Vec<u8>>,
}

/// One set writer: inserts `chaos/s/<writer>/<n>` = the key itself, for
/// n = 0, 1, ..., until `stop`.
pub async fn set_writer(
    client: Client,
    writer: usize,
    log: Arc<Mutex<SetLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{SET_PREFIX}{writer:02}/{n:08}").into_bytes();
        let result = with_deadline(client.put(&key, &key)).await;
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => log.acked.insert(key),
            Err(e) if write_failure(&e) == Outcome::Failed => log.failed.insert(key),
            Err(_) => log.unknown.insert(key),
        };
        n += 1;
    }
}

/// What the set read-back found.
#[derive(Debug, Default)]
pub struct SetVerdict {
    /// Keys read back.
    pub found: usize,
    /// Acknowledged inserts.
    pub acked: usize,
    /// Inserts with an unknown outcome that are present.
    pub unknown_present: usize,
    /// Inserts with an unknown outcome.
    pub unknown: usize,
    /// Problems: lost acknowledged keys, keys never written, wrong values.
    pub problems: Vec<String>,
}

/// Reads every set key back and compares with what the writers were told.
pub async fn check_set(client: &Client, log: &SetLog) -> Result<SetVerdict, String> {
    let start = SET_PREFIX.as_bytes().to_vec();
    let mut end = start.clone();
    *end.last_mut().ok_or("empty prefix")? += 1;
    // The cluster was just healed: give it a minute to serve again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let pairs = loop {
        let last =
            match tokio::time::timeout_at(deadline, client.scan(&start, &end, 0, false)).await {
                Ok(Ok(pairs)) => break pairs,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_string(),
            };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("the set read-back failed for 60 s: {last}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut v = SetVerdict {
        found: pairs.len(),
        acked: log.acked.len(),
        unknown: log.unknown.len(),
        ..SetVerdict::default()
    };
    let found: BTreeSet<&Vec<u8>> = pairs.iter().map(|p| &p.key).collect();
    for p in &pairs {
        let name = String::from_utf8_lossy(&p.key);
        if p.value != p.key {
            v.problems
                .push(format!("{name} holds a value that was never written"));
        }
        if log.unknown.contains(&p.key) {
            v.unknown_present += 1;
        } else if !log.acked.contains(&p.key) {
            v.problems.push(format!(
                "{name} is present but was {}",
                if log.failed.contains(&p.key) {
                    "refused"
                } else {
                    "never written"
                }
            ));
        }
    }
    for k in &log.acked {
        if !found.contains(k) {
            v.problems.push(format!(
                "acknowledged {} is lost",
                String::from_utf8_lossy(k)
            ));
        }
    }
    Ok(v)
}
