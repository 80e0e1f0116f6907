//! The workloads, one module each, and what they share: request bodies, topic set-up, and
//! the closed-loop driver (each connection sends its next request when the previous answer
//! arrived). A new workload is a module with a `run(&Args, &Target) -> Result<Report, String>`,
//! a variant of [`Workload`] and a line in [`run`].

pub mod ack_latency;
pub mod append;
pub mod append_batch;
pub mod diff;
pub mod diff_range;
pub mod ds;
pub mod ds_append;
pub mod ds_catchup;
pub mod ds_fanout;
pub mod fanout;
pub mod fill;
pub mod many_topics;
pub mod queue;
pub mod queue_latency;
pub mod queue_rt;
pub mod router;
pub mod watch_idle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::{json, Map, Value};

use crate::client::{json_number, Client, Target};
use crate::exec::{Cpus, Window};
use crate::report::Report;
use crate::sse::{create_session, WatchStream};
use crate::stats::Recorder;
use crate::{Args, Durability};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Single-record appends from many connections over many topics.
    Append,
    /// Batched appends from a few writers into one topic.
    AppendBatch,
    /// One connection, one record at a time: the acknowledgement round trip per class.
    AckLatency,
    /// Sequential reads of a preloaded topic with several page sizes.
    Diff,
    /// N SSE watch streams on one topic and a writer at a fixed rate: delivery latency.
    Fanout,
    /// N idle SSE watch streams held open: the server's memory per stream.
    WatchIdle,
    /// A router src -> dst under a single-client writer: forwarding rate, lag, drain time.
    Router,
    /// Single-record appends round-robin over many lazily created topics: the server's RSS.
    Topics,
    /// A fixed number of records in batches over many `disk` topics, as fast as it goes: the
    /// storage measurements' fill (issue 4).
    Fill,
    /// Paged diffs over the oldest and the newest records of the topics `fill` wrote.
    DiffRange,
    /// A pre-filled queue and W workers looping claim -> ack as fast as it goes: round
    /// trips/s and their latency (issue 6).
    QueueRt,
    /// A producer appending jobs at a steady rate and W long-polling workers: end-to-end job
    /// latency, and that every job is delivered exactly once (issue 6).
    QueueLatency,
    /// Durable Streams: single-record JSON appends from many connections over many streams
    /// (issue 8).
    DsAppend,
    /// Durable Streams: S `live=sse` subscribers on one stream and a writer at a fixed
    /// rate: append-ack → event latency and delivery (issue 8).
    DsFanout,
    /// Durable Streams: a pre-filled stream read from the start by C connections at once with
    /// catch-up paging: records/s and MB/s (issue 8).
    DsCatchup,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Append => "append",
            Workload::AppendBatch => "append-batch",
            Workload::AckLatency => "ack-latency",
            Workload::Diff => "diff",
            Workload::Fanout => "fanout",
            Workload::WatchIdle => "watch-idle",
            Workload::Router => "router",
            Workload::Topics => "topics",
            Workload::Fill => "fill",
            Workload::DiffRange => "diff-range",
            Workload::QueueRt => "queue-rt",
            Workload::QueueLatency => "queue-latency",
            Workload::DsAppend => "ds-append",
            Workload::DsFanout => "ds-fanout",
            Workload::DsCatchup => "ds-catchup",
        }
    }
}

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    match args.workload {
        Workload::Append => append::run(args, target),
        Workload::AppendBatch => append_batch::run(args, target),
        Workload::AckLatency => ack_latency::run(args, target),
        Workload::Diff => diff::run(args, target),
        Workload::Fanout => fanout::run(args, target),
        Workload::WatchIdle => watch_idle::run(args, target),
        Workload::Router => router::run(args, target),
        Workload::Topics => many_topics::run(args, target),
        Workload::Fill => fill::run(args, target),
        Workload::DiffRange => diff_range::run(args, target),
        Workload::QueueRt => queue_rt::run(args, target),
        Workload::QueueLatency => queue_latency::run(args, target),
        Workload::DsAppend => ds_append::run(args, target),
        Workload::DsFanout => ds_fanout::run(args, target),
        Workload::DsCatchup => ds_catchup::run(args, target),
    }
}

/// The request path of a topic.
pub fn topic_path(topic: &str) -> String {
    format!("/v0/topics/{topic}")
}

