//! A linearizability checker for register histories recorded by
//! [`crate::history`].
//!
//! The model is one register per key holding an `Option<u64>` (initially
//! `None`). Keys are independent registers, so a history is linearizable iff
//! each key's sub-history is (P-compositionality, Herlihy & Wing's locality);
//! [`check`] therefore splits the history by key and searches each key alone.
//!
//! # The search
//!
//! Per key we run the Wing & Gong search with Lowe's improvements:
//!
//! * Every completed operation contributes a call event and a return event,
//!   and the events sit in a doubly linked list in real-time order. An
//!   operation may be linearized next iff its call comes before the first
//!   return still in the list: nothing that was still pending has been
//!   forced to happen before it.
//! * Linearizing an operation *lifts* its call and return out of the list
//!   (they stay linked to their neighbours, so *unlifting* on backtrack puts
//!   them back in O(1)).
//! * An explicit stack of (operation, previous register value) replaces
//!   recursion, so deep histories cannot overflow the thread's stack.
//! * A cache of visited configurations (set of linearized operations as a
//!   bitset, register value) prunes every configuration that was seen
//!   before: from the same configuration the search would make the same
//!   moves. Operations are numbered in call order, so a linearized set is
//!   a run of full words, a few mixed ones and then zeros; only the mixed
//!   words are stored.
//! * A completed read (or CAS that did not swap) that may come next and is
//!   legal on the current value is linearized at once, and no alternative
//!   is tried from that configuration: it leaves the register unchanged, so
//!   any linearization from there can be rearranged to start with it. This
//!   removes most of the branching of read-heavy histories.
//!
//! # Operations with an unknown outcome
//!
//! A write or CAS that timed out may have taken effect at any moment after
//! it was invoked, or never. Such an operation has no return event: it may
//! be linearized at any point after its call, and it never has to be. When
//! it is, a write sets the register, and a CAS swaps only if the register
//! holds the expected value (and is otherwise a no-op). Reads with an unknown
//! outcome and failed operations of any kind are dropped before the search:
//! they cannot have changed the register.
//!
//! Because an open operation never has to be linearized, a configuration
//! with fewer open operations linearized can do everything one with more can
//! (same completed set, same register value). The cache uses that: a new
//! configuration is pruned if a visited one has the same completed set and
//! register value and a subset of its open operations. Two cheap consequences
//! are applied directly: an open operation that would not change the
//! register is never linearized, and an operation that overwrites the
//! register unconditionally (a write) is never tried right after an open
//! operation (the open one would have been pointless). Open operations are
//! tried only after the completed candidates, so they are used only where
//! something needs them.
//!
//! # Budget
//!
//! The search is exponential in the worst case. [`check`] shares its wall
//! time budget among keys (each key first gets a fair share of what is left;
//! keys that ran out get a second try with whatever time remains) and caps
//! the memory of the cache. A key whose search did not finish is reported in
//! [`Verdict::timed_out_keys`] and makes the verdict negative: the checker
//! never calls a history linearizable without having found a linearization.

use crate::history::{Call, Op, Outcome};
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// The result of checking a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// True iff every key was proven linearizable.
    pub ok: bool,
    /// How many distinct keys the history touches.
    pub keys: usize,
    /// How many operations took part in the search (failed operations and
    /// reads with an unknown outcome are dropped before it).
    pub ops: usize,
    /// Keys that are not linearizable (or hold malformed operations), in key
    /// order, each with an explanation.
    pub failures: Vec<KeyFailure>,
    /// Wall time the check took.
    pub elapsed: Duration,
    /// Keys whose search did not finish within the budget (or the memory
    /// cap), in key order. Their linearizability is unknown.
    pub timed_out_keys: Vec<u64>,
}

/// One key whose history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFailure {
    /// The key.
    pub key: u64,
    /// What went wrong (several lines, not starting with the key): the end
    /// of the longest linearizable prefix the search found, the register
    /// value after it, and the operations that could not be linearized next
    /// (printed with [`Op`]'s `Display`).
    pub explanation: String,
}

/// `key 5: not linearizable ...`
impl fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}: {}", self.key, self.explanation)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.ok {
            "linearizable"
        } else if self.failures.is_empty() {
            "UNDECIDED"
        } else {
            "NOT linearizable"
        };
        write!(
            f,
            "{what}: {} ops on {} keys checked in {:.3}s",
            self.ops,
            self.keys,
            self.elapsed.as_secs_f64()
        )?;
        if !self.timed_out_keys.is_empty() {
            write!(
                f,
                "; search did not finish for keys {:?}",
                self.timed_out_keys
            )?;
        }
        for failure in &self.failures {
            write!(f, "\n{failure}")?;
        }
        Ok(())
    }
}

/// Checks that `ops` is linearizable as a set of independent registers, one
/// per key, within `budget` of wall time (shared by all keys).
pub fn check(ops: &[Op], budget: Duration) -> Verdict {
    let start = Instant::now();
    let deadline = start.checked_add(budget);

    let mut by_key: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op);
    }
    let keys = by_key.len();

    let mut failures = Vec::new();
    let mut timed_out_keys = Vec::new();
    let mut searches = Vec::new();
    let mut checked_ops = 0;
    for (key, key_ops) in by_key {
        match KeySearch::new(key, &key_ops) {
            Ok(search) => {
                checked_ops += search.ops.len();
                searches.push(search);
            }
            Err(failure) => failures.push(failure),
        }
    }

    // First pass: each key gets a fair share of the time left. Keys that ran
    // out get a second pass sharing whatever remains, so one hard key can
    // use the time the easy ones did not need.
    let mut retry = Vec::new();
    for (i, search) in searches.iter().enumerate() {
        match search.run(share(deadline, searches.len() - i)) {
            KeyResult::Linearizable => {}
            KeyResult::Violation(stuck) => failures.push(search.explain(&stuck)),
            KeyResult::OutOfTime => retry.push(search),
            KeyResult::OutOfMemory => timed_out_keys.push(search.key),
        }
    }
    for (i, search) in retry.iter().enumerate() {
        match search.run(share(deadline, retry.len() - i)) {
            KeyResult::Linearizable => {}
            KeyResult::Violation(stuck) => failures.push(search.explain(&stuck)),
            KeyResult::OutOfTime | KeyResult::OutOfMemory => timed_out_keys.push(search.key),
        }
    }
    failures.sort_by_key(|failure| failure.key);
    timed_out_keys.sort_unstable();

    Verdict {
        ok: failures.is_empty() && timed_out_keys.is_empty(),
        keys,
        ops: checked_ops,
        failures,
        elapsed: start.elapsed(),
        timed_out_keys,
    }
}

