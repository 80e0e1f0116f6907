//! Durable Streams (`/v1/stream/*`): a stream is a topic of this engine whose name starts
//! with `/` (a name no `/v0` topic can have), with a [`StreamState`] beside its records.
//!
//! One record per append (binary streams) or per JSON message; a record's seq is its
//! position. The state — content type, TTL or expiry, closed flag, the last `Stream-Seq` and
//! every idempotent producer's `(epoch, seq)` — is logged with the append that changes it
//! (one WAL frame, [`crate::ops::K_STREAM_APPEND`]), so a retry after a crash is still
//! recognised as a duplicate. Everything else (creation, close without data, fork reference
//! counts, soft deletes) logs the whole state ([`crate::ops::K_STREAM_STATE`]).

use crate::codec::{Dec, Enc};
use crate::config::TopicConfig;
use crate::shard::now_ms;
use crate::topic::{NewRecord, Record, Topic};
use std::collections::HashMap;

/// Topic names of streams start with this (`/v0` names never do).
pub const PREFIX: char = '/';

/// What a stream was created with; compared by an idempotent `PUT`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StreamMeta {
    /// As given at creation (echoed on reads).
    pub content_type: String,
    /// Sliding time-to-live: the stream expires this long after its last read or write.
    pub ttl_secs: Option<u64>,
    /// Absolute expiry, as given, and in ms since the epoch.
    pub expires_at: Option<String>,
    pub expires_at_ms: Option<u64>,
    /// A fork reads positions `<= fork_base` from this stream (a topic name).
    pub fork_source: Option<String>,
    pub fork_base: u64,
    /// The fork's sub-offset (compared by an idempotent re-create).
    pub fork_sub: u64,
}

/// A stream's state beside its records.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    pub meta: StreamMeta,
    pub created_ms: u64,
    pub closed: bool,
    /// The producer tuple whose append closed the stream.
    pub closed_by: Option<(String, u64, u64)>,
    pub last_stream_seq: Option<String>,
    /// Idempotent producers: id -> (epoch, last accepted seq).
    pub producers: HashMap<String, (u64, u64)>,
    /// Forks reading from this stream.
    pub forks: u64,
    /// Deleted while forks still read it: gone for clients, kept for the forks.
    pub soft_deleted: bool,
    /// Last read or write (not logged: a restart counts as an access).
    pub touched_ms: u64,
}

/// What an append does to a stream's state, logged in the append's frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStamp {
    pub producer: Option<(String, u64, u64)>,
    pub stream_seq: Option<String>,
    pub close: bool,
}

/// An append's stream headers, checked on the stream's core.
#[derive(Clone, Debug, Default)]
pub struct StreamAppend {
    /// The request's content type; checked only when the append carries data.
    pub content_type: Option<String>,
    pub producer: Option<(String, u64, u64)>,
    pub stream_seq: Option<String>,
    pub close: bool,
}

/// Why a stream request was refused (the API maps each to its status).
#[derive(Clone, Debug, PartialEq)]
pub enum StreamError {
    /// Deleted while forks read it: `410`.
    Gone,
    /// Exists with another configuration: `409`.
    ConfigMismatch,
    /// Closed: `409` with `Stream-Closed: true` and the tail.
    Closed {
        next: u64,
    },
    ContentTypeMismatch,
    SeqRegression,
    /// `403` with the current epoch.
    StaleEpoch {
        epoch: u64,
    },
    /// `409` with the expected and received seqs.
    ProducerGap {
        expected: u64,
        received: u64,
    },
    /// A new epoch must start at seq 0: `400`.
    EpochNeedsSeqZero,
    /// Not a stream (or a stream used as a topic): `404`.
    NotAStream,
    /// A fork's base is past its source's tail: `400`.
    BadForkOffset,
}

/// The stream-level outcome of an append (in [`crate::mesh::AppendReply`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamAck {
    /// The stream's fork base: positions are `base + seq`.
    pub base: u64,
    /// The producer's highest accepted seq (new or duplicate).
    pub producer_seq: Option<u64>,
    pub duplicate: bool,
    pub closed: bool,
}

