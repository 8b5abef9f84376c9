//! What each thread does next: the op ([`Kind`], weighted by `--mix`), the
//! key (uniform or zipf over the thread's own range), and the values it
//! writes ([`fill_value`]), which name the thread, key and sequence number
//! so that an answer can be checked.
//!
//! The choices come from a [`SmallRng`] seeded from `--seed` and the
//! thread's index over all processes, so a run's sequence of ops and keys
//! is the same every time for a given seed and build (the generator is
//! cheap: choosing must not cost more than the operation measured).

use crate::args::{BenchArgs, KeyDist, Mix};
use rand::distr::weighted::WeightedIndex;
use rand::distr::{Distribution, Uniform};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::Zipf;

/// The four measured operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Get = 0,
    Set = 1,
    Post = 2,
    Del = 3,
}

impl Kind {
    /// Every kind, in index order (and `--mix` order).
    pub(crate) const ALL: [Kind; 4] = [Kind::Get, Kind::Set, Kind::Post, Kind::Del];

    /// Lower-case name, as the reports print it.
    pub(crate) fn name(self) -> &'static str {
        ["get", "set", "post", "del"][self as usize]
    }

    /// Whether it writes a value (and so takes a sequence number).
    pub(crate) fn writes(self) -> bool {
        matches!(self, Kind::Set | Kind::Post)
    }
}

/// What a value type must offer the generator.
pub trait BenchValue: kvs_client::Codec + Send + Sync {
    /// The value holding `bytes` (ASCII, at most `--value-size`).
    fn from_ascii(bytes: &[u8]) -> Self;
    /// The value's bytes.
    fn bytes(&self) -> &[u8];
}

impl BenchValue for Vec<u8> {
    fn from_ascii(bytes: &[u8]) -> Self {
        bytes.to_vec()
    }

    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Picks key indices in `0..n`; index 0 is the hottest key under zipf.
#[derive(Debug, Clone)]
pub(crate) enum KeyPicker {
    Uniform(Uniform<u64>),
    /// Zipf over ranks `1..=n` (rank 1 is key 0).
    Zipf {
        zipf: Zipf<f64>,
        n: u64,
    },
}

impl KeyPicker {
    /// A picker over `0..n` (`n` at least 1; a zipf exponent above 0).
    pub(crate) fn new(dist: KeyDist, n: u64, exponent: f64) -> Self {
        let n = n.max(1);
        match dist {
            KeyDist::Uniform => {
                KeyPicker::Uniform(Uniform::new(0, n).expect("a non-empty key range"))
            }
            KeyDist::Zipf => KeyPicker::Zipf {
                zipf: Zipf::new(n as f64, exponent).expect("n >= 1 and a zipf exponent above 0"),
                n,
            },
        }
    }

    /// The next key index.
    pub(crate) fn pick(&self, rng: &mut SmallRng) -> usize {
        match self {
            KeyPicker::Uniform(u) => u.sample(rng) as usize,
            KeyPicker::Zipf { zipf, n } => {
                let rank = zipf.sample(rng) as u64;
                (rank.clamp(1, *n) - 1) as usize
            }
        }
    }
}

/// One thread's source of ops and keys.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    rng: SmallRng,
    ops: WeightedIndex<u64>,
    keys: KeyPicker,
}

impl Workload {
    /// The workload of thread `global` (its index over all processes) on
    /// `n` keys, from the arguments' mix, key distribution and seed.
    pub(crate) fn new(args: &BenchArgs, global: u64, n: u64) -> Self {
        Self::with(
            args.mix,
            KeyPicker::new(args.key_dist, n, args.zipf_exponent),
            thread_seed(args.seed, global),
        )
    }

    fn with(mix: Mix, keys: KeyPicker, seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            ops: WeightedIndex::new(mix.weights().map(u64::from))
                .expect("--mix is checked to have weights adding up to at least 1"),
            keys,
        }
    }

    /// The next op, weighted by the mix.
    pub(crate) fn op(&mut self) -> Kind {
        Kind::ALL[self.ops.sample(&mut self.rng)]
    }

    /// The next key index.
    pub(crate) fn key(&mut self) -> usize {
        self.keys.pick(&mut self.rng)
    }
}

/// The seed of thread `global`'s generator: distinct threads of a run get
/// distinct seeds.
fn thread_seed(seed: u64, global: u64) -> u64 {
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        .wrapping_add(global)
}

/// Where the hex sequence number sits in a value (see [`fill_value`]).
const SEQ_DIGITS: std::ops::Range<usize> = 22..30;

