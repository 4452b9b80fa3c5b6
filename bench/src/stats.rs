//! Medians and percentiles over run results and latency samples.

/// The median of `values` (the upper middle one for an even count); `None` when empty.
/// NaNs sort last, as `f64::total_cmp` orders them.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `sorted`, which must be sorted
/// ascending: the smallest value with at least p% of the values at or below it.
pub fn percentile_sorted<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Mean and 99th percentile of latencies given in microseconds, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub avg_ms: f64,
    pub p99_ms: f64,
    pub count: usize,
}

impl Latency {
    /// Summarises `micros` (sorted in place); `None` when there are no samples.
    pub fn from_micros(micros: &mut [u64]) -> Option<Latency> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let sum: u128 = micros.iter().map(|&m| u128::from(m)).sum();
        let avg_us = sum as f64 / micros.len() as f64;
        let p99 = percentile_sorted(micros, 99.0)?;
        Some(Latency {
            avg_ms: avg_us / 1000.0,
            p99_ms: p99 as f64 / 1000.0,
            count: micros.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median([7.5]), Some(7.5));
        assert_eq!(median(Vec::<f64>::new()), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 99.0), Some(99));
        assert_eq!(percentile_sorted(&v, 100.0), Some(100));
        assert_eq!(percentile_sorted(&v, 50.0), Some(50));
        assert_eq!(percentile_sorted(&v, 0.5), Some(1));
        let small = [10, 20, 30];
        assert_eq!(percentile_sorted(&small, 99.0), Some(30));
        assert_eq!(percentile_sorted(&small, 34.0), Some(20));
        assert_eq!(percentile_sorted::<u32>(&[], 99.0), None);
        assert_eq!(percentile_sorted(&small, 0.0), None);
        assert_eq!(percentile_sorted(&small, 101.0), None);
        assert_eq!(percentile_sorted(&small, f64::NAN), None);
    }

    #[test]
    fn latency_summary() {
        let mut samples: Vec<u64> = (1..=1000).map(|i| i * 10).collect();
        samples.reverse();
        let l = Latency::from_micros(&mut samples).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.avg_ms - 5.005).abs() < 1e-9, "{l:?}");
        assert_eq!(l.p99_ms, 9.9);
        assert_eq!(Latency::from_micros(&mut []), None);
    }
}
