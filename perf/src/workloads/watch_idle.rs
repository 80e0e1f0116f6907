//! `watch-idle`: N watch streams (each its own session following one of `--watch-topics`
//! topics, `tail: true`), opened `--connections` at a time and then held idle for
//! `--duration-secs`; the server's RSS before, with the streams open, and after they closed,
//! and the cost per stream. The server is `--server-pid`, or whoever listens on the URL's
//! port.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{create_topics, durability, ensure_fds, open_watch, params};
use crate::client::{Client, Target};
use crate::procfs;
use crate::report::{Report, Run};
use crate::stats::{insert_percentiles, record_us, round, us_histogram};
use crate::Args;

/// Read buffer of a stream while it opens (released once it is caught up).
const STREAM_BUF: usize = 2048;
/// After the streams closed, how long to wait before the last RSS sample.
const SETTLE: Duration = Duration::from_secs(2);

/// One executor's part.
struct Part {
    opened: usize,
    open_lat: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// RSS samples taken by executor 0 while every stream was open: (label, KiB).
    samples: Vec<(&'static str, Option<u64>)>,
    open_secs: f64,
}

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let n = args.watchers.unwrap_or(10_000).max(1);
    ensure_fds(n)?;
    let class = durability(args);
    let topics: Vec<String> = (0..args.watch_topics.max(1))
        .map(|i| format!("{}-idle-{i}", args.topic_prefix))
        .collect();
    create_topics(&args.cpus(), target, topics.clone(), class)?;
    let pid = args
        .server_pid
        .or_else(|| procfs::listener_pid(target.addr.port()));
    let rss = move || pid.and_then(procfs::rss_kib);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss();

    let openers = args.connections.unwrap_or(32).max(1);
    let opened_all = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let (t, hold) = (target.clone(), args.duration());
    let topics2 = topics.clone();
    let parts = args.cpus().run_all(move |index, count| {
        let mine: Vec<usize> = (index..n).step_by(count).collect();
        let bodies: Vec<String> = mine
            .iter()
            .map(|i| {
                let topic = &topics2[i % topics2.len()];
                format!(r#"{{"topics":{{"{topic}":{{"tail":true}}}}}}"#)
            })
            .collect();
        let ctx = (opened_all.clone(), release.clone(), count);
        hold_streams(
            t.clone(),
            bodies,
            openers.div_ceil(count),
            index == 0,
            hold,
            ctx,
            rss,
        )
    })?;
    std::thread::sleep(SETTLE);
    let after_close = rss();

    let mut opened = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut open_lat = us_histogram();
    let mut samples = Vec::new();
    let mut open_secs: f64 = 0.0;
    for part in parts {
        opened += part.opened;
        errors += part.errors;
        open_lat.add(&part.open_lat).expect("same bounds");
        first_error = first_error.or(part.first_error);
        samples.extend(part.samples);
        open_secs = open_secs.max(part.open_secs);
    }
    let mib = |k: Option<u64>| k.map(|k| round(k as f64 / 1024.0, 1));
    let held = samples.iter().find(|s| s.0 == "held").and_then(|s| s.1);
    let mut f = serde_json::Map::new();
    f.insert("streams".into(), json!(n));
    f.insert("streams_open".into(), json!(opened));
    f.insert("server_pid".into(), json!(pid));
    f.insert("rss_before_mib".into(), json!(mib(before)));
    for (label, kib) in &samples {
        f.insert(format!("rss_{label}_mib"), json!(mib(*kib)));
    }
    f.insert("rss_after_close_mib".into(), json!(mib(after_close)));
    let per_stream = match (before, held) {
        (Some(b), Some(h)) if opened > 0 => {
            json!(round(
                h.saturating_sub(b) as f64 * 1024.0 / opened as f64,
                0
            ))
        }
        _ => Value::Null,
    };
    f.insert("rss_per_stream_bytes".into(), per_stream);
    f.insert(
        "rss_growth_mib".into(),
        json!(before
            .zip(held)
            .map(|(b, h)| round(h.saturating_sub(b) as f64 / 1024.0, 1))),
    );
    f.insert("open_s".into(), json!(round(open_secs, 2)));
    f.insert(
        "opens_per_s".into(),
        json!(round(opened as f64 / open_secs.max(1e-9), 1)),
    );
    insert_percentiles(&mut f, "open_", &open_lat);
    f.insert("errors".into(), json!(errors));
    if let Some(e) = first_error {
        f.insert("first_error".into(), json!(e));
    }
    let mut p = params(args, openers);
    p.insert("topics".into(), json!(topics.len()));
    p.insert("hold_s".into(), json!(args.duration_secs));
    Ok(Report::new(
        "watch-idle",
        &args.url,
        p,
        vec![Run::new(format!("{n} streams"), f)],
    ))
}

/// Opens this executor's streams, waits until every executor has opened its own, holds them
/// for `hold` (executor 0 samples the server's RSS meanwhile), then drops them.
async fn hold_streams(
    target: Target,
    bodies: Vec<String>,
    openers: usize,
    sampler: bool,
    hold: Duration,
    (opened_all, release, executors): (Arc<AtomicUsize>, Arc<AtomicBool>, usize),
    rss: impl Fn() -> Option<u64>,
) -> Part {
    let started = Instant::now();
    let bodies = Rc::new(bodies);
    let next = Rc::new(Cell::new(0usize));
    let streams = Rc::new(RefCell::new(Vec::with_capacity(bodies.len())));
    let part = Rc::new(RefCell::new(Part {
        opened: 0,
        open_lat: us_histogram(),
        errors: 0,
        first_error: None,
        samples: Vec::new(),
        open_secs: 0.0,
    }));
    let tasks: Vec<_> = (0..openers.max(1))
        .map(|_| {
            let (target, bodies, next, streams, part) = (
                target.clone(),
                bodies.clone(),
                next.clone(),
                streams.clone(),
                part.clone(),
            );
            glommio::spawn_local(async move {
                let mut client = Client::new(target.clone());
                while next.get() < bodies.len() {
                    let i = next.get();
                    next.set(i + 1);
                    let t0 = Instant::now();
                    match open_watch(&mut client, &target, bodies[i].as_bytes(), STREAM_BUF).await {
                        Ok(mut stream) => {
                            stream.shrink();
                            streams.borrow_mut().push(stream);
                            let mut p = part.borrow_mut();
                            p.opened += 1;
                            record_us(&mut p.open_lat, t0.elapsed().as_micros() as u64);
                        }
                        Err(e) => {
                            let mut p = part.borrow_mut();
                            p.errors += 1;
                            p.first_error.get_or_insert(e);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    part.borrow_mut().open_secs = started.elapsed().as_secs_f64();
    opened_all.fetch_add(1, SeqCst);
    while opened_all.load(SeqCst) < executors {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if sampler {
        let opened = rss();
        glommio::timer::sleep(hold).await;
        let held = rss();
        let mut p = part.borrow_mut();
        p.samples.push(("opened", opened));
        p.samples.push(("held", held));
        release.store(true, SeqCst);
    }
    while !release.load(SeqCst) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    streams.borrow_mut().clear();
    glommio::timer::sleep(Duration::from_millis(100)).await;
    Rc::try_unwrap(part)
        .map(RefCell::into_inner)
        .unwrap_or_else(|_| panic!("opener tasks are done"))
}
