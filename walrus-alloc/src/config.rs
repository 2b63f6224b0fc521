//! Allocator geometry: segment capacity, data offset, default block size, alignment.

use std::io;

/// Default capacity of a segment file: 1 GiB.
pub const DEFAULT_SEGMENT_CAPACITY: u64 = 1 << 30;
/// Default offset of the first block in a segment, after the segment header: 4 KiB.
pub const DEFAULT_DATA_OFFSET: u64 = 4096;
/// Default block size: 1 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;
/// Default alignment of block starts and lengths: 4 KiB.
pub const DEFAULT_ALIGNMENT: u64 = 4096;

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
///     .with_segment_capacity(64 << 20)
///     .with_block_size(256 << 10);
/// assert!(config.validate().is_ok());
/// assert_eq!(config.block_size(), 256 << 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocConfig {
    segment_capacity: u64,
    data_offset: u64,
    block_size: u64,
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
            segment_capacity: DEFAULT_SEGMENT_CAPACITY,
            data_offset: DEFAULT_DATA_OFFSET,
            block_size: DEFAULT_BLOCK_SIZE,
            alignment: DEFAULT_ALIGNMENT,
            prepare_ahead: true,
        }
    }

    /// Sets the capacity in bytes of a normal segment file (header included).
    #[must_use]
    pub const fn with_segment_capacity(mut self, bytes: u64) -> Self {
        self.segment_capacity = bytes;
        self
    }

    /// Sets the offset of the first block in a segment (the room left for the segment header).
    #[must_use]
    pub const fn with_data_offset(mut self, bytes: u64) -> Self {
        self.data_offset = bytes;
        self
    }

    /// Sets the default (and minimum) block size.
    #[must_use]
    pub const fn with_block_size(mut self, bytes: u64) -> Self {
        self.block_size = bytes;
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

    /// Capacity in bytes of a normal segment file.
    pub const fn segment_capacity(&self) -> u64 {
        self.segment_capacity
    }

    /// Offset of the first block in a segment.
    pub const fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Default (and minimum) block size.
    pub const fn block_size(&self) -> u64 {
        self.block_size
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
            ("segment capacity", self.segment_capacity),
            ("block size", self.block_size),
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
        match self.data_offset.checked_add(self.block_size) {
            Some(end) if end <= self.segment_capacity => Ok(()),
            _ => invalid(format!(
                "a block of {} bytes after the data offset {} does not fit in a segment of {} bytes",
                self.block_size, self.data_offset, self.segment_capacity
            )),
        }
    }

    /// Usable bytes of a normal segment.
    pub(crate) const fn segment_room(&self) -> u64 {
        self.segment_capacity - self.data_offset
    }

    /// The length actually handed out for a request of `min_len` bytes: at least the default
    /// block size, rounded up to the alignment. `None` on overflow.
    pub(crate) fn block_len(&self, min_len: u64) -> Option<u64> {
        let mask = self.alignment - 1;
        Some(min_len.max(self.block_size).checked_add(mask)? & !mask)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = AllocConfig::default();
        c.validate().unwrap();
        assert_eq!(c.segment_capacity(), 1 << 30);
        assert_eq!(c.data_offset(), 4096);
        assert_eq!(c.block_size(), 1 << 20);
        assert_eq!(c.alignment(), 4096);
        assert!(c.prepare_ahead());
    }

    #[test]
    fn rejects_bad_geometry() {
        let bad = [
            AllocConfig::new().with_alignment(3000),
            AllocConfig::new().with_alignment(0),
            AllocConfig::new().with_block_size(0),
            AllocConfig::new().with_block_size(5000),
            AllocConfig::new().with_data_offset(100),
            AllocConfig::new().with_segment_capacity(8192 + 4096),
            AllocConfig::new()
                .with_segment_capacity(1 << 20)
                .with_block_size(1 << 20),
        ];
        for c in bad {
            let e = c.validate().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{c:?}");
        }
        AllocConfig::new().with_data_offset(0).validate().unwrap();
    }

    #[test]
    fn block_len_rounds_up() {
        let c = AllocConfig::new().with_block_size(8192);
        assert_eq!(c.block_len(0), Some(8192));
        assert_eq!(c.block_len(8193), Some(12288));
        assert_eq!(c.block_len(12288), Some(12288));
        assert_eq!(c.block_len(u64::MAX), None);
    }
}
