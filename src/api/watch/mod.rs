//! Live SSE watch (SPEC §6): `POST /v0/watch` creates a session, `GET /v0/watch/:wid` streams.
//!
//! The session (spec and cursors) lives on the shard `hash(wid)`. The stream is served by the
//! core that accepted the connection: it subscribes each of its topics to a long-poll of the
//! topic's owning shard shared by every stream at that position on this core (woken by
//! appends, no polling loop). The poll's answer is written straight to the sockets of live
//! single-topic streams, one serialised frame for all of them, and handed to the stream's
//! task otherwise (see `reader`); a stream subscribes again only once its batch is written,
//! so a slow reader holds at most one batch per topic in memory. Progress is written back to
//! the session as the stream advances.

use super::auth::Principal;
use super::json::Obj;
use super::records::{write_records, NodeSel};
use super::{
    check_topic_name, json_body, json_response, parse, unexpected, Api, ApiError, ApiResult, Perf,
};
use crate::http::{sse_event, Request, Response, SseSink, SSE_HEARTBEAT, SSE_RETRY};
use crate::runtime::Node;
use serde::Deserialize;
use serde_json::json;
use shards::mesh::{DiffCmd, DiffReply};
use shards::watch::{WatchSpec, SESSION_TTL_MS};
use shards::{shard_for, Command, Reply, ShardError};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Read;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod reader;

use reader::{Direct, PollResult, Sub, Wake};

const MAX_TOPICS: usize = 256;
/// How long one reader long-poll waits before asking again.
const POLL_MS: u64 = 25_000;
/// How soon a stream writes moved cursors back to its session (also when idle), bounding
/// what a crash can make a reconnecting client see twice.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

fn new_wid() -> Result<String, ApiError> {
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| {
            log::error!("cannot read /dev/urandom: {e}");
            ApiError::new(500, "internal", "no randomness for a session id")
        })?;
    Ok(format!("wid_{}", b64url(&raw)))
}

#[derive(Deserialize)]
struct TopicOpt {
    #[serde(default)]
    from_seq: Option<u64>,
    #[serde(default)]
    tail: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct WatchBody {
    #[serde(default)]
    topics: Option<BTreeMap<String, TopicOpt>>,
    #[serde(default)]
    node: Option<NodeSel>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    max_batch_bytes: Option<u64>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    include_meta: Option<bool>,
    #[serde(default)]
    include_tags: Option<bool>,
    #[serde(default)]
    include_data: Option<bool>,
    #[serde(default)]
    consistency: Option<String>,
}

pub async fn create(api: &Api, req: &Request, start: Instant, who: &Principal) -> ApiResult {
    let body: WatchBody = parse(json_body(req)?)?;
    let topics = body
        .topics
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid("topics is required: {\"<topic>\": {\"from_seq\": 0}}"))?;
    if topics.len() > MAX_TOPICS {
        return Err(ApiError::invalid(format!(
            "a watch follows at most {MAX_TOPICS} topics, not {}",
            topics.len()
        )));
    }
    let strong = match body.consistency.as_deref() {
        None | Some("eventual") => false,
        Some("strong") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "consistency must be \"eventual\" or \"strong\"",
            ))
        }
    };
    let mut cursors = Vec::with_capacity(topics.len());
    let mut out_topics = serde_json::Map::new();
    for (name, opt) in &topics {
        check_topic_name(name)?;
        let cmd = Command::GetTopic {
            topic: name.clone(),
            touch: false,
        };
        let Reply::Info(info) = api.ask(name, cmd).await? else {
            return Err(unexpected());
        };
        let from = if opt.tail.unwrap_or(false) {
            info.head_seq
        } else {
            opt.from_seq.unwrap_or(0)
        };
        cursors.push((name.clone(), from));
        out_topics.insert(
            name.clone(),
            json!({"from_seq": from, "head_seq": info.head_seq, "earliest_seq": info.earliest_seq}),
        );
    }
    let spec = WatchSpec {
        cursors,
        nodes: body.node.map(NodeSel::into_vec).unwrap_or_default(),
        limit: match body.limit.unwrap_or(0) {
            0 => 256,
            l => l.min(1000) as u32,
        },
        max_batch_bytes: match body.max_batch_bytes.unwrap_or(0) {
            0 => 262_144,
            b => b,
        },
        heartbeat_ms: body.heartbeat_ms.unwrap_or(15_000).clamp(1000, 60_000),
        include_meta: body.include_meta.unwrap_or(true),
        include_tags: body.include_tags.unwrap_or(false),
        include_data: body.include_data.unwrap_or(true),
        strong,
        owner: who.key_digest,
    };
    let g = &api.node.global;
    let sessions: usize = g.sessions.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    if g.max_watch_sessions > 0 && sessions >= g.max_watch_sessions {
        return Err(ApiError::resource_cap(
            "watch_sessions",
            g.max_watch_sessions,
        ));
    }
    let wid = new_wid()?;
    let owner = shard_for(&wid, api.node.shards());
    match api
        .node
        .call(
            owner,
            Command::CreateWatch {
                wid: wid.clone(),
                spec,
            },
        )
        .await
    {
        Reply::WatchOk => {}
        Reply::Err(e) => return Err(ApiError::from_shard(e, "")),
        _ => return Err(unexpected()),
    }
    let mut body = Vec::with_capacity(256);
    let mut o = Obj::new(&mut body);
    o.str("wid", &wid)
        .str("stream_url", &format!("/v0/watch/{wid}"))
        .u64("session_ttl_ms", SESSION_TTL_MS)
        .value("topics", &serde_json::Value::Object(out_topics));
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