/// The deadline for the next of `left` searches: an equal share of the time
/// remaining before `deadline` (`None`: no deadline).
fn share(deadline: Option<Instant>, left: usize) -> Option<Instant> {
    let deadline = deadline?;
    let now = Instant::now();
    let remaining = deadline.saturating_duration_since(now);
    let left = u32::try_from(left.max(1)).unwrap_or(u32::MAX);
    now.checked_add(remaining / left)
}

/// The register's value: `None` until the key is first written.
type Value = Option<u64>;

/// How an operation that takes part in the search acts on the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// A completed read that returned this value.
    Read(Value),
    /// An acknowledged write.
    Write(u64),
    /// An acknowledged CAS that swapped.
    Swapped { expect: Value, new: u64 },
    /// An acknowledged CAS that did not swap.
    NotSwapped { expect: Value },
    /// A write with an unknown outcome.
    MaybeWrite(u64),
    /// A CAS with an unknown outcome.
    MaybeCas { expect: Value, new: u64 },
}

impl Effect {
    /// The register value after applying this operation to `current`, or
    /// `None` if the operation cannot be linearized while the register holds
    /// `current`.
    fn apply(self, current: Value) -> Option<Value> {
        match self {
            Effect::Read(seen) => (seen == current).then_some(current),
            Effect::Write(v) | Effect::MaybeWrite(v) => Some(Some(v)),
            Effect::Swapped { expect, new } => (current == expect).then_some(Some(new)),
            Effect::NotSwapped { expect } => (current != expect).then_some(current),
            Effect::MaybeCas { expect, new } => Some(if current == expect {
                Some(new)
            } else {
                current
            }),
        }
    }

    /// Whether it never changes the register (a completed read, or a
    /// completed CAS that did not swap).
    fn observes_only(self) -> bool {
        matches!(self, Effect::Read(_) | Effect::NotSwapped { .. })
    }

    /// Whether the result does not depend on the register's value at all
    /// (a write): whatever happened just before it is overwritten.
    fn overwrites(self) -> bool {
        matches!(self, Effect::Write(_) | Effect::MaybeWrite(_))
    }
}

/// What part an operation plays in the search.
enum Role {
    /// No effect on the register; left out.
    Dropped,
    /// Completed: must be linearized between its call and return times.
    Closed {
        effect: Effect,
        invoke: u64,
        ret: u64,
    },
    /// Unknown outcome: may be linearized any time after its call, or never.
    Open { effect: Effect, invoke: u64 },
}

/// Classifies `op`, or says why it is malformed.
fn role(op: &Op) -> Result<Role, String> {
    let closed = |effect| {
        // An acknowledged operation with no completion time is taken to
        // have completed at the end of time (the most permissive reading).
        let ret = op.complete_ns.unwrap_or(u64::MAX);
        if ret < op.invoke_ns {
            return Err("it completed before it was invoked".to_string());
        }
        Ok(Role::Closed {
            effect,
            invoke: op.invoke_ns,
            ret,
        })
    };
    match (&op.call, &op.outcome) {
        (_, Outcome::Failed) | (Call::Read, Outcome::Unknown) => Ok(Role::Dropped),
        (&Call::Write(v), Outcome::Unknown) => Ok(Role::Open {
            effect: Effect::MaybeWrite(v),
            invoke: op.invoke_ns,
        }),
        (&Call::Cas { expect, new }, Outcome::Unknown) => Ok(Role::Open {
            effect: Effect::MaybeCas { expect, new },
            invoke: op.invoke_ns,
        }),
        (Call::Read, &Outcome::Read(v)) => closed(Effect::Read(v)),
        (&Call::Write(v), Outcome::Written) => closed(Effect::Write(v)),
        (&Call::Cas { expect, new }, Outcome::Cas(true)) => closed(Effect::Swapped { expect, new }),
        (&Call::Cas { expect, .. }, Outcome::Cas(false)) => closed(Effect::NotSwapped { expect }),
        (call, outcome) => Err(format!("a {call} cannot end as {outcome}")),
    }
}

/// The head sentinel of the event list.
const HEAD: usize = 0;

/// The outcome of one key's search.
enum KeyResult {
    /// A linearization exists.
    Linearizable,
    /// None exists; where the search got furthest.
    Violation(Stuck),
    /// Out of time before deciding.
    OutOfTime,
    /// The cache outgrew [`CACHE_MEMORY_LIMIT`] before deciding.
    OutOfMemory,
}

/// The furthest point the search reached on a non-linearizable key.
struct Stuck {
    /// Completed operations linearized at that point.
    depth: usize,
    /// How many operations (completed and open) were linearized.
    prefix_len: usize,
    /// The last few of them, oldest first (local indices).
    prefix_tail: Vec<usize>,
    /// The register value after the prefix.
    value: Value,
    /// The completed operations that could have come next in real-time
    /// order but led nowhere (local indices), at most [`SHOW_CANDIDATES`].
    candidates: Vec<usize>,
    /// How many such completed operations there were in all.
    candidate_count: usize,
    /// Open operations that could have taken effect there but led nowhere.
    open_candidates: Vec<usize>,
}

/// How many linearized operations an explanation shows before the stuck point.
const SHOW_PREFIX: usize = 6;
/// How many operations that could not come next an explanation shows.
const SHOW_CANDIDATES: usize = 16;
/// Memory the visited-configuration cache of one key may use before the
/// search gives up.
const CACHE_MEMORY_LIMIT: usize = 1 << 30;
/// The deadline is looked at once per this many search steps (a power of
/// two).
const STEPS_PER_CLOCK_CHECK: u64 = 1 << 10;

/// One key's operations, prepared for the search.
struct KeySearch<'a> {
    /// The key.
    key: u64,
    /// The operations taking part, by local index: completed ones first
    /// (`0..closed`), then open ones, each kind in order of invocation.
    ops: Vec<&'a Op>,
    /// Their effects, by local index.
    effects: Vec<Effect>,
    /// How many completed operations there are.
    closed: usize,
    /// The event list in real-time order, as it is before any operation is
    /// linearized: node 0 is the head sentinel, the last node the tail
    /// sentinel, the others call and return events of completed operations.
    next: Vec<usize>,
    /// Backward links of the same list.
    prev: Vec<usize>,
    /// The local operation of each event node (unused for sentinels).
    node_op: Vec<usize>,
    /// Whether each node is a call event (sentinels are not).
    node_is_call: Vec<bool>,
    /// The position of each node in the total order of events, open calls
    /// included; the tail sentinel comes after everything.
    node_rank: Vec<usize>,
    /// The call node of each completed operation.
    call_node: Vec<usize>,
    /// The return node of each completed operation.
    ret_node: Vec<usize>,
    /// The position of each open operation's call in the total order of
    /// events, increasing (open operation `j` has local index `closed + j`).
    open_rank: Vec<usize>,
}

