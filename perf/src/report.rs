//! What a workload hands back: its parameters and one set of figures per run (a class, a page
//! size, ...), printed as one JSON object (`--json`) or one human-readable line per run.

use serde_json::{json, Map, Value};

pub struct Report {
    pub workload: &'static str,
    pub url: String,
    pub params: Map<String, Value>,
    pub runs: Vec<Run>,
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
    }
}

/// `append fsync: 12345.6 records/s 12345.6 req/s  p50 850 µs  p99 2100 µs  p999 4000 µs  errors 0`
fn human_line(workload: &str, run: &Run) -> String {
    let f = &run.figures;
    let get = |k: &str| f.get(k).map(plain).unwrap_or_else(|| "-".into());
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
    for key in ["server_total_ms_p50", "fsync_ms_p50", "first_error"] {
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
