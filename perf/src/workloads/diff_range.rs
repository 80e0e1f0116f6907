//! `diff-range`: how fast the records at either end of the topics `fill` wrote read back (the
//! same `--topics` and `--topic-prefix` name them). Reads every topic's head first, then, for
//! each page size of `--limit`, two timed runs: `oldest` pages through seqs 1..=S of the
//! topics, `head` through their last S (S is `--span`, at most half of the shortest topic, so
//! that the two never overlap). The connections take (topic, page) pairs from one shared
//! counter, topic first, so that consecutive requests go to different topics and a run sweeps
//! every topic before it reads a second page of any: no one cached block serves the run.
//! Records/s counts the records the responses carry (`"$seq"` keys); the head run also
//! reports `oldest_over_head`, the ratio of the two rates.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;
use serde_json::json;

use super::{diff::head_seq, params, topic_path, Names};
use crate::client::{json_number, Client, Target};
use crate::exec::Window;
use crate::report::{Report, Run};
use crate::stats::{round, Recorder};
use crate::Args;

/// Which end of the topics a run reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Oldest,
    Head,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Oldest => "oldest",
            End::Head => "head",
        }
    }
}

pub fn run(args: &Args, target: &Target) -> Result<Report, String> {
    let topics = args.topics.unwrap_or(1000).max(1);
    let connections = args.connections.unwrap_or(8).max(1);
    let names = Arc::new(Names::new(&format!("{}-fill", args.topic_prefix), topics));
    let heads = read_heads(args, target, &names)?;
    let shortest = heads.iter().copied().min().unwrap_or(0);
    let span = args.span.min(shortest / 2);
    if span == 0 {
        return Err(format!(
            "the shortest topic holds {shortest} records: too few to read both ends (run fill first)"
        ));
    }
    let heads = Arc::new(heads);

    let mut runs = Vec::new();
    for &limit in &args.limit {
        let limit = u64::from(limit.clamp(1, 1000));
        let mut rates = [0.0; 2];
        for (i, end) in [End::Oldest, End::Head].into_iter().enumerate() {
            let sweep = Sweep {
                names: names.clone(),
                heads: heads.clone(),
                end,
                span,
                limit,
                next: AtomicU64::new(0),
            };
            let (rec, elapsed) = read_run(args, target, sweep, connections)?;
            rates[i] = rec.records as f64 / elapsed.as_secs_f64().max(1e-9);
            let mut run = Run::new(
                format!("{} limit {limit}", end.name()),
                rec.summary(elapsed),
            )
            .with("end", json!(end.name()))
            .with("limit", json!(limit));
            if end == End::Head && rates[1] > 0.0 {
                run = run.with("oldest_over_head", json!(round(rates[0] / rates[1], 3)));
            }
            runs.push(run);
        }
    }

    let mut p = params(args, connections);
    p.insert("topics".into(), json!(topics));
    p.insert("span".into(), json!(span));
    p.insert("shortest_topic".into(), json!(shortest));
    p.insert(
        "longest_topic".into(),
        json!(heads.iter().copied().max().unwrap_or(0)),
    );
    p.insert(
        "topic_names".into(),
        json!(format!("{}..{}", names.name(0), names.name(topics - 1))),
    );
    Ok(Report::new("diff-range", &args.url, p, runs))
}

/// Every topic's `head_seq`, over one connection.
fn read_heads(args: &Args, target: &Target, names: &Arc<Names>) -> Result<Vec<u64>, String> {
    let (target, names) = (target.clone(), names.clone());
    args.cpus().run_one(move || async move {
        let mut client = Client::new(target.clone());
        let mut heads = Vec::with_capacity(names.count);
        for t in 0..names.count {
            heads.push(head_seq(&mut client, &target, &names.name(t)).await?);
        }
        Ok(heads)
    })?
}

/// One run's plan and its shared counter: pair `k` reads topic `k % T`, page `(k / T) % pages`.
struct Sweep {
    names: Arc<Names>,
    heads: Arc<Vec<u64>>,
    end: End,
    span: u64,
    limit: u64,
    next: AtomicU64,
}

