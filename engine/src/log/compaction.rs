//! Compaction: groups declare what their snapshots cover; old segments are given back.
//!
//! [`Log::compact_group`] writes a compaction marker and drops the covered entries from the
//! index (the LogCompacted event of that group). [`Log::reclaim`] then frees disk space
//! from the oldest segment on: a segment none of whose records is still needed is deleted;
//! one whose few live records (entries, or the latest hard state or compaction marker of a
//! group) fit in `relocate_max_bytes` has them rewritten at the tail, durably, and is
//! deleted after (the LogDBCompacted event). Only a prefix of the segments is ever deleted,
//! so no record that recovery relies on to override an older one can disappear while the
//! older one stays.

use std::collections::BTreeMap;

use super::index::RecordLoc;
use super::record::{Entry, HardState, Record, RecordBody, HEADER_BYTES};
use super::{GroupId, Log, LogError, Ticket};

/// What [`Log::reclaim`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments deleted, by first sequence number.
    pub deleted_segments: Vec<u64>,
    /// Records rewritten forward to free their segments.
    pub relocated_records: u64,
    /// Bytes of those records.
    pub relocated_bytes: u64,
}

/// Live records of one segment, per group.
#[derive(Default)]
struct Live {
    /// Per group: indices of live entries stored in the segment, ascending.
    entries: BTreeMap<GroupId, Vec<u64>>,
    hard_states: Vec<(GroupId, HardState)>,
    markers: Vec<(GroupId, u64, u64)>,
    bytes: u64,
}

impl Live {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.hard_states.is_empty() && self.markers.is_empty()
    }
}

impl Log {
    /// Declares that a snapshot of `group` covers entries up to `index` (whose term is
    /// `term`): they are dropped, and the marker is enqueued (durable with its ticket).
    /// `index` may lie beyond the last entry (a snapshot received from the leader): the group
    /// then restarts after it. It may not go below an earlier compaction point.
    pub fn compact_group(&self, group: GroupId, index: u64, term: u64) -> Result<Ticket, LogError> {
        let mut state = self.state_for_write()?;
        if let Some(existing) = state.index.group(group) {
            if index < existing.compacted {
                return Err(LogError::Invalid(format!(
                    "group {group}: compaction to {index} is below the earlier point {}",
                    existing.compacted
                )));
            }
        }
        let (seq, loc) = self.place(&mut state, Record { group, body: RecordBody::Compaction { index, term } })?;
        state.index.compact(group, index, term, loc);
        Ok(Ticket(seq))
    }

    /// Forgets `group` entirely (the replica left this shard).
    pub fn remove_group(&self, group: GroupId) -> Result<Ticket, LogError> {
        let mut state = self.state_for_write()?;
        let (seq, _) = self.place(&mut state, Record { group, body: RecordBody::GroupRemoved })?;
        state.index.remove(group);
        Ok(Ticket(seq))
    }

    /// Deletes old segments that nothing needs any more, rewriting a few live records
    /// forward when that frees a segment (see the module documentation).
    ///
    /// Only one runs at a time; a call made while another runs returns an empty report.
    pub async fn reclaim(&self) -> Result<CompactionReport, LogError> {
        {
            let mut state = self.state_for_write()?;
            if state.reclaiming {
                return Ok(CompactionReport::default());
            }
            state.reclaiming = true;
        }
        let _running = ReclaimGuard(self);
        self.reclaim_segments().await
    }

