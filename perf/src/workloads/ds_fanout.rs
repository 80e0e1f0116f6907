//! `ds-fanout`: S SSE subscribers (`--watchers`, default 1000) on one `application/json`
//! Durable Stream (`GET /v1/stream/{name}?offset=now&live=sse`), then one writer appending
//! one record per POST at a fixed rate (`--rate`, default 1000/s), each record
//! `{"f":<id>,"t":<send µs>,"p":"..."}` (µs since an epoch shared by the writer and the
//! subscribers of this process). Per delivered record: append-ack → `event: data` received
//! (the ack time is when the writer's POST returned; an event that beats the ack counts as
//! ~0), send → received, and the delivery counts: distinct records received against records
//! acknowledged × S. A subscriber whose stream the server ends (`--ds-sse-ms`) reconnects at
//! the last `control` event's `streamNextOffset`, as a protocol client does.
//!
//! The subscribers live on the `--cpu` executors; the writer has an executor of its own on
//! the first CPU, so its pacing and ack timestamps do not wait behind the subscribers' tasks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memchr::memmem;
use serde_json::json;

use super::ds::{
    create_streams, json_body, last_control_offset, offset, request, scan_records, stream_path,
    JSON,
};
use super::{ensure_fds, params};
use crate::client::{Client, Target};
use crate::exec::Window;
use crate::report::{Report, Run};
use crate::sse::{watch_record, WatchStream};
use crate::stats::{insert_percentiles, record_us, round, us_histogram};
use crate::Args;

/// Initial read buffer of a subscriber.
const STREAM_BUF: usize = 8 * 1024;
/// How long the writer waits for every subscriber to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);
/// Most records per append when the writer has fallen behind its schedule.
const MAX_BATCH: u64 = 1_000;

/// What the writer and the subscribers share across executors.
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

/// The subscribers' figures of one executor.
struct Side {
    ack_lat: Histogram<u64>,
    send_lat: Histogram<u64>,
    open_lat: Histogram<u64>,
    /// Measured records received before their ack was seen: (id, received µs).
    pending: Vec<(u64, u64)>,
    received: u64,
    events: u64,
    duplicates: u64,
    gaps: u64,
    reconnects: u64,
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
            events: 0,
            duplicates: 0,
            gaps: 0,
            reconnects: 0,
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
        self.events += o.events;
        self.duplicates += o.duplicates;
        self.gaps += o.gaps;
        self.reconnects += o.reconnects;
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
    let name = format!("{}-ds-fanout", args.topic_prefix);
    create_streams(&args.cpus(), target, vec![name.clone()])?;
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
    let openers = args.connections.unwrap_or(32).max(1);

