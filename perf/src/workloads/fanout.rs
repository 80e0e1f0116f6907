//! `fanout`: N SSE watch streams (`tail: true`) on one topic, then one writer appending one
//! record per POST at a fixed rate, each record's `data` carrying its id and send time (µs
//! since an epoch shared by the writer and the readers of this process). Per delivered
//! record: append-ack → frame-received latency (the ack time is what the writer's client saw;
//! a frame that beats the ack counts as ~0), send → frame-received latency, and the delivery
//! ratio: distinct records received / (records acknowledged × N).
//!
//! The streams live on the `--cpu` executors; the writer has an executor of its own on the
//! first CPU, so its pacing and ack timestamps do not wait behind the readers' tasks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::{create_topics, durability, ensure_fds, open_watch, params, topic_path};
use crate::client::{Client, Target};
use crate::exec::Window;
use crate::report::{Report, Run};
use crate::sse::{scan_records, watch_record, WatchStream};
use crate::stats::{insert_percentiles, record_us, round, us_histogram};
use crate::Args;

/// Initial read buffer of a stream.
const STREAM_BUF: usize = 8 * 1024;
/// How long the writer waits for every stream to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);
/// Most records per append when the writer has fallen behind its schedule (SPEC §1 limit).
const MAX_BATCH: u64 = 10_000;

