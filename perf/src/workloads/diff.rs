//! `diff`: preload one topic with N records (batches of 1000 from several connections, topped
//! up only if the topic holds fewer), then read it sequentially from `from_seq` 0 with each
//! page size in `--limit`, wrapping around at the head; records/s and per-request latency.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{append_body, durability, params, put_topic, topic_path};
use crate::client::{json_number, json_u64, Client, Target};
use crate::exec::Window;
use crate::report::{Report, Run};
use crate::stats::Recorder;
use crate::Args;

/// Records per preload request, and preload connections.
const PRELOAD_BATCH: u64 = 1000;
const PRELOAD_CONNECTIONS: usize = 8;

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let class = durability(args);
    let topic = format!("{}-diff-{}", args.topic_prefix, args.preload);
    let connections = args.connections.unwrap_or(1).max(1);
    let (t, name, want, bytes) = (
        target.clone(),
        topic.clone(),
        args.preload,
        args.record_bytes,
    );
    let (preload, head) = args.cpus().run_one(move || async move {
        let mut client = Client::new(t.clone());
        put_topic(&mut client, &t, &name, class).await?;
        let before = head_seq(&mut client, &t, &name).await?;
        let started = Instant::now();
        let rec = fill(&t, &name, want.saturating_sub(before), bytes).await;
        let elapsed = started.elapsed();
        let head = head_seq(&mut client, &t, &name).await?;
        if head < want {
            return Err(format!(
                "preload left {name} at head_seq {head} < {want}: {:?}",
                rec.first_error
            ));
        }
        let run = Run::new("preload", rec.summary(elapsed)).with("head_seq_before", json!(before));
        Ok::<_, String>((run, head))
    })??;

    let mut runs = vec![preload];
    for &limit in &args.limit {
        let (rec, elapsed) = read_run(args, target, &topic, head, limit, connections)?;
        runs.push(
            Run::new(format!("limit {limit}"), rec.summary(elapsed)).with("limit", json!(limit)),
        );
    }
    let mut p = params(args, connections);
    p.insert("topic".into(), json!(topic));
    p.insert("head_seq".into(), json!(head));
    p.insert("durability".into(), json!(class.name()));
    Ok(Report::new("diff", &args.url, p, runs))
}

/// A topic's `head_seq` (`GET ?touch=false`).
pub async fn head_seq(client: &mut Client, target: &Target, topic: &str) -> Result<u64, String> {
    let path = format!("{}?touch=false", topic_path(topic));
    let status = client
        .send(&target.request("GET", &path, None))
        .await
        .map_err(|e| format!("GET {topic}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {topic}: HTTP {status}"));
    }
    json_u64(client.body(), "head_seq").ok_or_else(|| format!("GET {topic}: no head_seq"))
}

/// Appends `count` records in batches of `PRELOAD_BATCH` from several connections.
async fn fill(target: &Target, topic: &str, count: u64, record_bytes: usize) -> Recorder {
    let left = Rc::new(Cell::new(count));
    let path = topic_path(topic);
    let full = Rc::new(target.request(
        "POST",
        &path,
        Some(&append_body(PRELOAD_BATCH as usize, record_bytes, 0)),
    ));
    let tasks: Vec<_> = (0..PRELOAD_CONNECTIONS)
        .map(|_| {
            let (left, full, target, path) =
                (left.clone(), full.clone(), target.clone(), path.clone());
            glommio::spawn_local(async move {
                let mut client = Client::new(target.clone());
                let mut rec = Recorder::new();
                let mut failures = 0;
                while left.get() > 0 && failures < 100 {
                    let n = left.get().min(PRELOAD_BATCH);
                    left.set(left.get() - n);
                    let partial;
                    let req = if n == PRELOAD_BATCH {
                        full.as_slice()
                    } else {
                        let body = append_body(n as usize, record_bytes, 0);
                        partial = target.request("POST", &path, Some(&body));
                        partial.as_slice()
                    };
                    let sent = Instant::now();
                    match client.send(req).await {
                        Ok(status) => {
                            rec.response(status, sent.elapsed(), n);
                            if !(200..300).contains(&status) {
                                left.set(left.get() + n);
                                failures += 1;
                            }
                        }
                        Err(e) => {
                            rec.io_error(&e);
                            left.set(left.get() + n);
                            failures += 1;
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                rec
            })
        })
        .collect();
    let mut rec = Recorder::new();
    for task in tasks {
        rec.merge(&task.await);
    }
    rec
}

/// `connections` readers, reader `j` starting at `head * j / connections`.
fn read_run(
    args: &Args,
    target: &Target,
    topic: &str,
    head: u64,
    limit: u32,
    connections: usize,
) -> Result<(Recorder, Duration), String> {
    let window = Window::new(args.warmup(), args.duration());
    let (target, path) = (target.clone(), format!("{}/diff", topic_path(topic)));
    let parts = args.cpus().run_all(move |index, count| {
        let (target, path) = (target.clone(), path.clone());
        async move {
            let tasks: Vec<_> = (index..connections)
                .step_by(count)
                .map(|j| {
                    let start = head * j as u64 / connections as u64;
                    glommio::spawn_local(reader(
                        target.clone(),
                        path.clone(),
                        start,
                        head,
                        limit,
                        window,
                    ))
                })
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

async fn reader(
    target: Target,
    path: String,
    mut from: u64,
    head: u64,
    limit: u32,
    window: Window,
) -> Recorder {
    let mut client = Client::new(target.clone());
    let mut rec = Recorder::new();
    loop {
        let sent = Instant::now();
        if window.over(sent) {
            break;
        }
        let body = format!(r#"{{"from_seq":{from},"limit":{limit}}}"#);
        let req = target.request("POST", &path, Some(body.as_bytes()));
        let result = client.send(&req).await;
        let done = Instant::now();
        let counted = window.measuring(done) && !window.over(done);
        match result {
            Ok(status) if (200..300).contains(&status) => {
                let body = client.body();
                let next = json_u64(body, "next_from_seq").filter(|&n| n > from);
                if counted {
                    rec.response(status, done - sent, next.map_or(0, |n| n - from));
                    rec.server_perf(json_number(body, "server_total_ms"), None);
                }
                from = match next {
                    Some(n) if n < head => n,
                    _ => 0,
                };
            }
            Ok(status) => {
                if counted {
                    rec.response(status, done - sent, 0);
                }
            }
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