/// One linearized operation on the search stack.
struct Frame {
    /// Its local index.
    op: usize,
    /// The register value before it.
    before: Value,
    /// For an open operation: the rank bound of open candidates in the
    /// configuration it was linearized from (see [`Cursor::Open`]).
    limit: usize,
    /// Whether it was a forced move (a legal observer, see [`Cursor::Fresh`]):
    /// the configuration it was made from has nothing else worth trying.
    forced: bool,
}

/// What the search does next.
#[derive(Clone, Copy)]
enum Cursor {
    /// A configuration was just reached. If a completed read or failed CAS
    /// is a candidate and legal, it is linearized right away and nothing
    /// else is tried here: such an operation leaves the register unchanged,
    /// so any linearization from here can be rearranged to start with it
    /// (it may move earlier: nothing pending returned before its call).
    Fresh,
    /// Try the candidate at this node of the event list (completed
    /// operations, in call order; a return node ends the candidates).
    Main(usize),
    /// Try this open operation; the candidates are those whose call ranks
    /// below the current limit (the rank of the first return in the list).
    Open(usize),
    /// Nothing more to try in this configuration: undo the last move.
    Backtrack,
}

/// The mutable state of one key's search.
struct Walk {
    /// Forward links of the event list.
    next: Vec<usize>,
    /// Backward links of the event list.
    prev: Vec<usize>,
    /// The linearized completed operations.
    closed: Bits,
    /// The linearized open operations.
    open: Bits,
    /// Hash of `closed` (XOR of [`op_key`]s).
    set_hash: u64,
    /// The register value.
    value: Value,
    /// Completed operations not linearized yet.
    remaining: usize,
    /// The linearized operations in order.
    stack: Vec<Frame>,
    /// Configurations visited.
    cache: Cache,
}

impl Walk {
    /// The initial configuration: nothing linearized, register empty.
    fn new(search: &KeySearch<'_>) -> Walk {
        let mut walk = Walk {
            next: search.next.clone(),
            prev: search.prev.clone(),
            closed: Bits::new(search.closed),
            open: Bits::new(search.open_rank.len()),
            set_hash: 0,
            value: None,
            remaining: search.closed,
            stack: Vec::new(),
            cache: Cache::default(),
        };
        walk.cache.insert(
            config_hash(walk.set_hash, walk.value),
            walk.value,
            &walk.closed,
            &walk.open,
        );
        walk
    }

    /// Linearizes the completed operation whose call is at `node`, leaving
    /// the register at `after`, unless the configuration this leads to is
    /// covered by a visited one. Returns whether it did.
    fn push_closed(
        &mut self,
        search: &KeySearch<'_>,
        node: usize,
        after: Value,
        forced: bool,
    ) -> bool {
        let op = search.node_op[node];
        let set_hash = self.set_hash ^ op_key(op);
        self.closed.set(op);
        if !self.cache.insert(
            config_hash(set_hash, after),
            after,
            &self.closed,
            &self.open,
        ) {
            self.closed.clear(op);
            return false;
        }
        self.stack.push(Frame {
            op,
            before: self.value,
            limit: 0,
            forced,
        });
        self.value = after;
        self.set_hash = set_hash;
        self.remaining -= 1;
        lift(&mut self.next, &mut self.prev, node);
        lift(&mut self.next, &mut self.prev, search.ret_node[op]);
        true
    }

    /// Linearizes open operation `j` (local index `closed + j`), leaving the
    /// register at `after`, unless covered by a visited configuration.
    /// `limit` is the current rank bound of open candidates, restored on
    /// backtrack. Returns whether it did.
    fn push_open(&mut self, search: &KeySearch<'_>, j: usize, after: Value, limit: usize) -> bool {
        self.open.set(j);
        if !self.cache.insert(
            config_hash(self.set_hash, after),
            after,
            &self.closed,
            &self.open,
        ) {
            self.open.clear(j);
            return false;
        }
        self.stack.push(Frame {
            op: search.closed + j,
            before: self.value,
            limit,
            forced: false,
        });
        self.value = after;
        true
    }

    /// Undoes the last move and returns it; `None` if nothing is linearized.
    fn pop(&mut self, search: &KeySearch<'_>) -> Option<Frame> {
        let frame = self.stack.pop()?;
        self.value = frame.before;
        if frame.op < search.closed {
            self.closed.clear(frame.op);
            self.set_hash ^= op_key(frame.op);
            self.remaining += 1;
            unlift(&mut self.next, &mut self.prev, search.ret_node[frame.op]);
            unlift(&mut self.next, &mut self.prev, search.call_node[frame.op]);
        } else {
            self.open.clear(frame.op - search.closed);
        }
        Some(frame)
    }
}

