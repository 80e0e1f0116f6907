//! `router`: topics `src` and `dst` and a router `src -> dst`; one client appends single
//! records to `src` as fast as it can (one connection, one record at a time) for warm-up +
//! duration while another connection polls `GET /v0/routers/:router` for `forwarded_total`.
//! Reports the source append rate, the forwarded rate over the same window, the lag
//! (records acknowledged - forwarded) while writing and when the writer stops, and the time
//! the router takes to drain after that.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{append_body, durability, params, put_topic, topic_path};
use crate::client::{json_u64, Client, Target};
use crate::exec::Window;
use crate::report::{Report, Run};
use crate::stats::{round, Recorder};
use crate::Args;

/// Poll interval while the writer runs, and after it stopped (finer, to time the drain).
const POLL: Duration = Duration::from_millis(50);
const POLL_DRAIN: Duration = Duration::from_millis(5);

/// One poll: µs since the run started, records acknowledged, records forwarded.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_us: u64,
    appended: u64,
    forwarded: u64,
}

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let class = durability(args);
    let p = &args.topic_prefix;
    let (src, dst, router) = (
        format!("{p}-router-src"),
        format!("{p}-router-dst"),
        format!("{p}-router"),
    );
    let (t, a) = (target.clone(), args.clone());
    let (s2, d2, r2) = (src.clone(), dst.clone(), router.clone());
    let (rec, samples, stop_us, window_us, dst_copies) = args
        .cpus()
        .run_one(move || async move { measure(&a, &t, &s2, &d2, &r2).await })??;

    let elapsed = Duration::from_micros(window_us.1 - window_us.0);
    let mut f = rec.summary(elapsed);
    // Forwarded rate over the measured window, from the polls nearest to its ends.
    let near = |us: u64| samples.iter().min_by_key(|s| s.at_us.abs_diff(us)).copied();
    if let (Some(a), Some(b)) = (near(window_us.0), near(window_us.1)) {
        let secs = (b.at_us.saturating_sub(a.at_us)) as f64 / 1e6;
        let fwd = (b.forwarded - a.forwarded) as f64 / secs.max(1e-9);
        let app = (b.appended - a.appended) as f64 / secs.max(1e-9);
        f.insert("forwarded_per_s".into(), json!(round(fwd, 1)));
        f.insert("appended_per_s_polled".into(), json!(round(app, 1)));
        f.insert(
            "forwarded_to_appended".into(),
            json!(round(fwd / app.max(1e-9), 3)),
        );
    }
    let lag = |s: &Sample| s.appended as i64 - s.forwarded as i64;
    let during: Vec<&Sample> = samples.iter().filter(|s| s.at_us <= stop_us).collect();
    f.insert(
        "lag_max".into(),
        json!(during.iter().map(|s| lag(s)).max().unwrap_or(0)),
    );
    let at_stop = samples.iter().find(|s| s.at_us >= stop_us);
    f.insert("lag_at_stop".into(), json!(at_stop.map(lag)));
    let last = samples.last().copied();
    let drained = samples
        .iter()
        .find(|s| s.at_us >= stop_us && s.forwarded >= s.appended);
    f.insert(
        "drain_ms".into(),
        json!(drained.map(|s| round((s.at_us - stop_us) as f64 / 1000.0, 1))),
    );
    f.insert("appended_total".into(), json!(last.map(|s| s.appended)));
    f.insert("forwarded_total".into(), json!(last.map(|s| s.forwarded)));
    f.insert("final_lag".into(), json!(last.map(|s| lag(&s))));
    f.insert("dst_copies".into(), json!(dst_copies));
    f.insert("polls".into(), json!(samples.len()));
    let mut p = params(args, 1);
    p.insert("source".into(), json!(src));
    p.insert("dest".into(), json!(dst));
    p.insert("router".into(), json!(router));
    p.insert("durability".into(), json!(class.name()));
    Ok(Report::new(
        "router",
        &args.url,
        p,
        vec![Run::new(class.name(), f)],
    ))
}

type Measured = (Recorder, Vec<Sample>, u64, (u64, u64), Option<u64>);

