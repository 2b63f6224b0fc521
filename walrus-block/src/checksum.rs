//! CRC32C (Castagnoli), hardware-accelerated.
//!
//! The `crc32c` crate runs inputs under 768 bytes (and what is left of longer ones past their
//! last 768-byte chunk) as one serial chain of `crc32` instructions, each waiting for the last
//! (latency 3, throughput 1 on current x86-64 cores). Most entries are shorter than that (the
//! spec's standard entry is 500–1024 bytes), so on x86-64 with SSE 4.2 and PCLMULQDQ inputs
//! from `INTERLEAVED_MIN` bytes up to (not including) `INTERLEAVED_MAX` run as three
//! interleaved streams, joined by carry-less multiplies by `x^n mod P` (the method of Intel's
//! "Fast CRC Computation for iSCSI Polynomial Using CRC32 Instruction"). Shorter and longer
//! inputs, and other CPUs, go to the crate (whose long path is interleaved already).

/// CRC32C of `bytes`.
#[inline]
#[must_use]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// Continues a CRC32C over more bytes: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
#[inline]
#[must_use]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if (INTERLEAVED_MIN..INTERLEAVED_MAX).contains(&bytes.len()) && x86::available() {
        // SAFETY: `available` checked that this CPU has SSE 4.2 and PCLMULQDQ, the target
        // features `x86::crc32c_append` is compiled for.
        return unsafe { x86::crc32c_append(crc, bytes) };
    }
    crc32c::crc32c_append(crc, bytes)
}

/// The seed `s` for which `crc32c_append(s, bytes) == crc`, if there is one (there is exactly
/// one for every input this build has seen: the map from seed to CRC is an invertible affine
/// map over GF(2)). For recovering the key of a header whose own bytes are trusted to have
/// been written by the engine: any bytes and CRC yield a seed, so a key solved this way proves
/// nothing about bytes a user may have chosen.
#[must_use]
pub fn crc32c_seed(bytes: &[u8], crc: u32) -> Option<u32> {
    // crc32c_append(s, bytes) = M·s ^ crc32c_append(0, bytes), M linear: column i of M is the
    // CRC of seed bit i alone, less the CRC of seed 0. Eliminate, keeping for each pivot the
    // seed bits that make it.
    let base = crc32c_append(0, bytes);
    let mut basis = [(0u32, 0u32); 32];
    for i in 0..32 {
        let mut v = crc32c_append(1 << i, bytes) ^ base;
        let mut seed = 1u32 << i;
        while v != 0 {
            let slot = basis.get_mut(31 - v.leading_zeros() as usize)?;
            if slot.0 == 0 {
                *slot = (v, seed);
                break;
            }
            v ^= slot.0;
            seed ^= slot.1;
        }
    }
    let mut want = crc ^ base;
    let mut seed = 0;
    while want != 0 {
        let (v, s) = *basis.get(31 - want.leading_zeros() as usize)?;
        if v == 0 {
            return None;
        }
        want ^= v;
        seed ^= s;
    }
    Some(seed)
}

/// Shortest input run as three streams: below it the two joins cost more than the streams
/// save.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const INTERLEAVED_MIN: usize = 128;