impl<'a> KeySearch<'a> {
    /// Prepares the search over one key's operations, or reports the key as
    /// failed if an operation is malformed.
    fn new(key: u64, key_ops: &[&'a Op]) -> Result<KeySearch<'a>, KeyFailure> {
        let mut closed_ops = Vec::new();
        let mut open_ops = Vec::new();
        for &op in key_ops {
            match role(op) {
                Ok(Role::Dropped) => {}
                Ok(Role::Closed {
                    effect,
                    invoke,
                    ret,
                }) => closed_ops.push((op, effect, invoke, ret)),
                Ok(Role::Open { effect, invoke }) => open_ops.push((op, effect, invoke)),
                Err(why) => {
                    return Err(KeyFailure {
                        key,
                        explanation: format!("malformed operation, key not checked: {why}: {op}"),
                    })
                }
            }
        }
        // Both kinds are numbered in call order.
        closed_ops.sort_by_key(|&(op, _, invoke, _)| (invoke, op.id));
        open_ops.sort_by_key(|&(op, _, invoke)| (invoke, op.id));
        let closed = closed_ops.len();

        // Events as (time, kind, local op); at equal times calls (kind 0)
        // sort before returns (kind 1), so operations whose stamps touch
        // count as overlapping: the permissive reading of a clock tie.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * closed + open_ops.len());
        for (i, &(_, _, invoke, ret)) in closed_ops.iter().enumerate() {
            events.push((invoke, 0, i));
            events.push((ret, 1, i));
        }
        for (j, &(_, _, invoke)) in open_ops.iter().enumerate() {
            events.push((invoke, 0, closed + j));
        }
        events.sort_unstable();

        let nodes = 2 * closed + 2;
        let tail = nodes - 1;
        let mut node_op = vec![0; nodes];
        let mut node_is_call = vec![false; nodes];
        let mut node_rank = vec![usize::MAX; nodes];
        node_rank[HEAD] = 0;
        let mut call_node = vec![0; closed];
        let mut ret_node = vec![0; closed];
        let mut open_rank = vec![0; open_ops.len()];
        let mut order = vec![HEAD];
        for (rank, &(_, kind, op)) in events.iter().enumerate() {
            if op >= closed {
                open_rank[op - closed] = rank;
                continue;
            }
            let node = order.len();
            order.push(node);
            node_op[node] = op;
            node_rank[node] = rank;
            if kind == 0 {
                node_is_call[node] = true;
                call_node[op] = node;
            } else {
                ret_node[op] = node;
            }
        }
        order.push(tail);
        let mut next = vec![tail; nodes];
        let mut prev = vec![HEAD; nodes];
        for pair in order.windows(2) {
            next[pair[0]] = pair[1];
            prev[pair[1]] = pair[0];
        }

        let mut ops = Vec::with_capacity(closed + open_ops.len());
        let mut effects = Vec::with_capacity(closed + open_ops.len());
        for &(op, effect, _, _) in &closed_ops {
            ops.push(op);
            effects.push(effect);
        }
        for &(op, effect, _) in &open_ops {
            ops.push(op);
            effects.push(effect);
        }
        Ok(KeySearch {
            key,
            ops,
            effects,
            closed,
            next,
            prev,
            node_op,
            node_is_call,
            node_rank,
            call_node,
            ret_node,
            open_rank,
        })
    }

    /// Searches for a linearization, giving up at `deadline`.
    fn run(&self, deadline: Option<Instant>) -> KeyResult {
        let closed_count = self.closed;
        let open_count = self.open_rank.len();
        let mut walk = Walk::new(self);
        let mut best: Option<Stuck> = None;
        let mut steps = 0u64;
        // Rank of the first return still in the list, once the scan of the
        // completed candidates has reached it.
        let mut limit = 0usize;
        let mut cursor = Cursor::Fresh;

        loop {
            if walk.remaining == 0 {
                return KeyResult::Linearizable;
            }
            steps += 1;
            if steps & (STEPS_PER_CLOCK_CHECK - 1) == 0 {
                if walk.cache.bytes > CACHE_MEMORY_LIMIT {
                    return KeyResult::OutOfMemory;
                }
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    return KeyResult::OutOfTime;
                }
            }
            // Right after an open operation, an overwriting one would make
            // it moot: the configuration without the open one covers that.
            let after_open = walk.stack.last().is_some_and(|top| top.op >= closed_count);
            match cursor {
                Cursor::Fresh => {
                    cursor = Cursor::Main(walk.next[HEAD]);
                    if let Some(node) = self.legal_observer(&walk) {
                        let value = walk.value;
                        cursor = if walk.push_closed(self, node, value, true) {
                            Cursor::Fresh
                        } else {
                            // Covered: this configuration is no better.
                            Cursor::Backtrack
                        };
                    }
                }
                Cursor::Main(node) if self.node_is_call[node] => {
                    cursor = Cursor::Main(walk.next[node]);
                    let effect = self.effects[self.node_op[node]];
                    if after_open && effect.overwrites() {
                        continue;
                    }
                    if let Some(after) = effect.apply(walk.value) {
                        if walk.push_closed(self, node, after, false) {
                            cursor = Cursor::Fresh;
                        }
                    }
                }
                Cursor::Main(node) => {
                    // A return (or the tail): every completed candidate has
                    // been tried from this configuration; try open ones.
                    let depth = closed_count - walk.remaining;
                    let deeper = match &best {
                        Some(best) => depth > best.depth,
                        None => true,
                    };
                    if deeper {
                        best = Some(self.stuck(&walk, node, depth));
                    }
                    limit = self.node_rank[node];
                    cursor = Cursor::Open(0);
                }
                Cursor::Open(j) if j < open_count && self.open_rank[j] < limit => {
                    cursor = Cursor::Open(j + 1);
                    let effect = self.effects[closed_count + j];
                    if walk.open.get(j) || (after_open && effect.overwrites()) {
                        continue;
                    }
                    // An open operation that would change nothing is never
                    // worth linearizing: skipping it covers that.
                    if let Some(after) = effect.apply(walk.value) {
                        if after != walk.value && walk.push_open(self, j, after, limit) {
                            cursor = Cursor::Fresh;
                        }
                    }
                }
                Cursor::Open(_) => cursor = Cursor::Backtrack,
                Cursor::Backtrack => {
                    let Some(frame) = walk.pop(self) else {
                        return match best {
                            Some(stuck) => KeyResult::Violation(stuck),
                            // Unreachable: the first configuration always
                            // records where it got stuck before giving up.
                            None => KeyResult::OutOfTime,
                        };
                    };
                    cursor = if frame.forced {
                        Cursor::Backtrack
                    } else if frame.op < closed_count {
                        Cursor::Main(walk.next[self.call_node[frame.op]])
                    } else {
                        limit = frame.limit;
                        Cursor::Open(frame.op - closed_count + 1)
                    };
                }
            }
        }
    }

    /// The call node of a completed read or unswapped CAS that may be
    /// linearized next and is legal on the current value, if any.
    fn legal_observer(&self, walk: &Walk) -> Option<usize> {
        let mut node = walk.next[HEAD];
        while self.node_is_call[node] {
            let effect = self.effects[self.node_op[node]];
            if effect.observes_only() && effect.apply(walk.value).is_some() {
                return Some(node);
            }
            node = walk.next[node];
        }
        None
    }

    /// Records the configuration the search is stuck in: the scan of
    /// completed candidates reached `ret` (a return node, or the tail).
    fn stuck(&self, walk: &Walk, ret: usize, depth: usize) -> Stuck {
        let (next, stack, open, value) = (&walk.next, &walk.stack, &walk.open, walk.value);
        let mut candidates = Vec::new();
        let mut candidate_count = 0;
        let mut node = next[HEAD];
        while node != ret && self.node_is_call[node] {
            candidate_count += 1;
            if candidates.len() < SHOW_CANDIDATES {
                candidates.push(self.node_op[node]);
            }
            node = next[node];
        }
        let limit = self.node_rank[ret];
        let open_candidates = (0..self.open_rank.len())
            .take_while(|&j| self.open_rank[j] < limit)
            .filter(|&j| !open.get(j))
            .map(|j| self.closed + j)
            .collect();
        let skip = stack.len().saturating_sub(SHOW_PREFIX);
        Stuck {
            depth,
            prefix_len: stack.len(),
            prefix_tail: stack[skip..].iter().map(|frame| frame.op).collect(),
            value,
            candidates,
            candidate_count,
            open_candidates,
        }
    }

    /// Writes a human-readable account of why the key is not linearizable.
    fn explain(&self, stuck: &Stuck) -> KeyFailure {
        let value = match stuck.value {
            Some(v) => v.to_string(),
            None => "nil".to_string(),
        };
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "not linearizable ({} completed and {} unknown-outcome ops). \
             The longest linearizable prefix has {} of the {} completed ops \
             ({} ops in all); after it the register holds {value}.",
            self.closed,
            self.ops.len() - self.closed,
            stuck.depth,
            self.closed,
            stuck.prefix_len,
        );
        if stuck.prefix_len == 0 {
            let _ = writeln!(text, "  (nothing could be linearized first)");
        } else {
            let _ = writeln!(text, "  it ends with:");
            if stuck.prefix_len > stuck.prefix_tail.len() {
                let _ = writeln!(
                    text,
                    "    ... {} earlier ops",
                    stuck.prefix_len - stuck.prefix_tail.len()
                );
            }
            for &op in &stuck.prefix_tail {
                let _ = writeln!(text, "    {}", self.ops[op]);
            }
        }
        let _ = writeln!(
            text,
            "  none of these ops can be linearized next (illegal on {value}, or a dead end):"
        );
        for &op in &stuck.candidates {
            let _ = writeln!(text, "    {}", self.ops[op]);
        }
        if stuck.candidate_count > stuck.candidates.len() {
            let _ = writeln!(
                text,
                "    ... and {} more",
                stuck.candidate_count - stuck.candidates.len()
            );
        }
        if !stuck.open_candidates.is_empty() {
            let _ = writeln!(
                text,
                "  nor does letting one of these unknown-outcome ops take effect help:"
            );
            for &op in stuck.open_candidates.iter().take(SHOW_CANDIDATES) {
                let _ = writeln!(text, "    {}", self.ops[op]);
            }
            if stuck.open_candidates.len() > SHOW_CANDIDATES {
                let _ = writeln!(
                    text,
                    "    ... and {} more",
                    stuck.open_candidates.len() - SHOW_CANDIDATES
                );
            }
        }
        KeyFailure {
            key: self.key,
            explanation: text.trim_end().to_string(),
        }
    }
}