impl Sweep {
    /// The `from_seq` and path of pair `k`.
    fn pair(&self, k: u64) -> (u64, String) {
        let topics = self.heads.len() as u64;
        let pages = self.span.div_ceil(self.limit);
        let t = (k % topics) as usize;
        let page = (k / topics) % pages;
        let base = match self.end {
            End::Oldest => 0,
            End::Head => self.heads[t] - self.span,
        };
        let path = format!("{}/diff", topic_path(&self.names.name(t)));
        (base + page * self.limit, path)
    }

    /// The page size of pair `k`: `limit`, less on the last page of an uneven span.
    fn page_limit(&self, k: u64) -> u64 {
        let topics = self.heads.len() as u64;
        let pages = self.span.div_ceil(self.limit);
        let page = (k / topics) % pages;
        self.limit.min(self.span - page * self.limit)
    }
}

fn read_run(
    args: &Args,
    target: &Target,
    sweep: Sweep,
    connections: usize,
) -> Result<(Recorder, Duration), String> {
    let window = Window::new(args.warmup(), args.duration());
    let (target, sweep) = (target.clone(), Arc::new(sweep));
    let parts = args.cpus().run_all(move |index, count| {
        let (target, sweep) = (target.clone(), sweep.clone());
        async move {
            let tasks: Vec<_> = (index..connections)
                .step_by(count)
                .map(|_| glommio::spawn_local(reader(target.clone(), sweep.clone(), window)))
                .collect();
            let mut rec = Recorder::new();
            for task in tasks {
                rec.merge(&task.await);
            }
            rec
        }
    })?;
    let mut rec = Recorder::new();
    for part in &parts {
        rec.merge(part);
    }
    Ok((rec, window.duration()))
}

async fn reader(target: Target, sweep: Arc<Sweep>, window: Window) -> Recorder {
    let mut client = Client::new(target.clone());
    let mut rec = Recorder::new();
    let seq_key = memmem::Finder::new(br#""$seq":"#);
    loop {
        let sent = Instant::now();
        if window.over(sent) {
            break;
        }
        let k = sweep.next.fetch_add(1, Relaxed);
        let (from, path) = sweep.pair(k);
        let body = format!(r#"{{"from_seq":{from},"limit":{}}}"#, sweep.page_limit(k));
        let result = client
            .send(&target.request("POST", &path, Some(body.as_bytes())))
            .await;
        let done = Instant::now();
        let counted = window.measuring(done) && !window.over(done);
        match result {
            Ok(status) if counted => {
                let body = client.body();
                if (200..300).contains(&status) {
                    let records = seq_key.find_iter(body).count() as u64;
                    rec.response(status, done - sent, records);
                    rec.server_perf(json_number(body, "server_total_ms"), None);
                } else {
                    rec.error_response(status, done - sent, body);
                }
            }
            Ok(_) => {}
            Err(e) => {
                if counted {
                    rec.io_error(&e);
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_topics_first_and_stays_in_the_span() {
        let sweep = |end| Sweep {
            names: Arc::new(Names::new("load-fill", 3)),
            heads: Arc::new(vec![5000, 6000, 7000]),
            end,
            span: 2500,
            limit: 1000,
            next: AtomicU64::new(0),
        };
        let old = sweep(End::Oldest);
        assert_eq!(old.pair(0), (0, "/v0/topics/load-fill-t000000/diff".into()));
        assert_eq!(old.pair(1).0, 0);
        assert_eq!(old.pair(3).0, 1000);
        assert_eq!(old.pair(6).0, 2000);
        assert_eq!(old.page_limit(6), 500);
        assert_eq!(old.pair(9).0, 0);
        let head = sweep(End::Head);
        assert_eq!(head.pair(0).0, 2500);
        assert_eq!(head.pair(2).0, 4500);
        assert_eq!(head.pair(8).0, 6500);
        assert_eq!(head.page_limit(8), 500);
    }
}
