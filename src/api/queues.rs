//! Queues (SPEC §7): claim, ack, nack, extend, and the `/work` SSE push.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use shards::mesh::{ClaimCmd, ClaimedJob, QueueAction, QueueCmd, QueueReply};
use shards::{Command, Reply};

use super::json::Obj;
use super::{json_body, json_response, parse, unexpected, Api, ApiError, ApiResult, Perf};
use crate::http::{sse_event, Request, Response, SseSink, SSE_HEARTBEAT, SSE_RETRY};

const MAX_CLAIM: usize = 1000;
const MAX_SEQS: usize = 1000;
const MAX_DELAY_MS: u64 = 86_400_000;
const MAX_WAIT_MS: u64 = 30_000;
/// How often a `/work` stream re-checks its leases when nothing wakes it.
const WORK_RECHECK: Duration = Duration::from_millis(500);
const WORK_HEARTBEAT: Duration = Duration::from_secs(15);
/// How often a full `/work` stream checks whether one of its jobs was acked.
const SLOT_RECHECK: Duration = Duration::from_millis(25);

pub fn lease_id_string(id: u64) -> String {
    format!("lease_{id:016x}")
}

/// A lease id exactly as the server writes it: `lease_` and 16 lowercase hex digits.
pub(super) fn parse_lease_id(s: &str) -> Option<u64> {
    let hex = s.strip_prefix("lease_")?;
    if hex.len() != 16
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub(super) fn node_of(node: Option<String>) -> Result<String, ApiError> {
    match node {
        Some(n) if !n.is_empty() && n.len() <= 256 => Ok(n),
        Some(n) if !n.is_empty() => Err(ApiError::invalid("node is longer than 256 bytes")),
        _ => Err(ApiError::invalid("node is required (a non-empty string)")),
    }
}

#[derive(Deserialize)]
pub(super) struct ClaimBody {
    node: Option<String>,
    max: Option<u64>,
    lease_ms: Option<u64>,
    wait_ms: Option<u64>,
}

/// One claimed job as JSON (`topic` for `/work` frames).
fn write_job(out: &mut Vec<u8>, job: &ClaimedJob, topic: Option<&str>) {
    let r = &job.record;
    let mut j = Obj::new(out);
    if let Some(t) = topic {
        j.str("topic", t);
    }
    j.u64("$seq", r.seq)
        .str("lease_id", &lease_id_string(job.lease_id))
        .u64("deadline", job.deadline)
        .u64("$ts", r.ts);
    if let Some(n) = &r.node {
        j.str("$node", n);
    }
    if let Some(t) = &r.tag {
        j.str("$tag", t);
    }
    j.u64("deliveries", job.deliveries as u64)
        .raw("data", &r.data);
    if let Some(m) = &r.meta {
        j.raw("meta", m);
    }
    j.end();
}

pub async fn claim(api: &Api, topic: String, req: &Request, start: Instant) -> ApiResult {
    let body: ClaimBody = parse(json_body(req)?)?;
    let node = node_of(body.node)?;
    let max = body.max.unwrap_or(1).clamp(1, MAX_CLAIM as u64) as usize;
    let cmd = Command::Claim(ClaimCmd {
        topic: topic.clone(),
        node,
        max,
        lease_ms: body.lease_ms,
        wait_ms: body.wait_ms.unwrap_or(0).min(MAX_WAIT_MS),
    });
    let Reply::Claimed(r) = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    let mut out = Vec::with_capacity(256 + r.claimed.len() * 256);
    let mut o = Obj::new(&mut out);
    o.str("topic", &topic);
    {
        let arr = o.key("claimed");
        arr.push(b'[');
        for (i, job) in r.claimed.iter().enumerate() {
            if i > 0 {
                arr.push(b',');
            }
            write_job(arr, job, None);
        }
        arr.push(b']');
    }
    o.u64("count", r.claimed.len() as u64).u64("ready", r.ready);
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, out))
}

