//! Write fencing for a leader that was paused (SIGSTOP, a frozen VM, a stalled node): when the
//! process stood still long enough for its Lease to expire, a standby may lead by now, so no
//! write may go out until this replica has stepped down. Without it, whichever task ran first
//! after the resume could write before the lease watch noticed the loss.
//!
//! The check is local and synchronous (no API call): a heartbeat ticks every
//! [`Fence::TICK`]; a gap longer than the limit, seen by the heartbeat or by a writer that
//! runs before it, means a pause. Requests already sent before the pause cannot be recalled.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::{Error, Result};

pub struct Fence {
    start: Instant,
    last_tick_ms: AtomicU64,
    limit: Option<Duration>,
    lost: AtomicBool,
}

impl Fence {
    pub const TICK: Duration = Duration::from_millis(250);

    /// `limit`: the longest standstill after which the Lease may still be ours (lease duration
    /// minus the renewal grace, minus a margin); `None` without leader election.
    pub fn new(limit: Option<Duration>) -> Fence {
        Fence {
            start: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            limit,
            lost: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Ok while writes may go out; once a pause was seen, never again.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(Error::LeadershipLost);
        }
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let gap = self
            .now_ms()
            .saturating_sub(self.last_tick_ms.load(Ordering::Acquire));
        if gap > u64::try_from(limit.as_millis()).unwrap_or(u64::MAX) {
            self.lost.store(true, Ordering::Release);
            tracing::error!(
                standstill_ms = gap,
                "the process stood still longer than the lease allows: no more writes, stepping down"
            );
            return Err(Error::LeadershipLost);
        }
        Ok(())
    }

    fn tick(&self) {
        self.last_tick_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Ticks until a pause is seen; returns then (the replica steps down).
    pub async fn heartbeat(&self) {
        self.tick();
        loop {
            tokio::time::sleep(Self::TICK).await;
            if self.check().is_err() {
                return;
            }
            self.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standstill_longer_than_the_limit_fences_for_good() {
        let fence = Fence::new(Some(Duration::from_millis(500)));
        fence.tick();
        assert!(fence.check().is_ok());
        std::thread::sleep(Duration::from_millis(600));
        assert!(matches!(fence.check(), Err(Error::LeadershipLost)));
        fence.tick();
        assert!(fence.check().is_err(), "once fenced, always fenced");
    }

    #[test]
    fn without_leader_election_nothing_is_fenced() {
        let fence = Fence::new(None);
        std::thread::sleep(Duration::from_millis(5));
        assert!(fence.check().is_ok());
    }
}
