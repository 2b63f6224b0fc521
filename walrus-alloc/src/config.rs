//! Allocator geometry: segment length, data offset, minimum block length, alignment. The
//! defaults are the format's (walrus-block's `DEFAULT_SEGMENT_LEN`, `SEGMENT_DATA_OFFSET`,
//! `DEFAULT_BLOCK_LEN`, `BLOCK_ALIGN`), defined once there.

use std::io;

use walrus_block::{BLOCK_ALIGN, DEFAULT_BLOCK_LEN, DEFAULT_SEGMENT_LEN, SEGMENT_DATA_OFFSET};

/// Geometry of the segments and blocks an allocator hands out.
///
/// Built with [`AllocConfig::new`] (all defaults) and the `with_*` methods; checked by
/// [`AllocConfig::validate`], which [`BlockAllocator`](crate::BlockAllocator) calls on
/// construction.
///
/// ```
/// use walrus_alloc::AllocConfig;
///
/// let config = AllocConfig::new()
///     .with_segment_len(64 << 20)
///     .with_min_block_len(256 << 10);
/// assert!(config.validate().is_ok());
/// assert_eq!(config.min_block_len(), 256 << 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocConfig {
    segment_len: u64,
    data_offset: u64,
    min_block_len: u64,
    alignment: u64,
    prepare_ahead: bool,
}

impl Default for AllocConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl AllocConfig {
    /// The defaults: 1 GiB segments, data from 4 KiB, 1 MiB blocks, 4 KiB alignment, one spare
    /// segment prepared ahead.
    pub const fn new() -> Self {
        Self {
            segment_len: DEFAULT_SEGMENT_LEN,
            data_offset: SEGMENT_DATA_OFFSET,
            min_block_len: DEFAULT_BLOCK_LEN,
            alignment: BLOCK_ALIGN,
            prepare_ahead: true,
        }
    }

    /// Sets the length in bytes of a normal segment file (header included).
    #[must_use]
    pub const fn with_segment_len(mut self, bytes: u64) -> Self {
        self.segment_len = bytes;
        self
    }

    /// Sets the offset of the first block in a segment (the room left for the segment header).
    #[must_use]
    pub const fn with_data_offset(mut self, bytes: u64) -> Self {
        self.data_offset = bytes;
        self
    }

    /// Sets the minimum block length: every block handed out is at least this long.
    #[must_use]
    pub const fn with_min_block_len(mut self, bytes: u64) -> Self {
        self.min_block_len = bytes;
        self
    }

    /// Sets the alignment of block starts and lengths (a power of two).
    #[must_use]
    pub const fn with_alignment(mut self, bytes: u64) -> Self {
        self.alignment = bytes;
        self
    }

    /// Whether the thread that puts the spare segment into use prepares the next spare before
    /// returning (default `true`). When `false`, segments are prepared only when a block needs
    /// one, or when the caller runs
    /// [`BlockAllocator::prepare_spare`](crate::BlockAllocator::prepare_spare) itself (for
    /// example from a background thread).
    #[must_use]
    pub const fn with_prepare_ahead(mut self, enabled: bool) -> Self {
        self.prepare_ahead = enabled;
        self
    }

    /// Length in bytes of a normal segment file.
    pub const fn segment_len(&self) -> u64 {
        self.segment_len
    }

    /// Offset of the first block in a segment.
    pub const fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Minimum block length.
    pub const fn min_block_len(&self) -> u64 {
        self.min_block_len
    }

    /// Alignment of block starts and lengths.
    pub const fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Whether a spare segment is prepared ahead of need.
    pub const fn prepare_ahead(&self) -> bool {
        self.prepare_ahead
    }

    /// Checks that the geometry is usable: the alignment is a power of two, every size is a
    /// non-zero multiple of it (the data offset may be zero), and one default block fits in a
    /// segment after the data offset.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] naming the offending setting.
    pub fn validate(&self) -> io::Result<()> {
        let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        let align = self.alignment;
        if !align.is_power_of_two() {
            return invalid(format!("alignment {align} is not a power of two"));
        }
        for (name, value) in [
            ("segment length", self.segment_len),
            ("minimum block length", self.min_block_len),
        ] {
            if value == 0 || !value.is_multiple_of(align) {
                return invalid(format!(
                    "{name} {value} is not a non-zero multiple of the alignment {align}"
                ));
            }
        }
        if !self.data_offset.is_multiple_of(align) {
            return invalid(format!(
                "data offset {} is not a multiple of the alignment {align}",
                self.data_offset
            ));
        }
        match self.data_offset.checked_add(self.min_block_len) {
            Some(end) if end <= self.segment_len => Ok(()),
            _ => invalid(format!(
                "a block of {} bytes after the data offset {} does not fit in a segment of {} bytes",
                self.min_block_len, self.data_offset, self.segment_len
            )),
        }
    }

    /// Usable bytes of a normal segment.
    pub(crate) const fn segment_room(&self) -> u64 {
        self.segment_len - self.data_offset
    }

    /// The length actually handed out for a request of `min_len` bytes: at least the minimum
    /// block length, rounded up to the alignment. `None` on overflow.
    pub(crate) fn block_len(&self, min_len: u64) -> Option<u64> {
        let mask = self.alignment - 1;
        Some(min_len.max(self.min_block_len).checked_add(mask)? & !mask)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = AllocConfig::default();
        c.validate().unwrap();
        assert_eq!(c.segment_len(), 1 << 30);
        assert_eq!(c.data_offset(), 4096);
        assert_eq!(c.min_block_len(), 1 << 20);
        assert_eq!(c.alignment(), 4096);
        assert!(c.prepare_ahead());
    }

    #[test]
    fn rejects_bad_geometry() {
        let bad = [
            AllocConfig::new().with_alignment(3000),
            AllocConfig::new().with_alignment(0),
            AllocConfig::new().with_min_block_len(0),
            AllocConfig::new().with_min_block_len(5000),
            AllocConfig::new().with_data_offset(100),
            AllocConfig::new().with_segment_len(8192 + 4096),
            AllocConfig::new()
                .with_segment_len(1 << 20)
                .with_min_block_len(1 << 20),
        ];
        for c in bad {
            let e = c.validate().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{c:?}");
        }
        AllocConfig::new().with_data_offset(0).validate().unwrap();
    }

    #[test]
    fn block_len_rounds_up() {
        let c = AllocConfig::new().with_min_block_len(8192);
        assert_eq!(c.block_len(0), Some(8192));
        assert_eq!(c.block_len(8193), Some(12288));
        assert_eq!(c.block_len(12288), Some(12288));
        assert_eq!(c.block_len(u64::MAX), None);
    }
}
