//! `ds-catchup`: one `application/json` Durable Stream pre-filled with K records (`--records`,
//! default 1,000,000 of `--record-bytes` bytes; JSON-array POSTs of `--batch` records from
//! 8 connections, topped up when the stream already holds some), then C connections
//! (`--connections`, default 8) each read the whole stream from `offset=-1` at the same time,
//! paging with `Stream-Next-Offset` until `Stream-Up-To-Date: true`. Reports the fill rate,
//! and for the reads: records/s and MB/s of response bodies over all readers (from the
//! first request to the last reader's last answer), per-page latency, and whether every
//! reader got every record exactly once (counted in the bodies and checked against the
//! offsets).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use memchr::memmem;
use serde_json::json;

use super::ds::{json_body, parse_offset, put_stream, request, stream_path, tail, JSON};
use super::{params, record_data};
use crate::client::{Client, Target};
use crate::report::{Report, Run};
use crate::stats::{insert_percentiles, record_us, round, us_histogram, Recorder};
use crate::Args;

/// Connections the fill appends over.
const FILL_CONNECTIONS: usize = 8;

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let readers = args.connections.unwrap_or(8).max(1);
    let want = args.records.unwrap_or(1_000_000).max(1);
    let batch = args.batch.clamp(1, 10_000);
    let name = format!("{}-ds-catchup", args.topic_prefix);
    let cpus = args.cpus();

    // Create and fill.
    let fill = {
        let (target, name, record_bytes) = (target.clone(), name.clone(), args.record_bytes);
        cpus.run_one(move || fill(target, name, want, batch, record_bytes))??
    };
    let (head, fill_run) = fill;

    // Read it all, C readers at once.
    let started = Instant::now();
    let (t, n) = (target.clone(), name.clone());
    let parts = cpus.run_all(move |index, count| {
        let (t, n) = (t.clone(), n.clone());
        async move {
            let tasks: Vec<_> = (index..readers)
                .step_by(count)
                .map(|_| glommio::spawn_local(read_all(t.clone(), n.clone(), head)))
                .collect();
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await);
            }
            out
        }
    })?;
    let mut rec = Recorder::new();
    let mut pass = us_histogram();
    let mut bytes = 0u64;
    let mut last_end = started;
    let mut complete = 0usize;
    for r in parts.into_iter().flatten() {
        rec.merge(&r.rec);
        bytes += r.bytes;
        last_end = last_end.max(r.end);
        record_us(&mut pass, (r.end - started).as_micros() as u64);
        if r.rec.errors() == 0 && r.records == head && r.counted == head {
            complete += 1;
        }
    }
    let elapsed = (last_end - started).max(Duration::from_micros(1));
    let mut f = rec.summary(elapsed);
    f.insert("readers".into(), json!(readers));
    f.insert("stream_records".into(), json!(head));
    f.insert("body_bytes".into(), json!(bytes));
    f.insert(
        "mb_per_s".into(),
        json!(round(bytes as f64 / 1e6 / elapsed.as_secs_f64(), 1)),
    );
    f.insert("readers_complete".into(), json!(complete));
    insert_percentiles(&mut f, "pass_", &pass);
    f.insert(
        "verified".into(),
        json!(complete == readers && rec.errors() == 0),
    );
    let mut p = params(args, readers);
    p.insert("stream".into(), json!(name));
    p.insert("records".into(), json!(want));
    p.insert("fill_batch".into(), json!(batch));
    p.insert("fill_connections".into(), json!(FILL_CONNECTIONS));
    Ok(Report::new(
        "ds-catchup",
        &args.url,
        p,
        vec![fill_run, Run::new(format!("{readers} readers"), f)],
    ))
}

