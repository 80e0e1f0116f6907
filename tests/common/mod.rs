//! Shared harness of the black-box tests: start the real `topics` binary on a free port with
//! a temp data dir, talk HTTP to it, kill / restart it, and check response shapes.
#![allow(dead_code)]

pub mod client;
pub mod ds;
pub mod fuzz;
pub mod model;
pub mod queue;
pub mod sse;
pub mod storage;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use client::{Client, Resp};
use serde_json::value::RawValue;
use serde_json::{json, Value};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `topics` server owned by one test. Killed and its temp dir removed on drop.
pub struct Server {
    pub port: u16,
    pub shards: usize,
    root: PathBuf,
    data_dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Server {
    /// Starts a server with `--shards shards` and waits until `/v0/ready` answers 200.
    pub fn start(shards: usize) -> Server {
        Self::start_with(shards, &[])
    }

    /// Like `start`, with extra command-line arguments (e.g. `["--max-body-bytes", "1024"]`).
    pub fn start_with(shards: usize, extra: &[&str]) -> Server {
        let root = std::env::temp_dir().join(format!(
            "topics-it-{}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        let data_dir = root.join("data");
        fs::create_dir_all(&data_dir).expect("create temp data dir");
        let mut s = Server {
            port: free_port(),
            shards,
            root,
            data_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        // The free port could be taken by someone else between probe and bind: retry with
        // another port if the first start fails.
        for attempt in 0..3 {
            match s.try_spawn() {
                Ok(()) => return s,
                Err(e) if attempt < 2 => {
                    eprintln!("server start attempt {attempt} failed: {e}; retrying");
                    s.port = free_port();
                }
                Err(e) => panic!("server did not start: {e}\n{}", s.log_tail()),
            }
        }
        unreachable!()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The last few KiB of the server's stdout+stderr.
    pub fn log_tail(&self) -> String {
        let text = fs::read(self.log_path()).unwrap_or_default();
        let from = text.len().saturating_sub(6000);
        format!(
            "---- server log tail ----\n{}\n-------------------------",
            String::from_utf8_lossy(&text[from..])
        )
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "server already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_topics"));
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--shards")
            .arg(self.shards.to_string())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| format!("spawn topics: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("server exited before ready: {status}"));
            }
            if let Ok(mut c) = Client::try_connect(self.port) {
                c.set_read_timeout(Duration::from_secs(5));
                if let Ok(r) = c.try_request("GET", "/v0/ready", &[], None) {
                    if r.status == 200 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = self.child.as_mut().unwrap().kill();
                let _ = self.child.as_mut().unwrap().wait();
                self.child = None;
                return Err(format!("not ready after {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts the server again on the same port and data dir; waits for ready.
    pub fn spawn_again(&mut self) {
        let mut last = String::new();
        // The port can linger briefly after a kill; retry a few times.
        for _ in 0..5 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        panic!("server did not restart: {last}\n{}", self.log_tail());
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (up to 20 s) for the process to exit; returns its exit status.
    pub fn stop_graceful(&mut self) -> ExitStatus {
        self.send_signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal ("TERM", "INT", ...) to the server process.
    pub fn send_signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits (up to 20 s) for the server process to exit; returns its exit status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server not running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within 20 s of the signal\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart_kill9(&mut self) {
        self.kill9();
        self.spawn_again();
    }

    /// SIGTERM, wait for the exit, then start again. The exit status is checked by its own
    /// test (`graceful_stop_exits_zero`), so that restart tests still check what survives.
    pub fn restart_graceful(&mut self) {
        let st = self.stop_graceful();
        if !st.success() {
            eprintln!("warning: server exited with {st} after SIGTERM (SPEC §9 wants 0)");
        }
        self.spawn_again();
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.client().get(path)
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.client().delete(path)
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.client().put(path, body)
    }

    pub fn json_post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.client().json_post(path, body)
    }

    pub fn post_raw(&self, path: &str, body: &[u8]) -> Resp {
        self.client().post_raw(path, body)
    }

    /// Appends `records` (a JSON array) to `topic`; asserts 200/201 and returns the body.
    pub fn append(&self, topic: &str, records: Value) -> Value {
        let (st, v) = self.json_post(
            &format!("/v0/topics/{topic}"),
            &json!({ "records": records }),
        );
        assert!(st == 200 || st == 201, "append to {topic}: {st} {v}");
        v
    }

    /// Appends `n` records `{"i": k}` for k in 0..n in one batch.
    pub fn append_n(&self, topic: &str, n: usize) -> Value {
        let recs: Vec<Value> = (0..n).map(|i| json!({ "data": { "i": i } })).collect();
        self.append(topic, Value::Array(recs))
    }

    /// `GET /v0/topics/:topic`, asserting 200.
    pub fn topic(&self, topic: &str) -> Value {
        let (st, v) = self.get(&format!("/v0/topics/{topic}"));
        assert_eq!(st, 200, "GET topic {topic}: {v}");
        v
    }

    /// One diff; asserts 200.
    pub fn diff(&self, topic: &str, body: Value) -> Value {
        let (st, v) = self.json_post(&format!("/v0/topics/{topic}/diff"), &body);
        assert_eq!(st, 200, "diff {topic} {body}: {v}");
        v
    }

    /// Reads the whole topic from seq 0 until caught up; returns the parsed records.
    pub fn diff_all(&self, topic: &str) -> Vec<Value> {
        self.diff_all_raw(topic)
            .into_iter()
            .map(|r| {
                let obj: serde_json::Map<String, Value> = r
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
                    .collect();
                Value::Object(obj)
            })
            .collect()
    }

    /// Reads the whole topic from seq 0 until caught up; each record as field -> raw JSON text.
    pub fn diff_all_raw(&self, topic: &str) -> Vec<BTreeMap<String, String>> {
        let mut c = self.client();
        let mut from = 0u64;
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let r = c.post_raw(
                &format!("/v0/topics/{topic}/diff"),
                format!(r#"{{"from_seq":{from},"limit":1000}}"#).as_bytes(),
            );
            assert_eq!(r.status, 200, "diff {topic} from {from}: {}", r.text());
            let v = r.json();
            out.extend(raw_records(&r.body));
            let next = v["next_from_seq"].as_u64().expect("next_from_seq");
            if v["caught_up"] == json!(true) {
                return out;
            }
            assert!(next > from, "diff cursor did not advance from {from}: {v}");
            from = next;
        }
        panic!("diff_all {topic} never caught up");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server on port {} (shards {}):", self.port, self.shards);
            eprintln!("{}", self.log_tail());
        }
        self.kill9();
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ---- shapes ---------------------------------------------------------------------------------

/// The records of a diff response body, each as field -> exact raw JSON text of its value.
pub fn raw_records(body: &[u8]) -> Vec<BTreeMap<String, String>> {
    let top: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(body).expect("response is a JSON object");
    let recs = top.get("records").expect("response has records");
    let list: Vec<BTreeMap<String, Box<RawValue>>> =
        serde_json::from_str(recs.get()).expect("records is an array of objects");
    list.into_iter()
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.get().to_string()))
                .collect()
        })
        .collect()
}

/// The exact raw JSON text of a top-level field of a response body.
pub fn raw_field(body: &[u8], key: &str) -> Option<String> {
    let top: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(body).expect("response is a JSON object");
    top.get(key).map(|v| v.get().to_string())
}

/// The keys of a JSON object, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn assert_ms(v: &Value, field: &str, ctx: &Value) {
    let x = v
        .get(field)
        .unwrap_or_else(|| panic!("performance.{field} missing in {ctx}"));
    let f = x
        .as_f64()
        .unwrap_or_else(|| panic!("performance.{field} not a number in {ctx}"));
    assert!(
        f >= 0.0 && f.is_finite(),
        "performance.{field} = {f} in {ctx}"
    );
}

/// `performance.server_total_ms` is a non-negative number.
pub fn assert_perf(v: &Value) {
    let p = v
        .get("performance")
        .unwrap_or_else(|| panic!("no performance block in {v}"));
    assert!(p.is_object(), "performance not an object in {v}");
    assert_ms(p, "server_total_ms", v);
}

/// A write response: `server_total_ms`, `wal_append_ms` and `fsync_ms`.
pub fn assert_write_perf(v: &Value) {
    assert_perf(v);
    let p = &v["performance"];
    assert_ms(p, "wal_append_ms", v);
    assert_ms(p, "fsync_ms", v);
}

/// Asserts an error response: status, `error.code`, and exactly the SPEC body shape
/// `{"error": {"code", "message", "detail"?}, "performance": {...}}`.
pub fn assert_error(r: &(u16, Value), status: u16, code: &str) {
    let (st, v) = r;
    assert_eq!(*st, status, "expected {status} {code}, got {st}: {v}");
    assert_error_shape(v);
    assert_eq!(v["error"]["code"], json!(code), "wrong error code: {v}");
}

/// The error body shape alone.
pub fn assert_error_shape(v: &Value) {
    let top = keys(v);
    assert_eq!(
        top,
        vec!["error".to_string(), "performance".to_string()],
        "error body must have exactly error + performance: {v}"
    );
    let e = &v["error"];
    for k in keys(e) {
        assert!(
            k == "code" || k == "message" || k == "detail",
            "unexpected key error.{k} in {v}"
        );
    }
    assert!(e["code"].is_string(), "error.code not a string: {v}");
    assert!(e["message"].is_string(), "error.message not a string: {v}");
    assert!(
        !e["message"].as_str().unwrap().is_empty(),
        "error.message empty: {v}"
    );
    assert_perf(v);
}

/// Same as `assert_error` for a raw response.
pub fn assert_error_resp(r: &Resp, status: u16, code: &str) {
    assert_error(&(r.status, r.json()), status, code);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "error content-type {ct:?}"
    );
}

pub fn seqs_of(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["$seq"].as_u64().expect("$seq"))
        .collect()
}

// ---- data-dir surgery ------------------------------------------------------------------------

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Index of the last non-zero byte of a file, if any.
pub fn last_nonzero(path: &Path) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 1 << 20];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start)).ok()?;
        f.read_exact(&mut buf[..n]).ok()?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            return Some(start + i as u64);
        }
        end = start;
    }
    None
}

