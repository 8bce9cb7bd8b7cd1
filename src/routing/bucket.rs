//! The hashes behind every sticky decision. They are part of the public contract (DESIGN §3):
//! the same salt, group and user key give the same answer in every process, on every machine,
//! in every version; the test vectors below pin them, and changing them is a breaking change.
//!
//! - pools: `murmur3_x86_32(salt ":" key, seed 0)`, read as a point in `[0, 2^32)`, which is
//!   `x · 2^32` for the bucket `x` in `[0, 1)`;
//! - flags (Unleash-compatible): `murmur3_x86_32(group ":" key, seed 0) % 100 + 1` against the
//!   percentage, and `murmur3_x86_32(group ":" key, seed 86028157) % total + 1` for variants.

/// Unleash's seed for variant selection.
pub const VARIANT_SEED: u32 = 86_028_157;

/// murmur3 x86_32 of `prefix ":" key`. Short inputs (every realistic one) are joined on the
/// stack; the request path allocates nothing.
pub fn hash(prefix: &str, key: &str, seed: u32) -> u32 {
    let len = prefix.len() + 1 + key.len();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
    buf[prefix.len()] = b':';
    buf[prefix.len() + 1..].copy_from_slice(key.as_bytes());
    murmur3_32(buf, seed)
}

/// MurmurHash3, x86 32-bit variant (Austin Appleby's reference `MurmurHash3_x86_32`), over a
/// slice. The `murmur3` crate hashes through `io::Read`, a few bytes per call, which cost
/// more than the rest of a request's decision; the tests check this one against it.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        h ^= mix(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, &b) in tail.iter().enumerate() {
            k |= u32::from(b) << (8 * i);
        }
        h ^= mix(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
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

    proptest::proptest! {
        /// The slice implementation agrees with the `murmur3` crate on any input and seed,
        /// across every tail length and past the stack buffer.
        #[test]
        fn murmur3_matches_the_reference_crate(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600), seed in proptest::num::u32::ANY) {
            let want = murmur3::murmur3_32(&mut &data[..], seed).unwrap();
            proptest::prop_assert_eq!(murmur3_32(&data, seed), want);
            let text = String::from_utf8_lossy(&data);
            let mut mid = text.len() / 2;
            while !text.is_char_boundary(mid) {
                mid -= 1;
            }
            let (a, b) = text.split_at(mid);
            let joined = format!("{a}:{b}");
            proptest::prop_assert_eq!(hash(a, b, seed), murmur3::murmur3_32(&mut joined.as_bytes(), seed).unwrap());
        }
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
