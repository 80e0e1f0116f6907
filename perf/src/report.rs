//! What a workload hands back: its parameters and one set of figures per run (a class, a page
//! size, ...), printed as one JSON object (`--json`) or one human-readable line per run.

use serde_json::{json, Map, Value};

pub struct Report {
    pub workload: &'static str,
    pub url: String,
    pub params: Map<String, Value>,
    pub runs: Vec<Run>,
    /// Wall time of the whole invocation (set-up, warm-ups and runs) and the CPU time this
    /// process used meanwhile, user + system, so the client's cost can be set against the
    /// server's.
    pub wall_s: f64,
    pub cpu_s: Option<f64>,
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (Linux).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every mainstream Linux build.
    Some((utime + stime) / 100.0)
}

pub struct Run {
    pub name: String,
    pub figures: Map<String, Value>,
}

impl Run {
    pub fn new(name: impl Into<String>, figures: Map<String, Value>) -> Run {
        Run {
            name: name.into(),
            figures,
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Run {
        self.figures.insert(key.to_string(), value);
        self
    }
}

impl Report {
    pub fn new(
        workload: &'static str,
        url: &str,
        params: Map<String, Value>,
        runs: Vec<Run>,
    ) -> Report {
        Report {
            workload,
            url: url.to_string(),
            params,
            runs,
            wall_s: 0.0,
            cpu_s: None,
        }
    }

    pub fn errors(&self) -> u64 {
        self.runs
            .iter()
            .filter_map(|r| r.figures.get("errors").and_then(Value::as_u64))
            .sum()
    }

    pub fn to_json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("name".into(), json!(r.name));
                o.extend(r.figures.clone());
                Value::Object(o)
            })
            .collect();
        json!({
            "workload": self.workload,
            "url": self.url,
            "params": self.params,
            "runs": runs,
            "wall_s": crate::stats::round(self.wall_s, 3),
            "client_cpu_s": self.cpu_s.map(|c| crate::stats::round(c, 2)),
        })
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", self.to_json());
            return;
        }
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect();
        println!("# {} {} ({})", self.workload, self.url, params.join(" "));
        for run in &self.runs {
            println!("{}", human_line(self.workload, run));
        }
        if let Some(cpu) = self.cpu_s {
            println!("# load generator: {cpu:.2} s CPU in {:.2} s", self.wall_s);
        }
    }
}

/// `append fsync: 12345.6 records/s 12345.6 req/s  p50 850 µs  p99 2100 µs  p999 4000 µs  errors 0`
fn human_line(workload: &str, run: &Run) -> String {
    let f = &run.figures;
    if matches!(workload, "fanout" | "watch-idle" | "router" | "ds-fanout") {
        let all: Vec<String> = f.iter().map(|(k, v)| format!("{k} {}", plain(v))).collect();
        return format!("{workload} {}: {}", run.name, all.join("  "));
    }
    let get = |k: &str| f.get(k).map(plain).unwrap_or_else(|| "-".into());
    if workload == "queue-rt" {
        let mut line = format!(
            "queue-rt {}: {} round trips/s  {} jobs/s  pair p50 {} µs  p99 {} µs  claim p50 {} µs  \
             p99 {} µs  ack p50 {} µs  p99 {} µs  empty claims {}  consistent {}  errors {}",
            run.name,
            get("round_trips_per_s"),
            get("jobs_per_s"),
            get("p50_us"),
            get("p99_us"),
            get("claim_p50_us"),
            get("claim_p99_us"),
            get("ack_p50_us"),
            get("ack_p99_us"),
            get("empty_claims"),
            get("consistent"),
            get("errors"),
        );
        for key in ["warning", "first_error"] {
            if let Some(v) = f.get(key) {
                line.push_str(&format!("  {key} {}", plain(v)));
            }
        }
        return line;
    }
    if workload == "queue-latency" {
        let mut line = format!(
            "queue-latency {}: {} jobs/s (target {})  send→claim p50 {} µs  p90 {} µs  p99 {} µs  \
             max {} µs  append-ack→claim p50 {} µs  p99 {} µs  lost {}  duplicates {}  \
             acked once {}/{}  exactly once {}  errors {}",
            run.name,
            get("records_per_s"),
            get("rate_target"),
            get("p50_us"),
            get("p90_us"),
            get("p99_us"),
            get("max_us"),
            get("ack_to_claim_p50_us"),
            get("ack_to_claim_p99_us"),
            get("lost"),
            get("duplicates"),
            get("acked_once"),
            get("jobs_produced"),
            get("exactly_once"),
            get("errors"),
        );
        if let Some(v) = f.get("first_error") {
            line.push_str(&format!("  first_error {}", plain(v)));
        }
        return line;
    }
    let mut line = format!(
        "{workload} {}: {} records/s  {} req/s  p50 {} µs  p99 {} µs  p999 {} µs  max {} µs  errors {}",
        run.name,
        get("records_per_s"),
        get("requests_per_s"),
        get("p50_us"),
        get("p99_us"),
        get("p999_us"),
        get("max_us"),
        get("errors"),
    );
    for key in [
        "server_total_ms_p50",
        "fsync_ms_p50",
        "created",
        "rss_before_mib",
        "rss_after_create_mib",
        "rss_after_mib",
        "rss_per_topic_created_bytes",
        "rss_per_topic_bytes",
        "records_retained",
        "records_written",
        "lost_records",
        "payload_mib_per_s",
        "rss_peak_mib",
        "verified",
        "oldest_over_head",
        "mb_per_s",
        "readers_complete",
        "pass_max_us",
        "first_error",
    ] {
        if let Some(v) = f.get(key) {
            line.push_str(&format!("  {key} {}", plain(v)));
        }
    }
    line
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
