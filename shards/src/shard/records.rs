//! The record path of a shard: append (with reservations, idempotency and router marks),
//! reads through the hot tail and segment blocks, diff with long-poll, and record deletes.

use super::*;

/// A tag delete resolved ahead of logging: (topic instance, last seq it covers, hot-tail base
/// when its blocks were listed, (seq, size) of the victims in segments).
type ResolvedDelete = (u64, u64, u64, Vec<(u64, u64)>);

impl Shard {
    pub(crate) async fn append(&self, cmd: AppendCmd) -> Result<Reply, ShardError> {
        let t0 = Instant::now();
        let now = now_ms();
        let AppendCmd {
            topic,
            records,
            idempotency_key,
            create,
            config,
            router_mark,
            stream: stream_req,
            ..
        } = cmd;
        let mut records = records;
        let (reply, wait_lsn, durability, changed) = 'append: {
            let mut topics = self.topics.borrow_mut();
            let mut created = false;
            if !topics.contains_key(&topic) {
                if !create.unwrap_or(self.opts.auto_create) {
                    return Err(ShardError::TopicNotFound);
                }
                self.check_topic_cap()?;
                self.check_writable()?;
                // Checked before the topic exists, so a refused write does not leave it behind.
                if self.opts.max_retained_bytes > 0 {
                    let total: u64 = records.iter().map(|r| r.size()).sum();
                    self.check_bytes_cap(total)?;
                }
                // Room for the records too, so a refused write does not leave its topic behind.
                let est: u64 = records.iter().map(|r| r.size() + 256).sum::<u64>() + 4096;
                self.wal
                    .room_for(est as usize)
                    .map_err(|_| ShardError::DiskFull)?;
                let base = TopicConfig::defaults(self.opts.auto_create);
                let config = config.map(|p| p.apply(&base)).unwrap_or(base);
                let op = Op::Config {
                    topic: topic.clone(),
                    config,
                };
                let lsn = self.log(&op, false);
                apply(&mut topics, &self.store, op, now, lsn);
                self.update_gauge(&topics);
                created = true;
            }
            if stream_req.is_some() {
                // Expired streams go here; deleted ones answer 410.
                self.live_stream(&mut topics, &topic, false)?;
            }
            let t = topics.get_mut(&topic).ok_or(ShardError::TopicNotFound)?;
            t.expire(now);
            let mut stamp = None;
            let mut stream_ack = None;
            if let Some(req) = &stream_req {
                let head = t.visible_seq;
                let s = t
                    .stream
                    .as_mut()
                    .ok_or(ShardError::Stream(crate::stream::StreamError::NotAStream))?;
                s.touched_ms = now;
                let verdict = crate::stream::admit(s, req, !records.is_empty(), head)
                    .map_err(ShardError::Stream)?;
                if let Some(ack) = verdict {
                    // The original may still be on its way to the disk: answer the retry
                    // only once everything logged so far is durable.
                    if t.visible_seq < t.head_seq {
                        let tail = t.head_seq;
                        let reply = AppendReply {
                            created: false,
                            deduped: true,
                            first_seq: tail,
                            last_seq: tail,
                            head_seq: tail,
                            timings: Timings::default(),
                            stream: Some(ack),
                        };
                        let lsn = self.wal.last_lsn();
                        break 'append (reply, Some(lsn), t.config.durability, t.changed.clone());
                    }
                    return Ok(Reply::Appended(AppendReply {
                        created: false,
                        deduped: true,
                        first_seq: head,
                        last_seq: head,
                        head_seq: head,
                        timings: Timings::default(),
                        stream: Some(ack),
                    }));
                }
                stamp = Some(Box::new(crate::stream::StreamStamp {
                    producer: req.producer.clone(),
                    stream_seq: req.stream_seq.clone(),
                    close: req.close,
                }));
                stream_ack = Some(crate::stream::StreamAck {
                    base: s.meta.fork_base,
                    producer_seq: req.producer.as_ref().map(|p| p.2),
                    duplicate: false,
                    closed: req.close,
                });
            }
            if let Some(key) = idempotency_key.as_deref() {
                if let Some(e) = t.idem_lookup(key, now) {
                    return Ok(Reply::Appended(AppendReply {
                        created: false,
                        deduped: true,
                        first_seq: e.first_seq,
                        last_seq: e.last_seq,
                        head_seq: t.visible_seq,
                        timings: Timings::default(),
                        stream: None,
                    }));
                }
            }
            let mut mark = None;
            if let Some(m) = router_mark {
                let have = t.router_marks.get(m.router.as_str()).copied().unwrap_or(0);
                if have > 0 {
                    records = records
                        .into_iter()
                        .zip(m.src_seqs.iter())
                        .filter(|(_, s)| **s > have)
                        .map(|(r, _)| r)
                        .collect();
                }
                if records.is_empty() {
                    return Ok(Reply::Appended(AppendReply {
                        created,
                        deduped: true,
                        first_seq: t.head_seq,
                        last_seq: t.head_seq,
                        head_seq: t.visible_seq,
                        timings: Timings::default(),
                        stream: None,
                    }));
                }
                mark = m.src_seqs.last().map(|s| (m.router, *s));
            }
            let n = records.len() as u64;
            let bytes: u64 = records.iter().map(|r| r.size()).sum();
            if t.would_reject(n, bytes) {
                return Err(ShardError::TopicFull {
                    cap_records: t.config.cap_records,
                    cap_bytes: t.config.cap_bytes,
                });
            }
            if !created {
                self.check_bytes_cap(bytes)?;
            }
            self.check_writable()?;
            let first_seq = t.head_seq + 1;
            let last_seq = t.head_seq + n;
            let ts = now.max(t.last_ts);
            let durability = t.config.durability;
            let wait_lsn = if durability == Durability::Ephemeral {
                let op = Op::Skipped {
                    topic: topic.clone(),
                    first_seq,
                    count: n,
                    ts,
                    idem_key: idempotency_key.clone(),
                };
                let lsn = self.try_log(&op, false)?;
                t.apply_marked_append(first_seq, ts, idempotency_key.as_deref(), records, mark);
                lsn
            } else {
                let op = Op::Append {
                    topic: topic.clone(),
                    first_seq,
                    ts,
                    idem_key: idempotency_key,
                    records,
                    mark,
                    stream: stamp,
                };
                // All or nothing: refused here (nothing applied) when the WAL has no room.
                let lsn = self.try_log(&op, durability == Durability::Fsync)?;
                if let Op::Append {
                    idem_key,
                    records,
                    mark,
                    stream,
                    ..
                } = op
                {
                    t.apply_marked_append(first_seq, ts, idem_key.as_deref(), records, mark);
                    if let (Some(stamp), Some(s)) = (stream, t.stream.as_mut()) {
                        s.apply_stamp(&stamp);
                    }
                }
                lsn
            };
            if durability != Durability::Ephemeral {
                self.ckpt.note_append(
                    bytes + n * crate::topic::SLOT_OVERHEAD,
                    self.opts.hot_tail_bytes,
                );
            }
            let wait_lsn = if durability == Durability::Fsync {
                Some(wait_lsn)
            } else {
                let durable_lsn = self.wal.durable_lsn();
                // Renew the reservation once half of it is used, so that in a steady stream
                // the next one is on disk before anyone needs it.
                if last_seq + t.reservation.window / 2 > t.reserved_seq {
                    let upto = last_seq + t.reservation.window.max(2 * n);
                    let op = Op::Reserve {
                        topic: topic.clone(),
                        upto,
                    };
                    let lsn = self.log(&op, true);
                    t.reserved_seq = upto;
                    t.reservation.pending.push_back((lsn, upto));
                }
                t.visible_seq = t.head_seq;
                t.unsynced.push_back((wait_lsn, first_seq));
                while t.unsynced.front().is_some_and(|(l, _)| *l <= durable_lsn) {
                    t.unsynced.pop_front();
                }
                t.reservation.wait_for(last_seq, durable_lsn)
            };
            let reply = AppendReply {
                created,
                deduped: false,
                first_seq,
                last_seq,
                head_seq: t.visible_seq,
                timings: Timings::default(),
                stream: stream_ack,
            };
            (reply, wait_lsn, durability, t.changed.clone())
        };
        if durability != Durability::Fsync {
            changed.notify_all();
        }
        // Records arrive faster than checkpoints move them to segments: hold the reply
        // until memory is back within bounds.
        self.ckpt.backpressure(self.opts.hot_tail_bytes).await;
        let mut reply = reply;
        reply.timings.wal_append_ms = ms(t0.elapsed());
        if let Some(lsn) = wait_lsn {
            let t1 = Instant::now();
            self.durable(lsn).await?;
            if durability == Durability::Fsync {
                reply.timings.fsync_ms = ms(t1.elapsed());
                let mut topics = self.topics.borrow_mut();
                if let Some(t) = topics.get_mut(&topic) {
                    if t.head_seq >= reply.last_seq && t.visible_seq < reply.last_seq {
                        t.visible_seq = reply.last_seq;
                    }
                    reply.head_seq = t.visible_seq.max(reply.last_seq);
                }
                drop(topics);
                changed.notify_all();
            }
        }
        Ok(Reply::Appended(reply))
    }

    /// Reads a topic's records into `st` from its hot tail and its segments. `created`
    /// names the topic instance; a read of an instance since dropped fails with not found.
    pub(crate) async fn read_records(
        &self,
        topic: &str,
        created: u64,
        st: &mut ReadState,
        nodes: &[String],
    ) -> Result<(), ShardError> {
        let mut stalled = 0;
        loop {
            let before = (st.next, st.out.len());
            let fetch = {
                let topics = self.topics.borrow();
                let t = topics
                    .get(topic)
                    .filter(|t| t.created_lsn == created)
                    .ok_or(ShardError::TopicNotFound)?;
                match t.read_step(st, nodes) {
                    None => return Ok(()),
                    Some(f) => f,
                }
            };
            // The blocks are read concurrently: one device round trip, not one per block.
            let reads: Vec<_> = fetch
                .into_iter()
                .map(|b| {
                    let store = self.store.clone();
                    glommio::spawn_local(async move {
                        let r = store.read_block(&b).await;
                        (b, r)
                    })
                })
                .collect();
            let mut fetched = Vec::with_capacity(reads.len());
            for read in reads {
                let (b, r) = read.await;
                match r {
                    Ok(recs) => fetched.push((b, recs)),
                    // Compaction replaced the block (and removed its file): plan again.
                    Err(_) if !self.block_current(topic, created, &b) => break,
                    Err(e) => return Err(ShardError::Storage(e)),
                }
            }
            let topics = self.topics.borrow();
            let t = topics
                .get(topic)
                .filter(|t| t.created_lsn == created)
                .ok_or(ShardError::TopicNotFound)?;
            // False when compaction replaced a block meanwhile: plan again.
            let _ = t.absorb(st, fetched, nodes);
            if (st.next, st.out.len()) == before {
                stalled += 1;
                if stalled > 16 {
                    log::warn!("read of {topic:?} made no progress at seq {}", st.next);
                    return Ok(());
                }
            } else {
                stalled = 0;
            }
        }
    }

    pub(crate) async fn diff(&self, cmd: DiffCmd) -> Result<Reply, ShardError> {
        let deadline = Instant::now() + Duration::from_millis(cmd.wait_ms);
        loop {
            let (mut st, created, head, earliest, tombstone, dedupe_node) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics
                    .get_mut(&cmd.topic)
                    .ok_or(ShardError::TopicNotFound)?;
                let now = now_ms();
                t.expire(now);
                t.last_read_ts = now;
                let visible = t.visible_seq;
                let head = if cmd.durable_only {
                    t.durable_seq(self.wal.durable_lsn()).0
                } else {
                    visible
                };
                let earliest = t.earliest_seq().min(visible + 1);
                let (from, tombstone) = if cmd.from_seq > visible {
                    let gap_to = if t.evict_floor > 1 { earliest - 1 } else { 0 };
                    let tomb = Tombstone {
                        gap_from: 1,
                        gap_to,
                        reason: "recreated",
                        missed_estimate: gap_to,
                    };
                    (0, Some(tomb))
                } else if t.evict_floor > cmd.from_seq + 1 {
                    let gap_from = cmd.from_seq + 1;
                    let gap_to = earliest - 1;
                    let tomb = Tombstone {
                        gap_from,
                        gap_to,
                        reason: t.evict_reason.unwrap_or(LossReason::Cap).as_str(),
                        missed_estimate: (gap_to + 1).saturating_sub(gap_from),
                    };
                    (cmd.from_seq, Some(tomb))
                } else {
                    (cmd.from_seq, None)
                };
                let st = ReadState::new(from, cmd.limit, head);
                let dedupe = t.config.dedupe_node;
                (st, t.created_lsn, head, earliest, tombstone, dedupe)
            };
            let nodes: &[String] = if dedupe_node { &cmd.nodes } else { &[] };
            self.read_records(&cmd.topic, created, &mut st, nodes)
                .await?;
            let caught_up = st.next >= head;
            if !st.out.is_empty() || tombstone.is_some() || !caught_up || Instant::now() >= deadline
            {
                let r = st.finish();
                return Ok(Reply::Diff(DiffReply {
                    records: r.records,
                    next_from_seq: r.next_from_seq,
                    head_seq: head,
                    earliest_seq: earliest,
                    tombstone,
                    scanned: r.scanned,
                    dedupe_node,
                }));
            }
            let (changed, durable_wait) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics
                    .get_mut(&cmd.topic)
                    .ok_or(ShardError::TopicNotFound)?;
                // Anything new since the read? Then read again at once.
                let now_head = if cmd.durable_only {
                    t.durable_seq(self.wal.durable_lsn())
                } else {
                    (t.visible_seq, None)
                };
                if now_head.0 != head || t.created_lsn != created {
                    continue;
                }
                (t.changed.clone(), now_head.1)
            };
            let listener = changed.listen();
            let timeout = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
            let woken = futures_lite::future::or(listener, async {
                timeout.await;
            });
            match durable_wait {
                Some(lsn) => {
                    futures_lite::future::or(woken, async {
                        let _ = self.wal.wait_durable(lsn).await;
                    })
                    .await
                }
                None => woken.await,
            }
        }
    }

    /// Whether `b` is still one of the topic instance's blocks.
    fn block_current(&self, topic: &str, created: u64, b: &crate::segment::BlockRef) -> bool {
        self.topics
            .borrow()
            .get(topic)
            .filter(|t| t.created_lsn == created)
            .is_some_and(|t| {
                t.blocks
                    .iter()
                    .any(|x| x.seg == b.seg && x.offset == b.offset)
            })
    }

    /// A tag delete's victims among the records in segments: (topic instance, last seq it
    /// covers, the hot tail's base when the blocks were listed, victims). `None` when
    /// checkpoints kept moving the blocks; the caller then resolves synchronously.
    async fn resolve_tag_delete(
        &self,
        topic: &str,
        before_seq: Option<u64>,
        m: &crate::topic::TagMatch,
    ) -> Result<Option<ResolvedDelete>, ShardError> {
        'attempt: for _ in 0..5 {
            let (created, upto, mem_base, blocks) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics.get_mut(topic).ok_or(ShardError::TopicNotFound)?;
                t.expire(now_ms());
                let limit = before_seq
                    .map(|b| b.saturating_sub(1))
                    .unwrap_or(u64::MAX)
                    .min(t.head_seq);
                let (_, blocks) = t.delete_candidates(m, limit);
                (t.created_lsn, limit, t.mem_base(), blocks)
            };
            let mut victims = Vec::new();
            for b in &blocks {
                let recs = match self.store.read_block(b).await {
                    Ok(r) => r,
                    Err(_) if !self.block_current(topic, created, b) => continue 'attempt,
                    Err(e) => return Err(ShardError::Storage(e)),
                };
                victims.extend(
                    recs.iter()
                        .filter(|r| r.seq <= upto && m.matches(r.tag.as_deref()))
                        .map(|r| (r.seq, r.size())),
                );
            }
            // Every block listed must still be there: compaction may have moved records.
            if blocks.iter().all(|b| self.block_current(topic, created, b)) {
                return Ok(Some((created, upto, mem_base, victims)));
            }
        }
        Ok(None)
    }

    pub(super) async fn delete_records(
        &self,
        topic: String,
        before_seq: Option<u64>,
        matcher: Option<crate::topic::TagMatch>,
    ) -> Result<Reply, ShardError> {
        let t0 = Instant::now();
        // A tag delete first finds its victims among the records in segments (reading their
        // blocks), then logs them by seq; a `before_seq` delete is logged as such.
        let mut resolved = None;
        if let Some(m) = &matcher {
            resolved = self.resolve_tag_delete(&topic, before_seq, m).await?;
        }
        let (mut reply, wait) = {
            let mut topics = self.topics.borrow_mut();
            let t = topics.get_mut(&topic).ok_or(ShardError::TopicNotFound)?;
            t.expire(now_ms());
            self.check_writable()?;
            let durable = t.config.durability == Durability::Fsync;
            let (op, lsn) = match (resolved, &matcher) {
                (Some((created, upto, mem_base, mut victims)), Some(m)) => {
                    if t.created_lsn != created {
                        return Err(ShardError::TopicNotFound);
                    }
                    if t.mem_base() > mem_base {
                        // A checkpoint moved records out of memory while the blocks were
                        // read; resolve against the current state instead.
                        victims.clear();
                        let op = Op::Delete {
                            topic: topic.clone(),
                            before_seq,
                            matcher: matcher.clone(),
                            upto_seq: upto,
                        };
                        let lsn = self.log(&op, durable);
                        (op, lsn)
                    } else {
                        let (mem, _) = t.delete_candidates(m, upto);
                        victims.extend(mem);
                        victims.sort_unstable();
                        victims.dedup_by_key(|v| v.0);
                        let op = Op::DeleteSeqs {
                            topic: topic.clone(),
                            victims,
                        };
                        let lsn = self.log(&op, durable);
                        (op, lsn)
                    }
                }
                _ => {
                    let op = Op::Delete {
                        topic: topic.clone(),
                        before_seq,
                        matcher: matcher.clone(),
                        upto_seq: t.head_seq,
                    };
                    let lsn = self.log(&op, durable);
                    (op, lsn)
                }
            };
            let deleted = match op {
                Op::Delete {
                    before_seq,
                    matcher,
                    upto_seq,
                    ..
                } => t.delete_records(before_seq, matcher.as_ref(), upto_seq),
                Op::DeleteSeqs { victims, .. } => t.delete_seqs(&victims),
                _ => 0,
            };
            let reply = DeleteReply {
                deleted,
                earliest_seq: t.earliest_seq().min(t.visible_seq + 1),
                head_seq: t.visible_seq,
                count: t.count,
                bytes: t.bytes,
                timings: Timings::default(),
            };
            (reply, durable.then_some(lsn))
        };
        reply.timings.wal_append_ms = ms(t0.elapsed());
        if let Some(lsn) = wait {
            let t1 = Instant::now();
            self.durable(lsn).await?;
            reply.timings.fsync_ms = ms(t1.elapsed());
        }
        Ok(Reply::DeletedRecords(reply))
    }
}