    /// [`Log::reclaim`] once `after` is durable, as a future that owns its handle on the
    /// log: run it as a task of its own so that nobody waits for the reads and rewrites.
    /// Await it to the end before closing the log.
    pub fn reclaim_after(&self, after: Ticket) -> impl std::future::Future<Output = Result<CompactionReport, LogError>> + 'static {
        let log = Log { shared: std::rc::Rc::clone(&self.shared) };
        async move {
            log.wait_durable(after).await?;
            log.reclaim().await
        }
    }

    async fn reclaim_segments(&self) -> Result<CompactionReport, LogError> {
        let mut report = CompactionReport::default();
        let limit = self.shared.options.relocate_max_bytes;
        while let Some((segment, live)) = self.oldest_sealed_live() {
            if !live.is_empty() {
                if live.bytes > limit {
                    break;
                }
                let (records, bytes) = self.relocate(&live).await?;
                report.relocated_records += records;
                report.relocated_bytes += bytes;
                match self.oldest_sealed_live() {
                    Some((again, live)) if again == segment && live.is_empty() => {}
                    // Appends raced with the rewrite and changed what is live: try next time.
                    _ => break,
                }
            }
            let removed = self.shared.state.borrow_mut().segments.remove(&segment);
            if let Some(file) = removed {
                std::fs::remove_file(&file.path).map_err(|e| LogError::io(format!("removing {}", file.path.display()), e))?;
            }
            report.deleted_segments.push(segment);
        }
        if !report.deleted_segments.is_empty() {
            super::segment::sync_dir(self.dir()).await?;
        }
        Ok(report)
    }

    /// The oldest segment all of whose records are durable and that takes no more writes,
    /// with what in it is still live (counting stops once it exceeds what may be relocated:
    /// the segment stays either way).
    fn oldest_sealed_live(&self) -> Option<(u64, Live)> {
        let limit = self.shared.options.relocate_max_bytes;
        let state = self.shared.state.borrow();
        let (&segment, _) = state.segments.iter().next()?;
        let open = state.tail_segment.min(state.flushed.segment);
        if segment >= open || state.pending.iter().any(|p| p.loc.segment == segment) {
            return None;
        }
        let mut live = Live::default();
        let mut counted: Vec<RecordLoc> = Vec::new();
        let mut charge = |loc: RecordLoc, live: &mut Live| {
            if !counted.contains(&loc) {
                counted.push(loc);
                live.bytes += u64::from(loc.len);
            }
        };
        for (&group, index) in &state.index.groups {
            if live.bytes > limit {
                break;
            }
            for (offset, meta) in index.entries.iter().enumerate() {
                if meta.loc.segment == segment {
                    live.entries.entry(group).or_default().push(index.first_index() + offset as u64);
                    live.bytes += u64::from(meta.payload_len) + 21;
                }
            }
            if let Some((hard_state, loc)) = index.hard_state {
                if loc.segment == segment {
                    live.hard_states.push((group, hard_state));
                    charge(loc, &mut live);
                }
            }
            if let Some(loc) = index.compaction_loc {
                if loc.segment == segment {
                    live.markers.push((group, index.compacted, index.compacted_term));
                    charge(loc, &mut live);
                }
            }
        }
        Some((segment, live))
    }

    /// Rewrites the live records of a segment at the tail and waits until they are durable.
    async fn relocate(&self, live: &Live) -> Result<(u64, u64), LogError> {
        let max_record_payload = (self.shared.options.segment_bytes / 4) as usize;
        let mut last = None;
        let mut moved = Vec::new();
        let mut records = 0u64;
        let mut bytes = 0u64;
        for (&group, indices) in &live.entries {
            for run in consecutive_runs(indices) {
                let mut lo = run.0;
                while lo <= run.1 {
                    let chunk = match self.entries(group, lo, run.1 + 1, max_record_payload).await {
                        Ok(chunk) => chunk,
                        // Compacted, truncated or removed since the segment was looked at
                        // (the log is used while a reclaim runs): nothing more of this run
                        // to keep; the segment stays if anything in it is still live.
                        Err(LogError::Unavailable { .. }) => break,
                        Err(e) => return Err(e),
                    };
                    let Some(next) = chunk.last().map(|e| e.index + 1) else { break };
                    lo = next;
                    if let Some((ticket, entries, loc)) = self.enqueue_relocated(group, chunk)? {
                        last = Some(ticket);
                        records += 1;
                        bytes += u64::from(loc.len);
                        moved.push((group, entries, loc));
                    }
                }
            }
        }
        for &(group, hard_state) in &live.hard_states {
            let still_latest = self.group(group).and_then(|g| g.hard_state) == Some(hard_state);
            if still_latest {
                last = Some(self.save_hard_state(group, hard_state)?);
                records += 1;
                bytes += (HEADER_BYTES + 24) as u64;
            }
        }
        for &(group, index, term) in &live.markers {
            if self.group(group).is_some_and(|g| g.compacted == index) {
                last = Some(self.compact_group(group, index, term)?);
                records += 1;
                bytes += (HEADER_BYTES + 16) as u64;
            }
        }
        if let Some(ticket) = last {
            self.wait_durable(ticket).await?;
        }
        // Only now may reads go to the new copies: before, they were not on disk.
        let mut state = self.shared.state.borrow_mut();
        for (group, entries, loc) in moved {
            state.index.relocate(group, &entries, loc);
        }
        Ok((records, bytes))
    }

    /// Enqueues the entries of `chunk` that are still live, unchanged, as a relocated
    /// record; returns its ticket, the entries and their new place, or nothing if none is
    /// live any more.
    fn enqueue_relocated(&self, group: GroupId, chunk: Vec<Entry>) -> Result<Option<(Ticket, Vec<Entry>, RecordLoc)>, LogError> {
        let mut state = self.state_for_write()?;
        let Some(index) = state.index.group(group) else { return Ok(None) };
        let still: Vec<Entry> = chunk.into_iter().filter(|e| index.meta(e.index).is_some_and(|m| m.term == e.term)).collect();
        if still.is_empty() {
            return Ok(None);
        }
        let last_index = index.last_index();
        let record = Record { group, body: RecordBody::Relocated { last_index, entries: still.clone() } };
        let (seq, loc) = self.place(&mut state, record)?;
        Ok(Some((Ticket(seq), still, loc)))
    }
}

/// Clears the `reclaiming` flag when a reclaim ends, even if its future is dropped.
struct ReclaimGuard<'a>(&'a Log);

impl Drop for ReclaimGuard<'_> {
    fn drop(&mut self) {
        self.0.shared.state.borrow_mut().reclaiming = false;
    }
}

/// Splits ascending indices into inclusive runs of consecutive values.
fn consecutive_runs(indices: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &index in indices {
        match runs.last_mut() {
            Some(run) if run.1 + 1 == index => run.1 = index,
            _ => runs.push((index, index)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::consecutive_runs;

    #[test]
    fn runs_split_at_gaps() {
        assert_eq!(consecutive_runs(&[1, 2, 3, 7, 8, 10]), vec![(1, 3), (7, 8), (10, 10)]);
        assert!(consecutive_runs(&[]).is_empty());
    }
}