/// Takes `node` out of the list; its own links are kept for [`unlift`].
fn lift(next: &mut [usize], prev: &mut [usize], node: usize) {
    let (p, n) = (prev[node], next[node]);
    next[p] = n;
    prev[n] = p;
}

/// Puts back a node taken out by [`lift`] (in the reverse order of lifting).
fn unlift(next: &mut [usize], prev: &mut [usize], node: usize) {
    let (p, n) = (prev[node], next[node]);
    next[p] = node;
    prev[n] = node;
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random-looking key of a completed operation in the set hash.
fn op_key(op: usize) -> u64 {
    mix(op as u64 ^ 0x5bd1_e995_0000_0000)
}

/// The cache hash of a configuration: linearized set hash and value.
fn config_hash(set_hash: u64, value: Value) -> u64 {
    let value_key = match value {
        Some(v) => mix(v),
        None => 0x2545_f491_4f6c_dd1d,
    };
    set_hash ^ value_key.rotate_left(17)
}

/// A fixed-size set of small integers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bits {
    /// 64 members per word.
    words: Vec<u64>,
}

impl Bits {
    /// An empty set able to hold `0..len`.
    fn new(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// Adds `i`.
    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// Removes `i`.
    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    /// Whether `i` is in the set.
    fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// The number of leading all-ones words, and the words after them up
    /// to the last non-zero one: together they identify the set.
    fn trimmed(&self) -> (usize, &[u64]) {
        let full = self.words.iter().take_while(|&&w| w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(full, |last| (last + 1).max(full));
        (full, &self.words[full..end])
    }
}

/// A visited configuration.
struct Entry {
    /// The register value.
    value: Value,
    /// How many leading words of the completed set are full.
    full: usize,
    /// The completed set's words after the full ones, up to the last
    /// non-zero one, followed by all of the open set's words.
    words: Box<[u64]>,
}

/// Visited configurations, by hash of (completed set, value).
#[derive(Default)]
struct Cache {
    /// Entries whose (completed set, value) hash alike.
    map: HashMap<u64, Vec<Entry>, BuildHasherDefault<IdentityHasher>>,
    /// Approximate memory held.
    bytes: usize,
}

impl Cache {
    /// Adds the configuration unless it is covered by a visited one: same
    /// completed set and value, and a subset of its open operations (which
    /// can do all this one can). Returns whether it was added.
    fn insert(&mut self, hash: u64, value: Value, closed: &Bits, open: &Bits) -> bool {
        // Completed operations are numbered in call order, so a completed
        // set is a run of full words, a few mixed ones, then empty words:
        // only the mixed ones need storing.
        let (full, mixed) = closed.trimmed();
        let split = mixed.len();
        let bucket = self.map.entry(hash).or_default();
        let covered = bucket.iter().any(|entry| {
            entry.value == value
                && entry.full == full
                && entry.words.len() == split + open.words.len()
                && entry.words[..split] == *mixed
                && entry.words[split..]
                    .iter()
                    .zip(&open.words)
                    .all(|(seen, now)| seen & !now == 0)
        });
        if covered {
            return false;
        }
        let words: Box<[u64]> = mixed.iter().chain(&open.words).copied().collect();
        self.bytes += words.len() * 8 + std::mem::size_of::<Entry>() + 16;
        bucket.push(Entry { value, full, words });
        true
    }
}

/// A hasher for keys that already are well-mixed `u64` hashes.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Budget for the small hand-written histories.
    const BUDGET: Duration = Duration::from_secs(10);

    /// Builds histories by hand; times are in milliseconds.
    #[derive(Default)]
    struct Builder {
        ops: Vec<Op>,
    }

    impl Builder {
        fn push(
            &mut self,
            process: usize,
            key: u64,
            call: Call,
            outcome: Outcome,
            start_ms: u64,
            end_ms: Option<u64>,
        ) -> usize {
            let id = self.ops.len();
            self.ops.push(Op {
                id,
                process,
                key,
                call,
                outcome,
                invoke_ns: start_ms * 1_000_000,
                complete_ns: end_ms.map(|ms| ms * 1_000_000),
            });
            id
        }

        fn write(&mut self, p: usize, key: u64, v: u64, start: u64, end: u64) -> usize {
            self.push(p, key, Call::Write(v), Outcome::Written, start, Some(end))
        }

        fn read(&mut self, p: usize, key: u64, v: Option<u64>, start: u64, end: u64) -> usize {
            self.push(p, key, Call::Read, Outcome::Read(v), start, Some(end))
        }

        #[allow(clippy::too_many_arguments)]
        fn cas(
            &mut self,
            p: usize,
            key: u64,
            expect: Option<u64>,
            new: u64,
            swapped: bool,
            start: u64,
            end: u64,
        ) -> usize {
            self.push(
                p,
                key,
                Call::Cas { expect, new },
                Outcome::Cas(swapped),
                start,
                Some(end),
            )
        }

        fn unknown_write(&mut self, p: usize, key: u64, v: u64, start: u64) -> usize {
            self.push(p, key, Call::Write(v), Outcome::Unknown, start, None)
        }

        fn check(&self) -> Verdict {
            check(&self.ops, BUDGET)
        }
    }

    fn assert_ok(verdict: &Verdict) {
        assert!(verdict.ok, "expected linearizable, got {verdict}");
        assert!(verdict.failures.is_empty() && verdict.timed_out_keys.is_empty());
    }

    /// Asserts exactly one failure, on `key`, and returns its explanation.
    fn assert_fails_on(verdict: &Verdict, key: u64) -> String {
        assert!(!verdict.ok, "expected a violation, got {verdict}");
        assert!(verdict.timed_out_keys.is_empty(), "{verdict}");
        assert_eq!(verdict.failures.len(), 1, "{verdict}");
        assert_eq!(verdict.failures[0].key, key, "{verdict}");
        verdict.failures[0].explanation.clone()
    }

    #[test]
    fn empty_history_is_linearizable() {
        let verdict = check(&[], BUDGET);
        assert_ok(&verdict);
        assert_eq!((verdict.keys, verdict.ops), (0, 0));
    }

    #[test]
    fn sequential_history_passes() {
        let mut h = Builder::default();
        h.read(0, 1, None, 0, 1);
        h.write(0, 1, 1, 2, 3);
        h.read(1, 1, Some(1), 4, 5);
        h.write(0, 1, 2, 6, 7);
        h.read(1, 1, Some(2), 8, 9);
        h.cas(0, 1, Some(2), 3, true, 10, 11);
        h.read(1, 1, Some(3), 12, 13);
        h.cas(0, 1, Some(2), 4, false, 14, 15);
        h.cas(0, 1, None, 4, false, 16, 17);
        h.read(1, 1, Some(3), 18, 19);
        let verdict = h.check();
        assert_ok(&verdict);
        assert_eq!((verdict.keys, verdict.ops), (1, 10));
    }

    #[test]
    fn read_overlapping_a_write_may_see_either_value() {
        for seen in [None, Some(1)] {
            let mut h = Builder::default();
            h.write(0, 7, 1, 0, 10);
            h.read(1, 7, seen, 5, 15);
            h.read(1, 7, Some(1), 16, 17);
            assert_ok(&h.check());
        }
        // ... but once a later read saw the new value, an even later one
        // cannot see the old one again.
        let mut h = Builder::default();
        h.write(0, 7, 1, 0, 100);
        h.read(1, 7, Some(1), 5, 10);
        let stale = h.read(1, 7, None, 20, 30);
        let explanation = assert_fails_on(&h.check(), 7);
        assert!(
            explanation.contains(&h.ops[stale].to_string()),
            "{explanation}"
        );
    }

    #[test]
    fn concurrent_writes_settle_on_one_value() {
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.write(1, 1, 2, 0, 10);
        h.read(2, 1, Some(1), 20, 30);
        h.read(2, 1, Some(1), 40, 50);
        assert_ok(&h.check());

        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.write(1, 1, 2, 0, 10);
        h.read(2, 1, Some(2), 20, 30);
        h.read(2, 1, Some(1), 40, 50);
        assert_fails_on(&h.check(), 1);
    }

    #[test]
    fn cas_chain_passes() {
        // Three overlapping CASes that can only have happened in one order,
        // listed out of that order.
        let mut h = Builder::default();
        h.cas(0, 3, Some(2), 3, true, 0, 30);
        h.cas(1, 3, Some(1), 2, true, 1, 20);
        h.cas(2, 3, None, 1, true, 2, 10);
        h.cas(3, 3, Some(1), 9, false, 5, 25);
        h.read(4, 3, Some(3), 31, 32);
        assert_ok(&h.check());
    }

    #[test]
    fn stale_read_is_rejected() {
        let mut h = Builder::default();
        h.write(0, 5, 1, 0, 10);
        h.write(0, 5, 2, 20, 30);
        let read = h.read(1, 5, Some(1), 40, 50);
        let verdict = h.check();
        let explanation = assert_fails_on(&verdict, 5);
        assert!(
            explanation.contains(&h.ops[read].to_string()),
            "{explanation}"
        );
        assert!(explanation.contains("register holds 2"), "{explanation}");
        // The whole report names the read too.
        assert!(verdict.to_string().contains("#2 p1 key 5: read = ok(1)"));
    }

    #[test]
    fn lost_write_is_rejected() {
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        let read = h.read(1, 1, None, 20, 30);
        let explanation = assert_fails_on(&h.check(), 1);
        assert!(
            explanation.contains(&h.ops[read].to_string()),
            "{explanation}"
        );

        // The same with a previous value coming back.
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.write(0, 1, 2, 20, 30);
        h.read(1, 1, Some(2), 40, 50);
        h.write(0, 1, 3, 60, 70);
        let read = h.read(1, 1, Some(2), 80, 90);
        let explanation = assert_fails_on(&h.check(), 1);
        assert!(
            explanation.contains(&h.ops[read].to_string()),
            "{explanation}"
        );
    }

    #[test]
    fn cas_that_succeeded_twice_is_rejected() {
        let mut h = Builder::default();
        h.write(0, 2, 0, 0, 10);
        let a = h.cas(1, 2, Some(0), 1, true, 20, 40);
        let b = h.cas(2, 2, Some(0), 2, true, 21, 41);
        h.read(3, 2, Some(2), 50, 60);
        let explanation = assert_fails_on(&h.check(), 2);
        let a = h.ops[a].to_string();
        let b = h.ops[b].to_string();
        assert!(
            explanation.contains(&a) || explanation.contains(&b),
            "{explanation}"
        );

        // Both swapped with nothing after them: still impossible.
        let mut h = Builder::default();
        h.write(0, 2, 0, 0, 10);
        h.cas(1, 2, Some(0), 1, true, 20, 40);
        h.cas(2, 2, Some(0), 2, true, 21, 41);
        assert_fails_on(&h.check(), 2);
    }

    #[test]
    fn unknown_write_may_take_effect() {
        // Its value shows up, right away or late.
        for first_read in [Some(2), Some(1)] {
            let mut h = Builder::default();
            h.write(0, 1, 1, 0, 10);
            h.unknown_write(1, 1, 2, 20);
            h.read(2, 1, first_read, 30, 40);
            h.read(2, 1, Some(2), 50, 60);
            assert_ok(&h.check());
        }
        // An unknown CAS whose new value shows up.
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.push(
            1,
            1,
            Call::Cas {
                expect: Some(1),
                new: 5,
            },
            Outcome::Unknown,
            20,
            None,
        );
        h.read(2, 1, Some(5), 30, 40);
        assert_ok(&h.check());
    }

    #[test]
    fn unknown_write_may_never_take_effect() {
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.unknown_write(1, 1, 2, 20);
        h.unknown_write(3, 1, 4, 22);
        h.read(2, 1, Some(1), 30, 40);
        h.read(2, 1, Some(1), 50, 60);
        // Failed ops and unknown reads are ignored.
        h.push(4, 1, Call::Write(9), Outcome::Failed, 61, Some(62));
        h.push(4, 1, Call::Read, Outcome::Unknown, 63, None);
        let verdict = h.check();
        assert_ok(&verdict);
        assert_eq!(verdict.ops, 5);
    }

    #[test]
    fn unknown_write_takes_effect_only_after_its_invocation() {
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.read(2, 1, Some(2), 20, 30);
        h.unknown_write(1, 1, 2, 40);
        assert_fails_on(&h.check(), 1);
    }

    #[test]
    fn unknown_write_cannot_take_effect_twice() {
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.unknown_write(1, 1, 2, 20);
        h.read(2, 1, Some(2), 30, 40);
        h.write(0, 1, 3, 50, 60);
        h.read(2, 1, Some(2), 70, 80);
        assert_fails_on(&h.check(), 1);
    }

    #[test]
    fn value_nobody_wrote_is_rejected() {
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.unknown_write(1, 1, 2, 20);
        h.push(3, 1, Call::Write(3), Outcome::Failed, 21, Some(25));
        let read = h.read(2, 1, Some(3), 30, 40);
        let explanation = assert_fails_on(&h.check(), 1);
        assert!(
            explanation.contains(&h.ops[read].to_string()),
            "{explanation}"
        );
        assert!(
            explanation.contains("unknown-outcome ops take effect"),
            "{explanation}"
        );
    }

    #[test]
    fn failure_is_reported_on_its_key_only() {
        let mut h = Builder::default();
        for key in 0..5 {
            let t = key * 3;
            h.write(0, key, 1, t, t + 10);
            h.write(1, key, 2, t + 20, t + 30);
            let seen = if key == 3 { 1 } else { 2 };
            h.read(2, key, Some(seen), t + 40, t + 50);
            h.cas(3, key, Some(seen), 7, true, t + 60, t + 70);
        }
        let verdict = h.check();
        assert_fails_on(&verdict, 3);
        assert!(
            verdict.failures[0]
                .to_string()
                .starts_with("key 3: not linearizable"),
            "{verdict}"
        );
        assert_eq!(verdict.keys, 5);
        assert_eq!(verdict.ops, 20);
    }

    #[test]
    fn malformed_op_fails_its_key() {
        let mut h = Builder::default();
        h.write(0, 1, 1, 0, 10);
        h.push(1, 2, Call::Read, Outcome::Written, 0, Some(10));
        h.read(1, 3, None, 20, 10);
        let verdict = h.check();
        assert!(!verdict.ok);
        let keys: Vec<u64> = verdict.failures.iter().map(|f| f.key).collect();
        assert_eq!(keys, [2, 3], "{verdict}");
        assert!(verdict.failures[0].explanation.contains("malformed"));
    }

    /// A small deterministic pseudo-random generator (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0)
        }

