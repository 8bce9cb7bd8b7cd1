//! The hashes behind every sticky decision. They are part of the public contract (DESIGN §3):
//! the same salt, group and user key give the same answer in every process, on every machine,
//! in every version; the test vectors below pin them, and changing them is a breaking change.
//!
//! - pools: `murmur3_x86_32(salt ":" key, seed 0)`, read as a point in `[0, 2^32)`, which is
//!   `x · 2^32` for the bucket `x` in `[0, 1)`;
//! - flags (Unleash-compatible): `murmur3_x86_32(group ":" key, seed 0) % 100 + 1` against the
//!   percentage, and `murmur3_x86_32(group ":" key, seed 86028157) % total + 1` for variants.

use std::io::Read;

/// Unleash's seed for variant selection.
pub const VARIANT_SEED: u32 = 86_028_157;

/// murmur3 x86_32 of `prefix ":" key`, hashed as one byte string without building it.
pub fn hash(prefix: &str, key: &str, seed: u32) -> u32 {
    let mut bytes = prefix.as_bytes().chain(&b":"[..]).chain(key.as_bytes());
    murmur3::murmur3_32(&mut bytes, seed).expect("reading from memory cannot fail")
}

/// The user's point for pool splits, in units of 2^-32.
pub fn pool_point(salt: &str, key: &str) -> u32 {
    hash(salt, key, 0)
}

/// The user's flag bucket, 1..=100: on when it is at most the flag's percentage.
pub fn flag_bucket(group: &str, key: &str) -> u32 {
    hash(group, key, 0) % 100 + 1
}

/// The user's variant target, 1..=total.
pub fn variant_target(group: &str, key: &str, total: u32) -> u32 {
    hash(group, key, VARIANT_SEED) % total + 1
}

/// The bucket as `x-switchyard-bucket` shows it: four decimals, truncated (so it stays below 1).
pub fn format_point(point: u32) -> [u8; 6] {
    let n = ((point as u64 * 10_000) >> 32) as u32; // 0..=9999
    let mut out = *b"0.0000";
    let mut n = n;
    for i in (2..6).rev() {
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values computed independently (Python's `mmh3`, unsigned).
    #[test]
    fn murmur3_test_vectors() {
        assert_eq!(hash("switchyard", "alice", 0), 1_597_324_748);
        assert_eq!(hash("switchyard", "bob", 0), 430_454_200);
        assert_eq!(hash("switchyard", "user-42", 0), 129_070_341);
        assert_eq!(hash("switchyard", "", 0), 3_347_886_084);
        assert_eq!(hash("salt", "ü-ñ", 0), 1_415_565_524, "UTF-8 bytes");
        assert_eq!(hash("new_checkout", "alice", VARIANT_SEED), 2_672_021_174);
    }

    #[test]
    fn unleash_flag_and_variant_vectors() {
        assert_eq!(flag_bucket("new_checkout", "alice"), 21);
        assert_eq!(flag_bucket("new_checkout", "bob"), 86);
        assert_eq!(flag_bucket("dark_mode", "user-42"), 10);
        assert_eq!(variant_target("new_checkout", "alice", 1000), 175);
        assert_eq!(variant_target("new_checkout", "bob", 1000), 226);
        assert_eq!(variant_target("dark_mode", "user-42", 1000), 345);
    }

    #[test]
    fn points_format_with_four_truncated_decimals() {
        assert_eq!(&format_point(0), b"0.0000");
        assert_eq!(&format_point(u32::MAX), b"0.9999");
        assert_eq!(&format_point(1_597_324_748), b"0.3719");
        assert_eq!(&format_point(1 << 31), b"0.5000");
    }
}