    let writer = {
        let (cpus, args, target, shared) =
            (args.cpus(), args.clone(), target.clone(), shared.clone());
        let path = stream_path(&name);
        std::thread::spawn(move || cpus.run_one(move || write(args, target, path, n, shared)))
    };
    let (t, s, drain, path) = (
        target.clone(),
        shared.clone(),
        args.drain(),
        stream_path(&name),
    );
    let subscribers = args.cpus().run_all(move |index, count| {
        let mine = (index..n).step_by(count).count();
        let per_executor = openers.div_ceil(count).max(1);
        subscribers(
            t.clone(),
            s.clone(),
            path.clone(),
            mine,
            per_executor,
            drain,
        )
    });
    if subscribers.is_err() {
        shared.failed.store(n, SeqCst);
    }
    let writer = writer
        .join()
        .map_err(|_| "writer thread panicked".to_string())??;
    let mut side = Side::new();
    for part in subscribers? {
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
    f.insert("subscribers".into(), json!(n));
    f.insert("subscribers_open".into(), json!(ready));
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
    f.insert("data_events".into(), json!(side.events));
    let per_event = if side.events == 0 {
        0.0
    } else {
        side.received as f64 / side.events as f64
    };
    f.insert("records_per_data_event".into(), json!(round(per_event, 2)));
    f.insert("reconnects".into(), json!(side.reconnects));
    f.insert("latency_samples".into(), json!(side.ack_lat.len()));
    insert_percentiles(&mut f, "", &side.ack_lat);
    f.insert("events_before_ack".into(), json!(before_ack));
    f.insert("delivered_never_acked".into(), json!(never_acked));
    insert_percentiles(&mut f, "send_to_event_", &side.send_lat);
    insert_percentiles(&mut f, "append_rtt_", &writer.rtt);
    insert_percentiles(&mut f, "open_", &side.open_lat);
    let errors = side.errors + writer.errors + (n - ready.min(n)) as u64;
    f.insert("errors".into(), json!(errors));
    if let Some(e) = side.first_error.or(writer.first_error) {
        f.insert("first_error".into(), json!(e));
    }
    let mut p = params(args, openers);
    p.insert("stream".into(), json!(name));
    p.insert("rate".into(), json!(args.rate));
    p.insert("subscribers".into(), json!(n));
    p.insert(
        "durability".into(),
        json!("the server's --ds-durability (default fsync)"),
    );
    Ok(Report::new(
        "ds-fanout",
        &args.url,
        p,
        vec![Run::new(format!("{n} subscribers"), f)],
    ))
}

/// Opens an SSE read at `from` and waits for its first `control` event; returns the stream
/// with everything up to the end of that event consumed, and those consumed bytes.
async fn subscribe(
    target: &Target,
    path: &str,
    from: &str,
) -> Result<(WatchStream, Vec<u8>), String> {
    let url = format!("{path}?offset={from}&live=sse");
    let mut stream = WatchStream::open(target, &url, STREAM_BUF)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    loop {
        let frames = stream.frames();
        if let Some(at) = memmem::find(frames, b"event: control\n") {
            let end = memmem::find(&frames[at..], b"\n\n").map_or(frames.len(), |e| at + e + 2);
            let first = frames[..end].to_vec();
            stream.consume(end);
            return Ok((stream, first));
        }
        match stream.read().await {
            Ok(0) => return Err(format!("GET {url}: closed before its first control event")),
            Ok(_) => {}
            Err(e) => return Err(format!("GET {url}: {e}")),
        }
    }
}

/// One executor's subscribers: `openers` tasks open them and hand each to a reader task.
async fn subscribers(
    target: Target,
    shared: Arc<Shared>,
    path: String,
    mine: usize,
    openers: usize,
    drain: Duration,
) -> Side {
    let side = Rc::new(RefCell::new(Side::new()));
    let left = Rc::new(Cell::new(mine));
    let tasks = Rc::new(RefCell::new(Vec::new()));
    let open_tasks: Vec<_> = (0..openers)
        .map(|_| {
            let (target, shared, path, side, left, tasks) = (
                target.clone(),
                shared.clone(),
                path.clone(),
                side.clone(),
                left.clone(),
                tasks.clone(),
            );
            glommio::spawn_local(async move {
                while left.get() > 0 {
                    left.set(left.get() - 1);
                    let started = Instant::now();
                    match subscribe(&target, &path, "now").await {
                        Ok((stream, _)) => {
                            let us = started.elapsed().as_micros() as u64;
                            record_us(&mut side.borrow_mut().open_lat, us);
                            shared.ready.fetch_add(1, SeqCst);
                            let task = read(
                                stream,
                                target.clone(),
                                path.clone(),
                                shared.clone(),
                                side.clone(),
                                drain,
                            );
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

/// What one subscriber has seen.
struct Seen {
    /// The next record id expected.
    next: u64,
    /// Where to reconnect: the last `control` event's `streamNextOffset`.
    offset: Option<u64>,
}

/// Counts the records of `frames` received at `now` (µs since the epoch).
fn count(frames: &[u8], now: u64, seen: &mut Seen, shared: &Shared, side: &mut Side) {
    let (ws, we) = (shared.win_start.load(SeqCst), shared.win_end.load(SeqCst));
    side.events += memmem::find_iter(frames, b"event: data\n").count() as u64;
    scan_records(frames, |id, t| {
        if id < seen.next {
            side.duplicates += 1;
            return;
        }
        side.gaps += id - seen.next;
        seen.next = id + 1;
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
    if let Some(o) = last_control_offset(frames) {
        seen.offset = Some(o);
    }
}

/// Reads one subscriber until it has seen every record the writer sent, or the drain time
/// after the writer stopped has passed; reconnects when the server ends the response.
async fn read(
    mut stream: WatchStream,
    target: Target,
    path: String,
    shared: Arc<Shared>,
    side: Rc<RefCell<Side>>,
    drain: Duration,
) {
    // No read timeout: glommio would arm and cancel a timer around every read. An idle SSE
    // read sends a comment every 15 s, and a server that dies closes the socket.
    let drain_us = drain.as_micros() as u64;
    let mut seen = Seen {
        next: 0,
        offset: None,
    };
    loop {
        let result = stream.read().await;
        let now = shared.now_us();
        let sent = shared.sent.load(SeqCst);
        match result {
            Ok(0) => {
                // The server ended the response (its SSE time limit): go on where it stopped.
                let frames = stream.frames().to_vec();
                count(&frames, now, &mut seen, &shared, &mut side.borrow_mut());
                if seen.next >= sent {
                    return;
                }
                let Some(at) = seen.offset else {
                    side.borrow_mut()
                        .error("an SSE read ended before any control event".into());
                    return;
                };
                side.borrow_mut().reconnects += 1;
                match subscribe(&target, &path, &offset(at)).await {
                    Ok((s, first)) => {
                        stream = s;
                        let now = shared.now_us();
                        count(&first, now, &mut seen, &shared, &mut side.borrow_mut());
                        continue;
                    }
                    Err(e) => {
                        side.borrow_mut().error(e);
                        return;
                    }
                }
            }
            Err(e) => {
                side.borrow_mut().error(format!("SSE read: {e}"));
                return;
            }
            Ok(_) => {}
        }
        let frames = stream.frames();
        if !frames.is_empty() {
            count(frames, now, &mut seen, &shared, &mut side.borrow_mut());
            let used = frames.len();
            stream.consume(used);
        }
        if seen.next >= sent || (sent != u64::MAX && now > shared.done_us.load(SeqCst) + drain_us) {
            return;
        }
    }
}

/// The writer: waits for every subscriber, then appends on a fixed schedule (record `k` due
/// at `k / rate`) for warm-up + duration: one record per POST while it keeps up; records that
/// fell due during a slow round trip go together, as one JSON array, in the next POST.
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
            let body = json_body((k..end).map(|id| watch_record(id, t, args.record_bytes)));
            let req = request(&target, "POST", &path, Some(JSON), &body);
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
