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
            Command::ListTopics { .. } => None,
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
}

#[derive(Debug)]
pub struct DiffCmd {
    pub topic: String,
    pub from_seq: u64,
    pub limit: usize,
    pub nodes: Vec<String>,
    pub wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ShardError {
    TopicNotFound,
    TopicExistsIncompatible { current: TopicType },
    TopicNotEmpty { count: u64 },
    TopicFull { cap_records: u64, cap_bytes: u64 },
    NotReady,
    ShuttingDown,
    Storage(String),
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
    Err(ShardError),
}

/// Time spent in the storage engine, for the `performance` block.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub wal_append_ms: f64,
    pub fsync_ms: f64,
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
