//! `GET /v0/metrics` (SPEC §9): Prometheus text, or JSON with `Accept: application/json`.
//!
//! Each core reports its own figures (`Command::Stats`); counts are summed across cores and
//! the per-core series carry a `shard` label. Request counts and latencies are recorded per
//! route template and status on the core that served the request.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use shards::metrics::ShardStats;
use shards::{Command, Reply};

use super::{unexpected, Api, ApiError, ApiResult};
use crate::http::{Request, Response};

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const CLASSES: [&str; 4] = ["fsync", "disk", "memory", "ephemeral"];

/// The route template of a request, for request metrics (bounded label values).
/// Interned, so recording a request allocates nothing (the label set is fixed and small).
pub fn route_label(method: &str, path: &str) -> &'static str {
    let template: &'static str = match path {
        "/v0/health" => "/v0/health",
        "/healthz" => "/healthz",
        "/v0/ready" => "/v0/ready",
        "/readyz" => "/readyz",
        "/v0/metrics" => "/v0/metrics",
        "/v0/topics" => "/v0/topics",
        "/v0/watch" => "/v0/watch",
        "/v0/routers" => "/v0/routers",
        _ if path.starts_with("/v0/watch/") => "/v0/watch/:wid",
        _ if path.starts_with("/v0/routers/") => "/v0/routers/:name",
        _ if path.starts_with("/v1/stream/") => "/v1/stream/:name",
        _ => match path.strip_prefix("/v0/topics/").map(|r| r.split_once('/')) {
            Some(None) => "/v0/topics/:topic",
            Some(Some((_, action))) => match action {
                "diff" => "/v0/topics/:topic/diff",
                "delete" => "/v0/topics/:topic/delete",
                "claim" => "/v0/topics/:topic/claim",
                "ack" => "/v0/topics/:topic/ack",
                "nack" => "/v0/topics/:topic/nack",
                "extend" => "/v0/topics/:topic/extend",
                "work" => "/v0/topics/:topic/work",
                _ => "other",
            },
            None => "other",
        },
    };
    let method: &'static str = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => "OTHER",
    };
    thread_local! {
        static LABELS: std::cell::RefCell<std::collections::HashMap<(&'static str, &'static str), &'static str>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    LABELS.with(|l| {
        *l.borrow_mut()
            .entry((method, template))
            // At most 6 methods x 17 templates per thread: leaking them is bounded.
            .or_insert_with(|| Box::leak(format!("{method} {template}").into_boxed_str()))
    })
}

async fn gather(api: &Api) -> Result<Vec<ShardStats>, ApiError> {
    let mut out = Vec::with_capacity(api.node.shards());
    for s in 0..api.node.shards() {
        match api.node.call(s, Command::Stats).await {
            Reply::Stats(st) => out.push(*st),
            Reply::Err(e) => return Err(ApiError::from_shard(e, "")),
            _ => return Err(unexpected()),
        }
    }
    Ok(out)
}

