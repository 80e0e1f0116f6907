//! Per-core figures for `GET /v0/metrics`: what the storage engine holds and does, and the
//! request counters the server records on this core. Collected by `Command::Stats` from each
//! shard and summed (or labelled by core) by the API layer.

use crate::config::Durability;
use crate::shard::{now_ms, Shard};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// Latencies in microseconds, 1 µs to 100 s at 2 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds (low >= 1, high >= 2 * low, 2 significant digits): never fails.
    Histogram::new_with_bounds(1, 100_000_000, 2).expect("valid histogram bounds")
}

/// Requests served on one core: count per (route, status), latency per route.
#[derive(Clone, Default)]
pub struct RequestMetrics {
    /// Requests per route, then per status.
    pub counts: BTreeMap<String, BTreeMap<u16, u64>>,
    pub latency: BTreeMap<String, Histogram<u64>>,
}

impl RequestMetrics {
    /// Counts a request; allocates only the first time a (route, status) shows up.
    pub fn record(&mut self, route: &str, status: u16, micros: u64) {
        let h = match self.latency.get_mut(route) {
            Some(h) => h,
            None => self
                .latency
                .entry(route.to_string())
                .or_insert_with(latency_histogram),
        };
        h.saturating_record(micros.max(1));
        let statuses = match self.counts.get_mut(route) {
            Some(s) => s,
            None => self.counts.entry(route.to_string()).or_default(),
        };
        *statuses.entry(status).or_default() += 1;
    }
}

/// One core's figures.
#[derive(Clone)]
pub struct ShardStats {
    pub shard: usize,
    /// Topics by durability class: fsync, disk, memory, ephemeral.
    pub topics_by_class: [u64; 4],
    pub queues: u64,
    pub routers: u64,
    pub sessions: u64,
    pub records: u64,
    pub bytes: u64,
    pub leases_in_flight: u64,
    pub hot_tail_bytes: u64,
    pub segments: u64,
    pub checkpoints: u64,
    pub wal_frames: u64,
    pub wal_flushes: u64,
    pub wal_bytes_written: u64,
    pub wal_rotations: u64,
    /// Bytes queued for the WAL and not yet durable.
    pub wal_pending_bytes: u64,
    /// Latency of each synchronous WAL write (an O_DSYNC write is the fsync), in µs.
    pub fsync: Histogram<u64>,
    pub requests: RequestMetrics,
}

impl std::fmt::Debug for ShardStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStats")
            .field("shard", &self.shard)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// This core's figures for `/v0/metrics`.
    pub fn stats(&self) -> ShardStats {
        let now = now_ms();
        let mut s = ShardStats {
            shard: self.opts.id,
            topics_by_class: [0; 4],
            queues: 0,
            routers: self.routers.borrow().len() as u64,
            sessions: self.sessions.borrow().len() as u64,
            records: 0,
            bytes: 0,
            leases_in_flight: 0,
            hot_tail_bytes: 0,
            segments: self.store.list().len() as u64,
            checkpoints: self.ckpt.completed.get(),
            wal_frames: self.wal.stats.frames.get(),
            wal_flushes: self.wal.stats.flushes.get(),
            wal_bytes_written: self.wal.stats.bytes_written.get(),
            wal_rotations: self.wal.stats.rotations.get(),
            wal_pending_bytes: self.wal.pending_bytes(),
            fsync: self
                .wal
                .stats
                .sync_latency
                .borrow()
                .clone()
                .unwrap_or_else(latency_histogram),
            requests: self.requests.borrow().clone(),
        };
        for t in self.topics.borrow().values() {
            let class = match t.config.durability {
                Durability::Fsync => 0,
                Durability::Disk => 1,
                Durability::Memory => 2,
                Durability::Ephemeral => 3,
            };
            s.topics_by_class[class] += 1;
            s.records += t.count;
            s.bytes += t.bytes;
            s.hot_tail_bytes += t.mem_bytes;
            if let Some(q) = &t.queue {
                s.queues += 1;
                s.leases_in_flight += q.in_flight(now);
            }
        }
        s
    }
}