/// The WAL file written last: among files under `dir` whose path (relative to `dir`)
/// contains "wal" and that hold a non-zero byte, the newest by mtime, then by name.
pub fn newest_wal_file(dir: &Path) -> Option<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.strip_prefix(dir)
                .unwrap_or(p)
                .to_string_lossy()
                .to_ascii_lowercase()
                .contains("wal")
        })
        .filter(|p| last_nonzero(p).is_some())
        .max_by_key(|p| {
            let m = fs::metadata(p).and_then(|m| m.modified()).ok();
            (m, p.clone())
        })
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values).
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Walks `GET /v0/topics` page by page (`query` without `cursor`, e.g. "prefix=a&page_size=7");
/// returns every page's topic names. Asserts `next_cursor` is present exactly when more follow.
pub fn list_pages(s: &Server, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut path = format!("/v0/topics?{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let (st, v) = s.get(&path);
        assert_eq!(st, 200, "GET {path}: {v}");
        let names: Vec<String> = v["topics"]
            .as_array()
            .unwrap_or_else(|| panic!("topics array in {v}"))
            .iter()
            .map(|t| t["topic"].as_str().expect("topic name").to_string())
            .collect();
        pages.push(names);
        match v.get("next_cursor") {
            None | Some(Value::Null) => return pages,
            Some(c) => {
                cursor = Some(
                    c.as_str()
                        .unwrap_or_else(|| panic!("next_cursor not a string: {v}"))
                        .to_string(),
                )
            }
        }
    }
    panic!("pagination never ended");
}

/// Collects failed expectations over a table of cases, so one run reports every bad case.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Like `assert_error`, recording a failure instead of panicking.
    pub fn error(
        &mut self,
        ctx: impl std::fmt::Display,
        r: &(u16, Value),
        status: u16,
        code: &str,
    ) {
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_error(r, status, code)
        }));
        if let Err(e) = res {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            self.failures.push(format!("{ctx}: {msg}"));
        }
    }

    pub fn error_resp(&mut self, ctx: impl std::fmt::Display, r: &Resp, status: u16, code: &str) {
        let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| json!({"raw": r.text()}));
        self.error(ctx, &(r.status, v), status, code);
    }

    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}
