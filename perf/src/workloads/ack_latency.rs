//! `ack-latency`: one connection, one record at a time, on an otherwise idle server, per
//! commit class; the round trip's percentiles next to the `server_total_ms` and `fsync_ms`
//! the server reported.

use super::{append_body, closed_loop, create_topics, params, topic_path, ClosedLoop};
use crate::client::Target;
use crate::report::{Report, Run};
use crate::{Args, Durability};

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let classes = match args.durability {
        Some(class) => vec![class],
        None => vec![Durability::Disk, Durability::Fsync],
    };
    let mut runs = Vec::new();
    for class in classes {
        let topic = format!("{}-ack-{}", args.topic_prefix, class.name());
        create_topics(&args.cpus(), target, vec![topic.clone()], class)?;
        let body = append_body(1, args.record_bytes, 0);
        let plan = ClosedLoop {
            requests: vec![target.request("POST", &topic_path(&topic), Some(&body))],
            records_per_request: 1,
            connections: 1,
        };
        let (rec, elapsed) = closed_loop(args, target, plan)?;
        runs.push(Run::new(class.name(), rec.summary(elapsed)));
    }
    Ok(Report::new("ack-latency", &args.url, params(args, 1), runs))
}
