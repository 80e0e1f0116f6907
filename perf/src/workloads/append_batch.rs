//! `append-batch`: W writers posting B records per request into one topic; records/s,
//! requests/s and round-trip latency.

use serde_json::json;

use super::{append_body, closed_loop, create_topics, durability, params, topic_path, ClosedLoop};
use crate::client::Target;
use crate::report::{Report, Run};
use crate::Args;

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let class = durability(args);
    let connections = args.connections.unwrap_or(16).max(1);
    let batch = args.batch.max(1);
    let topic = format!("{}-batch-{}", args.topic_prefix, class.name());
    create_topics(&args.cpus(), target, vec![topic.clone()], class)?;
    let body = append_body(batch, args.record_bytes, 0);
    let plan = ClosedLoop {
        requests: vec![target.request("POST", &topic_path(&topic), Some(&body))],
        records_per_request: batch as u64,
        connections,
    };
    let (rec, elapsed) = closed_loop(args, target, plan)?;
    let mut p = params(args, connections);
    p.insert("batch".into(), json!(batch));
    p.insert("durability".into(), json!(class.name()));
    Ok(Report::new(
        "append-batch",
        &args.url,
        p,
        vec![Run::new(class.name(), rec.summary(elapsed))],
    ))
}
