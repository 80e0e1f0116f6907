//! `topics`: C connections append single records over T topics that no PUT created. A first
//! pass writes every topic once, each write lazily creating its topic (with the server's
//! default class, `disk`; a `--durability` given is sent as the first write's `config`); then
//! the connections append round-robin over all T for the warm-up plus the measured window.
//! Reports both passes' rate and latency, and the server's RSS: fresh, each time the first
//! pass crosses another tenth of the topics, after it, and after the run; RSS per topic. The
//! server is `--server-pid`, or whoever listens on the URL's port.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{append_body, params, topic_path, Names};
use crate::client::{json_number, Client, Target};
use crate::exec::Window;
use crate::procfs;
use crate::report::{Report, Run};
use crate::stats::{round, Recorder};
use crate::Args;

/// How often the first pass's sampler looks at its progress.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// After the measured run, how long to wait before the last RSS sample.
const SETTLE: Duration = Duration::from_millis(500);

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let class = args.durability.unwrap_or(crate::Durability::Disk);
    let connections = args.connections.unwrap_or(64).max(1);
    let names = Names::new(&args.topic_prefix, args.topics.unwrap_or(100_000).max(1));
    let n = names.count;
    let pid = args
        .server_pid
        .or_else(|| procfs::listener_pid(target.addr.port()));
    let before = Mem::read(pid);

    // The first pass: every topic written once; its writes create the topics.
    let config = args
        .durability
        .map(|d| format!(r#","config":{{"durability":"{}"}}}}"#, d.name()));
    let requests = (0..connections)
        .map(|i| {
            let mut body = append_body(1, args.record_bytes, i as u64);
            if let Some(config) = &config {
                body.pop();
                body.extend_from_slice(config.as_bytes());
            }
            Request::new(target, &names, &body)
        })
        .collect();
    let create = Arc::new(Shared::new(requests, n));
    let started = Instant::now();
    let (create_rec, curve) = drive(args, target, &create, Pass::Create, pid)?;
    let create_elapsed = started.elapsed();
    let after_create = Mem::read(pid);

    // The measured run: round-robin over all topics.
    let requests = (0..connections)
        .map(|i| Request::new(target, &names, &append_body(1, args.record_bytes, i as u64)))
        .collect();
    let measure = Arc::new(Shared::new(requests, n));
    let window = Window::new(args.warmup(), args.duration());
    let (rec, _) = drive(args, target, &measure, Pass::Measure(window), pid)?;
    std::thread::sleep(SETTLE);
    let after = Mem::read(pid);

    let first_ok = create.ok.load(Relaxed);
    let appended = measure.ok.load(Relaxed);
    let retained = first_ok + appended;
    let mib = |m: Option<Mem>| m.map(|m| round(m.rss as f64 / 1024.0, 1));
    let per = |a: Option<Mem>, b: Option<Mem>, count: u64| match (a, b) {
        (Some(a), Some(b)) if count > 0 => {
            json!(round(
                b.rss.saturating_sub(a.rss) as f64 * 1024.0 / count as f64,
                0
            ))
        }
        _ => Value::Null,
    };

    let mut c = create_rec.summary(create_elapsed);
    c.insert("created".into(), json!(create.created.load(Relaxed)));
    c.insert("rss_before_mib".into(), json!(mib(before)));
    c.insert("rss_after_create_mib".into(), json!(mib(after_create)));
    c.insert(
        "rss_per_topic_created_bytes".into(),
        per(before, after_create, n as u64),
    );
    // The marginal cost: from the first tenth to the end, so that what any first writes
    // allocate once (buffers, the WAL's) is left out.
    let slope = curve.first().map_or(Value::Null, |&(at, m)| {
        per(Some(m), after_create, first_ok.saturating_sub(at))
    });
    c.insert("rss_per_topic_slope_bytes".into(), slope);
    let curve: Vec<Value> = curve
        .iter()
        .map(|(at, m)| json!({"topics": at, "rss_mib": mib(Some(*m)), "anon_mib": m.anon_mib()}))
        .collect();
    c.insert("rss_curve".into(), Value::Array(curve));

    let mut m = rec.summary(window.duration());
    m.insert("server_pid".into(), json!(pid));
    m.insert("rss_before_mib".into(), json!(mib(before)));
    m.insert("rss_after_create_mib".into(), json!(mib(after_create)));
    m.insert("rss_after_mib".into(), json!(mib(after)));
    m.insert(
        "rss_anon_after_mib".into(),
        json!(after.and_then(|m| m.anon_mib())),
    );
    m.insert(
        "rss_file_after_mib".into(),
        json!(after.and_then(|m| m.file_mib())),
    );
    m.insert("rss_per_topic_bytes".into(), per(before, after, n as u64));
    m.insert("records_retained".into(), json!(retained));
    m.insert("appended".into(), json!(appended));
    m.insert(
        "rss_per_appended_record_bytes".into(),
        per(after_create, after, appended),
    );

    let mut p = params(args, connections);
    p.insert("topics".into(), json!(n));
    p.insert("durability".into(), json!(class.name()));
    p.insert("topic_names".into(), json!(format!("{}..", names.name(0))));
    p.insert("config_on_create".into(), json!(config.is_some()));
    Ok(Report::new(
        "topics",
        &args.url,
        p,
        vec![Run::new("create", c), Run::new(class.name(), m)],
    ))
}

/// The server's memory at one point (`/proc/<pid>/status`), KiB.
#[derive(Clone, Copy, Debug)]
struct Mem {
    rss: u64,
    anon: Option<u64>,
    file: Option<u64>,
}

impl Mem {
    fn read(pid: Option<u32>) -> Option<Mem> {
        let v = procfs::status_kib(pid?, &["VmRSS", "RssAnon", "RssFile"]);
        Some(Mem {
            rss: v[0]?,
            anon: v[1],
            file: v[2],
        })
    }

    fn anon_mib(&self) -> Option<f64> {
        self.anon.map(|k| round(k as f64 / 1024.0, 1))
    }

    fn file_mib(&self) -> Option<f64> {
        self.file.map(|k| round(k as f64 / 1024.0, 1))
    }
}

/// A serialized POST to topic 0 and where the digits of its name are.
#[derive(Clone)]
struct Request {
    bytes: Vec<u8>,
    digits: usize,
    width: usize,
}

impl Request {
    fn new(target: &Target, names: &Names, body: &[u8]) -> Request {
        let path = topic_path(&names.name(0));
        Request {
            bytes: target.request("POST", &path, Some(body)),
            digits: "POST ".len() + path.len() - names.width,
            width: names.width,
        }
    }

    /// Points the request at topic `i`.
    fn set(&mut self, mut i: usize) {
        for b in self.bytes[self.digits..self.digits + self.width]
            .iter_mut()
            .rev()
        {
            *b = b'0' + (i % 10) as u8;
            i /= 10;
        }
    }
}

/// Which pass the connections run.
#[derive(Clone, Copy)]
enum Pass {
    /// Topics 0..T, each once, spread over the connections; every answer is recorded.
    Create,
    /// Round-robin over all topics until the window ends; answers within it are recorded.
    Measure(Window),
}

/// What the connections of one pass share, across executors.
struct Shared {
    /// One request per connection (the record's id is the connection's index).
    requests: Vec<Request>,
    topics: usize,
    /// The next topic to write (modulo `topics` in the measured pass).
    next: AtomicUsize,
    /// Answers, warm-up included: 2xx, 201 (the write created its topic), any at all.
    ok: AtomicU64,
    created: AtomicU64,
    settled: AtomicU64,
}

impl Shared {
    fn new(requests: Vec<Request>, topics: usize) -> Shared {
        Shared {
            requests,
            topics,
            next: AtomicUsize::new(0),
            ok: AtomicU64::new(0),
            created: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        }
    }
}

/// Runs one pass over every executor; returns the merged recorder and, for the first pass,
/// the RSS samples (2xx answers so far, memory) taken as it crossed each tenth of the topics.
fn drive(
    args: &Args,
    target: &Target,
    shared: &Arc<Shared>,
    pass: Pass,
    pid: Option<u32>,
) -> Result<(Recorder, Vec<(u64, Mem)>), String> {
    let (target, shared) = (target.clone(), shared.clone());
    let parts = args.cpus().run_all(move |index, count| {
        let (target, shared) = (target.clone(), shared.clone());
        async move {
            let sampler = (index == 0 && matches!(pass, Pass::Create))
                .then(|| glommio::spawn_local(sample_progress(shared.clone(), pid)));
            let tasks: Vec<_> = (index..shared.requests.len())
                .step_by(count)
                .map(|i| glommio::spawn_local(connection(target.clone(), shared.clone(), pass, i)))
                .collect();
            let mut rec = Recorder::new();
            for task in tasks {
                rec.merge(&task.await);
            }
            let samples = match sampler {
                Some(task) => task.await,
                None => Vec::new(),
            };
            (rec, samples)
        }
    })?;
    let mut rec = Recorder::new();
    let mut samples = Vec::new();
    for (part, s) in parts {
        rec.merge(&part);
        samples.extend(s);
    }
    Ok((rec, samples))
}

/// Samples the server's memory each time the first pass's 2xx answers cross another tenth
/// of the topics (the last tenth is the caller's sample after the pass).
async fn sample_progress(shared: Arc<Shared>, pid: Option<u32>) -> Vec<(u64, Mem)> {
    let n = shared.topics as u64;
    let marks: Vec<u64> = (1..10).map(|d| n * d / 10).filter(|&m| m > 0).collect();
    let mut samples = Vec::new();
    let mut next = 0;
    while pid.is_some() && shared.settled.load(Relaxed) < n {
        let done = shared.ok.load(Relaxed);
        if next < marks.len() && done >= marks[next] {
            if let Some(m) = Mem::read(pid) {
                samples.push((done, m));
            }
            while next < marks.len() && done >= marks[next] {
                next += 1;
            }
        }
        glommio::timer::sleep(SAMPLE_EVERY).await;
    }
    samples
}

async fn connection(target: Target, shared: Arc<Shared>, pass: Pass, i: usize) -> Recorder {
    let mut client = Client::new(target);
    let mut rec = Recorder::new();
    let mut req = shared.requests[i].clone();
    loop {
        let sent = Instant::now();
        let k = shared.next.fetch_add(1, Relaxed);
        let topic = match pass {
            Pass::Create if k >= shared.topics => break,
            Pass::Measure(w) if w.over(sent) => break,
            _ => k % shared.topics,
        };
        req.set(topic);
        let result = client.send(&req.bytes).await;
        let done = Instant::now();
        let counted = match pass {
            Pass::Create => true,
            Pass::Measure(w) => w.measuring(done) && !w.over(done),
        };
        match result {
            Ok(status) => {
                let ok = (200..300).contains(&status);
                if ok {
                    shared.ok.fetch_add(1, Relaxed);
                }
                if status == 201 {
                    shared.created.fetch_add(1, Relaxed);
                }
                if counted {
                    rec.response(status, done - sent, 1);
                    if ok {
                        let body = client.body();
                        rec.server_perf(
                            json_number(body, "server_total_ms"),
                            json_number(body, "fsync_ms"),
                        );
                    }
                }
            }
            Err(e) => {
                if counted {
                    rec.io_error(&e);
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
        shared.settled.fetch_add(1, Relaxed);
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_serves_every_topic() {
        let target = Target::parse("http://127.0.0.1:4000").unwrap();
        let names = Names::new("load", 100_000);
        assert_eq!(names.name(42), "load-t000042");
        assert_eq!(Names::new("x", 10_000_001).name(7), "x-t00000007");
        let mut req = Request::new(&target, &names, b"{}");
        req.set(99_999);
        let text = String::from_utf8(req.bytes.clone()).unwrap();
        assert!(text.starts_with("POST /v0/topics/load-t099999 HTTP/1.1\r\n"));
        req.set(7);
        assert_eq!(
            req.bytes,
            target.request("POST", &topic_path(&names.name(7)), Some(b"{}"))
        );
    }
}
