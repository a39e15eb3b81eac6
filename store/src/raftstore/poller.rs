//! The raft pollers and the store clock.
//!
//! A poller takes up to `max_batch_regions` scheduled peers from the ready
//! queue, runs their messages (proposing each peer's writes of the round as
//! one entry), collects their raft `Ready`s into ONE write
//! batch (handing entries already committed to the apply pool at once),
//! sends what may leave before the write (leaders' appends), writes the
//! batch with ONE fsync (group commit), then sends the messages that needed
//! it (votes, append answers) and hands the apply pool what the write
//! committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::context::{PollContext, StoreServices};
use super::router::{ReadyQueue, StoreRouter};

/// Messages taken from one mailbox per round, so that a flood to one region
/// cannot starve the others.
const MAX_MESSAGES_PER_PEER: usize = 4096;

/// Starts `count` pollers over `ready`; they stop when `stop` is set.
pub fn start_pollers(
    count: usize,
    services: &StoreServices,
    ready: ReadyQueue,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    (0..count.max(1))
        .map(|i| {
            let mut ctx = PollContext::new(services.clone());
            let ready = ready.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("raft-{i}"))
                .spawn(move || poll(&mut ctx, &ready, &stop))
                .expect("spawn raft poller")
        })
        .collect()
}

fn poll(ctx: &mut PollContext, ready: &ReadyQueue, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let Ok(first) = ready.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let batch: Vec<_> = std::iter::once(first)
            .chain(
                ready
                    .try_iter()
                    .take(ctx.cfg.max_batch_regions.saturating_sub(1)),
            )
            .collect();
        let mut peers = Vec::with_capacity(batch.len());
        for mailbox in &batch {
            let mut peer = mailbox.peer.lock();
            for msg in mailbox.drain(MAX_MESSAGES_PER_PEER) {
                peer.handle(ctx, msg);
            }
            peer.flush_reads();
            peer.collect_ready(ctx);
            ctx.router.set_asleep(mailbox, peer.is_asleep());
            peers.push(peer);
        }
        // A leader's appends may leave before its own log write (raft
        // thesis 10.2.1): the followers' fsyncs overlap the leader's.
        ctx.flush_messages();
        ctx.write_round();
        for peer in &mut peers {
            peer.post_ready(ctx);
        }
        drop(peers);
        ctx.flush_messages();
        for mailbox in &batch {
            ctx.router.release(mailbox);
        }
    }
}

/// Starts the store clock: every `interval` it ticks every awake peer, and
/// every `sleep_every` intervals the hibernating ones.
pub fn start_ticker(
    router: StoreRouter,
    interval: Duration,
    sleep_every: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("store-clock".into())
        .spawn(move || {
            let mut ticks = 0u64;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(interval);
                ticks += 1;
                router.tick(ticks.is_multiple_of(sleep_every.max(1)));
            }
        })
        .expect("spawn store clock")
}
