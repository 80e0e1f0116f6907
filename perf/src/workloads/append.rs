//! `append`: C connections, one record per POST, spread over T topics of one commit class;
//! appends/s and round-trip latency.

use serde_json::json;

use super::{append_body, closed_loop, create_topics, durability, params, topic_path, ClosedLoop};
use crate::client::Target;
use crate::report::{Report, Run};
use crate::Args;

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let class = durability(args);
    let connections = args.connections.unwrap_or(64).max(1);
    let topics: Vec<String> = (0..args.topics.unwrap_or(100).max(1))
        .map(|i| format!("{}-append-{}-{i}", args.topic_prefix, class.name()))
        .collect();
    create_topics(&args.cpus(), target, topics.clone(), class)?;
    let requests = topics
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let body = append_body(1, args.record_bytes, i as u64);
            target.request("POST", &topic_path(t), Some(&body))
        })
        .collect();
    let plan = ClosedLoop {
        requests,
        records_per_request: 1,
        connections,
    };
    let (rec, elapsed) = closed_loop(args, target, plan)?;
    let mut p = params(args, connections);
    p.insert("topics".into(), json!(topics.len()));
    p.insert("durability".into(), json!(class.name()));
    Ok(Report::new(
        "append",
        &args.url,
        p,
        vec![Run::new(class.name(), rec.summary(elapsed))],
    ))
}