pub fn accepts_event_stream(req: &Request) -> bool {
    let Some(accept) = req.header("accept") else {
        return true;
    };
    accept.split(',').any(|r| {
        let media = r.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("text/event-stream")
            || media.eq_ignore_ascii_case("text/*")
            || media == "*/*"
    })
}

/// A `Last-Event-ID`: base64url of the JSON cursor map.
pub(super) fn parse_event_id(id: &str) -> Option<Vec<(String, u64)>> {
    let raw = b64url_decode(id.trim())?;
    let map: BTreeMap<String, u64> = serde_json::from_slice(&raw).ok()?;
    Some(map.into_iter().collect())
}

pub async fn open(api: &Api, wid: String, req: &Request, who: &Principal) -> ApiResult {
    if !accepts_event_stream(req) {
        return Err(ApiError::new(
            406,
            "not_acceptable",
            "this stream is text/event-stream; the Accept header excludes it",
        ));
    }
    let last_id = req
        .header("last-event-id")
        .map(str::to_owned)
        .or_else(|| req.query_param("last_event_id"));
    let rewind = match last_id {
        None => None,
        Some(id) if id.trim().is_empty() => None,
        Some(id) => {
            Some(parse_event_id(&id).ok_or_else(|| ApiError::invalid("malformed Last-Event-ID"))?)
        }
    };
    crate::api::sse_slot(&api.node.global)?;
    let owner = shard_for(&wid, api.node.shards());
    let spec = match api
        .node
        .call(
            owner,
            Command::OpenWatch {
                wid: wid.clone(),
                rewind,
                // A session created with a key opens only with that key.
                key: who.key_digest,
            },
        )
        .await
    {
        Reply::Watch(spec) => *spec,
        Reply::Err(ShardError::SessionNotFound) => {
            return Err(ApiError::new(
                404,
                "not_found",
                format!("watch session {wid:?} does not exist or has expired"),
            ))
        }
        Reply::Err(e) => return Err(ApiError::from_shard(e, "")),
        _ => return Err(unexpected()),
    };
    let node = api.node.clone();
    Ok(Response::sse(move |sink| {
        Stream::new(node, wid, owner, spec).run(sink)
    }))
}