        /// Uniform in `0..n` (n > 0).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// True with probability `per_mille` / 1000.
        fn chance(&mut self, per_mille: u64) -> bool {
            self.below(1000) < per_mille
        }
    }

    /// Simulates `processes` clients issuing `total` random operations on
    /// `keys` real registers. Each operation takes effect atomically at a
    /// random instant inside its interval (or never, if it failed or, for
    /// half of those whose outcome is lost, never), so the history is
    /// linearizable by construction. Values are drawn from a small range so
    /// that CASes often succeed and reads are ambiguous.
    fn simulate(
        seed: u64,
        keys: u64,
        processes: usize,
        total: usize,
        unknown_per_mille: u64,
    ) -> Vec<Op> {
        let mut rng = Rng(seed);
        // (op, instant it takes effect, whether it takes effect at all)
        let mut planned: Vec<(Op, u64, bool)> = Vec::with_capacity(total);
        let mut clocks: Vec<u64> = (0..processes).map(|_| rng.below(1_000_000)).collect();
        for n in 0..total {
            let process = n % processes;
            let invoke = clocks[process] + rng.below(200_000);
            let duration = 10_000 + rng.below(2_000_000);
            let complete = invoke + duration;
            clocks[process] = complete;
            let key = rng.below(keys);
            let call = match rng.below(10) {
                0..=3 => Call::Read,
                4..=6 => Call::Write(rng.below(5)),
                _ => Call::Cas {
                    expect: if rng.chance(100) {
                        None
                    } else {
                        Some(rng.below(5))
                    },
                    new: rng.below(5),
                },
            };
            let (outcome, complete_ns, effective) = if rng.chance(10) {
                (Outcome::Failed, Some(complete), false)
            } else if rng.chance(unknown_per_mille) {
                (Outcome::Unknown, None, rng.chance(500))
            } else {
                (Outcome::Unknown, Some(complete), true) // resolved below
            };
            let at = invoke + rng.below(duration + 1);
            planned.push((
                Op {
                    id: n,
                    process,
                    key,
                    call,
                    outcome,
                    invoke_ns: invoke,
                    complete_ns,
                },
                at,
                effective,
            ));
        }
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by_key(|&i| (planned[i].1, i));
        let mut registers: HashMap<u64, u64> = HashMap::new();
        for i in order {
            let (op, _, effective) = &mut planned[i];
            if !*effective {
                continue;
            }
            let current = registers.get(&op.key).copied();
            let result = match op.call {
                Call::Read => Outcome::Read(current),
                Call::Write(v) => {
                    registers.insert(op.key, v);
                    Outcome::Written
                }
                Call::Cas { expect, new } => {
                    let swapped = current == expect;
                    if swapped {
                        registers.insert(op.key, new);
                    }
                    Outcome::Cas(swapped)
                }
            };
            if op.complete_ns.is_some() {
                op.outcome = result;
            }
        }
        let mut ops: Vec<Op> = planned.into_iter().map(|(op, _, _)| op).collect();
        ops.sort_by_key(|op| (op.invoke_ns, op.id));
        ops
    }

    #[test]
    fn large_generated_history_passes_and_its_mutation_fails() {
        let ops = simulate(42, 5, 8, 5_000, 10);
        let counts = crate::history::Counts::of(&ops);
        assert!(counts.write.unknown + counts.cas.unknown > 10, "{counts}");
        assert!(counts.cas_swapped > 100, "{counts}");
        let budget = Duration::from_secs(120);

        let verdict = check(&ops, budget);
        println!("generated history ({counts}): {verdict}");
        assert_ok(&verdict);
        assert_eq!(verdict.keys, 5);

        // A read in the middle returns a value nobody ever wrote.
        let mut mutated = ops.clone();
        let Some(victim) = mutated
            .iter_mut()
            .skip(2_500)
            .find(|op| matches!(op.outcome, Outcome::Read(_)))
        else {
            panic!("no read to mutate");
        };
        victim.outcome = Outcome::Read(Some(1_000));
        let (key, shown) = (victim.key, victim.to_string());
        let verdict = check(&mutated, budget);
        println!("mutated: {verdict}");
        let explanation = assert_fails_on(&verdict, key);
        assert!(explanation.contains(&shown), "{explanation}");
    }

    /// Whether a one-key history is linearizable, by brute force: every
    /// order of its operations that respects real time (same tie rule as
    /// the checker), open operations optional, memoized on (done set, value).
    fn brute_force(ops: &[Op]) -> bool {
        struct Brute {
            roles: Vec<Role>,
            seen: std::collections::HashSet<(u32, Value)>,
        }
        impl Brute {
            fn search(&mut self, done: u32, value: Value) -> bool {
                let pending_closed = (0..self.roles.len())
                    .filter(|&i| done & (1 << i) == 0)
                    .filter(|&i| matches!(self.roles[i], Role::Closed { .. }));
                let Some(earliest_return) = pending_closed
                    .filter_map(|i| match self.roles[i] {
                        Role::Closed { ret, .. } => Some(ret),
                        _ => None,
                    })
                    .min()
                else {
                    return true;
                };
                if !self.seen.insert((done, value)) {
                    return false;
                }
                for i in 0..self.roles.len() {
                    if done & (1 << i) != 0 {
                        continue;
                    }
                    let (effect, invoke) = match self.roles[i] {
                        Role::Closed { effect, invoke, .. } | Role::Open { effect, invoke } => {
                            (effect, invoke)
                        }
                        Role::Dropped => continue,
                    };
                    if invoke > earliest_return {
                        continue;
                    }
                    if let Some(after) = effect.apply(value) {
                        if self.search(done | (1 << i), after) {
                            return true;
                        }
                    }
                }
                false
            }
        }
        let roles = ops
            .iter()
            .map(|op| role(op).unwrap_or(Role::Dropped))
            .collect();
        Brute {
            roles,
            seen: Default::default(),
        }
        .search(0, None)
    }

    /// Random small one-key histories, linearizable or not, judged by the
    /// checker and by brute force: the verdicts must agree.
    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng(7);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..40_000 {
            let n = 1 + rng.below(11) as usize;
            let ops: Vec<Op> = (0..n)
                .map(|id| {
                    let invoke = rng.below(12);
                    let complete = invoke + rng.below(8);
                    let value = |rng: &mut Rng| match rng.below(4) {
                        0 => None,
                        v => Some(v),
                    };
                    let call = match rng.below(3) {
                        0 => Call::Read,
                        1 => Call::Write(1 + rng.below(3)),
                        _ => Call::Cas {
                            expect: value(&mut rng),
                            new: 1 + rng.below(3),
                        },
                    };
                    let outcome = match (rng.below(5), &call) {
                        (0, _) => Outcome::Unknown,
                        (1, _) => Outcome::Failed,
                        (_, Call::Read) => Outcome::Read(value(&mut rng)),
                        (_, Call::Write(_)) => Outcome::Written,
                        (_, Call::Cas { .. }) => Outcome::Cas(rng.chance(500)),
                    };
                    Op {
                        id,
                        process: id,
                        key: 0,
                        call,
                        complete_ns: (outcome != Outcome::Unknown).then_some(complete),
                        outcome,
                        invoke_ns: invoke,
                    }
                })
                .collect();
            let expected = brute_force(&ops);
            let verdict = check(&ops, BUDGET);
            assert!(verdict.timed_out_keys.is_empty());
            let shown: Vec<String> = ops.iter().map(|op| op.to_string()).collect();
            assert_eq!(verdict.ok, expected, "{verdict}\n{shown:#?}");
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        // Both kinds of history were exercised.
        assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
    }

    /// The size the chaos tests produce: 8 keys x 3,000 ops, 10 clients.
    /// Run with `cargo test --release -p concord-integration --lib -- --ignored`.
    #[test]
    #[ignore = "timing run; meant for release builds"]
    fn large_history_timing() {
        for (keys, processes, total) in [(8, 10, 24_000), (1, 10, 10_000), (2, 40, 20_000)] {
            let ops = simulate(1, keys, processes, total, 10);
            let verdict = check(&ops, Duration::from_secs(60));
            println!("{keys} keys, {processes} clients: {verdict}");
            assert_ok(&verdict);
        }
    }

    #[test]
    fn pathological_history_runs_out_of_budget() {
        // 24 writes and 24 reads all overlapping: any interleaving is
        // possible. One more read sees a value nobody wrote, so the search
        // has to try them all before it can say no.
        let mut h = Builder::default();
        for v in 0..24 {
            h.write(v as usize, 9, v, 0, 100);
            h.read(24 + v as usize, 9, Some(v), 0, 100);
        }
        h.read(99, 9, Some(1_000), 0, 100);
        // A second, easy key still gets checked.
        h.write(0, 1, 1, 200, 210);
        h.read(0, 1, Some(1), 220, 230);
        let verdict = check(&h.ops, Duration::from_millis(50));
        assert!(!verdict.ok, "{verdict}");
        assert_eq!(verdict.timed_out_keys, [9], "{verdict}");
        assert!(verdict.failures.is_empty(), "{verdict}");
        assert!(verdict.elapsed < Duration::from_secs(5), "{verdict}");
        assert!(verdict.to_string().starts_with("UNDECIDED"), "{verdict}");
    }
}
