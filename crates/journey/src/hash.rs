//! Stable hashes for deterministic row ids and change detection.
//!
//! Session and attempt ids must be the same on every replay, on every machine and across
//! Rust releases, so `std`'s `DefaultHasher` (unspecified algorithm) is not an option and
//! the crate stays free of a crypto dependency: FNV-1a is enough for ids that only need
//! to be unique among one deployment's customers, not collision resistant to attackers.

const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 128-bit FNV-1a over length-prefixed parts, so `("ab","c")` and `("a","bc")` differ.
pub(crate) fn id128(parts: &[&str]) -> u128 {
    let mut h = FNV128_OFFSET;
    for part in parts {
        for b in (part.len() as u64)
            .to_le_bytes()
            .iter()
            .chain(part.as_bytes())
        {
            h ^= u128::from(*b);
            h = h.wrapping_mul(FNV128_PRIME);
        }
    }
    h
}

/// Lower-case hex of a 128-bit id: the form stored in ClickHouse.
pub(crate) fn hex128(id: u128) -> String {
    format!("{id:032x}")
}

/// `std::hash::Hasher` with FNV-1a 64, used to fingerprint emitted rows so only changed
/// rows are re-emitted. A fingerprint changing across versions only causes a harmless
/// re-emission of an identical row, never a wrong one.
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Self {
        Self(FNV64_OFFSET)
    }
}

impl std::hash::Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV64_PRIME);
        }
    }
}

/// Fingerprint of any hashable value.
pub(crate) fn fingerprint<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::Hasher as _;
    let mut h = Fnv64::new();
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
    }
}