async fn measure(
    args: &Args,
    target: &Target,
    src: &str,
    dst: &str,
    router: &str,
) -> Result<Measured, String> {
    let class = durability(args);
    let mut client = Client::new(target.clone());
    put_topic(&mut client, target, src, class).await?;
    put_topic(&mut client, target, dst, class).await?;
    let body = format!(r#"{{"source":"{src}","dest":"{dst}"}}"#);
    let path = format!("/v0/routers/{router}");
    let status = client
        .send(&target.request("PUT", &path, Some(body.as_bytes())))
        .await
        .map_err(|e| format!("PUT {path}: {e}"))?;
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(client.body()).into_owned();
        return Err(format!("PUT {path}: HTTP {status}: {text}"));
    }
    // A router left over from an earlier run must be idle before the baseline is taken.
    let mut base = forwarded(&mut client, target, &path).await?;
    loop {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let now = forwarded(&mut client, target, &path).await?;
        if now == base {
            break;
        }
        base = now;
    }
    let dst_base = head_seq(&mut client, target, dst).await?;

    let started = Instant::now();
    let us = move |t: Instant| u64::try_from((t - started).as_micros()).unwrap_or(u64::MAX);
    let window = Window::new(args.warmup(), args.duration());
    let appended = Rc::new(Cell::new(0u64));
    let stopped = Rc::new(Cell::new(None::<Instant>));
    let writer = {
        let (target, appended, stopped) = (target.clone(), appended.clone(), stopped.clone());
        let req = target.request(
            "POST",
            &topic_path(src),
            Some(&append_body(1, args.record_bytes, 0)),
        );
        glommio::spawn_local(async move {
            let mut client = Client::new(target);
            let mut rec = Recorder::new();
            loop {
                let sent = Instant::now();
                if window.over(sent) {
                    break;
                }
                let result = client.send(&req).await;
                let done = Instant::now();
                let counted = window.measuring(sent) && !window.over(done);
                match result {
                    Ok(status) => {
                        if (200..300).contains(&status) {
                            appended.set(appended.get() + 1);
                        }
                        if counted {
                            rec.response(status, done - sent, 1);
                        }
                    }
                    Err(e) => {
                        rec.io_error(&e);
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            stopped.set(Some(Instant::now()));
            rec
        })
    };

    let mut samples = Vec::new();
    let mut drain_deadline = None;
    loop {
        let f = forwarded(&mut client, target, &path)
            .await?
            .saturating_sub(base);
        let now = Instant::now();
        let sample = Sample {
            at_us: us(now),
            appended: appended.get(),
            forwarded: f,
        };
        samples.push(sample);
        if let Some(stop) = stopped.get() {
            let deadline = *drain_deadline.get_or_insert(stop + args.drain());
            if sample.forwarded >= sample.appended || now >= deadline {
                break;
            }
            glommio::timer::sleep(POLL_DRAIN).await;
        } else {
            // Sleep POLL, but notice the writer stopping within POLL_DRAIN.
            let next = now + POLL;
            while stopped.get().is_none() && Instant::now() < next {
                glommio::timer::sleep(POLL_DRAIN).await;
            }
        }
    }
    let rec = writer.await;
    let stop_us = stopped.get().map_or(0, us);
    let dst_copies = head_seq(&mut client, target, dst)
        .await
        .ok()
        .map(|h| h.saturating_sub(dst_base));
    Ok((
        rec,
        samples,
        stop_us,
        (us(window.start), us(window.end)),
        dst_copies,
    ))
}

async fn forwarded(client: &mut Client, target: &Target, path: &str) -> Result<u64, String> {
    get_u64(client, target, path, "forwarded_total").await
}

async fn head_seq(client: &mut Client, target: &Target, topic: &str) -> Result<u64, String> {
    let path = format!("{}?touch=false", topic_path(topic));
    get_u64(client, target, &path, "head_seq").await
}

async fn get_u64(
    client: &mut Client,
    target: &Target,
    path: &str,
    key: &str,
) -> Result<u64, String> {
    let status = client
        .send(&target.request("GET", path, None))
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {path}: HTTP {status}"));
    }
    json_u64(client.body(), key).ok_or_else(|| format!("GET {path}: no {key}"))
}
