//! The decision table applied: what a problem found while rebuilding a topic means under the
//! recovery mode (cut, erase, skip or refuse), and the report entry and refusal it makes.

use std::io;

use super::super::{Action, Problem, RecoveryIssue};
use crate::chain::SegmentHandle;
use crate::options::RecoveryMode;

use super::{Cut, Rebuild};

impl Rebuild<'_> {
    /// Decides a problem at offset `a` (file position `pos` of retained block `block`).
    /// Returns whether scanning goes on (the problem was skipped).
    pub(super) fn decide(
        &mut self,
        a: u64,
        block: usize,
        pos: u64,
        problem: Problem,
    ) -> io::Result<bool> {
        self.decide_at(a, a < self.mark, block, pos, problem)
    }

    /// [`decide`](Self::decide), told whether the damage lies at or below the watermark
    /// (`durable`): damage that starts below it and reaches entries above it is corruption
    /// there too, never a torn tail to cut and erase.
    pub(super) fn decide_at(
        &mut self,
        a: u64,
        durable: bool,
        block: usize,
        pos: u64,
        problem: Problem,
    ) -> io::Result<bool> {
        let file = self.retained.get(block).map(|b| b.handle.clone());
        // A unit that starts below the watermark was durable whole: the durable end moves by
        // whole units, and the tier mark, which may fall inside one (the end of an uploaded
        // block), is never past it. Damage in its rest is damage to synced data, and a cut
        // at its start would erase synced entries.
        let durable = durable || self.unit.is_some_and(|u| u.offset < self.mark);
        // With a watermark record lost, the lenient modes take any damage for damage below
        // it: they cut keeping the bytes, or skip, and never erase.
        let lenient = matches!(
            self.mode,
            RecoveryMode::PointInTime | RecoveryMode::SkipCorrupted
        );
        if !(durable || (self.marks_lost && lenient)) {
            // What a power cut leaves of unsynced writes: cut at the start of the unit the
            // damage falls in, and erase what follows.
            let (offset, block, pos) = match self.unit {
                Some(u) => (u.offset, u.block, u.pos),
                None => (a, block, pos),
            };
            let problem = match problem {
                Problem::UnfinishedBatch => Problem::UnfinishedBatch,
                _ => Problem::TornTail,
            };
            let issue = self.issue(offset, file.as_deref(), pos, problem, Action::Cut);
            if self.mode == RecoveryMode::AbsoluteConsistency {
                return Err(refusal(&issue, self.mode));
            }
            self.report.issues.push(issue);
            self.cut = Some(Cut {
                offset,
                block,
                pos,
                erase: !self.marks_lost,
            });
            return Ok(false);
        }
        match self.mode {
            RecoveryMode::SkipCorrupted => {
                let issue = self.issue(a, file.as_deref(), pos, problem, Action::Skipped);
                self.report.issues.push(issue);
                self.damaged_durable = true;
                Ok(true)
            }
            RecoveryMode::PointInTime => {
                let (offset, block, pos) = match self.unit {
                    Some(u) => (u.offset, u.block, u.pos),
                    None => (a, block, pos),
                };
                let issue = self.issue(offset, file.as_deref(), pos, problem, Action::Cut);
                self.report.issues.push(issue);
                self.damaged_durable = true;
                self.cut = Some(Cut {
                    offset,
                    block,
                    pos,
                    erase: false,
                });
                Ok(false)
            }
            _ => {
                let issue = self.issue(a, file.as_deref(), pos, problem, Action::Cut);
                Err(refusal(&issue, self.mode))
            }
        }
    }

    /// For a chain with no blocks left: nothing can be cut, only refused or noted.
    pub(super) fn refuse_or_note(
        &mut self,
        a: u64,
        file: Option<&SegmentHandle>,
        pos: u64,
        problem: Problem,
    ) -> io::Result<()> {
        match self.mode {
            RecoveryMode::SkipCorrupted | RecoveryMode::PointInTime => {
                let issue = self.issue(a, file, pos, problem, Action::Skipped);
                self.report.issues.push(issue);
                self.damaged_durable = true;
                Ok(())
            }
            _ => Err(refusal(
                &self.issue(a, file, pos, problem, Action::Cut),
                self.mode,
            )),
        }
    }

    pub(super) fn issue(
        &self,
        offset: u64,
        file: Option<&SegmentHandle>,
        position: u64,
        problem: Problem,
        action: Action,
    ) -> RecoveryIssue {
        RecoveryIssue {
            topic: self.topic.to_owned(),
            offset,
            file: file
                .map(|h| h.file.path().to_path_buf())
                .unwrap_or_default(),
            position,
            problem,
            action,
        }
    }
}

/// The refusal of a mode that does not accept `issue`, naming what would open it.
pub(in crate::recovery) fn refusal(issue: &RecoveryIssue, mode: RecoveryMode) -> io::Error {
    let would = match mode {
        RecoveryMode::AbsoluteConsistency => {
            "RecoveryMode::TolerateCorruptedTail opens it if the damage is a torn tail; \
             RecoveryMode::PointInTime or RecoveryMode::SkipCorrupted open it in any case"
        }
        _ => {
            "RecoveryMode::PointInTime opens it up to the damage, RecoveryMode::SkipCorrupted \
             opens it skipping exactly the damaged entries"
        }
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "topic {:?} at offset {}: {} in {} at byte {}; refused by {mode:?} ({would}); \
             nothing was changed on disk",
            issue.topic,
            issue.offset,
            issue.problem,
            issue.file.display(),
            issue.position,
        ),
    )
}
