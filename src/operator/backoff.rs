//! The one retry delay: `first` after a failure, doubling with each failure in a row up to `max`,
//! back to `first` after a success.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The delay given for the last failure; `None` after a success.
    last: Option<Duration>,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            last: None,
        }
    }

    /// Books a failure; returns how long to wait before retrying.
    pub fn failed(&mut self) -> Duration {
        let delay = self.last.map_or(self.first, |d| (d * 2).min(self.max));
        self.last = Some(delay);
        delay
    }

    pub fn succeeded(&mut self) {
        self.last = None;
    }

    /// The delay of the last failure, while failures go on.
    pub fn last(&self) -> Option<Duration> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(30));
        assert_eq!(b.last(), None);
        let delays: Vec<Duration> = (0..7).map(|_| b.failed()).collect();
        assert_eq!(delays, [s(1), s(2), s(4), s(8), s(16), s(30), s(30)]);
        assert_eq!(b.last(), Some(s(30)));
        b.succeeded();
        assert_eq!(b.last(), None);
        assert_eq!(b.failed(), s(1));
    }
}
