//! Shared measurement: one `Recorder` per connection task, merged at the end. Round-trip
//! latency is kept in an hdrhistogram in microseconds; figures the server reports about
//! itself (`server_total_ms`, `fsync_ms`) in nanoseconds, because they are often under 10 µs.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Round trips above this are clamped (they would be reported as this value).
const MAX_LATENCY_US: u64 = 60_000_000;

pub struct Recorder {
    /// Round-trip latency of successful requests, µs.
    pub latency: Histogram<u64>,
    /// Successful (2xx) requests and the records they carried or returned.
    pub ok: u64,
    pub records: u64,
    /// Non-2xx responses by status.
    pub non_2xx: BTreeMap<u16, u64>,
    /// Connection and protocol errors.
    pub io_errors: u64,
    pub first_error: Option<String>,
    /// `performance.server_total_ms` and `performance.fsync_ms` of successful responses, ns.
    pub server_total: Histogram<u64>,
    pub fsync: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
            ok: 0,
            records: 0,
            non_2xx: BTreeMap::new(),
            io_errors: 0,
            first_error: None,
            server_total: Histogram::new_with_bounds(1, MAX_LATENCY_US * 1000, 3)
                .expect("valid bounds"),
            fsync: Histogram::new_with_bounds(1, MAX_LATENCY_US * 1000, 3).expect("valid bounds"),
        }
    }

    /// Counts one response: a 2xx with its latency and record count, anything else as an
    /// error by status.
    pub fn response(&mut self, status: u16, latency: Duration, records: u64) {
        if (200..300).contains(&status) {
            self.ok += 1;
            self.records += records;
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency.saturating_record(us.max(1));
        } else {
            *self.non_2xx.entry(status).or_default() += 1;
            if self.first_error.is_none() {
                self.first_error = Some(format!("HTTP {status}"));
            }
        }
    }

    /// Counts a non-2xx response like [`Recorder::response`]; when it is the first error, keeps
    /// the start of its body (the server's error code and message) with it.
    pub fn error_response(&mut self, status: u16, latency: Duration, body: &[u8]) {
        let first = self.first_error.is_none();
        self.response(status, latency, 0);
        if first {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
            self.first_error = Some(format!("HTTP {status}: {text}"));
        }
    }

    pub fn io_error(&mut self, e: &io::Error) {
        self.io_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Records what the server said about itself, in ms as it reports them.
    pub fn server_perf(&mut self, total_ms: Option<f64>, fsync_ms: Option<f64>) {
        if let Some(ms) = total_ms {
            self.server_total.saturating_record(ms_to_ns(ms));
        }
        if let Some(ms) = fsync_ms {
            self.fsync.saturating_record(ms_to_ns(ms));
        }
    }

    pub fn errors(&self) -> u64 {
        self.io_errors + self.non_2xx.values().sum::<u64>()
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.latency.add(&other.latency).expect("same bounds");
        self.server_total
            .add(&other.server_total)
            .expect("same bounds");
        self.fsync.add(&other.fsync).expect("same bounds");
        self.ok += other.ok;
        self.records += other.records;
        for (status, n) in &other.non_2xx {
            *self.non_2xx.entry(*status).or_default() += n;
        }
        self.io_errors += other.io_errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// The figures of a measurement window of `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Map<String, Value> {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let h = &self.latency;
        let mut m = Map::new();
        m.insert("elapsed_s".into(), json!(round(secs, 3)));
        m.insert("requests".into(), json!(self.ok));
        m.insert("records".into(), json!(self.records));
        m.insert(
            "requests_per_s".into(),
            json!(round(self.ok as f64 / secs, 1)),
        );
        m.insert(
            "records_per_s".into(),
            json!(round(self.records as f64 / secs, 1)),
        );
        let pct = |q: f64| {
            json!(if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            })
        };
        m.insert("p50_us".into(), pct(0.5));
        m.insert("p90_us".into(), pct(0.9));
        m.insert("p99_us".into(), pct(0.99));
        m.insert("p999_us".into(), pct(0.999));
        m.insert("max_us".into(), json!(h.max()));
        m.insert("mean_us".into(), json!(round(h.mean(), 1)));
        m.insert("errors".into(), json!(self.errors()));
        if self.errors() > 0 {
            let by_status: Map<String, Value> = self
                .non_2xx
                .iter()
                .map(|(s, n)| (s.to_string(), json!(n)))
                .collect();
            m.insert("non_2xx".into(), Value::Object(by_status));
            m.insert("io_errors".into(), json!(self.io_errors));
            m.insert("first_error".into(), json!(self.first_error));
        }
        if !self.server_total.is_empty() {
            m.insert(
                "server_total_ms_p50".into(),
                json!(ns_to_ms(self.server_total.value_at_quantile(0.5))),
            );
            m.insert(
                "server_total_ms_p99".into(),
                json!(ns_to_ms(self.server_total.value_at_quantile(0.99))),
            );
        }
        if !self.fsync.is_empty() {
            m.insert(
                "fsync_ms_p50".into(),
                json!(ns_to_ms(self.fsync.value_at_quantile(0.5))),
            );
            m.insert(
                "fsync_ms_p99".into(),
                json!(ns_to_ms(self.fsync.value_at_quantile(0.99))),
            );
        }
        m
    }
}

/// A histogram of microseconds with the bounds every recorder uses.
pub fn us_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

/// Records a duration in µs (at least 1) in such a histogram.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// Inserts `{prefix}p50_us`, `p99_us`, `p999_us`, `max_us` (0 for an empty histogram).
pub fn insert_percentiles(m: &mut Map<String, Value>, prefix: &str, h: &Histogram<u64>) {
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    m.insert(format!("{prefix}p50_us"), json!(q(0.5)));
    m.insert(format!("{prefix}p90_us"), json!(q(0.9)));
    m.insert(format!("{prefix}p99_us"), json!(q(0.99)));
    m.insert(format!("{prefix}p999_us"), json!(q(0.999)));
    m.insert(format!("{prefix}max_us"), json!(h.max()));
}

fn ms_to_ns(ms: f64) -> u64 {
    (ms * 1e6).round().max(1.0) as u64
}

fn ns_to_ms(ns: u64) -> f64 {
    round(ns as f64 / 1e6, 4)
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_merges() {
        let mut a = Recorder::new();
        a.response(200, Duration::from_micros(100), 1);
        a.response(503, Duration::from_micros(5), 0);
        a.server_perf(Some(0.024), Some(0.0));
        let mut b = Recorder::new();
        b.response(201, Duration::from_micros(300), 10);
        b.merge(&a);
        assert_eq!(b.ok, 2);
        assert_eq!(b.records, 11);
        assert_eq!(b.errors(), 1);
        let s = b.summary(Duration::from_secs(1));
        assert_eq!(s["records_per_s"], json!(11.0));
        assert_eq!(s["non_2xx"]["503"], json!(1));
        assert_eq!(s["server_total_ms_p50"], json!(0.024));
    }

    #[test]
    fn keeps_the_body_of_the_first_error() {
        let mut r = Recorder::new();
        r.error_response(
            500,
            Duration::from_micros(5),
            br#"{"error":{"code":"internal"}}"#,
        );
        r.error_response(503, Duration::from_micros(5), b"later");
        assert_eq!(r.errors(), 2);
        assert_eq!(
            r.first_error.as_deref(),
            Some(r#"HTTP 500: {"error":{"code":"internal"}}"#)
        );
    }
}
