//! Command-line flags, each also a `TOPICS_*` environment variable (SPEC §9).

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "topics",
    version,
    about = "A persistent event log over a JSON-first HTTP API"
)]
pub struct Config {
    /// Address to bind.
    #[arg(long, env = "TOPICS_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0 picks a free port and logs it).
    #[arg(long, env = "TOPICS_PORT", default_value_t = 4000)]
    pub port: u16,

    /// Directory for the write-ahead log (one subdirectory per shard).
    #[arg(long, env = "TOPICS_DATA_DIR", default_value = "./topics-data")]
    pub data_dir: PathBuf,

    /// Number of shards: one pinned executor per shard. Defaults to the number of cores.
    #[arg(long, env = "TOPICS_SHARDS")]
    pub shards: Option<usize>,

    /// Longest time a `disk` topic's acknowledged write waits in memory before its WAL sync.
    #[arg(long, env = "TOPICS_SYNC_INTERVAL_MS", default_value_t = 10)]
    pub sync_interval_ms: u64,

    /// Largest request body accepted; larger ones get 413 before they are read.
    #[arg(long, env = "TOPICS_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,

    /// Whether a write to a missing topic creates it (a write's `create` flag overrides).
    #[arg(long, env = "TOPICS_AUTO_CREATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create: bool,

    /// Memory for record payloads per core (the hot tail); older records are served from
    /// segment files on disk.
    #[arg(long, env = "TOPICS_HOT_TAIL_BYTES", default_value_t = 64 << 20)]
    pub hot_tail_bytes: u64,

    /// Longest time between checkpoints (segments + snapshot) while anything changed; a
    /// checkpoint also starts when the WAL or the unflushed tail grows past its budget.
    #[arg(long, env = "TOPICS_CHECKPOINT_INTERVAL_MS", default_value_t = 30_000)]
    pub checkpoint_interval_ms: u64,

    /// API keys, comma-separated: `key`, `key:scopes`, `key:scopes:prefixes`, `key::prefixes`
    /// (scopes read, write, delete, admin or r, w, d, a, rw joined by `+`; topic prefixes
    /// joined by `|`). None: auth off.
    #[arg(long, env = "TOPICS_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// Start without API keys on a non-loopback address (anyone who can connect has every
    /// right).
    #[arg(long, env = "TOPICS_ALLOW_INSECURE_NO_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_insecure_no_auth: bool,

    /// Require a key on /v0/health and /v0/ready too.
    #[arg(long, env = "TOPICS_PROBE_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub probe_auth: bool,

    /// Most topics (0 = unlimited); past it, creating a topic answers 429 throttled.
    #[arg(long, env = "TOPICS_MAX_TOPICS", default_value_t = 100_000)]
    pub max_topics: usize,

    /// Most routers (0 = unlimited); past it, creating a router answers 429 throttled.
    #[arg(long, env = "TOPICS_MAX_ROUTERS", default_value_t = 10_000)]
    pub max_routers: usize,

    /// Requests in flight per core (appends, diffs, claims) before the lowest-priority ones
    /// are shed with 429 throttled (0 = unlimited).
    #[arg(long, env = "TOPICS_MAX_QUEUE_PER_CORE", default_value_t = 4096)]
    pub max_queue_per_core: usize,

    /// Most retained payload bytes, all topics together (0 = unlimited); past it, writes
    /// answer 429 throttled.
    #[arg(long, env = "TOPICS_MAX_RETAINED_BYTES", default_value_t = 0)]
    pub max_retained_bytes: u64,

    /// Most watch sessions at once (0 = unlimited); past it `POST /v0/watch` gets 429.
    #[arg(long, env = "TOPICS_MAX_WATCH_SESSIONS", default_value_t = 10_000)]
    pub max_watch_sessions: usize,

    /// Most open SSE streams at once (0 = unlimited); past it opening a stream gets 429.
    #[arg(long, env = "TOPICS_MAX_SSE_CONNECTIONS", default_value_t = 10_000)]
    pub max_sse_connections: usize,

    /// Durable Streams (`/v1/stream/*`): how long a `live=long-poll` read waits for data
    /// before it answers 204.
    #[arg(long, env = "TOPICS_DS_LONG_POLL_MS", default_value_t = 20_000)]
    pub ds_long_poll_ms: u64,

    /// Durable Streams: how long a `live=sse` response stays open before the server closes
    /// it (clients reconnect from the last offset; the protocol asks for about 60 s).
    #[arg(long, env = "TOPICS_DS_SSE_MS", default_value_t = 60_000)]
    pub ds_sse_ms: u64,

    /// Durable Streams: the commit class of streams (fsync, disk or memory); `fsync`
    /// acknowledges an append once it is on stable storage.
    #[arg(long, env = "TOPICS_DS_DURABILITY", default_value = "fsync")]
    pub ds_durability: String,
}

impl Config {
    pub fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}
