//! `shards`: the storage engine of one topics core. No HTTP here: the server turns requests
//! into [`mesh::Command`]s, a [`shard::Shard`] executes them against its topics and its
//! write-ahead log, and answers with a [`mesh::Reply`].

pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod event;
pub mod mesh;
pub mod metrics;
pub mod ops;
pub mod overload;
pub mod queue;
pub mod router;
pub mod segment;
pub mod shard;
pub mod snapshot;
pub mod stream;
pub mod topic;
pub mod wal;
pub mod watch;

pub use config::{ConfigPatch, Discard, Durability, TopicConfig, TopicType};
pub use mesh::{shard_for, Command, Reply, ShardError};
pub use shard::{now_ms, Shard, ShardOptions};
pub use topic::{NewRecord, Record, TagMatch};
pub use wal::ReplayProgress;