/// Creates the stream and appends until it holds `want` records; returns its tail and the
/// fill's figures.
async fn fill(
    target: Target,
    name: String,
    want: u64,
    batch: usize,
    record_bytes: usize,
) -> Result<(u64, Run), String> {
    let mut client = Client::new(target.clone());
    put_stream(&mut client, &target, &name).await?;
    let had = tail(&mut client, &target, &name).await?;
    let next = Rc::new(Cell::new(had));
    let started = Instant::now();
    let path = stream_path(&name);
    let tasks: Vec<_> = (0..FILL_CONNECTIONS)
        .map(|_| {
            let (target, next, path) = (target.clone(), next.clone(), path.clone());
            glommio::spawn_local(async move {
                let mut client = Client::new(target.clone());
                let mut rec = Recorder::new();
                loop {
                    let from = next.get();
                    if from >= want {
                        break;
                    }
                    let to = (from + batch as u64).min(want);
                    next.set(to);
                    let body = json_body((from..to).map(|id| record_data(record_bytes, id)));
                    let req = request(&target, "POST", &path, Some(JSON), &body);
                    let sent = Instant::now();
                    match client.send(&req).await {
                        Ok(status) if (200..300).contains(&status) => {
                            rec.response(status, sent.elapsed(), to - from)
                        }
                        Ok(status) => {
                            let body = client.body().to_vec();
                            rec.error_response(status, sent.elapsed(), &body);
                            break;
                        }
                        Err(e) => {
                            rec.io_error(&e);
                            break;
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
    let elapsed = started.elapsed();
    if let Some(e) = &rec.first_error {
        return Err(format!("filling {name}: {e}"));
    }
    let head = tail(&mut client, &target, &name).await?;
    if head < want {
        return Err(format!(
            "filling {name}: {head} records after the fill, not {want}"
        ));
    }
    let mut f = rec.summary(elapsed);
    f.insert("records_before".into(), json!(had));
    f.insert("stream_records".into(), json!(head));
    Ok((head, Run::new("fill", f)))
}

/// One reader's pass.
struct Pass {
    rec: Recorder,
    /// Records by the offsets, and counted in the bodies.
    records: u64,
    counted: u64,
    bytes: u64,
    end: Instant,
}

/// Reads the stream from the start to `head` (at least), page by page.
async fn read_all(target: Target, name: String, head: u64) -> Pass {
    let mut client = Client::new(target.clone());
    let mut pass = Pass {
        rec: Recorder::new(),
        records: 0,
        counted: 0,
        bytes: 0,
        end: Instant::now(),
    };
    let record_start = memmem::Finder::new(br#"{"id":"#);
    let base = stream_path(&name);
    let mut pos = 0u64;
    let mut token = "-1".to_string();
    loop {
        let req = request(&target, "GET", &format!("{base}?offset={token}"), None, b"");
        let sent = Instant::now();
        let status = match client.send(&req).await {
            Ok(s) => s,
            Err(e) => {
                pass.rec.io_error(&e);
                break;
            }
        };
        let latency = sent.elapsed();
        if status != 200 {
            let body = client.body().to_vec();
            pass.rec.error_response(status, latency, &body);
            break;
        }
        let next = client.header("stream-next-offset").and_then(parse_offset);
        let up_to_date = client
            .header("stream-up-to-date")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"true"));
        let Some(next) = next.filter(|n| *n >= pos) else {
            pass.rec.io_error(&std::io::Error::other(format!(
                "GET {base}: missing or backward Stream-Next-Offset after {pos}"
            )));
            break;
        };
        let body = client.body();
        pass.bytes += body.len() as u64;
        pass.counted += record_start.find_iter(body).count() as u64;
        pass.records += next - pos;
        pass.rec.response(status, latency, next - pos);
        if next == pos && !up_to_date {
            pass.rec.io_error(&std::io::Error::other(format!(
                "GET {base}: no progress at {pos} and not up to date"
            )));
            break;
        }
        pos = next;
        token = super::ds::offset(pos);
        if up_to_date && pos >= head {
            break;
        }
    }
    pass.end = Instant::now();
    pass
}