#[derive(Debug)]
pub enum StreamCmd {
    /// `PUT`: create, or confirm an existing stream's configuration.
    Create {
        topic: String,
        config: TopicConfig,
        meta: StreamMeta,
        closed: bool,
        records: Vec<NewRecord>,
    },
    /// `HEAD` (and `offset=now`, with `touch`). `internal` skips the soft-delete check.
    Head {
        topic: String,
        touch: bool,
        internal: bool,
    },
    /// Records after position `from_pos` (at most `limit`), waiting up to `wait_ms` for
    /// some. A fork answers `redirect` for a position inside what it inherited: the caller
    /// reads that part from `meta.fork_source`.
    Read {
        topic: String,
        from_pos: u64,
        limit: usize,
        wait_ms: u64,
        internal: bool,
    },
    /// `POST` with `Stream-Closed: true` and no body.
    Close { topic: String, req: StreamAppend },
    /// `DELETE`: soft when forks still read the stream.
    Delete { topic: String },
    /// A fork was created (+1) or removed (-1) on this source.
    Ref { topic: String, delta: i64 },
}

impl StreamCmd {
    pub fn topic(&self) -> &str {
        match self {
            StreamCmd::Create { topic, .. }
            | StreamCmd::Head { topic, .. }
            | StreamCmd::Read { topic, .. }
            | StreamCmd::Close { topic, .. }
            | StreamCmd::Delete { topic }
            | StreamCmd::Ref { topic, .. } => topic,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StreamInfo {
    pub meta: StreamMeta,
    pub created: bool,
    pub created_ms: u64,
    pub head: u64,
    pub closed: bool,
    pub closed_by: Option<(String, u64, u64)>,
    pub soft_deleted: bool,
}

#[derive(Debug)]
pub enum StreamReply {
    Info(StreamInfo),
    Read {
        records: Vec<Record>,
        info: StreamInfo,
        redirect: bool,
    },
    Closed {
        info: StreamInfo,
        ack: StreamAck,
    },
    /// `source` is the fork's source, whose reference the caller gives back.
    Deleted {
        soft: bool,
        source: Option<String>,
    },
}

impl StreamMeta {
    fn encode(&self, e: &mut Enc<'_>) {
        e.bytes(self.content_type.as_bytes());
        e.u64(self.ttl_secs.map_or(0, |t| t + 1));
        e.opt_bytes(self.expires_at.as_deref().map(str::as_bytes));
        e.u64(self.expires_at_ms.unwrap_or(0));
        e.opt_bytes(self.fork_source.as_deref().map(str::as_bytes));
        e.u64(self.fork_base).u64(self.fork_sub);
    }

    fn decode(d: &mut Dec<'_>) -> Option<StreamMeta> {
        let content_type = d.str()?.to_owned();
        let ttl = d.u64()?;
        let expires_at = d.opt_str()?.map(str::to_owned);
        let ms = d.u64()?;
        Some(StreamMeta {
            content_type,
            ttl_secs: ttl.checked_sub(1),
            expires_at_ms: expires_at.as_ref().map(|_| ms),
            expires_at,
            fork_source: d.opt_str()?.map(str::to_owned),
            fork_base: d.u64()?,
            fork_sub: d.u64()?,
        })
    }
}

fn encode_producer(e: &mut Enc<'_>, p: &Option<(String, u64, u64)>) {
    match p {
        Some((id, epoch, seq)) => e.u8(1).bytes(id.as_bytes()).u64(*epoch).u64(*seq),
        None => e.u8(0),
    };
}

fn decode_producer(d: &mut Dec<'_>) -> Option<Option<(String, u64, u64)>> {
    Some(match d.u8()? {
        0 => None,
        1 => Some((d.str()?.to_owned(), d.u64()?, d.u64()?)),
        _ => return None,
    })
}

impl StreamState {
    pub fn encode(&self, e: &mut Enc<'_>) {
        self.meta.encode(e);
        e.u64(self.created_ms)
            .u8(self.closed as u8 | (self.soft_deleted as u8) << 1)
            .u64(self.forks);
        encode_producer(e, &self.closed_by);
        e.opt_bytes(self.last_stream_seq.as_deref().map(str::as_bytes));
        e.u32(self.producers.len() as u32);
        for (id, (epoch, seq)) in &self.producers {
            e.bytes(id.as_bytes()).u64(*epoch).u64(*seq);
        }
    }

    pub fn decode(d: &mut Dec<'_>) -> Option<StreamState> {
        let meta = StreamMeta::decode(d)?;
        let created_ms = d.u64()?;
        let flags = d.u8()?;
        let forks = d.u64()?;
        let closed_by = decode_producer(d)?;
        let last_stream_seq = d.opt_str()?.map(str::to_owned);
        let n = d.u32()? as usize;
        let mut producers = HashMap::with_capacity(n.min(1 << 12));
        for _ in 0..n {
            let id = d.str()?.to_owned();
            producers.insert(id, (d.u64()?, d.u64()?));
        }
        Some(StreamState {
            meta,
            created_ms,
            closed: flags & 1 != 0,
            soft_deleted: flags & 2 != 0,
            forks,
            closed_by,
            last_stream_seq,
            producers,
            touched_ms: now_ms(),
        })
    }

    /// Applies an append's stamp (live and at replay).
    pub fn apply_stamp(&mut self, stamp: &StreamStamp) {
        if let Some((id, epoch, seq)) = &stamp.producer {
            self.producers.insert(id.clone(), (*epoch, *seq));
        }
        if let Some(s) = &stamp.stream_seq {
            self.last_stream_seq = Some(s.clone());
        }
        if stamp.close {
            self.closed = true;
            self.closed_by = stamp.producer.clone();
        }
    }

    /// When the stream expires (ms since the epoch), if it does.
    pub fn expiry(&self, t: &Topic) -> Option<u64> {
        let sliding = self.meta.ttl_secs.map(|ttl| {
            // Not the topic's read time: a fork's reads of its source do not keep it alive.
            let last = self.created_ms.max(self.touched_ms).max(t.last_write_ts);
            last.saturating_add(ttl.saturating_mul(1000))
        });
        match (sliding, self.meta.expires_at_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What callers see: the visible head, and `closed` only once every record before the
    /// close is visible too (an `fsync` stream's final append shows before its close).
    fn info(&self, t: &Topic, created: bool) -> StreamInfo {
        StreamInfo {
            meta: self.meta.clone(),
            created,
            created_ms: self.created_ms,
            head: t.visible_seq,
            closed: self.closed && t.visible_seq >= t.head_seq,
            closed_by: self.closed_by.clone(),
            soft_deleted: self.soft_deleted,
        }
    }
}

/// The media type of a content type, lower-cased, without parameters.
pub fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decides an append against the stream's state (SPEC of the protocol, §5.2 and §5.2.1):
/// `Ok(None)` to go ahead, `Ok(Some(ack))` for a duplicate that succeeds without writing.
pub fn admit(
    s: &StreamState,
    req: &StreamAppend,
    has_data: bool,
    head: u64,
) -> Result<Option<StreamAck>, StreamError> {
    if let Some((id, epoch, seq)) = &req.producer {
        match s.producers.get(id) {
            Some(&(cur, _)) if *epoch < cur => {
                return Err(StreamError::StaleEpoch { epoch: cur });
            }
            Some(&(cur, last)) if *epoch == cur => {
                if *seq <= last {
                    return Ok(Some(StreamAck {
                        base: s.meta.fork_base,
                        producer_seq: Some(last),
                        duplicate: true,
                        closed: s.closed,
                    }));
                }
                if *seq > last + 1 {
                    return Err(StreamError::ProducerGap {
                        expected: last + 1,
                        received: *seq,
                    });
                }
            }
            _ => {
                // A new producer, or a new epoch: it starts at 0.
                if *seq != 0 {
                    if s.producers.contains_key(id) {
                        return Err(StreamError::EpochNeedsSeqZero);
                    }
                    return Err(StreamError::ProducerGap {
                        expected: 0,
                        received: *seq,
                    });
                }
            }
        }
    }
    if s.closed {
        if !has_data && req.close && req.producer.is_none() {
            // Closing a closed stream again is a no-op.
            return Ok(Some(StreamAck {
                base: s.meta.fork_base,
                producer_seq: None,
                duplicate: true,
                closed: true,
            }));
        }
        return Err(StreamError::Closed {
            next: s.meta.fork_base + head,
        });
    }
    if has_data {
        if let Some(ct) = &req.content_type {
            if essence(ct) != essence(&s.meta.content_type) {
                return Err(StreamError::ContentTypeMismatch);
            }
        }
    }
    if let (Some(new), Some(last)) = (&req.stream_seq, &s.last_stream_seq) {
        if new.as_bytes() <= last.as_bytes() {
            return Err(StreamError::SeqRegression);
        }
    }
    Ok(None)
}

/// `StreamMeta` for tests and callers that build one field by field.
pub fn meta(content_type: &str) -> StreamMeta {
    StreamMeta {
        content_type: content_type.to_string(),
        ..Default::default()
    }
}

mod exec;
pub(crate) use exec::apply_state;

#[cfg(test)]
mod tests;
