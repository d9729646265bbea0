//! How long to wait before trying a failed apply again: 1 s, doubling, at most a minute.
//! A held lock or a kernel hiccup clears in seconds; a missing binary may take an operator,
//! and retrying it every minute costs nothing while keeping the log readable.

use std::time::Duration;

pub const FIRST: Duration = Duration::from_secs(1);
pub const CAP: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Counts one more failure and says how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        let delay = FIRST.saturating_mul(1 << self.failures.min(16)).min(CAP);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_a_minute() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.fail().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.failures(), 9);
        for _ in 0..100 {
            assert_eq!(b.fail(), CAP);
        }
        b.reset();
        assert_eq!(b.fail(), FIRST);
    }
}