/// What the writer and the readers share across executors.
struct Shared {
    epoch: Instant,
    /// Ack time of each record id, µs since `epoch` plus 1 (0: not acknowledged).
    acks: Vec<AtomicU64>,
    /// The measured window in µs since `epoch`, set before the first record is sent.
    win_start: AtomicU64,
    win_end: AtomicU64,
    ready: AtomicUsize,
    failed: AtomicUsize,
    /// Ids the writer sent (`0..sent`), once it is done; `u64::MAX` before.
    sent: AtomicU64,
    /// When the writer finished, µs since `epoch`.
    done_us: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// The readers' figures of one executor.
struct Side {
    ack_lat: Histogram<u64>,
    send_lat: Histogram<u64>,
    open_lat: Histogram<u64>,
    /// Measured records received before their ack was seen: (id, received µs).
    pending: Vec<(u64, u64)>,
    received: u64,
    duplicates: u64,
    gaps: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Side {
    fn new() -> Side {
        Side {
            ack_lat: us_histogram(),
            send_lat: us_histogram(),
            open_lat: us_histogram(),
            pending: Vec::new(),
            received: 0,
            duplicates: 0,
            gaps: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, o: Side) {
        self.ack_lat.add(&o.ack_lat).expect("same bounds");
        self.send_lat.add(&o.send_lat).expect("same bounds");
        self.open_lat.add(&o.open_lat).expect("same bounds");
        self.pending.extend(o.pending);
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.gaps += o.gaps;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// The writer's figures.
struct Writer {
    rtt: Histogram<u64>,
    acked: u64,
    acked_in_window: u64,
    requests: u64,
    max_batch: u64,
    errors: u64,
    first_error: Option<String>,
    window: Option<Window>,
}

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let n = args.watchers.unwrap_or(1000).max(1);
    ensure_fds(n)?;
    let class = durability(args);
    let topic = format!("{}-fanout", args.topic_prefix);
    create_topics(&args.cpus(), target, vec![topic.clone()], class)?;
    let total = args.warmup() + args.duration();
    let cap = (args.rate * total.as_secs_f64()).ceil() as usize + 2;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        acks: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        win_start: AtomicU64::new(0),
        win_end: AtomicU64::new(0),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        sent: AtomicU64::new(u64::MAX),
        done_us: AtomicU64::new(0),
    });
    let body = format!(r#"{{"topics":{{"{topic}":{{"tail":true}}}},"heartbeat_ms":1000}}"#);
    let openers = args.connections.unwrap_or(32).max(1);

    let writer = {
        let (cpus, args, target, shared) =
            (args.cpus(), args.clone(), target.clone(), shared.clone());
        let path = topic_path(&topic);
        std::thread::spawn(move || cpus.run_one(move || write(args, target, path, n, shared)))
    };
    let (t, s, drain) = (target.clone(), shared.clone(), args.drain());
    let readers = args.cpus().run_all(move |index, count| {
        let mine: Vec<usize> = (index..n).step_by(count).collect();
        let per_executor = openers.div_ceil(count).max(1);
        readers(
            t.clone(),
            s.clone(),
            body.clone(),
            mine,
            per_executor,
            drain,
        )
    });
    if readers.is_err() {
        shared.failed.store(n, SeqCst);
    }
    let writer = writer
        .join()
        .map_err(|_| "writer thread panicked".to_string())??;
    let mut side = Side::new();
    for part in readers? {
        side.merge(part);
    }

    // Records that beat their ack: the latency is measured from the ack all the same.
    let mut before_ack = 0u64;
    let mut never_acked = 0u64;
    for &(id, received) in &side.pending {
        match shared.acks[id as usize].load(SeqCst) {
            0 => never_acked += 1,
            ack => {
                before_ack += u64::from(received < ack - 1);
                record_us(&mut side.ack_lat, received.saturating_sub(ack - 1));
            }
        }
    }
    let ready = shared.ready.load(SeqCst);
    let expected = writer.acked * n as u64;
    let window = writer.window.map_or(args.duration(), |w| w.duration());
    let mut f = serde_json::Map::new();
    f.insert("watchers".into(), json!(n));
    f.insert("watchers_open".into(), json!(ready));
    f.insert("rate_target".into(), json!(args.rate));
    let secs = window.as_secs_f64();
    f.insert(
        "records_per_s".into(),
        json!(round(writer.acked_in_window as f64 / secs, 1)),
    );
    f.insert("records_written".into(), json!(writer.acked));
    f.insert("append_requests".into(), json!(writer.requests));
    f.insert("max_batch".into(), json!(writer.max_batch));
    f.insert("delivered".into(), json!(side.received));
    f.insert("expected".into(), json!(expected));
    let ratio = if expected == 0 {
        0.0
    } else {
        side.received as f64 / expected as f64
    };
    f.insert("delivery_ratio".into(), json!(round(ratio, 6)));
    f.insert("lost".into(), json!(expected.saturating_sub(side.received)));
    f.insert("duplicates".into(), json!(side.duplicates));
    f.insert("gaps".into(), json!(side.gaps));
    f.insert("latency_samples".into(), json!(side.ack_lat.len()));
    insert_percentiles(&mut f, "", &side.ack_lat);
    f.insert("frames_before_ack".into(), json!(before_ack));
    f.insert("delivered_never_acked".into(), json!(never_acked));
    insert_percentiles(&mut f, "send_to_frame_", &side.send_lat);
    insert_percentiles(&mut f, "append_rtt_", &writer.rtt);
    insert_percentiles(&mut f, "open_", &side.open_lat);
    let errors = side.errors + writer.errors + (n - ready.min(n)) as u64;
    f.insert("errors".into(), json!(errors));
    if let Some(e) = side.first_error.or(writer.first_error) {
        f.insert("first_error".into(), json!(e));
    }
    let mut p = params(args, openers);
    p.insert("topic".into(), json!(topic));
    p.insert("durability".into(), json!(class.name()));
    p.insert("rate".into(), json!(args.rate));
    p.insert("watchers".into(), json!(n));
    Ok(Report::new(
        "fanout",
        &args.url,
        p,
        vec![Run::new(format!("{n} watchers"), f)],
    ))
}

/// One executor's streams: `openers` tasks open them (session, stream, first `caught-up`)
/// and hand each to a reader task.
async fn readers(
    target: Target,
    shared: Arc<Shared>,
    body: String,
    mine: Vec<usize>,
    openers: usize,
    drain: Duration,
) -> Side {
    let side = Rc::new(RefCell::new(Side::new()));
    let left = Rc::new(Cell::new(mine.len()));
    let tasks = Rc::new(RefCell::new(Vec::new()));
    let open_tasks: Vec<_> = (0..openers)
        .map(|_| {
            let (target, shared, body, side, left, tasks) = (
                target.clone(),
                shared.clone(),
                body.clone(),
                side.clone(),
                left.clone(),
                tasks.clone(),
            );
            glommio::spawn_local(async move {
                let mut client = Client::new(target.clone());
                while left.get() > 0 {
                    left.set(left.get() - 1);
                    let started = Instant::now();
                    match open_watch(&mut client, &target, body.as_bytes(), STREAM_BUF).await {
                        Ok(stream) => {
                            let us = started.elapsed().as_micros() as u64;
                            record_us(&mut side.borrow_mut().open_lat, us);
                            shared.ready.fetch_add(1, SeqCst);
                            let task = read(stream, shared.clone(), side.clone(), drain);
                            tasks.borrow_mut().push(glommio::spawn_local(task));
                        }
                        Err(e) => {
                            side.borrow_mut().error(e);
                            shared.failed.fetch_add(1, SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    for task in open_tasks {
        task.await;
    }
    let readers: Vec<_> = tasks.borrow_mut().drain(..).collect();
    for task in readers {
        task.await;
    }
    Rc::try_unwrap(side)
        .map(RefCell::into_inner)
        .unwrap_or_else(|_| Side::new())
}

/// Reads one stream until it has seen every record the writer sent, or the drain time after
/// the writer stopped has passed.
async fn read(
    mut stream: WatchStream,
    shared: Arc<Shared>,
    side: Rc<RefCell<Side>>,
    drain: Duration,
) {
    // No read timeout: glommio would arm and cancel a timer around every read. Heartbeats
    // come every second, and a server that dies closes the socket.
    let drain_us = drain.as_micros() as u64;
    let mut next = 0u64;
    loop {
        let result = stream.read().await;
        let now = shared.now_us();
        let sent = shared.sent.load(SeqCst);
        match result {
            Ok(0) => {
                if next < sent {
                    let tail = String::from_utf8_lossy(stream.frames()).into_owned();
                    side.borrow_mut()
                        .error(format!("server closed a watch stream: {tail}"));
                }
                return;
            }
            Err(e) => {
                side.borrow_mut().error(format!("watch stream: {e}"));
                return;
            }
            Ok(_) => {}
        }
        let frames = stream.frames();
        if !frames.is_empty() {
            let (ws, we) = (shared.win_start.load(SeqCst), shared.win_end.load(SeqCst));
            let side = &mut *side.borrow_mut();
            scan_records(frames, |id, t| {
                if id < next {
                    side.duplicates += 1;
                    return;
                }
                side.gaps += id - next;
                next = id + 1;
                side.received += 1;
                if t < ws || t >= we {
                    return;
                }
                record_us(&mut side.send_lat, now.saturating_sub(t));
                match shared.acks.get(id as usize).map_or(0, |a| a.load(SeqCst)) {
                    0 => side.pending.push((id, now)),
                    ack => record_us(&mut side.ack_lat, now.saturating_sub(ack - 1)),
                }
            });
            let used = frames.len();
            stream.consume(used);
        }
        if next >= sent || (sent != u64::MAX && now > shared.done_us.load(SeqCst) + drain_us) {
            return;
        }
    }
}

/// The writer: waits for every stream, then appends on a fixed schedule (record `k` due at
/// `k / rate`) for warm-up + duration: one record per POST while it keeps up; records that
/// fell due during a slow round trip go together in the next POST.
async fn write(args: Args, target: Target, path: String, n: usize, shared: Arc<Shared>) -> Writer {
    let mut w = Writer {
        rtt: us_histogram(),
        acked: 0,
        acked_in_window: 0,
        requests: 0,
        max_batch: 0,
        errors: 0,
        first_error: None,
        window: None,
    };
    let deadline = Instant::now() + OPEN_TIMEOUT;
    while shared.ready.load(SeqCst) + shared.failed.load(SeqCst) < n && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let mut k = 0u64;
    if shared.ready.load(SeqCst) > 0 {
        let mut client = Client::new(target.clone());
        let start = Instant::now();
        let window = Window::new(args.warmup(), args.duration());
        let us = |t: Instant| (t - shared.epoch).as_micros() as u64;
        let (ws, we) = (us(window.start), us(window.end));
        shared.win_start.store(ws, SeqCst);
        shared.win_end.store(we, SeqCst);
        w.window = Some(window);
        let total = (window.end - start).as_secs_f64();
        let last = ((total * args.rate).ceil() as u64).min(shared.acks.len() as u64);
        let due_at = |k: u64| start + Duration::from_secs_f64(k as f64 / args.rate);
        while k < last {
            let now = Instant::now();
            if due_at(k) > now {
                glommio::timer::sleep(due_at(k) - now).await;
                continue;
            }
            let due = (((now - start).as_secs_f64() * args.rate) as u64 + 1).min(last);
            let end = due.max(k + 1).min(k + MAX_BATCH);
            let t = shared.now_us();
            let mut body = String::from(r#"{"records":["#);
            for id in k..end {
                if id > k {
                    body.push(',');
                }
                body.push_str(r#"{"data":"#);
                body.push_str(&watch_record(id, t, args.record_bytes));
                body.push('}');
            }
            body.push_str("]}");
            let req = target.request("POST", &path, Some(body.as_bytes()));
            w.requests += 1;
            w.max_batch = w.max_batch.max(end - k);
            match client.send(&req).await {
                Ok(status) if (200..300).contains(&status) => {
                    let ack = shared.now_us();
                    for id in k..end {
                        shared.acks[id as usize].store(ack + 1, SeqCst);
                    }
                    record_us(&mut w.rtt, ack - t);
                    w.acked += end - k;
                    if t >= ws && t < we {
                        w.acked_in_window += end - k;
                    }
                }
                Ok(status) => {
                    w.errors += 1;
                    w.first_error
                        .get_or_insert(format!("append: HTTP {status}"));
                }
                Err(e) => {
                    w.errors += 1;
                    w.first_error.get_or_insert(format!("append: {e}"));
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
            k = end;
        }
    }
    shared.done_us.store(shared.now_us(), SeqCst);
    shared.sent.store(k, SeqCst);
    w
}
