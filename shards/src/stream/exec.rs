//! The shard's side of Durable Streams: the stream commands (create, head, read, close,
//! delete, fork references), expiry, and applying a logged stream state.

use super::*;
use crate::config::TopicConfig;
use crate::mesh::{Command, DiffCmd, Reply, ShardError};
use crate::ops::Op;
use crate::shard::{apply, now_ms, Shard};
use crate::topic::{NewRecord, Topic};
use std::time::Duration;

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
            if let Reply::Err(e) = remote.call(shard, cmd).await {
                // The source keeps an extra reference: it outlives its last fork.
                log::warn!("stream: giving back a fork's reference on its source failed: {e:?}");
            }
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