/// One record's `data`: a small JSON object padded to exactly `bytes` bytes (at least 64).
pub fn record_data(bytes: usize, id: u64) -> String {
    let head = format!(r#"{{"id":{id},"kind":"load","pad":""#);
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(bytes);
    s.push_str(&head);
    s.extend((0..pad).map(|i| char::from(b'a' + (i % 26) as u8)));
    s.push_str("\"}");
    s
}

/// An append body with `count` records of `record_bytes` each.
pub fn append_body(count: usize, record_bytes: usize, first_id: u64) -> Vec<u8> {
    let mut body = String::with_capacity(16 + count * (record_bytes + 12));
    body.push_str(r#"{"records":["#);
    for i in 0..count {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"data":"#);
        body.push_str(&record_data(record_bytes, first_id + i as u64));
        body.push('}');
    }
    body.push_str("]}");
    body.into_bytes()
}

/// Topic names `{prefix}-t000000`, ...: all of one length, so that one serialized request
/// serves every topic with its digits overwritten in place.
pub struct Names {
    prefix: String,
    pub width: usize,
    pub count: usize,
}

impl Names {
    pub fn new(prefix: &str, count: usize) -> Names {
        Names {
            prefix: prefix.to_string(),
            width: count.saturating_sub(1).to_string().len().max(6),
            count,
        }
    }

    pub fn name(&self, i: usize) -> String {
        format!("{}-t{i:0w$}", self.prefix, w = self.width)
    }
}

/// The parameters every report carries.
pub fn params(args: &Args, connections: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("connections".into(), json!(connections));
    m.insert("duration_s".into(), json!(args.duration_secs));
    m.insert("warmup_s".into(), json!(args.warmup_secs));
    m.insert("record_bytes".into(), json!(args.record_bytes));
    m.insert("executors".into(), json!(args.cpus().describe()));
    if args.io == crate::Io::BusyPoll {
        m.insert("io".into(), json!("busy-poll"));
    }
    m
}

/// The class a writing workload uses when none is given.
pub fn durability(args: &Args) -> Durability {
    args.durability.unwrap_or(Durability::Disk)
}

/// Creates (or reconfigures) a topic with the given commit class.
pub async fn put_topic(
    client: &mut Client,
    target: &Target,
    topic: &str,
    durability: Durability,
) -> Result<(), String> {
    let body = format!(r#"{{"durability":"{}"}}"#, durability.name());
    let req = target.request("PUT", &topic_path(topic), Some(body.as_bytes()));
    let status = client
        .send(&req)
        .await
        .map_err(|e| format!("PUT {topic}: {e}"))?;
    if !(200..300).contains(&status) {
        let body = String::from_utf8_lossy(client.body());
        return Err(format!("PUT {topic}: HTTP {status}: {body}"));
    }
    Ok(())
}

/// Opens one watch stream: creates the session with `body` over `client`, opens its SSE
/// stream and reads up to its first `caught-up` frame.
pub async fn open_watch(
    client: &mut Client,
    target: &Target,
    body: &[u8],
    buf_size: usize,
) -> Result<WatchStream, String> {
    let wid = create_session(client, target, body).await?;
    let mut stream = WatchStream::connect(target, &wid, buf_size)
        .await
        .map_err(|e| format!("GET /v0/watch/{wid}: {e}"))?;
    stream
        .wait_for(b"event: caught-up\n")
        .await
        .map_err(|e| format!("watch {wid} before caught-up: {e}"))?;
    Ok(stream)
}

/// Makes sure this process may hold `streams` sockets besides a few others.
pub fn ensure_fds(streams: usize) -> Result<(), String> {
    let want = streams as u64 + 256;
    let got = crate::procfs::raise_nofile(want)?;
    if got < want {
        return Err(format!(
            "RLIMIT_NOFILE is {got}, {streams} streams need about {want} (raise the hard \
             limit, e.g. ulimit -n 65536 as root)"
        ));
    }
    Ok(())
}

/// Creates every topic of `topics` over one connection, on the first executor.
pub fn create_topics(
    cpus: &Cpus,
    target: &Target,
    topics: Vec<String>,
    durability: Durability,
) -> Result<(), String> {
    let target = target.clone();
    cpus.run_one(move || async move {
        let mut client = Client::new(target.clone());
        for topic in &topics {
            put_topic(&mut client, &target, topic, durability).await?;
        }
        Ok(())
    })?
}

/// A closed-loop run: `connections` connections, connection `i` sending `requests[i % n]`,
/// `requests[(i + 1) % n]`, ... back to back; each 2xx counts `records_per_request` records.
pub struct ClosedLoop {
    pub requests: Vec<Vec<u8>>,
    pub records_per_request: u64,
    pub connections: usize,
}

/// Runs a closed loop for the warm-up plus the measured window; returns the merged
/// recorder and the window's length.
pub fn closed_loop(
    args: &Args,
    target: &Target,
    plan: ClosedLoop,
) -> Result<(Recorder, Duration), String> {
    if args.io == crate::Io::BusyPoll {
        return crate::busy::closed_loop(args, target.addr, plan);
    }
    let plan = Arc::new(plan);
    let window = Window::new(args.warmup(), args.duration());
    let target = target.clone();
    let parts = args.cpus().run_all(move |index, count| {
        let plan = plan.clone();
        let target = target.clone();
        async move {
            let tasks: Vec<_> = (index..plan.connections)
                .step_by(count)
                .map(|i| glommio::spawn_local(connection(target.clone(), plan.clone(), i, window)))
                .collect();
            let mut rec = Recorder::new();
            for task in tasks {
                rec.merge(&task.await);
            }
            rec
        }
    })?;
    let mut rec = Recorder::new();
    for part in &parts {
        rec.merge(part);
    }
    Ok((rec, window.duration()))
}

async fn connection(target: Target, plan: Arc<ClosedLoop>, i: usize, window: Window) -> Recorder {
    let mut client = Client::new(target);
    let mut rec = Recorder::new();
    let n = plan.requests.len();
    let mut k = i % n;
    loop {
        let sent = Instant::now();
        if window.over(sent) {
            break;
        }
        let result = client.send(&plan.requests[k]).await;
        k = (k + 1) % n;
        let done = Instant::now();
        let counted = window.measuring(done) && !window.over(done);
        match result {
            Ok(status) if counted => {
                rec.response(status, done - sent, plan.records_per_request);
                if (200..300).contains(&status) {
                    let body = client.body();
                    rec.server_perf(
                        json_number(body, "server_total_ms"),
                        json_number(body, "fsync_ms"),
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                if counted {
                    rec.io_error(&e);
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_requested_size() {
        for bytes in [64, 100, 256, 1000] {
            let data = record_data(bytes, 123_456);
            assert_eq!(data.len(), bytes);
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert_eq!(v["id"], 123_456);
        }
        let body = append_body(3, 64, 0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["records"].as_array().unwrap().len(), 3);
    }
}