/// Longest input (exclusive) run as three streams here: from about there on the crate's own
/// interleaved path, with its 24 KiB chunks, is as fast (`cargo bench -p walrus-bench --bench
/// format -- crc32c`: equal at 64 KiB, the crate 4 % faster at 128 KiB).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const INTERLEAVED_MAX: usize = 64 << 10;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        _mm_clmulepi64_si128, _mm_crc32_u8, _mm_crc32_u64, _mm_cvtsi32_si128, _mm_cvtsi128_si64,
    };

    /// The reflected CRC32C polynomial.
    const POLY: u32 = 0x82F6_3B78;

    /// Most 8-byte words in each of the three streams of one chunk (3 KiB a chunk).
    const MAX_WORDS: usize = 128;

    /// Whether this CPU runs [`crc32c_append`] (the standard library caches the answer).
    #[inline]
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("sse4.2") && std::is_x86_feature_detected!("pclmulqdq")
    }

    /// `a · b mod P`, both reflected (bit 31 is the coefficient of `x^0`).
    pub(super) const fn mul_mod(a: u32, mut b: u32) -> u32 {
        let mut product = 0;
        let mut bit = 0;
        while bit < 32 {
            if a & (1 << (31 - bit)) != 0 {
                product ^= b;
            }
            b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
            bit += 1;
        }
        product
    }

    /// `x^n mod P`, reflected.
    pub(super) const fn x_pow(mut n: u64) -> u32 {
        let mut result = 1 << 31;
        let mut square = 1 << 30;
        while n > 0 {
            if n & 1 != 0 {
                result = mul_mod(result, square);
            }
            square = mul_mod(square, square);
            n >>= 1;
        }
        result
    }

    /// `SHIFT[k - 1]` moves a CRC state past `8k` zero bytes through [`shift`]:
    /// `x^(64k - 33) mod P`. The 33 undoes the `x^32` of the `crc32` instruction and the one
    /// bit a carry-less product of two reflected values is shifted by.
    const SHIFT: [u32; MAX_WORDS] = shift_table(1);

    /// `SHIFT2[k - 1]` moves a CRC state past `16k` zero bytes: `x^(128k - 33) mod P`.
    const SHIFT2: [u32; MAX_WORDS] = shift_table(2);

    /// The constants that move a state past `8k · streams` zero bytes, for `k` in
    /// `1..=MAX_WORDS`.
    #[allow(
        clippy::indexing_slicing,
        reason = "evaluated at compile time: an index out of bounds fails the build"
    )]
    const fn shift_table(streams: u64) -> [u32; MAX_WORDS] {
        let mut table = [0; MAX_WORDS];
        let mut k = 1;
        while k <= MAX_WORDS {
            table[k - 1] = x_pow(64 * streams * k as u64 - 33);
            k += 1;
        }
        table
    }

    /// The CRC state `state` advanced past as many zero bytes as `constant` stands for.
    #[inline]
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    fn shift(state: u64, constant: u32) -> u64 {
        // Both operands fit in 32 bits: the casts only reinterpret them for the intrinsics.
        let product = _mm_clmulepi64_si128(
            _mm_cvtsi32_si128(state as u32 as i32),
            _mm_cvtsi32_si128(constant as i32),
            0x00,
        );
        _mm_crc32_u64(0, _mm_cvtsi128_si64(product) as u64)
    }

    /// Little-endian word of an 8-byte chunk.
    #[inline]
    fn word(chunk: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        u64::from_le_bytes(w)
    }

    /// [`super::crc32c_append`] as three interleaved streams per chunk of up to 3 KiB, then
    /// a serial tail of under `INTERLEAVED_MIN` bytes.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    pub(super) fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
        let mut state = u64::from(!crc);
        let mut rest = bytes;
        // Leftovers under INTERLEAVED_MIN go to the serial tail: two joins would cost more.
        while rest.len() >= super::INTERLEAVED_MIN {
            let words = (rest.len() / 24).min(MAX_WORDS);
            let (Some(&past_one), Some(&past_two)) = (SHIFT.get(words - 1), SHIFT2.get(words - 1))
            else {
                break; // never: `words` is 5..=MAX_WORDS
            };
            // Three streams of `words` words each, which fit in `rest`: `words <= len / 24`.
            let (a, tail) = rest.split_at(8 * words);
            let (b, tail) = tail.split_at(8 * words);
            let (c, tail) = tail.split_at(8 * words);
            let (mut state_b, mut state_c) = (0u64, 0u64);
            for ((wa, wb), wc) in a
                .chunks_exact(8)
                .zip(b.chunks_exact(8))
                .zip(c.chunks_exact(8))
            {
                state = _mm_crc32_u64(state, word(wa));
                state_b = _mm_crc32_u64(state_b, word(wb));
                state_c = _mm_crc32_u64(state_c, word(wc));
            }
            // Both joins at once: `a` moves past `b` and `c`, `b` past `c`.
            state = shift(state, past_two) ^ shift(state_b, past_one) ^ state_c;
            rest = tail;
        }
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            state = _mm_crc32_u64(state, word(w));
        }
        let mut state = state as u32;
        for &byte in words.remainder() {
            state = _mm_crc32_u8(state, byte);
        }
        !state
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_vector() {
        // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of 0xFF, and 0..32 ascending.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_append(crc32c(b"1234"), b"56789"), 0xE306_9283);
        // Past the threshold of three streams, computed bit by bit outside this code.
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(crc32c(&all), 0x9C44_184B);
        assert_eq!(crc32c(&[0u8; 4096]), 0x98F9_4189);
    }

    /// Bytes that do not repeat with any short period.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(131) ^ (i >> 7).wrapping_mul(29) ^ (i >> 13)) as u8)
            .collect()
    }

    /// Every length through several chunks of three streams, and around both thresholds,
    /// against the crate, from a fresh and from a continued state.
    #[test]
    fn matches_the_crate_at_every_length() {
        let data = pattern(INTERLEAVED_MAX + 100);
        let lengths = (0..=7000).chain(INTERLEAVED_MAX - 30..INTERLEAVED_MAX + 30);
        for len in lengths {
            let bytes = &data[..len];
            assert_eq!(crc32c(bytes), crc32c::crc32c(bytes), "length {len}");
            let start = (len as u32).wrapping_mul(0x9E37_79B9);
            assert_eq!(
                crc32c_append(start, bytes),
                crc32c::crc32c_append(start, bytes),
                "length {len} from {start:#x}"
            );
        }
    }

    /// The three-stream path itself, also below its threshold. Every x86-64 CPU since 2010
    /// has both features: without them this fails rather than test the crate against itself.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn three_streams_match_the_crate_below_the_threshold() {
        assert!(x86::available(), "this CPU lacks SSE 4.2 or PCLMULQDQ");
        let data = pattern(INTERLEAVED_MIN);
        for len in 0..=data.len() {
            let start = (len as u32).wrapping_mul(0x85EB_CA6B);
            // SAFETY: `available` is true: this CPU has SSE 4.2 and PCLMULQDQ.
            let ours = unsafe { x86::crc32c_append(start, &data[..len]) };
            assert_eq!(
                ours,
                crc32c::crc32c_append(start, &data[..len]),
                "length {len}"
            );
        }
    }

    /// The constants' arithmetic: `x^32 mod P` is `P`'s low terms, and a shift past `8k`
    /// bytes is `k` shifts past 8.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn powers_of_x() {
        assert_eq!(x86::x_pow(0), 1 << 31);
        assert_eq!(x86::x_pow(31), 1);
        assert_eq!(x86::x_pow(32), 0x82F6_3B78);
        assert_eq!(
            x86::mul_mod(x86::x_pow(64 * 3 - 33), x86::x_pow(33)),
            x86::x_pow(64 * 3)
        );
    }

    proptest! {
        #[test]
        fn matches_the_crate_on_any_input(
            bytes in proptest::collection::vec(any::<u8>(), 0..10_000),
            start in any::<u32>(),
            split in any::<prop::sample::Index>(),
        ) {
            prop_assert_eq!(crc32c_append(start, &bytes), crc32c::crc32c_append(start, &bytes));
            let (a, b) = bytes.split_at(split.index(bytes.len() + 1));
            prop_assert_eq!(crc32c_append(crc32c(a), b), crc32c(&bytes));
        }

        #[test]
        fn the_seed_of_a_crc_is_solved(
            bytes in proptest::collection::vec(any::<u8>(), 0..1_000),
            seed in any::<u32>(),
        ) {
            prop_assert_eq!(crc32c_seed(&bytes, crc32c_append(seed, &bytes)), Some(seed));
        }
    }
}
