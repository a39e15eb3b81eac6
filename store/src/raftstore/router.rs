//! Mailboxes of the region peers, and the ready queue that the raft pollers
//! drain. A peer is scheduled onto the ready queue when its first message
//! arrives; a poller then owns it until the mailbox is empty again, so one
//! peer is never processed by two pollers at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use parking_lot::Mutex;

use super::msg::PeerMsg;
use super::peer::Peer;

/// One region peer's inbox and the peer itself.
pub struct Mailbox {
    /// The region the peer belongs to.
    pub region_id: u64,
    tx: Sender<PeerMsg>,
    rx: Receiver<PeerMsg>,
    scheduled: AtomicBool,
    closed: AtomicBool,
    /// The peer hibernates: the store clock sends it only sleep ticks.
    asleep: AtomicBool,
    /// The peer; locked by the poller that runs it.
    pub peer: Mutex<Peer>,
}

impl Mailbox {
    /// Takes up to `max` queued messages.
    pub fn drain(&self, max: usize) -> impl Iterator<Item = PeerMsg> + '_ {
        self.rx.try_iter().take(max)
    }

    /// Whether messages are waiting.
    pub fn has_messages(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Whether the peer was destroyed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Acquire)
    }
}

/// Routes messages to region peers and schedules them for polling.
#[derive(Clone)]
pub struct StoreRouter {
    mailboxes: Arc<DashMap<u64, Arc<Mailbox>>>,
    /// The mailboxes of peers not hibernating, which the clock ticks every
    /// interval (walking all of them would cost as much as the ticks).
    awake: Arc<DashMap<u64, Arc<Mailbox>>>,
    ready_tx: Sender<Arc<Mailbox>>,
}

/// The receiving end of the ready queue, for the pollers.
pub type ReadyQueue = Receiver<Arc<Mailbox>>;

impl StoreRouter {
    /// A router with no peers, and the ready queue its pollers read.
    pub fn new() -> (StoreRouter, ReadyQueue) {
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        let router = StoreRouter {
            mailboxes: Arc::new(DashMap::new()),
            awake: Arc::new(DashMap::new()),
            ready_tx,
        };
        (router, ready_rx)
    }

    /// Adds a peer; it is polled once right away so that it can start.
    pub fn register(&self, peer: Peer) -> Arc<Mailbox> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mailbox = Arc::new(Mailbox {
            region_id: peer.region_id(),
            tx,
            rx,
            scheduled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            peer: Mutex::new(peer),
        });
        self.mailboxes.insert(mailbox.region_id, mailbox.clone());
        self.awake.insert(mailbox.region_id, mailbox.clone());
        self.schedule(&mailbox);
        mailbox
    }

    /// Removes a destroyed peer; later messages to its region find no mailbox.
    pub fn close(&self, region_id: u64) {
        self.awake.remove(&region_id);
        if let Some((_, mailbox)) = self.mailboxes.remove(&region_id) {
            mailbox.closed.store(true, Ordering::Release);
        }
    }

    /// Closes every mailbox (the store is shutting down).
    pub fn close_all(&self) {
        for id in self.region_ids() {
            self.close(id);
        }
    }

    /// Whether the store has a peer of `region_id`.
    pub fn contains(&self, region_id: u64) -> bool {
        self.mailboxes.contains_key(&region_id)
    }

    /// Ids of every region with a peer on this store.
    pub fn region_ids(&self) -> Vec<u64> {
        self.mailboxes.iter().map(|e| *e.key()).collect()
    }

    /// Delivers `msg` to the peer of `region_id`; gives the message back if
    /// there is no such peer.
    pub fn send(&self, region_id: u64, msg: PeerMsg) -> Result<(), Box<PeerMsg>> {
        let Some(mailbox) = self.mailboxes.get(&region_id).map(|m| m.clone()) else {
            return Err(Box::new(msg));
        };
        // Cannot fail: the mailbox owns its receiver.
        let _ = mailbox.tx.send(msg);
        self.schedule(&mailbox);
        Ok(())
    }

    /// Records whether the peer of `mailbox` hibernates (called by the
    /// poller that just ran it), for the store clock.
    pub fn set_asleep(&self, mailbox: &Arc<Mailbox>, asleep: bool) {
        if mailbox.asleep.swap(asleep, Ordering::AcqRel) == asleep || mailbox.is_closed() {
            return;
        }
        if asleep {
            self.awake.remove(&mailbox.region_id);
        } else {
            self.awake.insert(mailbox.region_id, mailbox.clone());
        }
    }

    /// One tick of the store clock: a `Tick` to every awake peer and, when
    /// `sleep_tick`, a `SleepTick` to every hibernating one.
    pub fn tick(&self, sleep_tick: bool) {
        for entry in self.awake.iter() {
            let _ = entry.tx.send(PeerMsg::Tick);
            self.schedule(entry.value());
        }
        if sleep_tick {
            for entry in self.mailboxes.iter().filter(|m| m.is_asleep()) {
                let _ = entry.tx.send(PeerMsg::SleepTick);
                self.schedule(entry.value());
            }
        }
    }

    /// How many peers hibernate.
    pub fn hibernating(&self) -> usize {
        self.mailboxes.len().saturating_sub(self.awake.len())
    }

    fn schedule(&self, mailbox: &Arc<Mailbox>) {
        if !mailbox.scheduled.swap(true, Ordering::AcqRel) {
            // The pollers only stop when the router is gone.
            let _ = self.ready_tx.send(mailbox.clone());
        }
    }

    /// Called by a poller when it is done with `mailbox`: reschedules it if
    /// messages arrived while it was being processed.
    pub fn release(&self, mailbox: &Arc<Mailbox>) {
        mailbox.scheduled.store(false, Ordering::Release);
        if mailbox.has_messages() && !mailbox.is_closed() {
            self.schedule(mailbox);
        }
    }
}
