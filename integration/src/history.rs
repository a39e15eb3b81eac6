//! Recording what clients did, for the linearizability checker.
//!
//! A workload (read, write and compare-and-swap on a few integer keys) runs
//! many client tasks at once. Each task calls [`History::invoke`] just before
//! it sends a request and [`Pending::complete`] as soon as it knows how the
//! request ended. The history stamps both moments with a monotonic clock, so
//! that the checker in [`crate::linearizability`] can tell which operations
//! overlapped in real time and which came strictly one after the other.
//!
//! Stamping is conservative: the invoke stamp is taken before the request
//! leaves and the completion stamp after the answer arrived, so every recorded
//! interval contains the real one. Wider intervals can only make the checker
//! more permissive, never report a violation that did not happen.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What a client asked for on one key. Values are `u64`; a key that was
/// never written reads as `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// Read the current value.
    Read,
    /// Overwrite the value unconditionally.
    Write(u64),
    /// Set the value to `new` if it currently is `expect` (`None`: the key
    /// has never been written).
    Cas {
        /// The value the key must hold for the swap to happen.
        expect: Option<u64>,
        /// The value stored if it does.
        new: u64,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The read returned this value.
    Read(Option<u64>),
    /// The write was acknowledged.
    Written,
    /// The compare-and-swap was acknowledged: swapped (`true`) or not.
    Cas(bool),
    /// The operation definitely did not take effect.
    Failed,
    /// Timed out or otherwise ambiguous: it may or may not have taken effect,
    /// at any moment after it was invoked (there is no upper bound).
    Unknown,
}

impl Outcome {
    /// Whether the operation ended with an acknowledgement (a read value,
    /// a write or CAS acknowledgement).
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Read(_) | Outcome::Written | Outcome::Cas(_))
    }
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Position in the history (order of invocation).
    pub id: usize,
    /// The client (logical process) that issued it. A process issues one
    /// operation at a time.
    pub process: usize,
    /// The key it was issued on.
    pub key: u64,
    /// What was asked.
    pub call: Call,
    /// How it ended.
    pub outcome: Outcome,
    /// When it was invoked, in nanoseconds since the history was created.
    pub invoke_ns: u64,
    /// When it completed, in nanoseconds since the history was created;
    /// `None` for an operation whose outcome is unknown: it stays open forever.
    pub complete_ns: Option<u64>,
}

