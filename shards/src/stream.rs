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
use crate::mesh::{Command, DiffCmd, Reply, ShardError};
use crate::ops::Op;
use crate::shard::{apply, now_ms, Shard};
use crate::topic::{NewRecord, Record, Topic};
use std::collections::HashMap;
use std::time::Duration;

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

impl Shard {
    /// The stream `topic`, live: a missing topic, a `/v0` topic, and an expired stream (which
    /// is dropped here) are all `404`.
    pub(crate) fn live_stream<'a>(
        &self,
        topics: &'a mut std::collections::BTreeMap<String, Box<Topic>>,
        topic: &str,
        internal: bool,
    ) -> Result<&'a mut Topic, ShardError> {
        let now = now_ms();
        let expired = match topics.get(topic) {
            None => return Err(ShardError::TopicNotFound),
            Some(t) => match &t.stream {
                None => return Err(ShardError::Stream(StreamError::NotAStream)),
                Some(s) => s.expiry(t).is_some_and(|e| now >= e),
            },
        };
        if expired {
            self.expire_stream(topics, topic);
            return Err(ShardError::TopicNotFound);
        }
        let t = topics.get_mut(topic).ok_or(ShardError::TopicNotFound)?;
        if !internal && t.stream.as_ref().is_some_and(|s| s.soft_deleted) {
            return Err(ShardError::Stream(StreamError::Gone));
        }
        Ok(t)
    }

    /// Drops an expired stream (soft-deletes it while forks read it).
    pub(crate) fn expire_stream(
        &self,
        topics: &mut std::collections::BTreeMap<String, Box<Topic>>,
        topic: &str,
    ) {
        let Some(t) = topics.get(topic) else { return };
        let Some(s) = &t.stream else { return };
        if s.forks > 0 {
            if !s.soft_deleted {
                let mut st = (**s).clone();
                st.soft_deleted = true;
                self.log_state(topics, topic, st);
            }
            return;
        }
        let source = s.meta.fork_source.clone();
        self.drop_stream(topics, topic);
        if let Some(src) = source {
            self.unref_later(src);
        }
    }

    fn drop_stream(
        &self,
        topics: &mut std::collections::BTreeMap<String, Box<Topic>>,
        topic: &str,
    ) -> u64 {
        let op = Op::Drop {
            topic: topic.to_string(),
        };
        let lsn = self.log(&op, true);
        apply(topics, &self.store, op, now_ms(), lsn);
        self.opts
            .topic_gauge
            .store(topics.len(), std::sync::atomic::Ordering::Relaxed);
        lsn
    }

    /// Gives back a fork's reference on its source in the background.
    fn unref_later(&self, source: String) {
        let Ok(remote) = self.remote() else { return };
        glommio::spawn_local(async move {
            // The caller still holds the topic map; glommio may poll a new task at once.
            futures_lite::future::yield_now().await;
            let shard = crate::mesh::shard_for(&source, remote.shards());
            let cmd = Command::Stream(StreamCmd::Ref {
                topic: source,
                delta: -1,
            });
            let _ = remote.call(shard, cmd).await;
        })
        .detach();
    }

    fn log_state(
        &self,
        topics: &mut std::collections::BTreeMap<String, Box<Topic>>,
        topic: &str,
        state: StreamState,
    ) -> u64 {
        let op = Op::StreamState {
            topic: topic.to_string(),
            state: Box::new(state),
        };
        let lsn = self.log(&op, true);
        apply(topics, &self.store, op, now_ms(), lsn);
        lsn
    }

    pub(crate) async fn stream_cmd(&self, cmd: StreamCmd) -> Result<Reply, ShardError> {
        match cmd {
            StreamCmd::Create {
                topic,
                config,
                meta,
                closed,
                records,
            } => {
                self.create_stream(topic, config, meta, closed, records)
                    .await
            }
            StreamCmd::Head {
                topic,
                touch,
                internal,
            } => {
                let mut topics = self.topics.borrow_mut();
                let t = self.live_stream(&mut topics, &topic, internal)?;
                if touch {
                    if let Some(s) = t.stream.as_mut() {
                        s.touched_ms = now_ms();
                    }
                }
                let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
                let info = s.info(t, false);
                Ok(Reply::Stream(StreamReply::Info(info)))
            }
            StreamCmd::Read {
                topic,
                from_pos,
                limit,
                wait_ms,
                internal,
            } => {
                self.read_stream(topic, from_pos, limit, wait_ms, internal)
                    .await
            }
            StreamCmd::Close { topic, req } => self.close_stream(topic, req).await,
            StreamCmd::Delete { topic } => self.delete_stream(topic).await,
            StreamCmd::Ref { topic, delta } => {
                let lsn = {
                    let mut topics = self.topics.borrow_mut();
                    let t = self.live_stream(&mut topics, &topic, true)?;
                    let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
                    let mut st = (**s).clone();
                    st.forks = if delta >= 0 {
                        st.forks + delta as u64
                    } else {
                        st.forks.saturating_sub(delta.unsigned_abs())
                    };
                    if st.forks == 0 && st.soft_deleted {
                        // The last fork is gone: so is the deleted source, and its own source
                        // loses a reference (a chain collapses one level at a time).
                        let source = st.meta.fork_source.clone();
                        let lsn = self.drop_stream(&mut topics, &topic);
                        if let Some(src) = source {
                            self.unref_later(src);
                        }
                        lsn
                    } else {
                        self.log_state(&mut topics, &topic, st)
                    }
                };
                self.durable(lsn).await?;
                Ok(Reply::Stream(StreamReply::Deleted {
                    soft: false,
                    source: None,
                }))
            }
        }
    }

    async fn create_stream(
        &self,
        topic: String,
        config: TopicConfig,
        meta: StreamMeta,
        closed: bool,
        records: Vec<NewRecord>,
    ) -> Result<Reply, ShardError> {
        let lsn = {
            let mut topics = self.topics.borrow_mut();
            match self.live_stream(&mut topics, &topic, true) {
                Ok(t) => {
                    let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
                    if s.soft_deleted {
                        return Err(ShardError::Stream(StreamError::ConfigMismatch));
                    }
                    let same_type = essence(&s.meta.content_type) == essence(&meta.content_type);
                    let same = same_type
                        && s.meta.ttl_secs == meta.ttl_secs
                        && s.meta.expires_at_ms == meta.expires_at_ms
                        && s.meta.fork_source == meta.fork_source
                        && (meta.fork_source.is_none()
                            || (s.meta.fork_base == meta.fork_base
                                && s.meta.fork_sub == meta.fork_sub))
                        && s.closed == closed;
                    if !same {
                        return Err(ShardError::Stream(StreamError::ConfigMismatch));
                    }
                    let info = s.info(t, false);
                    return Ok(Reply::Stream(StreamReply::Info(info)));
                }
                Err(ShardError::TopicNotFound) => {}
                Err(e) => return Err(e),
            }
            self.check_topic_cap_pub()?;
            self.check_writable()?;
            let op = Op::Config {
                topic: topic.clone(),
                config,
            };
            let lsn = self.log(&op, true);
            apply(&mut topics, &self.store, op, now_ms(), lsn);
            self.opts
                .topic_gauge
                .store(topics.len(), std::sync::atomic::Ordering::Relaxed);
            let now = now_ms();
            let state = StreamState {
                meta,
                created_ms: now,
                closed: closed && records.is_empty(),
                touched_ms: now,
                ..Default::default()
            };
            self.log_state(&mut topics, &topic, state)
        };
        if !records.is_empty() {
            let cmd = crate::mesh::AppendCmd {
                topic: topic.clone(),
                records,
                idempotency_key: None,
                create: Some(false),
                config: None,
                router_mark: None,
                disable_backpressure: true,
                stream: Some(StreamAppend {
                    content_type: None,
                    producer: None,
                    stream_seq: None,
                    close: closed,
                }),
            };
            self.append(cmd).await?;
        } else {
            self.durable(lsn).await?;
        }
        let mut topics = self.topics.borrow_mut();
        let t = topics.get_mut(&topic).ok_or(ShardError::TopicNotFound)?;
        let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
        let info = s.info(t, true);
        Ok(Reply::Stream(StreamReply::Info(info)))
    }

    async fn read_stream(
        &self,
        topic: String,
        from_pos: u64,
        limit: usize,
        wait_ms: u64,
        internal: bool,
    ) -> Result<Reply, ShardError> {
        let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let (changed, from_seq) = {
                let mut topics = self.topics.borrow_mut();
                let t = self.live_stream(&mut topics, &topic, internal)?;
                if !internal {
                    if let Some(s) = t.stream.as_mut() {
                        s.touched_ms = now_ms();
                    }
                }
                let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
                let base = s.meta.fork_base;
                if from_pos < base {
                    let info = s.info(t, false);
                    return Ok(Reply::Stream(StreamReply::Read {
                        records: Vec::new(),
                        info,
                        redirect: true,
                    }));
                }
                (t.changed.clone(), from_pos - base)
            };
            // Listen before reading, so an append between the read and the wait is not lost.
            let listener = changed.listen();
            let reply = self
                .diff(DiffCmd {
                    topic: topic.clone(),
                    from_seq,
                    limit,
                    nodes: Vec::new(),
                    wait_ms: 0,
                    durable_only: false,
                })
                .await?;
            let Reply::Diff(d) = reply else {
                return Err(ShardError::Storage("unexpected diff reply".into()));
            };
            let info = {
                let mut topics = self.topics.borrow_mut();
                let t = self.live_stream(&mut topics, &topic, true)?;
                let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
                s.info(t, false)
            };
            let now = std::time::Instant::now();
            if !d.records.is_empty() || info.closed || now >= deadline || d.next_from_seq > from_seq
            {
                return Ok(Reply::Stream(StreamReply::Read {
                    records: d.records,
                    info,
                    redirect: false,
                }));
            }
            let timer = glommio::timer::sleep(deadline - now);
            futures_lite::future::or(listener, async {
                timer.await;
            })
            .await;
        }
    }

    async fn close_stream(&self, topic: String, req: StreamAppend) -> Result<Reply, ShardError> {
        let (lsn, info, ack) = {
            let mut topics = self.topics.borrow_mut();
            let t = self.live_stream(&mut topics, &topic, false)?;
            let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
            if let Some(ack) = admit(s, &req, false, t.visible_seq).map_err(ShardError::Stream)? {
                if let Some(s) = t.stream.as_mut() {
                    s.touched_ms = now_ms();
                }
                let info = t.stream.as_ref().map(|s| s.info(t, false));
                let info = info.ok_or(ShardError::TopicNotFound)?;
                return Ok(Reply::Stream(StreamReply::Closed { info, ack }));
            }
            self.check_writable()?;
            let mut st = (**s).clone();
            st.apply_stamp(&StreamStamp {
                producer: req.producer.clone(),
                stream_seq: req.stream_seq.clone(),
                close: true,
            });
            st.touched_ms = now_ms();
            let changed = t.changed.clone();
            let lsn = self.log_state(&mut topics, &topic, st);
            changed.notify_all();
            let t = topics.get(&topic).ok_or(ShardError::TopicNotFound)?;
            let info = t
                .stream
                .as_ref()
                .map(|s| s.info(t, false))
                .ok_or(ShardError::TopicNotFound)?;
            let ack = StreamAck {
                base: info.meta.fork_base,
                producer_seq: req.producer.as_ref().map(|p| p.2),
                duplicate: false,
                closed: true,
            };
            (lsn, info, ack)
        };
        self.durable(lsn).await?;
        Ok(Reply::Stream(StreamReply::Closed { info, ack }))
    }

    async fn delete_stream(&self, topic: String) -> Result<Reply, ShardError> {
        let (lsn, soft, source) = {
            let mut topics = self.topics.borrow_mut();
            let t = self.live_stream(&mut topics, &topic, false)?;
            let s = t.stream.as_ref().ok_or(ShardError::TopicNotFound)?;
            self.check_writable()?;
            if s.forks > 0 {
                let mut st = (**s).clone();
                st.soft_deleted = true;
                let changed = t.changed.clone();
                let lsn = self.log_state(&mut topics, &topic, st);
                changed.notify_all();
                (lsn, true, None)
            } else {
                let source = s.meta.fork_source.clone();
                (self.drop_stream(&mut topics, &topic), false, source)
            }
        };
        self.durable(lsn).await?;
        Ok(Reply::Stream(StreamReply::Deleted { soft, source }))
    }
}

