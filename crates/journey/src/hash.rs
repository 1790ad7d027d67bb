//! Stable hashes for deterministic row ids and change detection.
//!
//! Session and attempt ids must be the same on every replay, on every machine and across
//! Rust releases, so `std`'s `DefaultHasher` (unspecified algorithm) is not an option and
//! the crate stays free of a crypto dependency: FNV-1a is enough for ids that only need
//! to be unique among one deployment's customers, not collision resistant to attackers.

const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// Odd constants with well-spread bits (from the golden ratio and SplitMix64).
const FINGERPRINT_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
const FINISH_MULTIPLIER: u64 = 0xbf58_476d_1ce4_e5b9;

// The multiply in [`Fnv128::part`] relies on the prime's shape.
const _: () = assert!(FNV128_PRIME == (1 << 88) + 0x13b);

/// 128-bit FNV-1a over length-prefixed parts, so `("ab","c")` and `("a","bc")` differ.
#[cfg(test)]
pub(crate) fn id128(parts: &[&str]) -> u128 {
    let mut h = Fnv128::new();
    for part in parts {
        h.part(part);
    }
    h.finish()
}

/// Incremental [`id128`]: a state after some parts can be kept and continued, so the
/// customer id part of every session key of a customer is hashed once per replay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv128(u128);

impl Fnv128 {
    pub(crate) fn new() -> Self {
        Self(FNV128_OFFSET)
    }

    /// Add one length-prefixed part.
    pub(crate) fn part(&mut self, part: &str) {
        for b in (part.len() as u64)
            .to_le_bytes()
            .iter()
            .chain(part.as_bytes())
        {
            self.0 ^= u128::from(*b);
            // `h * FNV128_PRIME` with the prime's two set bit groups written out
            // (2^88 + 0x13b): the same value, without a full 128-bit multiply.
            self.0 = (self.0 << 88).wrapping_add(self.0.wrapping_mul(0x13b));
        }
    }

    pub(crate) fn finish(self) -> u128 {
        self.0
    }
}

/// Lower-case hex of a 128-bit id: the form stored in ClickHouse.
pub(crate) fn hex128(id: u128) -> String {
    hex128_with(id, |s: &str| s.to_owned())
}

/// [`hex128`] as a shared string, in one allocation.
pub(crate) fn hex128_shared(id: u128) -> std::sync::Arc<str> {
    hex128_with(id, |s: &str| std::sync::Arc::from(s))
}

fn hex128_with<T: Default>(id: u128, make: impl for<'a> FnOnce(&'a str) -> T) -> T {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (pair, byte) in buf.chunks_exact_mut(2).zip(id.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    // ASCII digits: always valid UTF-8.
    std::str::from_utf8(&buf).map(make).unwrap_or_default()
}

/// `BuildHasher` of the stage's in-memory maps: a keyed folded multiply, several times
/// cheaper than std's SipHash on the short ids these maps are keyed by. The key comes
/// from std's `RandomState` (OS randomness, per map), so colliding keys cannot be chosen
/// without it. Nothing iterates these maps in an order that reaches an output.
#[derive(Debug, Clone)]
pub(crate) struct FastState {
    seed: u64,
    multiplier: u64,
}

impl Default for FastState {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        let random = std::collections::hash_map::RandomState::new();
        Self {
            seed: random.hash_one(0x5eed_u64),
            multiplier: random.hash_one(0x6d75_6c74_u64) | 1,
        }
    }
}

impl std::hash::BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            state: self.seed,
            multiplier: self.multiplier,
        }
    }
}

/// See [`FastState`].
pub(crate) struct FastHasher {
    state: u64,
    multiplier: u64,
}

impl FastHasher {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.state ^ word) * u128::from(self.multiplier);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let product = u128::from(self.state ^ self.multiplier) * u128::from(FINISH_MULTIPLIER);
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        self.mix(u64::from_le_bytes(word) ^ ((bytes.len() as u64) << 56));
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    fn write_u128(&mut self, i: u128) {
        self.mix(i as u64);
        self.mix((i >> 64) as u64);
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn write_i64(&mut self, i: i64) {
        self.mix(i as u64);
    }
}

/// `HashMap` with [`FastState`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;

/// Fingerprint of any hashable value, to re-emit only rows that changed: the
/// [`FastHasher`] mix with a fixed key, so fingerprints saved in a snapshot still match
/// after a restart. A fingerprint changing across versions only causes a harmless
/// re-emission of an identical row, never a wrong one.
pub(crate) fn fingerprint<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::Hasher as _;
    let mut h = FastHasher {
        state: FNV64_OFFSET,
        multiplier: FINGERPRINT_MULTIPLIER,
    };
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_length_prefixed() {
        assert_eq!(id128(&["a", "b"]), id128(&["a", "b"]));
        assert_ne!(id128(&["ab", "c"]), id128(&["a", "bc"]));
        assert_eq!(hex128(id128(&["x"])).len(), 32);
        // Pinned so an accidental algorithm change (which would rename every stored
        // session) fails loudly.
        assert_eq!(hex128(id128(&[])), "6c62272e07bb014262b821756295c58d");
        // The shift-and-add multiply is the plain one.
        for parts in [
            &["a", "b"][..],
            &["customer-0001", "ajs-0123456789abcdef"][..],
        ] {
            let mut plain = FNV128_OFFSET;
            for p in parts {
                for b in (p.len() as u64).to_le_bytes().iter().chain(p.as_bytes()) {
                    plain ^= u128::from(*b);
                    plain = plain.wrapping_mul(FNV128_PRIME);
                }
            }
            assert_eq!(id128(parts), plain);
            assert_eq!(hex128(plain), format!("{plain:032x}"));
        }
        assert_eq!(hex128(0), "0".repeat(32));
        assert_eq!(hex128(u128::MAX), "f".repeat(32));
    }
}
