//! `ds-append`: C connections (default 64) appending over M Durable Streams (default 100) of
//! `application/json`, each request a `POST /v1/stream/{name}` of one JSON object of
//! `--record-bytes` bytes (one record); appends/s and the request → `204` latency. The
//! streams are created with `PUT` first. Their commit class is the server's
//! (`--ds-durability`, `fsync` by default: a `204` comes after the WAL group commit's fsync).

use serde_json::json;

use super::ds::{create_streams, request, stream_path, JSON};
use super::{closed_loop, params, record_data, ClosedLoop};
use crate::client::Target;
use crate::report::{Report, Run};
use crate::Args;

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let connections = args.connections.unwrap_or(64).max(1);
    let streams: Vec<String> = (0..args.topics.unwrap_or(100).max(1))
        .map(|i| format!("{}-ds-append-{i}", args.topic_prefix))
        .collect();
    create_streams(&args.cpus(), target, streams.clone())?;
    let requests = streams
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let body = record_data(args.record_bytes, i as u64);
            request(target, "POST", &stream_path(s), Some(JSON), body.as_bytes())
        })
        .collect();
    let plan = ClosedLoop {
        requests,
        records_per_request: 1,
        connections,
    };
    let (rec, elapsed) = closed_loop(args, target, plan)?;
    let mut p = params(args, connections);
    p.insert("streams".into(), json!(streams.len()));
    p.insert("content_type".into(), json!(JSON));
    p.insert(
        "durability".into(),
        json!("the server's --ds-durability (default fsync)"),
    );
    Ok(Report::new(
        "ds-append",
        &args.url,
        p,
        vec![Run::new("json", rec.summary(elapsed))],
    ))
}
