//! Random numbers: the one seeded generator of the workspace, SplitMix64 (tiny, fast, and —
//! unlike a library generator whose algorithm may change between versions — fixed forever, so
//! a failing seed of the simulator or of a seeded test replays on any later build), and
//! [`random_key`], the kernel's random bits for keys no one may guess.

use std::io;

/// 32 random bits from the kernel (`getrandom(2)`, or `/dev/urandom` where the call is refused:
/// a kernel before 3.17, a seccomp filter): the keys of the format's keyed checksums, which
/// whoever writes entry data must not be able to predict.
///
/// # Errors
/// When neither source answers.
pub(crate) fn random_key() -> io::Result<u32> {
    getrandom_key().or_else(|first| {
        use std::io::Read;
        let mut bytes = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map(|()| u32::from_le_bytes(bytes))
            .map_err(|e| {
                io::Error::new(
                    first.kind(),
                    format!("{first}; /dev/urandom for a checksum key: {e}"),
                )
            })
    })
}

fn getrandom_key() -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    // Four bytes come whole from an initialised pool; EINTR can only come before any byte.
    for _ in 0..8 {
        // SAFETY: the pointer and length describe `bytes`, writable and alive for the call.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if got == 4 {
            return Ok(u32::from_le_bytes(bytes));
        }
        if got >= 0 {
            return Err(io::Error::other(format!(
                "getrandom for a checksum key: {got} of 4 bytes"
            )));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::new(
                e.kind(),
                format!("getrandom for a checksum key: {e}"),
            ));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        "getrandom for a checksum key: interrupted 8 times",
    ))
}

/// SplitMix64 (Steele, Lea, Flood 2014), the same on every platform.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator whose whole sequence is fixed by `seed`.
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into a slice of `len` elements (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// True with a chance of `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An independent generator derived from this one (e.g. one per thread of a test).
    pub fn fork(&mut self, k: u64) -> Self {
        Self(self.next_u64() ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed_forever() {
        // Published SplitMix64 outputs for seed 0: a change here breaks every recorded seed.
        let mut r = SeededRng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.below(0), 0);
        assert!(r.below(10) < 10);
    }

    #[test]
    fn random_keys_differ() {
        let keys: Vec<u32> = (0..8).map(|_| random_key().unwrap()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        // Eight draws of 32 bits collide with a chance of about 7e-9.
        assert!(distinct.len() >= 7, "{keys:?}");
    }
}