#[derive(Deserialize)]
pub(super) struct SeqsBody {
    node: Option<String>,
    seqs: Option<Vec<u64>>,
    lease_ids: Option<Vec<String>>,
    delay_ms: Option<u64>,
    lease_ms: Option<u64>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Verb {
    Ack,
    Nack,
    Extend,
}

/// `ack`, `nack` and `extend`.
pub async fn act(api: &Api, topic: String, verb: Verb, req: &Request, start: Instant) -> ApiResult {
    let body: SeqsBody = parse(json_body(req)?)?;
    let node = node_of(body.node)?;
    let seqs = body
        .seqs
        .ok_or_else(|| ApiError::invalid("seqs is required (an array of seqs)"))?;
    if seqs.len() > MAX_SEQS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_SEQS} seqs per call (got {})",
            seqs.len()
        ))
        .detail(serde_json::json!({"limit": "seqs", "max": MAX_SEQS})));
    }
    let lease_ids = match body.lease_ids {
        None => None,
        Some(ids) => {
            if ids.len() != seqs.len() {
                return Err(ApiError::invalid(
                    "lease_ids must have one lease id per seq, in the same order",
                ));
            }
            let parsed: Option<Vec<u64>> = ids.iter().map(|s| parse_lease_id(s)).collect();
            Some(
                parsed
                    .ok_or_else(|| ApiError::invalid("lease_ids must be lease ids as claim returned them (\"lease_\" and 16 hex digits)"))?,
            )
        }
    };
    let action = match verb {
        Verb::Ack => {
            if body.delay_ms.is_some() || body.lease_ms.is_some() {
                return Err(ApiError::invalid("ack takes node, seqs and lease_ids"));
            }
            QueueAction::Ack
        }
        Verb::Nack => {
            let delay_ms = body.delay_ms.unwrap_or(0);
            if delay_ms > MAX_DELAY_MS {
                return Err(ApiError::invalid(format!(
                    "delay_ms must be at most {MAX_DELAY_MS}"
                )));
            }
            QueueAction::Nack { delay_ms }
        }
        Verb::Extend => {
            let lease_ms = body
                .lease_ms
                .ok_or_else(|| ApiError::invalid("lease_ms is required"))?;
            QueueAction::Extend {
                lease_ms: lease_ms.clamp(shards::queue::MIN_LEASE_MS, shards::queue::MAX_LEASE_MS),
            }
        }
    };
    let cmd = Command::Queue(QueueCmd {
        topic: topic.clone(),
        node,
        seqs,
        lease_ids,
        action,
    });
    let Reply::Queue(r) = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    Ok(json_response(200, act_body(&topic, verb, &r, start)))
}

fn act_body(topic: &str, verb: Verb, r: &QueueReply, start: Instant) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut o = Obj::new(&mut out);
    o.str("topic", topic);
    let done = r.done.len() as u64;
    match verb {
        Verb::Ack => o.u64("acked", done),
        Verb::Nack => o.u64("nacked", done),
        Verb::Extend => o.u64("extended", done),
    };
    o.u64_array("skipped", r.skipped.iter().copied());
    if verb == Verb::Extend {
        let map: serde_json::Map<String, Value> = r
            .deadlines
            .iter()
            .map(|(s, d)| (s.to_string(), Value::from(*d)))
            .collect();
        o.value("deadlines", &Value::Object(map));
    } else {
        o.u64("ready", r.ready).u64("in_flight", r.in_flight);
    }
    Perf {
        wal_append_ms: Some(r.timings.wal_append_ms),
        fsync_ms: Some(r.timings.fsync_ms),
        ..Perf::default()
    }
    .write(&mut o, start);
    o.end();
    out
}

/// `GET /v0/topics/:q/work?node=&max=&lease_ms=`: keeps up to `max` jobs leased to this
/// connection, pushing each as an `event: job` frame, and releases its leases when the
/// connection ends.
pub async fn work(api: &Api, topic: String, req: &Request) -> ApiResult {
    if !super::watch::accepts_event_stream(req) {
        return Err(ApiError::new(
            406,
            "not_acceptable",
            "this stream is text/event-stream; the Accept header excludes it",
        ));
    }
    let node = node_of(req.query_param("node"))?;
    let num = |name: &str| -> Result<Option<u64>, ApiError> {
        match req.query_param(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::invalid(format!("{name} must be a non-negative integer"))),
        }
    };
    let max = num("max")?.unwrap_or(1).clamp(1, MAX_CLAIM as u64) as usize;
    let lease_ms = num("lease_ms")?;
    super::sse_slot(&api.node.global)?;
    // Fail now, with a status, if the topic is missing or not a queue.
    let probe = Command::Queue(QueueCmd {
        topic: topic.clone(),
        node: node.clone(),
        seqs: Vec::new(),
        lease_ids: None,
        action: QueueAction::Held,
    });
    api.ask(&topic, probe).await?;
    let node_rc = api.node.clone();
    Ok(Response::sse(move |sink| async move {
        let w = Worker {
            api: Api::new(node_rc.clone()),
            topic,
            node,
            max,
            lease_ms,
            held: Vec::new(),
        };
        node_rc
            .global
            .sse_connections
            .fetch_add(1, Ordering::Relaxed);
        node_rc.streams.set(node_rc.streams.get() + 1);
        w.run(sink).await;
        node_rc
            .global
            .sse_connections
            .fetch_sub(1, Ordering::Relaxed);
        node_rc.streams.set(node_rc.streams.get().saturating_sub(1));
    }))
}

