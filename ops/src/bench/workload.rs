//! YCSB-style workloads: which operation comes next and which key it
//! touches.

use rand::Rng;

/// A workload mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// YCSB A: 50 % reads, 50 % updates.
    A,
    /// YCSB B: 95 % reads, 5 % updates.
    B,
    /// YCSB C: reads only.
    C,
    /// Inserts only: writes the records and stops.
    Load,
}

impl Workload {
    /// Share of reads among operations of the run phase.
    pub fn read_proportion(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::Load => 0.0,
        }
    }

    /// A one-line description.
    pub fn describe(self) -> &'static str {
        match self {
            Workload::A => "workload a (50% read, 50% update)",
            Workload::B => "workload b (95% read, 5% update)",
            Workload::C => "workload c (100% read)",
            Workload::Load => "load (100% insert)",
        }
    }
}

/// How the run phase picks record numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// A few records are hot (YCSB's zipfian, theta 0.99).
    Zipfian,
}

/// An operation of the run phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read one record.
    Read,
    /// Overwrite one record.
    Update,
}

/// The key of record `n`: `user` + 16 hex digits of a bijective hash, so
/// records are unique and spread evenly over the key space (and regions).
pub fn key_of(n: u64) -> Vec<u8> {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    format!("user{z:016x}").into_bytes()
}

/// A printable value of `size` bytes.
pub fn value_of(rng: &mut impl Rng, size: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..size)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
        .collect()
}

/// Picks record numbers in `[0, n)`.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform.
    Uniform(u64),
    /// Zipfian (Gray et al., as in YCSB).
    Zipfian(Zipf),
}

impl KeyChooser {
    /// A chooser over `n` records.
    pub fn new(distribution: Distribution, n: u64) -> KeyChooser {
        let n = n.max(1);
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform(n),
            Distribution::Zipfian => KeyChooser::Zipfian(Zipf::new(n, 0.99)),
        }
    }

    /// The next record number.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.gen_range(0..*n),
            KeyChooser::Zipfian(z) => z.next(rng),
        }
    }
}

/// Zipfian numbers in `[0, n)`: 0 is the most popular.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipf {
    /// A generator over `n` items with skew `theta` (0 < theta < 1).
    pub fn new(n: u64, theta: f64) -> Zipf {
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2, theta);
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    /// The next number.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn keys_are_unique_and_fixed_width() {
        let keys: HashSet<Vec<u8>> = (0..10_000).map(key_of).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(keys.iter().all(|k| k.len() == 20 && k.starts_with(b"user")));
    }

    #[test]
    fn zipfian_favours_low_numbers_and_stays_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let c = KeyChooser::new(Distribution::Zipfian, 1000);
        let draws: Vec<u64> = (0..20_000).map(|_| c.next(&mut rng)).collect();
        assert!(draws.iter().all(|&d| d < 1000));
        let zeros = draws.iter().filter(|&&d| d == 0).count();
        let tail = draws.iter().filter(|&&d| d == 999).count();
        assert!(zeros > 1000, "item 0 drawn {zeros} times");
        assert!(zeros > 20 * tail.max(1), "{zeros} vs {tail}");
    }

    #[test]
    fn uniform_covers_the_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let c = KeyChooser::new(Distribution::Uniform, 10);
        let seen: HashSet<u64> = (0..1000).map(|_| c.next(&mut rng)).collect();
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn mixes_match_ycsb() {
        assert_eq!(Workload::A.read_proportion(), 0.5);
        assert_eq!(Workload::B.read_proportion(), 0.95);
        assert_eq!(Workload::C.read_proportion(), 1.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let v = value_of(&mut rng, 100);
        assert_eq!(v.len(), 100);
        assert!(std::str::from_utf8(&v).is_ok());
    }
}
