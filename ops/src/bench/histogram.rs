//! A small log-linear latency histogram in the spirit of HdrHistogram:
//! exact below 128 µs, then 64 sub-buckets per power of two (relative error
//! under 1.6 %), constant memory, mergeable across workers.

/// Values below this are counted exactly.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above the linear range.
const SUB: u64 = 64;
/// Bucket count covering every `u64`.
const BUCKETS: usize = (LINEAR + (64 - 7) * SUB) as usize;

/// Counts of recorded values (microseconds, by convention).
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn index_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let magnitude = 63 - v.leading_zeros() as u64; // >= 7
    let shift = magnitude - 6;
    let sub = (v >> shift) - SUB; // 0..64
    (LINEAR + (magnitude - 7) * SUB + sub) as usize
}

/// The highest value that falls in bucket `i`.
fn highest_of(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let magnitude = (i - LINEAR) / SUB + 7;
    let sub = (i - LINEAR) % SUB + SUB;
    let shift = magnitude - 6;
    ((sub + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index_of(v)] += 1;
        self.total += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values recorded (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the highest value equivalent
    /// to the smallest recorded value with at least `q` of all values at or
    /// below it. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest_of(i).min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for v in (0..200_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = index_of(v);
            assert!(i >= last, "index went backwards at {v}");
            assert!(highest_of(i) >= v, "bucket {i} does not cover {v}");
            if i > 0 {
                assert!(highest_of(i - 1) < v, "bucket {} covers {v}", i - 1);
            }
            last = i;
        }
        assert!(index_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_of_a_uniform_range_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.count(), 100_000);
        assert!((h.mean() - 50_000.5).abs() < 1e-6);
    }

    #[test]
    fn small_values_are_exact_and_merge_adds() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for v in [3, 3, 5] {
            a.record(v);
        }
        b.record(100);
        a.merge(&b);
        assert_eq!(a.count(), 4);
        assert_eq!(a.quantile(0.5), 3);
        assert_eq!(a.quantile(0.75), 5);
        assert_eq!(a.quantile(1.0), 100);
        assert_eq!((a.min(), a.max()), (3, 100));
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
