//! YCSB-style workloads: which operation comes next and which key it
//! touches.

use rand::Rng;

/// A workload: what the run phase does (after the load phase, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Inserts only: writes the records and stops.
    Load,
    /// YCSB A: 50 % reads, 50 % updates.
    A,
    /// YCSB B: 95 % reads, 5 % updates.
    B,
    /// YCSB C: reads only.
    C,
    /// YCSB E: 95 % short scans, 5 % inserts of new records.
    E,
    /// YCSB F: 50 % reads, 50 % read-modify-writes (read, then
    /// compare-and-swap the value read).
    F,
    /// Raw puts only; skips the load phase.
    Put,
    /// Raw gets only.
    Get,
}

impl Workload {
    /// The run phase's operations with their shares (summing to 1); empty
    /// for [`Workload::Load`], which has no run phase.
    pub fn mix(self) -> &'static [(Op, f64)] {
        match self {
            Workload::Load => &[],
            Workload::A => &[(Op::Read, 0.5), (Op::Update, 0.5)],
            Workload::B => &[(Op::Read, 0.95), (Op::Update, 0.05)],
            Workload::C => &[(Op::Read, 1.0)],
            Workload::E => &[(Op::Scan, 0.95), (Op::Insert, 0.05)],
            Workload::F => &[(Op::Read, 0.5), (Op::ReadModifyWrite, 0.5)],
            Workload::Put => &[(Op::Put, 1.0)],
            Workload::Get => &[(Op::Get, 1.0)],
        }
    }

    /// Whether the records are inserted before the run phase unless
    /// `--skip-load` (`put` overwrites records and needs none).
    pub fn loads_by_default(self) -> bool {
        self != Workload::Put
    }

    /// The next operation of the run phase, drawn from [`Workload::mix`].
    pub fn choose(self, rng: &mut impl Rng) -> Op {
        let mix = self.mix();
        let mut u: f64 = rng.gen();
        for &(op, share) in mix {
            if u < share {
                return op;
            }
            u -= share;
        }
        // Rounding left a sliver above the last share.
        mix.last().map_or(Op::Insert, |&(op, _)| op)
    }

    /// A one-line description, e.g. `workload a (50% read, 50% update)`.
    pub fn describe(self) -> String {
        if self == Workload::Load {
            return "load (100% insert)".into();
        }
        let parts: Vec<String> = self
            .mix()
            .iter()
            .map(|(op, share)| format!("{:.0}% {}", share * 100.0, op.describe()))
            .collect();
        format!("workload {} ({})", self.name(), parts.join(", "))
    }

    /// The name given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Load => "load",
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::E => "e",
            Workload::F => "f",
            Workload::Put => "put",
            Workload::Get => "get",
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

/// An operation, as reported: each has its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// Read one record (YCSB read).
    Read,
    /// Overwrite one record (YCSB update).
    Update,
    /// Write a new record (load phase, and workload e).
    Insert,
    /// Read up to `--scan-length` records in key order from one record.
    Scan,
    /// Read one record, then compare-and-swap it from the value read to a
    /// new one.
    ReadModifyWrite,
    /// A raw put of one record (workload `put`).
    Put,
    /// A raw get of one record (workload `get`).
    Get,
}

impl Op {
    /// The name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Insert => "insert",
            Op::Scan => "scan",
            Op::ReadModifyWrite => "rmw",
            Op::Put => "put",
            Op::Get => "get",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Op::ReadModifyWrite => "read-modify-write",
            op => op.name(),
        }
    }
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

/// Just past every record key (`user` + hex digits): scans stop here, so
/// they stay within the benchmark's records.
pub const KEY_END: &[u8] = b"uses";

/// Printable values of one size, cut from one shared random buffer at a
/// random offset, so making a value costs a copy, not a random draw per
/// byte.
#[derive(Debug, Clone)]
pub struct Values {
    pool: std::sync::Arc<[u8]>,
    size: usize,
}