struct Worker {
    api: Api,
    topic: String,
    node: String,
    max: usize,
    lease_ms: Option<u64>,
    /// (seq, lease id) of the jobs this connection holds.
    held: Vec<(u64, u64)>,
}

impl Worker {
    async fn run(mut self, mut sink: SseSink) {
        if sink.send(SSE_RETRY).await.is_ok() {
            self.serve(&mut sink).await;
        }
        // The connection is gone (or the queue is): give the leases back at once.
        if !self.held.is_empty() {
            let cmd = self.held_cmd(QueueAction::Release);
            let _ = self.api.ask(&self.topic, cmd).await;
        }
    }

    /// A queue call about every job this connection holds.
    fn held_cmd(&self, action: QueueAction) -> Command {
        let (seqs, ids): (Vec<u64>, Vec<u64>) = self.held.iter().copied().unzip();
        Command::Queue(QueueCmd {
            topic: self.topic.clone(),
            node: self.node.clone(),
            seqs,
            lease_ids: Some(ids),
            action,
        })
    }

    async fn serve(&mut self, sink: &mut SseSink) {
        let mut last_send = Instant::now();
        loop {
            if sink.is_closed() {
                return;
            }
            // Which of our jobs are still ours (acked, nacked or expired ones are not).
            if !self.held.is_empty() {
                let cmd = self.held_cmd(QueueAction::Held);
                match self.api.ask(&self.topic, cmd).await {
                    Ok(Reply::Queue(r)) => self.held.retain(|(s, _)| r.done.contains(s)),
                    _ => return,
                }
            }
            let free = self.max.saturating_sub(self.held.len());
            let mut jobs = Vec::new();
            if free > 0 {
                let cmd = Command::Claim(ClaimCmd {
                    topic: self.topic.clone(),
                    node: self.node.clone(),
                    max: free,
                    lease_ms: self.lease_ms,
                    wait_ms: WORK_RECHECK.as_millis() as u64,
                });
                let claim = futures_lite::future::or(
                    async { Some(self.api.ask(&self.topic, cmd).await) },
                    async {
                        sink.closed().await;
                        None
                    },
                );
                match claim.await {
                    Some(Ok(Reply::Claimed(r))) => jobs = r.claimed,
                    Some(Err(e)) if e.status == 404 || e.status == 409 => {
                        let mut f = Vec::new();
                        let data = serde_json::json!({"code": e.code, "message": e.message});
                        sse_event(&mut f, None, "error", data.to_string().as_bytes());
                        let _ = sink.send(&f).await;
                        return;
                    }
                    Some(_) => glommio::timer::sleep(WORK_RECHECK).await,
                    None => return,
                }
            } else {
                // Full: wait for a slot (acks wake the queue's release event; expiry is
                // found by the periodic re-check).
                let closed = futures_lite::future::or(
                    async {
                        sink.closed().await;
                        true
                    },
                    async {
                        glommio::timer::sleep(SLOT_RECHECK).await;
                        false
                    },
                );
                if closed.await {
                    return;
                }
            }
            if !jobs.is_empty() {
                let mut frames = Vec::with_capacity(jobs.len() * 256);
                for job in &jobs {
                    self.held.push((job.record.seq, job.lease_id));
                    let mut data = Vec::with_capacity(256);
                    write_job(&mut data, job, Some(&self.topic));
                    sse_event(&mut frames, Some(&job.record.seq.to_string()), "job", &data);
                }
                if sink.send(&frames).await.is_err() {
                    return;
                }
                last_send = Instant::now();
            } else if last_send.elapsed() >= WORK_HEARTBEAT {
                if sink.send(SSE_HEARTBEAT).await.is_err() {
                    return;
                }
                last_send = Instant::now();
            }
        }
    }
}
