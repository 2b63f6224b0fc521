//! One topic: its writer (appends, batches, block roll-over), its chain of blocks, its
//! consumers (consuming reads, peeks, batch reads, commits), and what releases its blocks
//! (consumption, retention, deletion).
//!
//! Lock order, outermost first: writer → floor → a consumer's reader → chain → consumers map.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use parking_lot::{Mutex, RwLock};
use walrus_block::{BLOCK_ALIGN, BLOCK_HEADER_LEN};

use crate::chain::Block;
use crate::progress::{MarkState, Progress};
use crate::shared::Shared;

mod consumer;
mod read;
mod write;

use consumer::{Consumer, Floor};
pub(crate) use consumer::{ConsumerState, DEFAULT_CONSUMER, FloorState, StaleRecord};

/// A topic: writer, chain, consumers.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    /// The allocation lane new blocks come from.
    lane: usize,
    writer: Mutex<Writer>,
    /// Blocks not yet released, oldest first. The last one is the writer's.
    chain: RwLock<VecDeque<Arc<Block>>>,
    /// Written, durable and listed-for-sync ends, shared with the store-wide sync.
    pub(crate) progress: Arc<Progress>,
    /// The consumers, by name (`""`: the default consumer). Each is created on first use.
    consumers: RwLock<BTreeMap<Arc<str>, Arc<Consumer>>>,
    /// Entries below the floor were released by retention or deletion.
    floor: Mutex<Floor>,
    /// Mirror of the floor's offset, read without its lock.
    floor_at: AtomicU64,
    /// First offset the remote tier holds (`u64::MAX`: none, or the topic does not tier):
    /// entries from there on are retained even once their blocks left the local disk.
    tiered_from: AtomicU64,
    /// The tier mark as persisted: entries below it that are not on local disk are in the
    /// remote tier. A block leaves the disk only below it.
    tier_mark: Mutex<MarkState>,
    /// Mirror of the persisted tier mark, read without its lock.
    tier_mark_at: AtomicU64,
    /// Not listed: deleted (and not appended to since), or only waited on.
    hidden: AtomicBool,
    /// Listed in the store's cursors to persist (`Shared::cursors_pending`), not yet taken by
    /// the maintenance: a topic is listed once however many reads it serves meanwhile.
    pub(crate) cursor_noted: AtomicBool,
    /// Bumped (and the arrivals notified) whenever a consumer's cursor moves other than by its
    /// own reads — a commit, a removal — so that a read waiting for an entry reads again.
    cursor_moves: AtomicU64,
    /// Appends and reads since the store opened.
    pub(crate) counters: crate::stats::TopicCounters,
}

#[derive(Debug)]
struct Writer {
    /// The block being filled, if any.
    block: Option<Arc<Block>>,
    /// File position of the next frame in `block`.
    pos: u64,
    next_offset: u64,
    next_chain_seq: u64,
    /// Set after recovery left a gap: the next block records that the topic's entries ended
    /// here (its `prev_end`).
    gap_from: Option<u64>,
    /// Length of the topic's newest block when the writer has none (after recovery), 0 for a
    /// topic without blocks: where the next block's length grows from.
    last_len: u64,
    /// Frame headers of the append in progress, encoded (reused between appends).
    headers: Vec<u8>,
    /// The same, checked and checksummed before they are placed (reused between appends).
    frames: Vec<walrus_block::FrameHeader>,
}

/// Length of a topic's first block: an idle topic costs this much disk.
pub(crate) const FIRST_BLOCK_LEN: u64 = BLOCK_ALIGN;

/// Length of the block after one of `prev` bytes (0: the topic's first): each block doubles
/// the previous, from [`FIRST_BLOCK_LEN`] up to `max`, so a busy topic soon writes large
/// contiguous blocks while an idle one holds a few KiB. An entry longer than this still gets a
/// block as long as it needs.
pub(crate) fn grown_block_len(prev: u64, max: u64) -> u64 {
    if prev == 0 {
        FIRST_BLOCK_LEN.min(max)
    } else {
        prev.saturating_mul(2)
            .clamp(FIRST_BLOCK_LEN, max.max(FIRST_BLOCK_LEN))
    }
}

/// Under [`StoreOptions::with_small_blocks`](crate::StoreOptions::with_small_blocks) a block
/// is made this many times as long as both the frame at hand and the block header: what an
/// entry that does not fit leaves unused at its end, and its header, each stay within 1/32.
const SMALL_BLOCK_FACTOR: u64 = 32;

/// The longest block under `with_small_blocks` for frames of `frame` bytes (see
/// [`SMALL_BLOCK_FACTOR`]), as a power of two from [`FIRST_BLOCK_LEN`] up to `max`.
pub(crate) fn small_block_cap(frame: u64, max: u64) -> u64 {
    frame
        .max(BLOCK_HEADER_LEN as u64)
        .saturating_mul(SMALL_BLOCK_FACTOR)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .clamp(FIRST_BLOCK_LEN, max.max(FIRST_BLOCK_LEN))
}

