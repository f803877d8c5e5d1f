//! Write fencing: with leader election, a replica may write only while it knows it leads.
//!
//! Two rules, both checked by [`Fence::check`], which the operator's client calls before every
//! request that is not a read (see [`super::gate`]: the check sits in the client itself, so no
//! task, present or future, can write around it):
//!
//! - **The lease is confirmed.** A write may go out only within [`Fence::new`]'s `validity` of
//!   the moment the last request that confirmed our Lease was *sent* (a renewal or acquisition
//!   whose answer names us as holder; the lease client reports them, see
//!   [`super::gate::LeaseWatchLayer`]). The validity is shorter than the lease duration, so
//!   whatever stopped this replica (SIGSTOP, a frozen VM, a partition, an API server that
//!   answered others but not us) it writes nothing once a standby could have taken the Lease,
//!   and nothing after it resumes until a renewal is answered with us as holder again. This
//!   refusal is transient: writes resume when the lease is confirmed.
//! - **No standstill.** A heartbeat ticks every [`Fence::TICK`]; a gap longer than the limit,
//!   seen by the heartbeat or by a writer that runs before it, means the process stood still
//!   and may have lost the Lease unnoticed: no write ever again, the replica steps down.
//!
//! Pure, with a clock read in one place ([`Fence::check`]); tests drive [`Fence::check_at`].
//! A request already handed to the connection before a pause cannot be recalled; the check runs
//! as late as the client allows, when the request's future is first polled.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::{Error, Result};

pub struct Fence {
    start: Instant,
    /// The longest standstill after which the Lease may still be ours; `None` without leader
    /// election.
    limit: Option<Duration>,
    /// The heartbeat runs (only the leader's controller runs it).
    armed: AtomicBool,
    last_tick_ms: AtomicU64,
    lost: AtomicBool,
    /// How long after a confirmation was sent writes may go out; `None` without leader election.
    validity: Option<Duration>,
    /// When (ms since `start`, plus one; 0: never) the last confirming request was sent.
    confirmed: AtomicU64,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process stood still longer than the limit (for good).
    Standstill { ms: u64 },
    /// The lease was never confirmed, or not within the validity (`age_ms` since).
    Unconfirmed { age_ms: Option<u64> },
}

impl Refusal {
    pub fn into_error(self) -> Error {
        match self {
            Refusal::Standstill { .. } => Error::LeadershipLost,
            Refusal::Unconfirmed { age_ms } => Error::LeaseUnconfirmed {
                age: age_ms.map(Duration::from_millis),
            },
        }
    }
}

impl Fence {
    pub const TICK: Duration = Duration::from_millis(250);

    /// `limit`: the longest standstill after which the Lease may still be ours (lease duration
    /// minus the renewal grace, minus a margin); `validity`: how long a confirmation of the
    /// Lease lets writes go out (the lease duration minus a margin). `None`, `None` without
    /// leader election: nothing is fenced.
    pub fn new(limit: Option<Duration>, validity: Option<Duration>) -> Fence {
        Fence {
            start: Instant::now(),
            limit,
            armed: AtomicBool::new(false),
            last_tick_ms: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            validity,
            confirmed: AtomicU64::new(0),
        }
    }

