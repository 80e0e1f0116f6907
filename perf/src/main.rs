//! `topics-load`: the load generator of topics. Fixed workloads over keep-alive HTTP/1.1
//! connections driven by glommio executors (pinned with `--cpu`), latency in hdrhistogram.
//!
//! ```text
//! topics-load --workload append --connections 64 --topics 100 --durability fsync --cpu 1
//! topics-load --workload fanout --watchers 1000 --rate 1000 --cpu 1
//! topics-load --workload watch-idle --watchers 10000 --server-pid 1234 --duration-secs 5 --cpu 1
//! topics-load --workload router --cpu 1
//! topics-load --workload topics --topics 100000 --server-pid 1234 --cpu 1
//! topics-load --workload fill --topics 1000 --records 20000000 --batch 500 --connections 32
//! topics-load --workload diff-range --topics 1000 --limit 1000 --connections 8
//! topics-load --workload queue-rt --durability fsync --connections 16 --claim-max 1 --cpu 1
//! topics-load --workload queue-latency --rate 5000 --connections 16 --cpu 1
//! topics-load --workload ds-append --connections 64 --topics 100 --cpu 1
//! topics-load --workload ds-fanout --watchers 1000 --rate 1000 --cpu 1
//! topics-load --workload ds-catchup --records 1000000 --batch 1000 --connections 8 --cpu 1
//! ```

mod busy;
mod client;
mod exec;
mod procfs;
mod report;
mod sse;
mod stats;
mod workloads;

use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::client::Target;
use crate::exec::{Cpus, Pin};
use crate::workloads::Workload;

/// The client I/O of closed-loop workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Io {
    Glommio,
    BusyPoll,
}

/// Commit class of the topics a workload writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    Disk,
    Fsync,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Disk => "disk",
            Durability::Fsync => "fsync",
        }
    }
}

#[derive(Parser, Clone, Debug)]
#[command(
    name = "topics-load",
    version,
    about = "Load generator for the topics server"
)]
pub struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// Which workload to run.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Length of each measured run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Warm-up before each measured run (load applied, nothing recorded), in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Concurrent connections [default: append and topics 64, append-batch 16, diff 1; ack-latency and
    /// router are 1; fanout, watch-idle and ds-fanout: streams opened concurrently, 32; queue-rt and
    /// queue-latency: workers, 16; ds-append 64; ds-catchup: readers, 8].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Number of topics the `append`, `topics` and `fill` workloads spread their writes over,
    /// and that `diff-range` reads; streams `ds-append` spreads over [default: append and
    /// ds-append 100, topics 100000, fill and diff-range 1000].
    #[arg(long)]
    pub topics: Option<usize>,
    /// Records the `fill` workload writes in all, spread evenly over `--topics` [default:
    /// 1000 per topic]; jobs `queue-rt` pre-fills its queue with [default: enough for 20,000
    /// round trips/s (× --claim-max, up to 8) over warm-up + run, at least 100,000]; records
    /// `ds-catchup`'s stream is filled to [default: 1,000,000].
    #[arg(long)]
    pub records: Option<u64>,
    /// Commit class of the written topics [default: disk; ack-latency: both].
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,
    /// Records per request (append-batch, fill, ds-catchup's fill).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Size of each record's `data` JSON, in bytes.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// Records the diff workload's topic holds before it is read (topped up if short).
    #[arg(long, default_value_t = 1_000_000)]
    pub preload: u64,
    /// Diff page sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 256, 1000])]
    pub limit: Vec<u32>,
    /// Records per topic that `diff-range` reads at each end: seqs 1..=N (the oldest) and the
    /// last N (the head); at most half of the shortest topic.
    #[arg(long, default_value_t = 5000)]
    pub span: u64,
    /// Watch streams [default: fanout 1000, watch-idle 10000]; SSE subscribers of ds-fanout
    /// [default: 1000].
    #[arg(long)]
    pub watchers: Option<usize>,
    /// Records per second the fanout and ds-fanout writers and the queue-latency producer
    /// append (one record per POST, paced) [default: fanout and ds-fanout 1000, queue-latency
    /// 5000].
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Jobs per claim (queue-rt acks them all in one call) [default: queue-rt 1,
    /// queue-latency 16].
    #[arg(long)]
    pub claim_max: Option<usize>,
    /// queue-rt: keep the backlog small and recent instead of one big pre-fill: pre-fill
    /// this many + 1000 jobs, then append 1000 more whenever a claim saw fewer ready.
    #[arg(long)]
    pub refill: Option<u64>,
    /// How long a queue-latency claim long-polls for work, in ms.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
    /// Topics the watch-idle streams are spread over (each stream follows one).
    #[arg(long, default_value_t = 4)]
    pub watch_topics: usize,
    /// Server process whose RSS watch-idle, topics and fill report [default: the process listening on the
    /// URL's port, found through /proc].
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// After the writer stops: how long fanout waits for frames still missing, router for
    /// the forwarding to catch up, and queue-latency for jobs not yet claimed, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
    /// Pin one executor to each of these CPUs (comma-separated); connections are spread
    /// over them.
    #[arg(long, value_delimiter = ',')]
    pub cpu: Vec<usize>,
    /// Number of unpinned executors, when --cpu is not given.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Busy-poll this long before an idle executor parks (takes the client's own wake-up out
    /// of latency figures at the price of a spinning core).
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// How closed-loop workloads (append, ds-append) drive their connections: `glommio`
    /// executors (io_uring), or `busy-poll` threads that never park, so that the server's
    /// responses never have to wake a sleeping client (see perf/src/busy.rs).
    #[arg(long, value_enum, default_value_t = Io::Glommio)]
    pub io: Io,
    /// Prefix of the topic names the workloads create.
    #[arg(long, default_value = "load")]
    pub topic_prefix: String,
    /// Print one JSON object with all results instead of human-readable lines.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs.max(0.001))
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs.max(0.0))
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain_secs.max(0.0))
    }

    pub fn cpus(&self) -> Cpus {
        let placement = if self.cpu.is_empty() {
            Pin::Unbound(self.threads.max(1))
        } else {
            Pin::Pinned(self.cpu.clone())
        };
        Cpus {
            placement,
            spin: Duration::from_micros(self.spin_us),
        }
    }
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let mut args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if args.workload == Workload::QueueLatency
        && matches.value_source("rate") == Some(ValueSource::DefaultValue)
    {
        args.rate = 5000.0;
    }
    if args.record_bytes < 64 {
        eprintln!("topics-load: --record-bytes must be at least 64");
        return ExitCode::from(2);
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        eprintln!("topics-load: --rate must be a positive number");
        return ExitCode::from(2);
    }
    let target = match Target::parse(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("topics-load: {e}");
            return ExitCode::from(2);
        }
    };
    let started = (std::time::Instant::now(), report::cpu_seconds());
    match workloads::run(&args, &target) {
        Ok(mut report) => {
            report.wall_s = started.0.elapsed().as_secs_f64();
            report.cpu_s = report::cpu_seconds().zip(started.1).map(|(b, a)| b - a);
            report.print(args.json);
            if report.errors() > 0 {
                eprintln!("topics-load: {} requests failed", report.errors());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("topics-load: {}: {e}", args.workload.name());
            ExitCode::FAILURE
        }
    }
}