/// State a topic is rebuilt with at recovery.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub(crate) chain: VecDeque<Arc<Block>>,
    /// The block the writer continues in, with the file position of its next frame.
    pub(crate) live: Option<(Arc<Block>, u64)>,
    pub(crate) next_offset: u64,
    pub(crate) next_chain_seq: u64,
    /// The topic's entries end here, before `next_offset`: the writer's next block records the
    /// gap (its `prev_end`).
    pub(crate) gap_from: Option<u64>,
    /// The consumers found in the cursor file.
    pub(crate) consumers: Vec<ConsumerState>,
    pub(crate) floor: FloorState,
    /// Deleted, and not appended to since.
    pub(crate) hidden: bool,
    /// The durable watermark's record in the marks file, if any.
    pub(crate) mark: MarkState,
    /// The tier mark's record in the marks file, if any (see [`Topic::write_tier_mark`]).
    pub(crate) tier_mark: MarkState,
}

impl Topic {
    pub(crate) fn new(name: Arc<str>, state: TopicState, lane: usize) -> Self {
        let last_len = state
            .live
            .as_ref()
            .map(|(b, _)| b)
            .or(state.chain.back())
            .map_or(0, |b| b.len);
        let (block, pos) = match state.live {
            Some((b, p)) => (Some(b), p),
            None => (None, 0),
        };
        let consumers = state
            .consumers
            .into_iter()
            .map(|c| {
                let name: Arc<str> = Arc::from(c.name.as_str());
                (name.clone(), Arc::new(Consumer::recovered(name, &c)))
            })
            .collect();
        let floor_at = state.floor.offset;
        Self {
            // The watermark written at open must not claim the offsets a gap skips (synced
            // entries no reopen would find).
            progress: Arc::new(Progress::new(
                name.clone(),
                state.next_offset,
                state.gap_from.unwrap_or(state.next_offset),
                state.mark,
            )),
            name,
            lane,
            writer: Mutex::new(Writer {
                block,
                pos,
                next_offset: state.next_offset,
                next_chain_seq: state.next_chain_seq,
                gap_from: state.gap_from,
                last_len,
                headers: Vec::new(),
                frames: Vec::new(),
            }),
            chain: RwLock::new(state.chain),
            consumers: RwLock::new(consumers),
            floor: Mutex::new(Floor::from(state.floor)),
            floor_at: AtomicU64::new(floor_at),
            tiered_from: AtomicU64::new(u64::MAX),
            tier_mark_at: AtomicU64::new(state.tier_mark.written),
            tier_mark: Mutex::new(state.tier_mark),
            hidden: AtomicBool::new(state.hidden),
            cursor_noted: AtomicBool::new(false),
            cursor_moves: AtomicU64::new(0),
            counters: crate::stats::TopicCounters::default(),
        }
    }

    /// Whether this is only a name: created unlisted (by a wait, or an append that failed),
    /// never written, not a deleted topic, with no consumer.
    pub(crate) fn is_placeholder(&self) -> bool {
        self.is_hidden()
            && self.written_end() == 0
            && self.consumers.read().is_empty()
            && !self.floor.lock().deleted
    }

    /// Offset the next append gets; every entry below is readable.
    pub(crate) fn written_end(&self) -> u64 {
        self.progress.written_end()
    }

    /// Entries below this offset are durable.
    pub(crate) fn durable(&self) -> u64 {
        self.progress.durable()
    }

    /// Entries below this offset may be handed to readers: the acknowledged ones. Under a
    /// store that acknowledges at durability (`SyncEach`) that is the durable watermark, as
    /// Kafka's high watermark; otherwise every written entry.
    pub(crate) fn visible(&self, shared: &Shared) -> u64 {
        self.progress.visible(shared.options.visible_when_durable)
    }

    /// Whether an entry at or after `offset` may be handed to readers: the visible end is past
    /// both `offset` and the floor (nothing below the floor is ever served).
    pub(crate) fn has_entry_from(&self, shared: &Shared, offset: u64) -> bool {
        let floor = self.floor_at.load(std::sync::atomic::Ordering::Acquire);
        self.visible(shared) > offset.max(floor)
    }

    /// First offset still retained (not released after consumption).
    pub(crate) fn first_retained(&self) -> u64 {
        let chain = self.chain.read();
        self.first_retained_in(&chain)
    }