/// Applies a logged stream state (creation, close, references, soft delete).
pub(crate) fn apply_state(t: &mut Topic, state: StreamState) {
    let touched = t.stream.as_ref().map_or(state.touched_ms, |s| s.touched_ms);
    let mut state = state;
    state.touched_ms = touched.max(state.touched_ms);
    t.stream = Some(Box::new(state));
}

/// `StreamMeta` for tests and callers that build one field by field.
pub fn meta(content_type: &str) -> StreamMeta {
    StreamMeta {
        content_type: content_type.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StreamState {
        StreamState {
            meta: meta("text/plain"),
            ..Default::default()
        }
    }

    fn producer(id: &str, epoch: u64, seq: u64) -> StreamAppend {
        StreamAppend {
            content_type: Some("text/plain".into()),
            producer: Some((id.into(), epoch, seq)),
            ..Default::default()
        }
    }

    #[test]
    fn producer_rules() {
        let mut s = state();
        assert_eq!(admit(&s, &producer("p", 0, 0), true, 0).ok(), Some(None));
        assert_eq!(
            admit(&s, &producer("p", 0, 1), true, 0),
            Err(StreamError::ProducerGap {
                expected: 0,
                received: 1
            })
        );
        s.apply_stamp(&StreamStamp {
            producer: Some(("p".into(), 0, 0)),
            ..Default::default()
        });
        let dup = admit(&s, &producer("p", 0, 0), true, 1).unwrap().unwrap();
        assert!(dup.duplicate);
        assert_eq!(dup.producer_seq, Some(0));
        assert_eq!(admit(&s, &producer("p", 0, 1), true, 1).ok(), Some(None));
        assert_eq!(
            admit(&s, &producer("p", 0, 3), true, 1),
            Err(StreamError::ProducerGap {
                expected: 1,
                received: 3
            })
        );
        assert_eq!(
            admit(&s, &producer("p", 1, 2), true, 1),
            Err(StreamError::EpochNeedsSeqZero)
        );
        s.apply_stamp(&StreamStamp {
            producer: Some(("p".into(), 2, 0)),
            ..Default::default()
        });
        assert_eq!(
            admit(&s, &producer("p", 1, 0), true, 1),
            Err(StreamError::StaleEpoch { epoch: 2 })
        );
    }

    #[test]
    fn closed_and_seq_rules() {
        let mut s = state();
        let seq = |v: &str| StreamAppend {
            stream_seq: Some(v.into()),
            ..Default::default()
        };
        s.apply_stamp(&StreamStamp {
            stream_seq: Some("09".into()),
            ..Default::default()
        });
        assert_eq!(admit(&s, &seq("10"), true, 0).ok(), Some(None));
        assert_eq!(
            admit(&s, &seq("09"), true, 0),
            Err(StreamError::SeqRegression)
        );
        let wrong = StreamAppend {
            content_type: Some("Application/JSON".into()),
            ..Default::default()
        };
        assert_eq!(
            admit(&s, &wrong, true, 0),
            Err(StreamError::ContentTypeMismatch)
        );
        // Without data the content type is not checked.
        assert_eq!(admit(&s, &wrong, false, 0).ok(), Some(None));
        s.apply_stamp(&StreamStamp {
            close: true,
            ..Default::default()
        });
        assert_eq!(
            admit(&s, &StreamAppend::default(), true, 7),
            Err(StreamError::Closed { next: 7 })
        );
        let close = StreamAppend {
            close: true,
            ..Default::default()
        };
        assert!(admit(&s, &close, false, 7).unwrap().unwrap().closed);
    }

    #[test]
    fn state_round_trip() {
        let mut s = state();
        s.meta.ttl_secs = Some(0);
        s.meta.expires_at = Some("2030-01-01T00:00:00Z".into());
        s.meta.expires_at_ms = Some(1_893_456_000_000);
        s.meta.fork_source = Some("/a/b".into());
        s.meta.fork_base = 5;
        s.meta.fork_sub = 2;
        s.created_ms = 42;
        s.closed = true;
        s.closed_by = Some(("p".into(), 1, 2));
        s.forks = 3;
        s.soft_deleted = true;
        s.last_stream_seq = Some("x".into());
        s.producers.insert("p".into(), (1, 2));
        let mut buf = Vec::new();
        s.encode(&mut Enc(&mut buf));
        let back = StreamState::decode(&mut Dec::new(&buf)).unwrap();
        assert_eq!(back.meta, s.meta);
        assert_eq!(back.created_ms, 42);
        assert!(back.closed && back.soft_deleted);
        assert_eq!(back.forks, 3);
        assert_eq!(back.closed_by, s.closed_by);
        assert_eq!(back.last_stream_seq, s.last_stream_seq);
        assert_eq!(back.producers, s.producers);
    }
}
