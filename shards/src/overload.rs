//! Overload shedding (SPEC §9): each core admits a bounded number of requests at once; past
//! the bound, requests on the lowest-priority topics are refused first (`429 throttled` with
//! `retry_after_ms`), or wait when the write asked for `disable_backpressure`.
//!
//! The bound is `--max-queue-per-core` requests in flight (appends, diffs and claims; an
//! `fsync` append is in flight until its sync). With `n` in flight and bound `b`:
//! at `n >= b` requests on topics of effective priority below 0 are shed, at `n >= 2b` those
//! below 500, at `n >= 4b` all but priority 1000. A topic's effective priority is its
//! `priority`, or with `priority: null` and `auto_priority` one derived from how recently it
//! was read: 100 within the last 10 s, 0 within 10 min, -100 otherwise.

use crate::event::Event;
use crate::mesh::ShardError;
use crate::topic::Topic;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub const MAX_PRIORITY: i64 = 1000;

/// The effective priority of a topic now.
pub fn effective_priority(t: &Topic, now_ms: u64) -> i64 {
    match t.config.priority {
        Some(p) => p.clamp(-MAX_PRIORITY, MAX_PRIORITY),
        None if t.config.auto_priority => {
            let idle = now_ms.saturating_sub(t.last_read_ts);
            if idle <= 10_000 {
                100
            } else if idle <= 600_000 {
                0
            } else {
                -100
            }
        }
        None => 0,
    }
}

/// Below which priority requests are shed with `active` in flight against `bound`.
fn threshold(active: usize, bound: usize) -> Option<i64> {
    if bound == 0 || active < bound {
        None
    } else if active < 2 * bound {
        Some(0)
    } else if active < 4 * bound {
        Some(500)
    } else {
        Some(MAX_PRIORITY)
    }
}

pub struct Admission {
    active: Cell<usize>,
    bound: usize,
    freed: Event,
}

/// A request admitted; dropping it frees its place.
pub struct Ticket {
    adm: Rc<Admission>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.adm.active.set(self.adm.active.get().saturating_sub(1));
        self.adm.freed.notify_all();
    }
}

impl Admission {
    pub fn new(bound: usize) -> Rc<Admission> {
        Rc::new(Admission {
            active: Cell::new(0),
            bound,
            freed: Event::new(),
        })
    }

    /// Admits a request on a topic of `priority`, or refuses it (`wait`: waits for room
    /// instead, up to 30 s). Returns the ticket and how long it waited.
    pub async fn admit(
        self: &Rc<Self>,
        priority: i64,
        wait: bool,
    ) -> Result<(Ticket, Duration), ShardError> {
        let t0 = Instant::now();
        loop {
            let active = self.active.get();
            match threshold(active, self.bound) {
                Some(min) if priority < min => {
                    if !wait || t0.elapsed() > Duration::from_secs(30) {
                        let level = (active / self.bound.max(1)) as u64;
                        return Err(ShardError::Throttled {
                            retry_after_ms: 50 * level.clamp(1, 20),
                        });
                    }
                    let l = self.freed.listen();
                    futures_lite::future::or(l, glommio::timer::sleep(Duration::from_millis(50)))
                        .await;
                }
                _ => {
                    self.active.set(active + 1);
                    return Ok((Ticket { adm: self.clone() }, t0.elapsed()));
                }
            }
        }
    }

    pub fn active(&self) -> usize {
        self.active.get()
    }

    /// Whether the next request is admitted whatever its priority.
    pub fn under_bound(&self) -> bool {
        threshold(self.active.get(), self.bound).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_rise_with_load() {
        assert_eq!(threshold(3, 4), None);
        assert_eq!(threshold(4, 4), Some(0));
        assert_eq!(threshold(8, 4), Some(500));
        assert_eq!(threshold(16, 4), Some(MAX_PRIORITY));
        assert_eq!(threshold(1_000_000, 0), None);
    }
}