fn wants_json(req: &Request) -> bool {
    req.header("accept").is_some_and(|a| {
        a.split(',').any(|r| {
            r.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
    })
}

pub async fn metrics(api: &Api, req: &Request) -> ApiResult {
    let stats = gather(api).await?;
    let g = &api.node.global;
    let uptime = g.started.elapsed().as_secs_f64();
    let ready = g.ready() && !g.draining();
    let progress = g.replay_progress();
    let sse = g.sse_connections.load(Ordering::Relaxed) as u64;
    let sum = |f: &dyn Fn(&ShardStats) -> u64| stats.iter().map(f).sum::<u64>();
    let mut requests: std::collections::BTreeMap<(String, u16), u64> = Default::default();
    let mut latency: std::collections::BTreeMap<String, Histogram<u64>> = Default::default();
    let mut fsync = shards::metrics::latency_histogram();
    for s in &stats {
        for (route, statuses) in &s.requests.counts {
            for (status, n) in statuses {
                *requests.entry((route.clone(), *status)).or_default() += n;
            }
        }
        for (route, h) in &s.requests.latency {
            let e = latency
                .entry(route.clone())
                .or_insert_with(shards::metrics::latency_histogram);
            let _ = e.add(h);
        }
        let _ = fsync.add(&s.fsync);
    }
    if wants_json(req) {
        let per_core: Vec<Value> = stats
            .iter()
            .map(|s| {
                json!({
                    "shard": s.shard,
                    "topics": s.topics_by_class.iter().sum::<u64>(),
                    "records": s.records,
                    "bytes": s.bytes,
                    "hot_tail_bytes": s.hot_tail_bytes,
                    "segments": s.segments,
                    "checkpoints": s.checkpoints,
                    "wal": {
                        "frames": s.wal_frames,
                        "batches": s.wal_flushes,
                        "fsyncs": s.fsync.len(),
                        "bytes_written": s.wal_bytes_written,
                        "rotations": s.wal_rotations,
                        "queue_bytes": s.wal_pending_bytes,
                    },
                })
            })
            .collect();
        let by_class: Map<String, Value> = CLASSES
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), json!(sum(&|s| s.topics_by_class[i]))))
            .collect();
        let reqs: Vec<Value> = requests
            .iter()
            .map(|((route, status), n)| json!({"route": route, "status": status, "count": n}))
            .collect();
        let lat: Map<String, Value> = latency
            .iter()
            .map(|(route, h)| (route.clone(), hist_json(h)))
            .collect();
        let body = json!({
            "uptime_ms": (uptime * 1000.0) as u64,
            "ready": ready,
            "recovery_progress": progress,
            "topics": by_class,
            "queues": sum(&|s| s.queues),
            "routers": sum(&|s| s.routers),
            "records": sum(&|s| s.records),
            "bytes": sum(&|s| s.bytes),
            "queue_leases_in_flight": sum(&|s| s.leases_in_flight),
            "sse_connections": sse,
            "watch_sessions": sum(&|s| s.sessions),
            "wal": {
                "frames": sum(&|s| s.wal_frames),
                "batches": sum(&|s| s.wal_flushes),
                "fsyncs": fsync.len(),
                "bytes_written": sum(&|s| s.wal_bytes_written),
                "rotations": sum(&|s| s.wal_rotations),
                "queue_bytes": sum(&|s| s.wal_pending_bytes),
                "fsync_latency": hist_json(&fsync),
            },
            "requests": reqs,
            "request_latency": lat,
            "cores": per_core,
        });
        return Ok(super::json_response(
            200,
            serde_json::to_vec(&body).unwrap_or_default(),
        ));
    }
    let mut out = String::with_capacity(8192);
    let mut gauge = |name: &str, help: &str, kind: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP topics_{name} {help}");
        let _ = writeln!(out, "# TYPE topics_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "topics_{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    let per = |f: &dyn Fn(&ShardStats) -> u64| -> Vec<(String, f64)> {
        stats
            .iter()
            .map(|s| (format!("{{shard=\"{}\"}}", s.shard), f(s) as f64))
            .collect()
    };
    gauge(
        "uptime_seconds",
        "Seconds since the server started.",
        "gauge",
        &[(String::new(), uptime)],
    );
    gauge(
        "ready",
        "1 when every shard has recovered and the server is not draining.",
        "gauge",
        &one(ready as u64),
    );
    gauge(
        "recovery_progress",
        "Fraction of the WAL and snapshots replayed at start (0-1).",
        "gauge",
        &[(String::new(), progress)],
    );
    let classes: Vec<(String, f64)> = CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                format!("{{class=\"{c}\"}}"),
                sum(&|s| s.topics_by_class[i]) as f64,
            )
        })
        .collect();
    gauge("topics", "Topics by durability class.", "gauge", &classes);
    gauge(
        "queues",
        "Topics of type queue.",
        "gauge",
        &one(sum(&|s| s.queues)),
    );
    gauge("routers", "Routers.", "gauge", &one(sum(&|s| s.routers)));
    gauge(
        "records",
        "Live records, per core.",
        "gauge",
        &per(&|s| s.records),
    );
    gauge(
        "bytes",
        "Payload bytes of live records, per core.",
        "gauge",
        &per(&|s| s.bytes),
    );
    gauge(
        "hot_tail_bytes",
        "Memory held by recent records, per core.",
        "gauge",
        &per(&|s| s.hot_tail_bytes),
    );
    gauge(
        "segments",
        "Segment files, per core.",
        "gauge",
        &per(&|s| s.segments),
    );
    gauge(
        "checkpoints_total",
        "Checkpoints completed, per core.",
        "counter",
        &per(&|s| s.checkpoints),
    );
    gauge(
        "queue_leases_in_flight",
        "Queue jobs under an active lease.",
        "gauge",
        &one(sum(&|s| s.leases_in_flight)),
    );
    gauge("sse_connections", "Open SSE streams.", "gauge", &one(sse));
    gauge(
        "watch_sessions",
        "Watch sessions.",
        "gauge",
        &one(sum(&|s| s.sessions)),
    );
    gauge(
        "wal_frames_total",
        "WAL frames queued, per core.",
        "counter",
        &per(&|s| s.wal_frames),
    );
    gauge(
        "wal_batches_total",
        "WAL group commits (flushes), per core.",
        "counter",
        &per(&|s| s.wal_flushes),
    );
    gauge(
        "wal_fsyncs_total",
        "Synchronous WAL writes, per core.",
        "counter",
        &per(&|s| s.fsync.len()),
    );
    gauge(
        "wal_bytes_written_total",
        "Bytes written to the WAL, per core.",
        "counter",
        &per(&|s| s.wal_bytes_written),
    );
    gauge(
        "wal_rotations_total",
        "WAL file rotations, per core.",
        "counter",
        &per(&|s| s.wal_rotations),
    );
    gauge(
        "wal_queue_bytes",
        "Bytes queued for the WAL and not yet written, per core.",
        "gauge",
        &per(&|s| s.wal_pending_bytes),
    );
    let reqs: Vec<(String, f64)> = requests
        .iter()
        .map(|((route, status), n)| {
            (
                format!("{{route=\"{route}\",status=\"{status}\"}}"),
                *n as f64,
            )
        })
        .collect();
    gauge(
        "requests_total",
        "Requests by route and status.",
        "counter",
        &reqs,
    );
    histogram(
        &mut out,
        "wal_fsync_seconds",
        "Latency of synchronous WAL writes.",
        &[(String::new(), &fsync)],
    );
    let lat: Vec<(String, &Histogram<u64>)> = latency
        .iter()
        .map(|(route, h)| (format!("route=\"{route}\""), h))
        .collect();
    histogram(
        &mut out,
        "request_duration_seconds",
        "Request latency by route (to the response head).",
        &lat,
    );
    Ok(Response {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        headers: Vec::new(),
        body: out.into_bytes(),
        stream: None,
    })
}