/// Identifies a serialised record frame (`id:`, `event:` and `data:` lines): watchers at the
/// same position with the same options and the same cursor map (which the `id:` encodes)
/// get byte-identical frames.
#[derive(PartialEq, Eq)]
struct FrameKey {
    cursors: BTreeMap<String, u64>,
    from: u64,
    to: u64,
    head: u64,
    first: u64,
    count: usize,
    flags: u8,
}

/// A [`FrameKey`] borrowing the stream's state: a lookup allocates nothing.
struct FrameKeyRef<'a> {
    cursors: &'a BTreeMap<String, u64>,
    from: u64,
    to: u64,
    head: u64,
    first: u64,
    count: usize,
    flags: u8,
}

impl FrameKeyRef<'_> {
    fn matches(&self, k: &FrameKey) -> bool {
        (
            self.from, self.to, self.head, self.first, self.count, self.flags,
        ) == (k.from, k.to, k.head, k.first, k.count, k.flags)
            && *self.cursors == k.cursors
    }

    fn to_owned(&self) -> FrameKey {
        FrameKey {
            cursors: self.cursors.clone(),
            from: self.from,
            to: self.to,
            head: self.head,
            first: self.first,
            count: self.count,
            flags: self.flags,
        }
    }
}

/// Recently serialised frames of this executor (a small most-recent-first list).
const FRAME_CACHE: usize = 32;

