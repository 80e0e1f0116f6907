//! Cross-shard command and reply types, and the topic -> shard hash.
//!
//! Everything here is `Send`: a request for a topic owned by another core is turned into a
//! [`Command`] and crosses to the owner over the glommio channel mesh; the [`Reply`] comes back
//! the same way. Payload bytes travel as `Arc`s, never copied.

use crate::config::{ConfigPatch, TopicConfig, TopicType};
use crate::topic::{NewRecord, Record, TagMatch};

/// The shard that owns `topic`: FNV-1a of the name's bytes, modulo the shard count.
pub fn shard_for(topic: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

#[derive(Debug)]
pub enum Command {
    PutTopic {
        topic: String,
        patch: ConfigPatch,
    },
    GetTopic {
        topic: String,
        touch: bool,
    },
    /// This shard's topics named `> after` with `prefix`, in byte order, at most `limit`.
    ListTopics {
        prefix: String,
        after: Option<String>,
        limit: usize,
        /// Only topics starting with one of these (an API key's allowlist).
        allowed: Option<Vec<String>>,
    },
    DeleteTopic {
        topic: String,
        if_empty: bool,
    },
    Append(AppendCmd),
    Diff(DiffCmd),
    DeleteRecords {
        topic: String,
        before_seq: Option<u64>,
        matcher: Option<TagMatch>,
    },
    /// Create or update a router (handled by shard 0, which serialises router changes).
    PutRouter {
        name: String,
        config: RouterConfig,
    },
    /// Install a validated router on its source's shard.
    InstallRouter {
        name: String,
        config: RouterConfig,
    },
    /// This shard's routers matching the filters, in name order.
    ListRouters(RouterFilter),
    DeleteRouter {
        name: String,
    },
    /// Remove every router of this shard whose source or dest is `topic`.
    RemoveRoutersFor {
        topic: String,
    },
    /// Watch sessions, on the shard `hash(wid)`.
    CreateWatch {
        wid: String,
        spec: crate::watch::WatchSpec,
    },
    OpenWatch {
        wid: String,
        rewind: Option<Vec<(String, u64)>>,
        /// SHA-256 of the caller's API key (a session with an owner opens only for it).
        key: Option<[u8; 32]>,
    },
    WatchProgress {
        wid: String,
        cursors: Vec<(String, u64)>,
        close: bool,
    },
    /// This core's figures for `/v0/metrics`.
    Stats,
    /// Queues (SPEC §7).
    Claim(ClaimCmd),
    Queue(QueueCmd),
    /// Durable Streams (`/v1`).
    Stream(crate::stream::StreamCmd),
}

#[derive(Debug, Clone)]
pub struct ClaimCmd {
    pub topic: String,
    pub node: String,
    pub max: usize,
    pub lease_ms: Option<u64>,
    pub wait_ms: u64,
}

/// What a queue call does to the jobs it names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueAction {
    Ack,
    Nack {
        delay_ms: u64,
    },
    Extend {
        lease_ms: u64,
    },
    /// Give leases back at once (a `/work` stream that ended).
    Release,
    /// Only report which of the jobs are still held.
    Held,
}

#[derive(Debug, Clone)]
pub struct QueueCmd {
    pub topic: String,
    pub node: String,
    pub seqs: Vec<u64>,
    /// Lease ids, one per seq, when the caller gave them.
    pub lease_ids: Option<Vec<u64>>,
    pub action: QueueAction,
}

#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub record: Record,
    pub lease_id: u64,
    pub deadline: u64,
    pub deliveries: u32,
}

#[derive(Debug)]
pub struct ClaimReply {
    pub claimed: Vec<ClaimedJob>,
    pub ready: u64,
}

#[derive(Debug)]
pub struct QueueReply {
    /// Seqs the action applied to, and those skipped (not held by the caller).
    pub done: Vec<u64>,
    pub skipped: Vec<u64>,
    /// New deadlines (extend).
    pub deadlines: Vec<(u64, u64)>,
    pub ready: u64,
    pub in_flight: u64,
    pub timings: Timings,
}

