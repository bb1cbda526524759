//! Bounded exponential backoff inside one invocation: PostgreSQL retries a failed
//! archive command by itself, so a call gives up after a fixed time rather than hang
//! the archiver (or recovery) for long.

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max_delay: Duration,
    /// No attempt starts later than this after the first.
    pub total: Duration,
}

impl Backoff {
    pub fn within(total: Duration) -> Self {
        Self {
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            total,
        }
    }

    /// The wait after `failures` failed attempts (1 or more), `elapsed` after the first
    /// started; `None` once the next attempt would start past the deadline.
    pub fn delay(&self, failures: u32, elapsed: Duration) -> Option<Duration> {
        let exponent = failures.saturating_sub(1).min(16);
        let delay = self
            .initial
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        (elapsed.saturating_add(delay) <= self.total).then_some(delay)
    }
}

/// A failed attempt, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub transient: bool,
}

/// The last failure and how many attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub failure: Failure,
    pub attempts: u32,
}

pub async fn with_retries<T, F, Fut>(backoff: Backoff, mut attempt: F) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let start = Instant::now();
    let mut failures = 0;
    loop {
        let failure = match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        failures += 1;
        let delay = if failure.transient {
            backoff.delay(failures, start.elapsed())
        } else {
            None
        };
        match delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                return Err(GaveUp {
                    failure,
                    attempts: failures,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stop_at_the_deadline() {
        let b = Backoff::within(Duration::from_secs(30));
        let ms = |failures, elapsed_ms| {
            b.delay(failures, Duration::from_millis(elapsed_ms))
                .map(|d| d.as_millis())
        };
        assert_eq!(ms(1, 0), Some(200));
        assert_eq!(ms(2, 0), Some(400));
        assert_eq!(ms(5, 0), Some(3200));
        assert_eq!(ms(6, 0), Some(5000));
        assert_eq!(ms(60, 0), Some(5000));
        assert_eq!(ms(6, 25_000), Some(5000));
        assert_eq!(ms(6, 25_001), None);
        assert_eq!(ms(1, 29_900), None);
    }

    #[test]
    fn the_whole_schedule_fits_in_the_total() {
        let b = Backoff::within(Duration::from_secs(30));
        let (mut elapsed, mut failures) = (Duration::ZERO, 0);
        while let Some(d) = b.delay(failures + 1, elapsed) {
            elapsed += d;
            failures += 1;
        }
        assert!(elapsed <= Duration::from_secs(30));
        assert!(failures >= 8, "{failures} attempts");
    }

    #[tokio::test]
    async fn retries_transient_failures_only() {
        let b = Backoff {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            total: Duration::from_secs(5),
        };
        let mut calls = 0;
        let result = with_retries(b, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(Failure {
                        message: "503".into(),
                        transient: true,
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(3));

        let mut calls = 0;
        let result: Result<(), GaveUp> = with_retries(b, || {
            calls += 1;
            async {
                Err(Failure {
                    message: "403".into(),
                    transient: false,
                })
            }
        })
        .await;
        assert_eq!(result.unwrap_err().attempts, 1);
        assert_eq!(calls, 1);
    }
}