/// Formats nanoseconds as milliseconds with three decimals (`1.203ms`).
fn fmt_ms(f: &mut fmt::Formatter<'_>, ns: u64) -> fmt::Result {
    write!(f, "{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

/// Formats an optional register value: the number, or `nil` for never written.
fn fmt_value(f: &mut fmt::Formatter<'_>, v: Option<u64>) -> fmt::Result {
    match v {
        Some(v) => write!(f, "{v}"),
        None => f.write_str("nil"),
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Call::Read => f.write_str("read"),
            Call::Write(v) => write!(f, "write({v})"),
            Call::Cas { expect, new } => {
                f.write_str("cas(")?;
                fmt_value(f, expect)?;
                write!(f, "->{new})")
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Read(v) => {
                f.write_str("ok(")?;
                fmt_value(f, v)?;
                f.write_str(")")
            }
            Outcome::Written => f.write_str("ok"),
            Outcome::Cas(swapped) => write!(f, "ok({swapped})"),
            Outcome::Failed => f.write_str("failed"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

/// `#12 p3 key 5: cas(7->9) = ok(true) [1.203ms..1.950ms]`; an open
/// operation ends in `..?]`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} p{} key {}: {} = {} [",
            self.id, self.process, self.key, self.call, self.outcome
        )?;
        fmt_ms(f, self.invoke_ns)?;
        f.write_str("..")?;
        match self.complete_ns {
            Some(ns) => fmt_ms(f, ns)?,
            None => f.write_str("?")?,
        }
        f.write_str("]")
    }
}

/// Shared state behind a [`History`].
#[derive(Debug)]
struct Inner {
    /// Time zero of the stamps.
    start: Instant,
    /// Every invoked operation, indexed by id. Operations still in flight
    /// are stored as `Unknown` with no completion time until completed.
    ops: Mutex<Vec<Op>>,
}

/// A thread-safe recorder of operations. Cheap to clone: clones share one
/// history. Stamps are nanoseconds since the history was created, from a
/// monotonic clock.
#[derive(Debug, Clone)]
pub struct History {
    /// The shared record.
    inner: Arc<Inner>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history; its clock starts now.
    pub fn new() -> History {
        History {
            inner: Arc::new(Inner {
                start: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Nanoseconds since the history was created.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The operation list. A panic in another recording thread cannot leave
    /// it inconsistent (every update is a single assignment), so a poisoned
    /// lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Vec<Op>> {
        self.inner
            .ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `process` is about to issue `call` on `key`, stamping the
    /// invocation time. Call it before the request is sent, and complete the
    /// returned [`Pending`] once the outcome is known.
    pub fn invoke(&self, process: usize, key: u64, call: Call) -> Pending {
        let mut ops = self.lock();
        let id = ops.len();
        ops.push(Op {
            id,
            process,
            key,
            call,
            outcome: Outcome::Unknown,
            invoke_ns: self.now_ns(),
            complete_ns: None,
        });
        Pending {
            history: self.clone(),
            id,
        }
    }

    /// A snapshot of all operations in invocation order. Operations that
    /// were never completed (still in flight, or their [`Pending`] was
    /// dropped) appear with outcome [`Outcome::Unknown`] and no completion
    /// time.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    /// How many operations have been invoked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no operation has been invoked yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tallies of outcomes by kind of call, for reports.
    pub fn counts(&self) -> Counts {
        Counts::of(&self.lock())
    }
}

/// An invoked operation awaiting its outcome. Dropping it without calling
/// [`Pending::complete`] leaves the operation recorded as
/// [`Outcome::Unknown`].
#[derive(Debug)]
#[must_use = "complete the operation with its outcome, or it stays unknown"]
pub struct Pending {
    /// The history the operation belongs to.
    history: History,
    /// The operation's id (its index in the history).
    id: usize,
}

impl Pending {
    /// The id the operation has in the history.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Records how the operation ended and stamps the completion time.
    /// [`Outcome::Unknown`] leaves the operation open (no completion time):
    /// it may take effect at any moment after its invocation.
    pub fn complete(self, outcome: Outcome) {
        let now = self.history.now_ns();
        let mut ops = self.history.lock();
        if let Some(op) = ops.get_mut(self.id) {
            op.complete_ns = match outcome {
                Outcome::Unknown => None,
                _ => Some(now),
            };
            op.outcome = outcome;
        }
    }
}

/// Outcome tallies for one kind of call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// Acknowledged (read value returned, write or CAS acknowledged).
    pub ok: usize,
    /// Definitely failed.
    pub failed: usize,
    /// Unknown outcome, including operations still in flight.
    pub unknown: usize,
}

impl KindCounts {
    /// All operations of this kind.
    pub fn total(&self) -> usize {
        self.ok + self.failed + self.unknown
    }

    /// Adds one operation with this outcome.
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Failed => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
            _ => self.ok += 1,
        }
    }
}

impl fmt::Display for KindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} failed, {} unknown",
            self.ok, self.failed, self.unknown
        )
    }
}

/// Outcome tallies of a history by kind of call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Reads.
    pub read: KindCounts,
    /// Writes.
    pub write: KindCounts,
    /// Compare-and-swaps.
    pub cas: KindCounts,
    /// Acknowledged compare-and-swaps that swapped (a subset of `cas.ok`).
    pub cas_swapped: usize,
}

impl Counts {
    /// Tallies a list of operations.
    pub fn of(ops: &[Op]) -> Counts {
        let mut counts = Counts::default();
        for op in ops {
            match op.call {
                Call::Read => counts.read.add(&op.outcome),
                Call::Write(_) => counts.write.add(&op.outcome),
                Call::Cas { .. } => {
                    counts.cas.add(&op.outcome);
                    if op.outcome == Outcome::Cas(true) {
                        counts.cas_swapped += 1;
                    }
                }
            }
        }
        counts
    }

