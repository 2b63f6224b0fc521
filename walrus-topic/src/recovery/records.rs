//! The cursor file's records, grouped by topic: which consumers a topic has, where its floor
//! stands, and what they say is consumed.

use std::collections::HashMap;

use walrus_block::CursorKind;

use super::rebuild::Consumed;
use crate::cursors::{LoadedCursor, RecordKey};
use crate::topic::{ConsumerState, FloorState, StaleRecord};

/// One topic's records.
#[derive(Debug, Default)]
pub(super) struct TopicRecords {
    /// Live consumers (not removed; none when the topic was deleted).
    pub(super) consumers: Vec<ConsumerState>,
    pub(super) floor: FloorState,
}

impl TopicRecords {
    /// What the records say is consumed: below the smallest consumer cursor (or the floor,
    /// if higher or if there is no consumer), and below `tier_mark` (entries that left the
    /// disk once the remote tier held them: missing, they are not damage). What may be
    /// released unread at the open: for a `tiered` topic what is consumed *and* below the
    /// tier mark (or below the floor); for any other what is consumed.
    pub(super) fn consumed(&self, tiered: bool, tier_mark: u64) -> Consumed {
        let floor = self.floor.offset;
        let bound = self
            .consumers
            .iter()
            .map(|c| c.cursor)
            .min()
            .map_or(floor, |m| m.max(floor));
        let highest = self
            .consumers
            .iter()
            .map(|c| c.cursor)
            .max()
            .unwrap_or(0)
            .max(floor);
        // Consumed and uploaded for a tiered topic; consumed for any other (a topic that no
        // longer tiers keeps what is still on its disk).
        let release = if tiered {
            floor.max(bound.min(tier_mark))
        } else {
            bound
        };
        Consumed {
            bound: bound.max(tier_mark),
            highest,
            release,
            deleted: self.floor.deleted,
        }
    }
}

/// Groups the loaded records by topic. The consumer records of a deleted topic are stale: not
/// consumers, but to be marked removed before the topic is used again.
pub(super) fn group(loaded: &HashMap<RecordKey, LoadedCursor>) -> HashMap<String, TopicRecords> {
    let mut out: HashMap<String, TopicRecords> = HashMap::new();
    for (key, c) in loaded.iter().filter(|(k, _)| k.kind == CursorKind::Floor) {
        out.entry(key.topic.clone()).or_default().floor = FloorState {
            offset: c.offset,
            generation: c.generation,
            pair: Some(c.pair),
            deleted: c.removed,
            stale: Vec::new(),
        };
    }
    for (key, c) in loaded
        .iter()
        .filter(|(k, _)| k.kind == CursorKind::Consumer)
    {
        let records = out.entry(key.topic.clone()).or_default();
        if c.removed {
            continue;
        }
        if records.floor.deleted {
            records.floor.stale.push(StaleRecord {
                name: key.consumer.clone(),
                pair: c.pair,
                generation: c.generation,
            });
        } else {
            records.consumers.push(ConsumerState {
                name: key.consumer.clone(),
                cursor: c.offset,
                generation: c.generation,
                pair: c.pair,
            });
        }
    }
    for records in out.values_mut() {
        records.consumers.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}
