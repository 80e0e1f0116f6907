//! Where the load generator runs: one glommio executor per listed CPU (pinned), or a number of
//! unpinned executors. Workloads hand it a future generator that receives the executor's
//! index and the executor count, and get back one result per executor.

use std::future::Future;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

#[derive(Clone, Debug)]
pub struct Cpus {
    pub placement: Pin,
    /// How long an idle executor polls before it parks in the kernel (0: park at once).
    pub spin: Duration,
}

#[derive(Clone, Debug)]
pub enum Pin {
    /// One executor pinned to each of these CPUs.
    Pinned(Vec<usize>),
    /// This many executors, not bound to any CPU.
    Unbound(usize),
}

impl Cpus {
    pub fn count(&self) -> usize {
        match &self.placement {
            Pin::Pinned(cpus) => cpus.len(),
            Pin::Unbound(n) => *n,
        }
    }

    pub fn describe(&self) -> String {
        let place = match &self.placement {
            Pin::Pinned(list) => format!("pinned {list:?}"),
            Pin::Unbound(n) => format!("{n} unpinned"),
        };
        if self.spin.is_zero() {
            place
        } else {
            format!("{place}, spin {} us", self.spin.as_micros())
        }
    }

    fn placement(&self, index: usize) -> Placement {
        match &self.placement {
            Pin::Pinned(cpus) => Placement::Fixed(cpus[index]),
            Pin::Unbound(_) => Placement::Unbound,
        }
    }

    /// Runs `gen(index, count)` on every executor and collects the results in index order.
    pub fn run_all<G, F, T>(&self, gen: G) -> Result<Vec<T>, String>
    where
        G: Fn(usize, usize) -> F + Clone + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let count = self.count();
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let gen = gen.clone();
            let handle = LocalExecutorBuilder::new(self.placement(index))
                .name(&format!("load-{index}"))
                .spin_before_park(self.spin)
                .spawn(move || gen(index, count))
                .map_err(|e| format!("cannot start executor {index}: {e}"))?;
            handles.push(handle);
        }
        handles
            .into_iter()
            .map(|h| h.join().map_err(|e| format!("executor failed: {e}")))
            .collect()
    }

    /// Runs one future on the first executor's placement (set-up and tear-down work).
    pub fn run_one<G, F, T>(&self, gen: G) -> Result<T, String>
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        LocalExecutorBuilder::new(self.placement(0))
            .name("load-setup")
            .spin_before_park(self.spin)
            .spawn(gen)
            .map_err(|e| format!("cannot start executor: {e}"))?
            .join()
            .map_err(|e| format!("executor failed: {e}"))
    }
}

/// The measurement window shared by all connections of a run: requests that complete before
/// `start` are warm-up and not recorded; no request is sent after `end`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    pub fn measuring(&self, t: Instant) -> bool {
        t >= self.start
    }

    pub fn over(&self, t: Instant) -> bool {
        t >= self.end
    }

    pub fn duration(&self) -> Duration {
        self.end - self.start
    }
}