    /// First offset still retained (locally or in the remote tier), with the chain lock held.
    fn first_retained_in(&self, chain: &VecDeque<Arc<Block>>) -> u64 {
        chain
            .front()
            .map_or_else(|| self.written_end(), |b| b.first_offset)
            .min(self.tiered_from.load(std::sync::atomic::Ordering::Acquire))
            .max(self.floor_at.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Below this, entries missing on local disk are in the remote tier.
    pub(crate) fn tier_mark(&self) -> u64 {
        self.tier_mark_at.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Raises the tier mark to `through` and makes it durable (the marks file synced) before
    /// anything below it may leave the local disk: after a crash, recovery then knows the
    /// entries missing below it are in the remote tier, not lost.
    pub(crate) fn write_tier_mark(&self, shared: &Shared, through: u64) -> std::io::Result<()> {
        let mut mark = self.tier_mark.lock();
        if through <= mark.written {
            return Ok(());
        }
        let pair = match mark.pair {
            Some(p) => p,
            None => {
                let key = crate::cursors::RecordKey::consumer(&self.name, crate::tier::TIER_MARK);
                let (p, last) = shared.marks.pair_for(&key);
                mark.generation = mark.generation.max(last);
                p
            }
        };
        let record = walrus_block::CursorRecord {
            consumer: crate::tier::TIER_MARK.to_owned(),
            ..walrus_block::CursorRecord::new(&*self.name, mark.generation + 1, through)
        };
        // On a failed sync: the mark as it stays.
        let undo = walrus_block::CursorRecord {
            offset: mark.written,
            ..record.clone()
        };
        shared.marks.write_synced(&record, pair, &undo)?;
        mark.pair = Some(pair);
        mark.generation += 1;
        mark.written = through;
        self.tier_mark_at
            .store(through, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Records the first offset the remote tier holds (`None`: nothing), as a tier pass
    /// found it.
    pub(crate) fn set_tiered_from(&self, first: Option<u64>) {
        self.tiered_from.store(
            first.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// An error of `kind` about this topic (at `offset`, if one is concerned).
    pub(crate) fn error(
        &self,
        kind: std::io::ErrorKind,
        message: impl Into<String>,
        offset: Option<u64>,
    ) -> std::io::Error {
        crate::error::on_topic(
            std::io::Error::new(kind, message.into()),
            &self.name,
            offset,
        )
    }

    /// How many times a consumer's cursor was moved other than by its own reads.
    pub(crate) fn cursor_moves(&self) -> u64 {
        self.cursor_moves.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a cursor moved by a commit or a removal, and wakes the waiting reads.
    pub(super) fn cursor_moved(&self) {
        self.cursor_moves
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.progress.arrivals.notify();
    }

    /// Whether the topic is unlisted (deleted, or only waited on).
    pub(crate) fn is_hidden(&self) -> bool {
        self.hidden.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Dates the sealed blocks found at open by their segment files' modification times
    /// (`None`: unknown, they count from now).
    pub(crate) fn date_blocks(&self, modified: &mut dyn FnMut(&Block) -> Option<u64>) {
        for b in self.chain.read().iter().filter(|b| b.is_sealed()) {
            if let Some(at) = modified(b) {
                b.set_sealed_at(at);
            }
        }
    }

    /// The blocks of the chain, oldest first (a snapshot).
    pub(crate) fn blocks(&self) -> Vec<Arc<Block>> {
        self.chain.read().iter().cloned().collect()
    }

    /// Number of blocks in the chain (retained, not yet released).
    pub(crate) fn chain_len(&self) -> usize {
        self.chain.read().len()
    }
}

impl TopicState {
    /// A topic that has never been written.
    pub(crate) fn empty() -> Self {
        Self {
            chain: VecDeque::new(),
            live: None,
            next_offset: 0,
            next_chain_seq: 0,
            gap_from: None,
            consumers: Vec::new(),
            floor: FloorState::default(),
            hidden: false,
            mark: MarkState::default(),
            tier_mark: MarkState::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_grow_from_4_kib_doubling_to_the_maximum() {
        let max = 1 << 20;
        let mut len = 0;
        let mut seen = Vec::new();
        for _ in 0..12 {
            len = grown_block_len(len, max);
            seen.push(len >> 10);
        }
        assert_eq!(
            seen,
            [4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024, 1024, 1024]
        );
        // After a block for one large entry, the next is back to the maximum.
        assert_eq!(grown_block_len(64 << 20, max), max);
        // A maximum below the first length (the smallest geometry) caps it.
        assert_eq!(grown_block_len(0, 4096), 4096);
        assert_eq!(grown_block_len(4096, 4096), 4096);
        assert_eq!(grown_block_len(u64::MAX, 8192), 8192);
    }

    #[test]
    fn small_blocks_hold_32_frames_of_the_size_at_hand() {
        let max = 1 << 20;
        // Small entries: 32 block headers' worth (308 bytes each), 16 KiB.
        assert_eq!(small_block_cap(124, max), 16 << 10);
        assert_eq!(small_block_cap(1, max), 16 << 10);
        // 700-byte entries: 32 KiB, so at most one frame's worth (2 %) is left unused.
        assert_eq!(small_block_cap(724, max), 32 << 10);
        assert_eq!(small_block_cap(100 << 10, max), max);
        assert_eq!(small_block_cap(u64::MAX, max), max);
        assert_eq!(small_block_cap(724, 4096), 4096);
    }
}
