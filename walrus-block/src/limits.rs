//! Size limits of format v1, and the check for topic names.

use crate::error::FormatError;

/// Longest topic name, in bytes of UTF-8 (the block header stores it in 255 bytes).
pub const MAX_TOPIC_NAME_LEN: usize = 255;

/// Longest consumer name, in bytes of UTF-8 (the cursor record stores it in 128 bytes).
pub const MAX_CONSUMER_NAME_LEN: usize = 128;

/// Largest payload of one entry: 1 GiB. The frame stores the length in 32 bits; the lower limit
/// keeps one entry well inside an ordinary segment and bounds what a reader must buffer.
pub const MAX_ENTRY_LEN: usize = 1 << 30;

/// Most entries in one atomic batch.
pub const MAX_BATCH_ENTRIES: usize = 2000;

/// Most payload bytes in one atomic batch: 10 GiB.
pub const MAX_BATCH_BYTES: u64 = 10 * (1 << 30);

/// Blocks start and end on multiples of this many bytes, so that direct I/O and the page cache
/// see whole pages, and so that a torn sector never straddles two blocks.
pub const BLOCK_ALIGN: u64 = 4096;

/// Longest block, and segment, the format describes: 1 TiB. A header naming a longer block is
/// damage: positions past it could not be file offsets.
pub const MAX_BLOCK_LEN: u64 = 1 << 40;

/// Offsets stay below this (2^62 entries, centuries of appends at millions a second). A frame or
/// block naming an offset at or past it is damage: one past the last entry must stay an offset.
pub const MAX_OFFSET: u64 = 1 << 62;

/// Default length of a block: 1 MiB. A block may be longer to hold one big entry.
pub const DEFAULT_BLOCK_LEN: u64 = 1 << 20;

/// Default length of a segment file: 1 GiB, so that consumed space comes back in reasonable steps.
pub const DEFAULT_SEGMENT_LEN: u64 = 1 << 30;

/// Checks a topic name: 1 to [`MAX_TOPIC_NAME_LEN`] bytes. (It is a `&str`, so already UTF-8.)
///
/// # Errors
/// [`FormatError::InvalidTopic`] naming the problem.
pub fn validate_topic_name(topic: &str) -> Result<(), FormatError> {
    if topic.is_empty() {
        return Err(FormatError::InvalidTopic("topic name is empty".into()));
    }
    if topic.len() > MAX_TOPIC_NAME_LEN {
        return Err(FormatError::InvalidTopic(format!(
            "topic name is {} bytes, the limit is {MAX_TOPIC_NAME_LEN}",
            topic.len()
        )));
    }
    Ok(())
}

/// Checks a consumer name: 1 to [`MAX_CONSUMER_NAME_LEN`] bytes. (The empty name is the
/// topic's default consumer, which is not named.)
///
/// # Errors
/// [`FormatError::InvalidInput`] naming the problem.
pub fn validate_consumer_name(consumer: &str) -> Result<(), FormatError> {
    if consumer.is_empty() {
        return Err(FormatError::InvalidInput("consumer name is empty".into()));
    }
    if consumer.len() > MAX_CONSUMER_NAME_LEN {
        return Err(FormatError::InvalidInput(format!(
            "consumer name is {} bytes, the limit is {MAX_CONSUMER_NAME_LEN}",
            consumer.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a").is_ok());
        assert!(validate_topic_name(&"é".repeat(127)).is_ok()); // 254 bytes
        assert!(validate_topic_name(&"x".repeat(255)).is_ok());
        assert!(validate_topic_name(&"x".repeat(256)).is_err());
        assert!(validate_consumer_name("").is_err());
        assert!(validate_consumer_name(&"c".repeat(128)).is_ok());
        assert!(validate_consumer_name(&"c".repeat(129)).is_err());
    }

    #[test]
    fn limits_fit_their_fields() {
        assert!(u32::try_from(MAX_ENTRY_LEN).is_ok());
        assert!(u16::try_from(MAX_BATCH_ENTRIES - 1).is_ok());
        assert_eq!(DEFAULT_BLOCK_LEN % BLOCK_ALIGN, 0);
        assert_eq!(DEFAULT_SEGMENT_LEN % BLOCK_ALIGN, 0);
        assert_eq!(MAX_BLOCK_LEN % BLOCK_ALIGN, 0);
        assert!(MAX_BLOCK_LEN > MAX_ENTRY_LEN as u64 + 2 * BLOCK_ALIGN);
        assert!(i64::try_from(MAX_BLOCK_LEN * 2).is_ok());
    }
}
