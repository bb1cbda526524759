//! Latency percentiles of one query's runs (pure).

use std::time::Duration;

/// The figures of one query on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Latencies {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Rows returned per run, on average.
    pub rows: f64,
}

impl Latencies {
    /// From each run's duration and rows; `None` when there was no run.
    pub fn of(mut runs: Vec<Duration>, rows: u64) -> Option<Self> {
        if runs.is_empty() {
            return None;
        }
        runs.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Some(Self {
            p50_ms: ms(percentile(&runs, 50)),
            p99_ms: ms(percentile(&runs, 99)),
            max_ms: ms(runs[runs.len() - 1]),
            rows: rows as f64 / runs.len() as f64,
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty `sorted`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn nearest_rank() {
        let l = Latencies::of(ms((1..=100).rev()), 250).unwrap();
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(l.rows, 2.5);
        let l = Latencies::of(ms([7]), 1).unwrap();
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (7.0, 7.0, 7.0));
        // 3 runs: the median is the second, p99 the third.
        let l = Latencies::of(ms([3, 1, 2]), 0).unwrap();
        assert_eq!((l.p50_ms, l.p99_ms), (2.0, 3.0));
        assert_eq!(Latencies::of(Vec::new(), 0), None);
    }
}