fn hist_json(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "max_ms": h.max() as f64 / 1000.0,
        "mean_ms": h.mean() / 1000.0,
    })
}

/// A Prometheus histogram from an hdrhistogram of microseconds.
fn histogram(out: &mut String, name: &str, help: &str, series: &[(String, &Histogram<u64>)]) {
    let _ = writeln!(out, "# HELP topics_{name} {help}");
    let _ = writeln!(out, "# TYPE topics_{name} histogram");
    for (labels, h) in series {
        let sep = if labels.is_empty() { "" } else { "," };
        for b in BUCKETS {
            let micros = (b * 1e6) as u64;
            let n: u64 = h
                .iter_recorded()
                .filter(|v| v.value_iterated_to() <= micros)
                .map(|v| v.count_at_value())
                .sum();
            let _ = writeln!(out, "topics_{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "topics_{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            h.len()
        );
        let total: f64 = h.mean() * h.len() as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "topics_{name}_sum{} {total}", braces(labels));
        let _ = writeln!(out, "topics_{name}_count{} {}", braces(labels), h.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_templates() {
        assert_eq!(
            route_label("POST", "/v0/topics/orders"),
            "POST /v0/topics/:topic"
        );
        assert_eq!(
            route_label("POST", "/v0/topics/o/diff"),
            "POST /v0/topics/:topic/diff"
        );
        assert_eq!(route_label("GET", "/v0/watch/wid_x"), "GET /v0/watch/:wid");
        assert_eq!(route_label("GET", "/v0/topics/o/zzz"), "GET other");
        assert_eq!(route_label("BREW", "/nope"), "OTHER other");
        assert_eq!(route_label("GET", "/v0/metrics"), "GET /v0/metrics");
    }
}