    /// Without leader election: every write may go out.
    pub fn unfenced() -> Fence {
        Fence::new(None, None)
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    /// A request sent at `sent` was answered with us as the Lease's holder.
    pub fn confirmed(&self, sent: Instant) {
        self.confirmed_at(self.ms(sent));
    }

    fn confirmed_at(&self, sent_ms: u64) {
        self.confirmed
            .fetch_max(sent_ms.saturating_add(1), Ordering::AcqRel);
    }

    /// Ok while writes may go out.
    pub fn check(&self) -> Result<()> {
        self.admit().map_err(Refusal::into_error)
    }

    /// [`Fence::check`], saying why not as a [`Refusal`].
    pub fn admit(&self) -> std::result::Result<(), Refusal> {
        self.check_at(self.now_ms()).map_err(|r| self.log(r))
    }

    /// Only the standstill rule (the heartbeat's, and what ends the controller).
    pub fn check_standstill(&self) -> Result<()> {
        match self.standstill_at(self.now_ms()) {
            Ok(()) => Ok(()),
            Err(refusal) => Err(self.log(refusal).into_error()),
        }
    }

    fn log(&self, refusal: Refusal) -> Refusal {
        if let Refusal::Standstill { ms } = refusal {
            // Logged once: the first check that sees it sets `lost`, later ones say Standstill
            // with ms 0.
            if ms > 0 {
                tracing::error!(
                    standstill_ms = ms,
                    "the process stood still longer than the lease allows: no more writes, stepping down"
                );
            }
        }
        refusal
    }

    /// The rules at `now_ms` (ms since the fence was made).
    pub fn check_at(&self, now_ms: u64) -> std::result::Result<(), Refusal> {
        self.standstill_at(now_ms)?;
        let Some(validity) = self.validity else {
            return Ok(());
        };
        let validity = u64::try_from(validity.as_millis()).unwrap_or(u64::MAX);
        match self.confirmed.load(Ordering::Acquire) {
            0 => Err(Refusal::Unconfirmed { age_ms: None }),
            c => {
                let age = now_ms.saturating_sub(c - 1);
                if age > validity {
                    Err(Refusal::Unconfirmed { age_ms: Some(age) })
                } else {
                    Ok(())
                }
            }
        }
    }

    fn standstill_at(&self, now_ms: u64) -> std::result::Result<(), Refusal> {
        if self.lost.load(Ordering::Acquire) {
            return Err(Refusal::Standstill { ms: 0 });
        }
        let Some(limit) = self.limit else {
            return Ok(());
        };
        if !self.armed.load(Ordering::Acquire) {
            return Ok(());
        }
        let gap = now_ms.saturating_sub(self.last_tick_ms.load(Ordering::Acquire));
        if gap > u64::try_from(limit.as_millis()).unwrap_or(u64::MAX) {
            self.lost.store(true, Ordering::Release);
            return Err(Refusal::Standstill { ms: gap });
        }
        Ok(())
    }

    fn tick_at(&self, now_ms: u64) {
        self.last_tick_ms.store(now_ms, Ordering::Release);
        self.armed.store(true, Ordering::Release);
    }

    /// Ticks until a standstill is seen; returns then (the replica steps down).
    pub async fn heartbeat(&self) {
        self.tick_at(self.now_ms());
        loop {
            tokio::time::sleep(Self::TICK).await;
            if self.check_standstill().is_err() {
                return;
            }
            self.tick_at(self.now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fenced(limit_ms: u64, validity_ms: u64) -> Fence {
        Fence::new(
            Some(Duration::from_millis(limit_ms)),
            Some(Duration::from_millis(validity_ms)),
        )
    }

    #[test]
    fn a_standstill_longer_than_the_limit_fences_for_good() {
        let fence = fenced(500, 60_000);
        fence.confirmed_at(0);
        fence.tick_at(1_000);
        assert_eq!(fence.check_at(1_400), Ok(()));
        assert_eq!(fence.check_at(1_600), Err(Refusal::Standstill { ms: 600 }));
        fence.tick_at(1_700);
        fence.confirmed_at(1_700);
        assert_eq!(
            fence.check_at(1_700),
            Err(Refusal::Standstill { ms: 0 }),
            "once fenced, always fenced"
        );
        assert!(matches!(
            Refusal::Standstill { ms: 0 }.into_error(),
            Error::LeadershipLost
        ));
    }

    #[test]
    fn before_the_heartbeat_runs_only_the_lease_counts() {
        // A standby's fence: it may wait for the Lease for minutes without a heartbeat.
        let fence = fenced(500, 13_000);
        fence.confirmed_at(120_000);
        assert_eq!(fence.check_at(120_100), Ok(()));
    }

    #[test]
    fn no_write_before_the_lease_is_confirmed_nor_after_the_confirmation_is_too_old() {
        let fence = fenced(4_000, 13_000);
        assert_eq!(
            fence.check_at(10),
            Err(Refusal::Unconfirmed { age_ms: None }),
            "never confirmed"
        );
        fence.confirmed_at(1_000);
        assert_eq!(fence.check_at(14_000), Ok(()));
        // The process is paused for 20 s between two ticks: whatever runs first after it
        // wakes is refused, by the lease rule even before the heartbeat's rule.
        fence.tick_at(14_000);
        assert_eq!(
            fence.check_at(14_001 + 20_000),
            Err(Refusal::Standstill { ms: 20_001 })
        );
        // Without the heartbeat (armed or not), the lease rule alone refuses it too.
        let lease_only = Fence::new(None, Some(Duration::from_millis(13_000)));
        lease_only.confirmed_at(1_000);
        assert_eq!(
            lease_only.check_at(34_001),
            Err(Refusal::Unconfirmed {
                age_ms: Some(33_001)
            })
        );
        // A renewal answered with us as holder (sent at 34.5 s) lets writes go out again.
        lease_only.confirmed_at(34_500);
        assert_eq!(lease_only.check_at(35_000), Ok(()));
        // An older confirmation answered late never moves the time back.
        lease_only.confirmed_at(2_000);
        assert_eq!(lease_only.check_at(47_000), Ok(()));
        assert!(lease_only.check_at(47_501).is_err());
    }

    #[test]
    fn without_leader_election_nothing_is_fenced() {
        let fence = Fence::unfenced();
        assert_eq!(fence.check_at(u64::MAX), Ok(()));
        assert!(fence.check().is_ok());
    }
}