    /// All operations.
    pub fn total(&self) -> usize {
        self.read.total() + self.write.total() + self.cas.total()
    }
}

/// `read: 10 ok, 0 failed, 1 unknown; write: ...; cas: ... (4 swapped)`
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read: {}; write: {}; cas: {} ({} swapped)",
            self.read, self.write, self.cas, self.cas_swapped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_invocations_and_completions() {
        let history = History::new();
        let a = history.invoke(0, 1, Call::Write(5));
        let b = history.invoke(1, 1, Call::Read);
        let c = history.invoke(
            2,
            2,
            Call::Cas {
                expect: None,
                new: 3,
            },
        );
        let d = history.invoke(3, 2, Call::Write(4));
        assert_eq!(history.len(), 4);
        a.complete(Outcome::Written);
        b.complete(Outcome::Read(Some(5)));
        c.complete(Outcome::Unknown);
        drop(d);

        let ops = history.ops();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops.iter().map(|op| op.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(ops[0].outcome, Outcome::Written);
        assert!(ops[0].complete_ns.is_some_and(|c| c >= ops[0].invoke_ns));
        assert_eq!(ops[1].outcome, Outcome::Read(Some(5)));
        assert_eq!(ops[2].outcome, Outcome::Unknown);
        assert_eq!(ops[2].complete_ns, None);
        assert_eq!(ops[3].outcome, Outcome::Unknown);
        assert_eq!(ops[3].complete_ns, None);
        assert!(ops.windows(2).all(|w| w[0].invoke_ns <= w[1].invoke_ns));

        let counts = history.counts();
        assert_eq!(counts.read.ok, 1);
        assert_eq!(counts.write.ok, 1);
        assert_eq!(counts.write.unknown, 1);
        assert_eq!(counts.cas.unknown, 1);
        assert_eq!(counts.total(), 4);
        assert_eq!(
            counts.to_string(),
            "read: 1 ok, 0 failed, 0 unknown; write: 1 ok, 0 failed, 1 unknown; \
             cas: 0 ok, 0 failed, 1 unknown (0 swapped)"
        );
    }

    #[test]
    fn records_from_many_threads() {
        let history = History::new();
        std::thread::scope(|s| {
            for p in 0..4 {
                let history = history.clone();
                s.spawn(move || {
                    for i in 0..100 {
                        let pending = history.invoke(p, i % 3, Call::Write(i));
                        pending.complete(if i % 10 == 0 {
                            Outcome::Failed
                        } else {
                            Outcome::Written
                        });
                    }
                });
            }
        });
        let ops = history.ops();
        assert_eq!(ops.len(), 400);
        assert!(ops.iter().enumerate().all(|(i, op)| op.id == i));
        let counts = history.counts();
        assert_eq!(counts.write.ok, 360);
        assert_eq!(counts.write.failed, 40);
    }

    #[test]
    fn displays_ops_readably() {
        let op = Op {
            id: 12,
            process: 3,
            key: 5,
            call: Call::Cas {
                expect: Some(7),
                new: 9,
            },
            outcome: Outcome::Cas(true),
            invoke_ns: 1_203_000,
            complete_ns: Some(1_950_400),
        };
        assert_eq!(
            op.to_string(),
            "#12 p3 key 5: cas(7->9) = ok(true) [1.203ms..1.950ms]"
        );
        let op = Op {
            id: 1,
            process: 0,
            key: 2,
            call: Call::Read,
            outcome: Outcome::Read(None),
            invoke_ns: 0,
            complete_ns: Some(2_000_000_000),
        };
        assert_eq!(
            op.to_string(),
            "#1 p0 key 2: read = ok(nil) [0.000ms..2000.000ms]"
        );
        let op = Op {
            id: 2,
            process: 1,
            key: 2,
            call: Call::Write(4),
            outcome: Outcome::Unknown,
            invoke_ns: 5_000,
            complete_ns: None,
        };
        assert_eq!(
            op.to_string(),
            "#2 p1 key 2: write(4) = unknown [0.005ms..?]"
        );
    }
}