#[derive(Debug, Clone, Copy)]
pub struct QueueInfo {
    pub ready: u64,
    pub in_flight: u64,
    pub dead_lettered: u64,
}

/// A router's configuration (SPEC §8).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub source: String,
    pub dest: String,
    pub preserve_node: bool,
    pub preserve_tag: bool,
    pub create_dest: bool,
    pub filter: Option<TagMatch>,
    pub allow_cycle: bool,
    pub exactly_once: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RouterFilter {
    pub name: Option<String>,
    pub prefix: String,
    pub source: Option<String>,
    pub dest: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct RouterInfo {
    pub name: String,
    pub config: RouterConfig,
    pub forwarded_total: u64,
    pub cursor: u64,
}

/// Marks a router's copy so the dest can drop what it already holds (exactly-once).
#[derive(Debug, Clone)]
pub struct RouterMark {
    pub router: String,
    /// The source seq of each record in the batch, ascending.
    pub src_seqs: Vec<u64>,
}

impl Command {
    /// The topic this command is about; `None` for commands every shard answers.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Command::PutTopic { topic, .. }
            | Command::GetTopic { topic, .. }
            | Command::DeleteTopic { topic, .. }
            | Command::DeleteRecords { topic, .. } => Some(topic),
            Command::Append(a) => Some(&a.topic),
            Command::Diff(d) => Some(&d.topic),
            Command::Claim(c) => Some(&c.topic),
            Command::Queue(c) => Some(&c.topic),
            Command::Stream(c) => Some(c.topic()),
            Command::InstallRouter { config, .. } => Some(&config.source),
            Command::ListTopics { .. }
            | Command::Stats
            | Command::PutRouter { .. }
            | Command::ListRouters(_)
            | Command::DeleteRouter { .. }
            | Command::RemoveRoutersFor { .. }
            | Command::CreateWatch { .. }
            | Command::OpenWatch { .. }
            | Command::WatchProgress { .. } => None,
        }
    }
}

#[derive(Debug)]
pub struct AppendCmd {
    pub topic: String,
    pub records: Vec<NewRecord>,
    pub idempotency_key: Option<String>,
    /// `Some(false)` forbids lazy creation, `Some(true)` forces it, `None` uses the default.
    pub create: Option<bool>,
    /// Applied only if this write creates the topic.
    pub config: Option<ConfigPatch>,
    /// Set by exactly-once routers.
    pub router_mark: Option<RouterMark>,
    /// Under overload, wait for room instead of being refused with 429.
    pub disable_backpressure: bool,
    /// A Durable Stream append: its headers are checked against the stream's state, and
    /// what it changes there is logged with the records.
    pub stream: Option<crate::stream::StreamAppend>,
}

#[derive(Debug)]
pub struct DiffCmd {
    pub topic: String,
    pub from_seq: u64,
    pub limit: usize,
    pub nodes: Vec<String>,
    pub wait_ms: u64,
    /// Only records already on stable storage (watch `consistency: "strong"`).
    pub durable_only: bool,
}