thread_local! {
    static FRAMES: std::cell::RefCell<std::collections::VecDeque<(FrameKey, Rc<Vec<u8>>)>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

fn frame_cache_get(key: &FrameKeyRef) -> Option<Rc<Vec<u8>>> {
    FRAMES.with(|f| {
        f.borrow()
            .iter()
            .find(|(k, _)| key.matches(k))
            .map(|(_, v)| v.clone())
    })
}

fn frame_cache_put(key: FrameKey, data: Rc<Vec<u8>>) {
    FRAMES.with(|f| {
        let mut f = f.borrow_mut();
        f.push_front((key, data));
        f.truncate(FRAME_CACHE);
    });
}

enum Next {
    Ready(Vec<usize>),
    Timer,
    Closed,
    Shutdown,
}

enum Event {
    Read { diff: Rc<DiffReply>, first: bool },
    Deleted,
    Failed(ShardError),
}

/// The `event: record` frame of `chunk`; `flags` as in [`FrameKey`].
fn record_frame(
    topic: &str,
    chunk: &[shards::Record],
    flags: u8,
    from: u64,
    to: u64,
    head: u64,
    id: &str,
) -> Vec<u8> {
    let size: usize = chunk.iter().map(reader::record_size).sum();
    let mut data = Vec::with_capacity(size + 128);
    let mut o = Obj::new(&mut data);
    o.str("topic", topic);
    write_records(
        o.key("records"),
        chunk,
        flags & 1 != 0,
        flags & 2 != 0,
        flags & 4 != 0,
    );
    o.u64("from_seq", from)
        .u64("to_seq", to)
        .u64("head_seq", head);
    o.end();
    let mut frame = Vec::with_capacity(data.len() + id.len() + 32);
    sse_event(&mut frame, Some(id), "record", &data);
    frame
}

struct Stream {
    node: Rc<Node>,
    wid: String,
    owner: usize,
    spec: WatchSpec,
    cursors: BTreeMap<String, u64>,
    live: Vec<bool>,
    open_topics: usize,
}

impl Stream {
    fn new(node: Rc<Node>, wid: String, owner: usize, spec: WatchSpec) -> Self {
        let cursors = spec.cursors.iter().cloned().collect();
        let n = spec.cursors.len();
        Stream {
            node,
            wid,
            owner,
            spec,
            cursors,
            live: vec![false; n],
            open_topics: n,
        }
    }

    fn id(&self) -> String {
        b64url(&serde_json::to_vec(&self.cursors).unwrap_or_default())
    }

    fn frame(&self, out: &mut Vec<u8>, event: &str, data: &[u8]) {
        sse_event(out, Some(&self.id()), event, data);
    }

    fn flags(&self) -> u8 {
        let s = &self.spec;
        s.include_tags as u8 | (s.include_meta as u8) << 1 | (s.include_data as u8) << 2
    }

    async fn run(mut self, mut sink: SseSink) {
        let streams = &self.node.streams;
        streams.set(streams.get() + 1);
        let open = &self.node.global.sse_connections;
        open.fetch_add(1, Ordering::Relaxed);
        self.serve(&mut sink).await;
        let open = &self.node.global.sse_connections;
        open.fetch_sub(1, Ordering::Relaxed);
        let streams = &self.node.streams;
        streams.set(streams.get().saturating_sub(1));
    }

    async fn serve(&mut self, sink: &mut SseSink) {
        let wake = Rc::new(Wake::default());
        // A single-topic stream without a node filter can take frames shared with other
        // streams straight from the fan-out (its `id:` is the same for all of them).
        let direct = self.spec.cursors.len() == 1;
        let subs: Vec<Rc<Sub>> = self
            .spec
            .cursors
            .iter()
            .enumerate()
            .map(|(idx, (topic, from))| {
                let direct = direct.then(|| Direct {
                    writer: sink.direct(),
                    flags: self.flags(),
                    max_batch_bytes: self.spec.max_batch_bytes as usize,
                    live: Cell::new(false),
                    cursor: Cell::new(*from),
                    last_send: Cell::new(None),
                    moved: Cell::new(false),
                    pending: RefCell::new(None),
                });
                let sub = Sub::new(idx, topic.clone(), *from, &self.spec, wake.clone(), direct);
                Rc::new(sub)
            })
            .collect();
        for sub in &subs {
            sub.first_read(&self.node);
        }
        self.stream_loop(sink, &wake, &subs).await;
        for sub in &subs {
            sub.leave();
        }
        if let Some(d) = subs.first().and_then(|s| s.direct.as_ref()) {
            self.cursors.insert(subs[0].topic.clone(), d.cursor.get());
        }
        self.progress(true).await;
    }

    async fn stream_loop(&mut self, sink: &mut SseSink, wake: &Wake, subs: &[Rc<Sub>]) {
        let heartbeat = Duration::from_millis(self.spec.heartbeat_ms);
        let mut last_progress = Instant::now();
        let mut last_send = Instant::now();
        let mut dirty = false;
        // One timer for the stream, re-armed only when it fired or must fire sooner (not on
        // every frame): a frame that pushes the heartbeat out leaves it armed, and an early
        // wake-up finds nothing due and re-arms it.
        let mut timer_at = last_send + heartbeat;
        let mut timer = glommio::timer::Timer::new(heartbeat);
        if sink.send(SSE_RETRY).await.is_err() {
            return;
        }
        let node = self.node.clone();
        let mut closed = std::pin::pin!(sink.closed());
        let mut draining = std::pin::pin!(node.draining());
        let mut out = Vec::new();
        let mut resubscribe = Vec::new();
        loop {
            // Wake for the heartbeat, or sooner to save cursors that moved while idle.
            let heartbeat_at = last_send + heartbeat;
            let wake_at = if dirty {
                heartbeat_at.min(last_progress + PROGRESS_EVERY)
            } else {
                heartbeat_at
            };
            if wake_at < timer_at {
                timer_at = wake_at;
                timer.reset(wake_at.saturating_duration_since(Instant::now()));
            }
            let next = futures_lite::future::or(
                async { Next::Ready(wake.wait().await) },
                futures_lite::future::or(
                    async {
                        (&mut timer).await;
                        Next::Timer
                    },
                    futures_lite::future::or(
                        async {
                            (&mut closed).await;
                            Next::Closed
                        },
                        async {
                            (&mut draining).await;
                            Next::Shutdown
                        },
                    ),
                ),
            )
            .await;
            // What the fan-out wrote meanwhile.
            if let Some((sub, d)) = subs.first().and_then(|s| Some((s, s.direct.as_ref()?))) {
                if d.moved.take() {
                    dirty = true;
                    self.cursors.insert(sub.topic.clone(), d.cursor.get());
                }
                if let Some(t) = d.last_send.take() {
                    last_send = last_send.max(t);
                }
            }
            out.clear();
            let mut end = false;
            match next {
                Next::Closed => break,
                Next::Timer => {
                    let now = Instant::now();
                    // Re-armed for whatever is due next (below, at the loop's top).
                    timer_at = now + heartbeat;
                    timer.reset(heartbeat);
                    if now >= last_send + heartbeat {
                        out.extend_from_slice(SSE_HEARTBEAT);
                    }
                }
                Next::Ready(ready) => {
                    for idx in ready {
                        let Some(sub) = subs.get(idx) else { continue };
                        if let Some(d) = &sub.direct {
                            if let Some((frame, at)) = d.pending.take() {
                                out.extend_from_slice(frame.get(at..).unwrap_or_default());
                                resubscribe.push(sub.clone());
                            }
                        }
                        let Some((result, first)) = sub.handoff.take() else {
                            continue;
                        };
                        let ev = match &*result {
                            PollResult::Diff(d) => {
                                if !first
                                    && d.next_from_seq == sub.pos.get()
                                    && d.records.is_empty()
                                    && d.tombstone.is_none()
                                {
                                    resubscribe.push(sub.clone());
                                    continue;
                                }
                                sub.pos.set(d.next_from_seq);
                                resubscribe.push(sub.clone());
                                Event::Read {
                                    diff: d.clone(),
                                    first,
                                }
                            }
                            PollResult::Deleted => Event::Deleted,
                            PollResult::Failed(e) => Event::Failed(e.clone()),
                        };
                        end |= self.on_event(idx, ev, &mut out);
                        if let Some(d) = &sub.direct {
                            d.cursor
                                .set(self.cursors.get(&sub.topic).copied().unwrap_or(0));
                            d.live.set(self.live[idx]);
                        }
                    }
                }
                Next::Shutdown => {
                    end = true;
                    let ev = Event::Failed(ShardError::ShuttingDown);
                    self.on_event(0, ev, &mut out);
                }
            }
            if !out.is_empty() {
                if sink.send(&out).await.is_err() {
                    break;
                }
                last_send = Instant::now();
                dirty |= out != SSE_HEARTBEAT;
            }
            if end || self.open_topics == 0 {
                break;
            }
            // Batches written: the next ones may come.
            for sub in resubscribe.drain(..) {
                sub.subscribe(&self.node);
            }
            if dirty && last_progress.elapsed() >= PROGRESS_EVERY {
                self.progress(false).await;
                dirty = false;
                last_progress = Instant::now();
            }
        }
    }

    async fn progress(&self, close: bool) {
        let cmd = Command::WatchProgress {
            wid: self.wid.clone(),
            cursors: self.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            close,
        };
        // Boxed: a parked stream's future keeps no room for a call in flight.
        let _ = Box::pin(self.node.call(self.owner, cmd)).await;
    }

    /// Turns one reader event into frames; returns true when the stream must end.
    fn on_event(&mut self, idx: usize, ev: Event, out: &mut Vec<u8>) -> bool {
        let Some(topic) = self.spec.cursors.get(idx).map(|(t, _)| t.clone()) else {
            return false;
        };
        match ev {
            Event::Deleted => {
                let head = self.cursors.get(&topic).copied().unwrap_or(0);
                let mut data = Vec::new();
                let mut o = Obj::new(&mut data);
                o.str("topic", &topic)
                    .u64("head_seq", head)
                    .str("reason", "deleted");
                o.end();
                self.frame(out, "topic-deleted", &data);
                self.open_topics = self.open_topics.saturating_sub(1);
                false
            }
            Event::Failed(e) => {
                let (code, message) = match e {
                    ShardError::ShuttingDown => ("shutting_down", "the server is shutting down"),
                    ShardError::NotReady => ("not_ready", "the server is not ready"),
                    _ => ("internal", "the stream failed; reconnect to resume"),
                };
                let mut data = Vec::new();
                let mut o = Obj::new(&mut data);
                o.str("code", code).str("message", message);
                o.end();
                sse_event(out, None, "error", &data);
                true
            }
            Event::Read { diff, first } => {
                self.on_read(idx, &topic, &diff, first, out);
                false
            }
        }
    }

    fn on_read(&mut self, idx: usize, topic: &str, d: &DiffReply, first: bool, out: &mut Vec<u8>) {
        if let Some(t) = &d.tombstone {
            let reason = if first && t.reason != "recreated" {
                "from_seq_too_old"
            } else {
                t.reason
            };
            self.cursors.insert(topic.to_string(), t.gap_to);
            let mut data = Vec::new();
            let mut o = Obj::new(&mut data);
            o.str("topic", topic)
                .str("reason", reason)
                .u64("gap_from", t.gap_from)
                .u64("gap_to", t.gap_to)
                .u64("earliest_seq", d.earliest_seq)
                .u64("head_seq", d.head_seq);
            o.end();
            self.frame(out, "tombstone", &data);
        }
        let max_bytes = self.spec.max_batch_bytes as usize;
        let mut rest = &d.records[..];
        while !rest.is_empty() {
            // At least one record per frame, then as many as fit in max_batch_bytes.
            let mut size = 0;
            let mut n = 0;
            for r in rest {
                size += reader::record_size(r);
                if n > 0 && size > max_bytes {
                    break;
                }
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let from = self.cursors.get(topic).copied().unwrap_or(0);
            let to = if rest.is_empty() {
                d.next_from_seq.max(chunk.last().map_or(0, |r| r.seq))
            } else {
                chunk.last().map_or(from, |r| r.seq)
            };
            self.cursors.insert(topic.to_string(), to);
            let key = FrameKeyRef {
                cursors: &self.cursors,
                from,
                to,
                head: d.head_seq,
                first: chunk.first().map_or(0, |r| r.seq),
                count: chunk.len(),
                flags: self.flags(),
            };
            // Watchers at the same position share one serialisation (not with a node
            // filter, which makes the record set watcher-specific).
            let cacheable = self.spec.nodes.is_empty();
            let cached = if cacheable {
                frame_cache_get(&key)
            } else {
                None
            };
            let frame = cached.unwrap_or_else(|| {
                let id = self.id();
                let frame = record_frame(topic, chunk, key.flags, from, to, d.head_seq, &id);
                let frame = Rc::new(frame);
                if cacheable {
                    frame_cache_put(key.to_owned(), frame.clone());
                }
                frame
            });
            out.extend_from_slice(&frame);
        }
        let cur = self.cursors.entry(topic.to_string()).or_insert(0);
        *cur = (*cur).max(d.next_from_seq);
        let caught_up = d.next_from_seq >= d.head_seq;
        if caught_up && !self.live[idx] {
            self.live[idx] = true;
            let mut data = Vec::new();
            let mut o = Obj::new(&mut data);
            o.str("topic", topic).u64("head_seq", d.head_seq);
            o.end();
            self.frame(out, "caught-up", &data);
        } else if !caught_up {
            self.live[idx] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_quickstart_ids() {
        assert_eq!(b64url(br#"{"orders":1}"#), "eyJvcmRlcnMiOjF9");
        assert_eq!(b64url(br#"{"orders":2}"#), "eyJvcmRlcnMiOjJ9");
        for s in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[255, 254, 0, 1, 2]] {
            assert_eq!(b64url_decode(&b64url(s)).as_deref(), Some(s));
        }
        assert!(b64url_decode("a*").is_none());
    }

    #[test]
    fn event_ids_parse() {
        let id = b64url(br#"{"a":3,"b":0}"#);
        assert_eq!(
            parse_event_id(&id),
            Some(vec![("a".to_string(), 3), ("b".to_string(), 0)])
        );
        assert!(parse_event_id("!!").is_none());
    }
}