impl Values {
    /// Values of `size` bytes.
    pub fn new(rng: &mut impl Rng, size: usize) -> Values {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let pool = (0..size.saturating_mul(2).max(64))
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
            .collect();
        Values { pool, size }
    }

    /// The next value.
    pub fn next(&self, rng: &mut impl Rng) -> Vec<u8> {
        let start = rng.gen_range(0..=self.pool.len() - self.size);
        self.pool[start..start + self.size].to_vec()
    }
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

    use clap::ValueEnum;
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
        let share = |w: Workload, op: Op| {
            w.mix()
                .iter()
                .find(|(o, _)| *o == op)
                .map_or(0.0, |(_, s)| *s)
        };
        assert_eq!(share(Workload::A, Op::Read), 0.5);
        assert_eq!(share(Workload::A, Op::Update), 0.5);
        assert_eq!(share(Workload::B, Op::Read), 0.95);
        assert_eq!(share(Workload::B, Op::Update), 0.05);
        assert_eq!(share(Workload::C, Op::Read), 1.0);
        assert_eq!(share(Workload::E, Op::Scan), 0.95);
        assert_eq!(share(Workload::E, Op::Insert), 0.05);
        assert_eq!(share(Workload::F, Op::Read), 0.5);
        assert_eq!(share(Workload::F, Op::ReadModifyWrite), 0.5);
        assert_eq!(Workload::Put.mix(), &[(Op::Put, 1.0)]);
        assert_eq!(Workload::Get.mix(), &[(Op::Get, 1.0)]);
        assert!(Workload::Load.mix().is_empty());
        for w in [
            Workload::A,
            Workload::B,
            Workload::C,
            Workload::E,
            Workload::F,
            Workload::Put,
            Workload::Get,
        ] {
            let total: f64 = w.mix().iter().map(|(_, s)| s).sum();
            assert!((total - 1.0).abs() < 1e-9, "{w:?} sums to {total}");
        }
        assert!(!Workload::Put.loads_by_default());
        assert!(Workload::Get.loads_by_default() && Workload::E.loads_by_default());
    }

    #[test]
    fn choose_follows_the_mix() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (w, op, want) in [
            (Workload::B, Op::Read, 0.95),
            (Workload::E, Op::Scan, 0.95),
            (Workload::F, Op::ReadModifyWrite, 0.5),
            (Workload::Put, Op::Put, 1.0),
        ] {
            let n = 20_000;
            let hits = (0..n).filter(|_| w.choose(&mut rng) == op).count();
            let got = hits as f64 / n as f64;
            assert!((got - want).abs() < 0.015, "{w:?} {op:?}: {got} vs {want}");
        }
    }

    #[test]
    fn descriptions_name_the_mix() {
        assert_eq!(Workload::A.describe(), "workload a (50% read, 50% update)");
        assert_eq!(
            Workload::F.describe(),
            "workload f (50% read, 50% read-modify-write)"
        );
        assert_eq!(Workload::E.describe(), "workload e (95% scan, 5% insert)");
        assert_eq!(Workload::Load.describe(), "load (100% insert)");
        for w in Workload::value_variants() {
            let flag = w.to_possible_value().expect("every workload has a name");
            assert_eq!(flag.get_name(), w.name());
        }
    }

    #[test]
    fn values_are_printable_sized_and_vary() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for size in [1, 100, 5000] {
            let values = Values::new(&mut rng, size);
            let drawn: HashSet<Vec<u8>> = (0..50).map(|_| values.next(&mut rng)).collect();
            assert!(drawn.iter().all(|v| v.len() == size));
            assert!(drawn.iter().all(|v| std::str::from_utf8(v).is_ok()));
            assert!(drawn.len() > 1, "size {size}: every value the same");
        }
    }

    #[test]
    fn every_key_sorts_below_the_scan_end() {
        assert!((0..1000).map(key_of).all(|k| k.as_slice() < KEY_END));
    }
}