/// How a shard reaches the others (implemented by the server's channel mesh).
pub trait Remote {
    fn call(
        &self,
        shard: usize,
        cmd: Command,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + '_>>;
    fn shards(&self) -> usize;
}

#[derive(Debug, Clone, PartialEq)]
pub enum ShardError {
    TopicNotFound,
    TopicExistsIncompatible {
        current: TopicType,
    },
    TopicNotEmpty {
        count: u64,
    },
    TopicFull {
        cap_records: u64,
        cap_bytes: u64,
    },
    RouterCycle {
        cycle: Vec<String>,
    },
    /// A router change that conflicts with existing routers (source/dest change, fan-in).
    RouterIncompatible {
        message: String,
    },
    /// A topic other than the request's own is missing.
    OtherTopicNotFound {
        topic: String,
    },
    SessionNotFound,
    /// A server-wide resource cap (SPEC §1): `429 throttled` with `detail.limit` / `max`.
    ResourceCap {
        limit: &'static str,
        max: usize,
    },
    /// Overload: the request was shed; retry after this long.
    Throttled {
        retry_after_ms: u64,
    },
    /// The caller's API key may not do this (e.g. open another key's watch session).
    Forbidden(String),
    NotAQueue,
    NotReady,
    ShuttingDown,
    /// Out of disk space: the write was refused and nothing of it is visible (`507`).
    DiskFull,
    Storage(String),
    /// A Durable Streams refusal.
    Stream(crate::stream::StreamError),
}

#[derive(Debug)]
pub enum Reply {
    Put(PutReply),
    Info(Box<TopicInfo>),
    List(Vec<TopicSummary>),
    DeletedTopic { deleted: bool },
    Appended(AppendReply),
    Diff(DiffReply),
    DeletedRecords(DeleteReply),
    Router { created: bool, info: RouterInfo },
    Routers(Vec<RouterInfo>),
    RouterDeleted { deleted: bool },
    RoutersRemoved(Vec<String>),
    WatchOk,
    Watch(Box<crate::watch::WatchSpec>),
    Claimed(ClaimReply),
    Stats(Box<crate::metrics::ShardStats>),
    Queue(QueueReply),
    Stream(crate::stream::StreamReply),
    Err(ShardError),
}

/// Time spent in the storage engine, for the `performance` block.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub wal_append_ms: f64,
    pub fsync_ms: f64,
    /// Time spent waiting for room under overload (`disable_backpressure`).
    pub throttle_wait_ms: f64,
}

#[derive(Debug)]
pub struct PutReply {
    pub created: bool,
    pub config: TopicConfig,
    pub timings: Timings,
}

#[derive(Debug)]
pub struct TopicInfo {
    pub config: TopicConfig,
    pub head_seq: u64,
    pub earliest_seq: u64,
    pub count: u64,
    pub bytes: u64,
    pub last_write_ts: u64,
    pub last_read_ts: u64,
    pub effective_priority: i64,
    pub queue: Option<QueueInfo>,
}

#[derive(Debug, Clone)]
pub struct TopicSummary {
    pub topic: String,
    pub head_seq: u64,
    pub earliest_seq: u64,
    pub count: u64,
    pub bytes: u64,
    pub durable: bool,
    pub effective_priority: i64,
}

#[derive(Debug)]
pub struct AppendReply {
    pub created: bool,
    pub deduped: bool,
    pub first_seq: u64,
    pub last_seq: u64,
    pub head_seq: u64,
    pub timings: Timings,
    /// A Durable Stream append's outcome.
    pub stream: Option<crate::stream::StreamAck>,
}

#[derive(Debug)]
pub struct Tombstone {
    pub gap_from: u64,
    pub gap_to: u64,
    pub reason: &'static str,
    pub missed_estimate: u64,
}

#[derive(Debug)]
pub struct DiffReply {
    pub records: Vec<Record>,
    pub next_from_seq: u64,
    pub head_seq: u64,
    pub earliest_seq: u64,
    pub tombstone: Option<Tombstone>,
    pub scanned: u64,
    pub dedupe_node: bool,
}

#[derive(Debug)]
pub struct DeleteReply {
    pub deleted: u64,
    pub earliest_seq: u64,
    pub head_seq: u64,
    pub count: u64,
    pub bytes: u64,
    pub timings: Timings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_hash_is_stable_and_spread() {
        assert_eq!(shard_for("orders", 1), 0);
        assert_eq!(shard_for("orders", 2), shard_for("orders", 2));
        let ones = (0..1000)
            .filter(|i| shard_for(&format!("t{i}"), 2) == 1)
            .count();
        assert!((400..600).contains(&ones), "{ones}");
    }
}