/// `tttttttt.kkkkkkkkkkkk.ssssssss.` in hex (thread, key, sequence), then
/// `v` up to `size` bytes; cut to `size` when shorter.
pub(crate) fn fill_value(buf: &mut Vec<u8>, size: usize, thread: u64, key: usize, seq: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Built on the stack and copied once: the checker rebuilds a value per
    // GET, so this is on the measured path.
    let mut head = [b'.'; 31];
    let mut put = |at: usize, x: u64, digits: usize| {
        for (i, b) in head[at..at + digits].iter_mut().enumerate() {
            *b = HEX[((x >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
    };
    put(0, thread, 8);
    put(9, key as u64, 12);
    put(22, u64::from(seq), 8);
    buf.clear();
    buf.extend_from_slice(&head[..size.min(head.len())]);
    buf.resize(size, b'v');
}

/// The sequence number a value written by [`fill_value`] claims to carry,
/// if its bytes hold one; the caller confirms by rebuilding the value.
pub(crate) fn claimed_seq(bytes: &[u8]) -> Option<u32> {
    let hex = bytes.get(SEQ_DIGITS)?;
    u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIX: Mix = Mix {
        get: 40,
        set: 30,
        post: 15,
        del: 15,
    };

    #[test]
    fn values_carry_thread_key_and_sequence() {
        let mut buf = Vec::new();
        fill_value(&mut buf, 40, 3, 17, 0x1234);
        assert_eq!(&buf[..], b"00000003.000000000011.00001234.vvvvvvvvv");
        assert_eq!(claimed_seq(&buf), Some(0x1234));
        fill_value(&mut buf, 8, 3, 17, 1);
        assert_eq!(buf.len(), 8);
        assert_eq!(claimed_seq(&buf), None);
        assert_eq!(claimed_seq(b"00000003.000000000011.zzzzzzzz."), None);
    }

    #[test]
    fn uniform_keys_stay_in_range_and_cover_it() {
        let p = KeyPicker::new(KeyDist::Uniform, 50, 0.99);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut seen = [0u32; 50];
        for _ in 0..10_000 {
            seen[p.pick(&mut rng)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
        let one = KeyPicker::new(KeyDist::Uniform, 1, 0.99);
        assert!((0..100).all(|_| one.pick(&mut rng) == 0));
    }

    #[test]
    fn zipf_keys_stay_in_range() {
        for (n, s) in [(1, 0.99), (2, 0.5), (1000, 0.99), (1000, 10.0), (77, 1.0)] {
            let p = KeyPicker::new(KeyDist::Zipf, n, s);
            let mut rng = SmallRng::seed_from_u64(n);
            for _ in 0..10_000 {
                let k = p.pick(&mut rng);
                assert!((k as u64) < n, "key {k} of {n} (exponent {s})");
            }
        }
    }

    #[test]
    fn zipf_prefers_low_keys() {
        let n = 1000;
        let p = KeyPicker::new(KeyDist::Zipf, n, 0.99);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..100_000 {
            counts[p.pick(&mut rng)] += 1;
        }
        let (lowest, highest) = (counts[0], counts[n as usize - 1]);
        assert!(lowest > 5_000, "key 0 picked {lowest} times");
        assert!(
            lowest > 50 * highest.max(1),
            "key 0 picked {lowest} times, key {} {highest} times",
            n - 1
        );
        let first_ten: u32 = counts[..10].iter().sum();
        assert!(first_ten > 20_000, "{first_ten}");
    }

    #[test]
    fn ops_follow_the_mix() {
        let only = |mix: Mix| {
            let mut w = Workload::with(mix, KeyPicker::new(KeyDist::Uniform, 10, 1.0), 3);
            let mut seen = [0u32; 4];
            for _ in 0..4_000 {
                seen[w.op() as usize] += 1;
            }
            seen
        };
        let set_only = Mix {
            get: 0,
            set: 1,
            post: 0,
            del: 0,
        };
        assert_eq!(only(set_only), [0, 4_000, 0, 0]);
        let seen = only(Mix {
            get: 1,
            set: 0,
            post: 0,
            del: 1,
        });
        assert_eq!((seen[1], seen[2]), (0, 0));
        assert!(seen[0] > 1_500 && seen[3] > 1_500, "{seen:?}");
        let seen = only(MIX);
        assert!(seen.iter().all(|&c| c > 300), "{seen:?}");
        assert!(seen[0] > seen[2] && seen[1] > seen[3], "{seen:?}");
    }

    fn trace(seed: u64, global: u64, dist: KeyDist) -> Vec<(Kind, usize)> {
        let keys = KeyPicker::new(dist, 500, 0.99);
        let mut w = Workload::with(MIX, keys, thread_seed(seed, global));
        (0..1_000).map(|_| (w.op(), w.key())).collect()
    }

    #[test]
    fn a_seed_gives_the_same_workload_every_time() {
        for dist in [KeyDist::Uniform, KeyDist::Zipf] {
            assert_eq!(trace(1, 0, dist), trace(1, 0, dist));
            assert_eq!(trace(42, 5, dist), trace(42, 5, dist));
            assert_ne!(trace(1, 0, dist), trace(2, 0, dist), "seeds differ");
            assert_ne!(trace(1, 0, dist), trace(1, 1, dist), "threads differ");
        }
    }
}
