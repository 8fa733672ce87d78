//! The [`Log`] handle: enqueueing records, group commit, reads of the index and cache.
//!
//! Enqueueing (`append_entries`, `save_hard_state`, ...) is synchronous: the record gets its
//! sequence number ([`Ticket`]) and its place in a segment at once, the index and tail
//! cache see it immediately (so a leader can replicate entries before they are durable),
//! and it waits in memory for the next flush. [`Log::wait_durable`] makes a ticket durable:
//! if no flush is running, the caller becomes the flusher and writes *everything* pending,
//! from every task and group, with one aligned direct write and one `fdatasync` per segment
//! touched; if one is running, the caller waits for it and then, if still needed, for the
//! next. A ticket is durable when [`Log::durable`] reaches it, and every lower ticket then is
//! too.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::index::{GroupIndex, Index, RecordLoc};
use super::record::{Entry, HardState, Record, RecordBody};
use super::recovery::{self, Recovery};
use super::segment::{self, PreparedSegment, SegmentFile};
use super::{GroupId, LogError, LogOptions};

/// Alignment of every log write (a filesystem block).
const WRITE_ALIGN: u64 = 4096;

/// The sequence number of an enqueued record: durable once [`Log::durable`] reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Counters since the log was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records enqueued.
    pub records: u64,
    /// Direct writes issued (one per segment per flush).
    pub writes: u64,
    /// `fdatasync` calls on segments.
    pub syncs: u64,
    /// Bytes written, alignment padding and rewritten tail blocks included.
    pub bytes_written: u64,
    /// Segments started.
    pub rotations: u64,
}

/// A record waiting for the next flush, with its final place.
pub(super) struct Pending {
    pub seq: u64,
    pub loc: RecordLoc,
    pub record: Record,
}

/// The durable end of the newest written segment and a copy of its partial last block,
/// which the next write rewrites together with the new records.
pub(super) struct Flushed {
    pub segment: u64,
    pub end: u64,
    pub block: Vec<u8>,
}

pub(super) struct State {
    pub next_seq: u64,
    pub durable_seq: u64,
    /// Segment the next record goes to and the byte offset where it goes.
    pub tail_segment: u64,
    pub tail_end: u64,
    pub flushed: Flushed,
    pub pending: Vec<Pending>,
    pub segments: BTreeMap<u64, Rc<SegmentFile>>,
    pub prepared: Option<PreparedSegment>,
    /// Whether the next segment is being prepared in the background.
    pub preparing: bool,
    /// Tasks waiting for that preparation to end.
    pub prepare_waiters: Vec<Waker>,
    pub prepare_counter: u64,
    pub flushing: bool,
    pub flush_generation: u64,
    pub waiters: Vec<Waker>,
    pub poisoned: Option<String>,
    /// A `reclaim` is running (a second one returns at once).
    pub reclaiming: bool,
    pub index: Index,
    pub stats: LogStats,
}

pub(super) struct Shared {
    pub dir: PathBuf,
    pub options: LogOptions,
    pub state: RefCell<State>,
}

/// The write-ahead log of one shard. Cheap to clone (a shared handle); `!Send`.
#[derive(Clone)]
pub struct Log {
    pub(super) shared: Rc<Shared>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering what is there. Must run on a
    /// glommio executor. Fails with [`LogError::Corrupt`] when acknowledged data is damaged
    /// (unless `options.repair_corruption`).
    pub async fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<(Log, Recovery), LogError> {
        let dir = dir.as_ref().to_path_buf();
        if options.segment_bytes < 64 << 10 || options.segment_bytes > u64::from(u32::MAX) || !options.segment_bytes.is_multiple_of(4096) {
            return Err(LogError::Invalid(format!("segment size {} must be a multiple of 4096 in 64 KiB..4 GiB", options.segment_bytes)));
        }
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io(format!("creating {}", dir.display()), e))?;
        // Absolute from here on: glommio opens directories (for their fsync) at dirfd -1
        // without resolving relative paths, which fails with EBADF.
        let dir = std::fs::canonicalize(&dir).map_err(|e| LogError::io(format!("resolving {}", dir.display()), e))?;
        segment::settle_iopoll_probe(&dir).await?;
        let (recovered, report) = recovery::recover(&dir, &options).await?;
        let next_seq = recovered.last_seq + 1;
        let state = State {
            next_seq,
            durable_seq: recovered.last_seq,
            tail_segment: next_seq,
            tail_end: 0,
            flushed: Flushed { segment: next_seq, end: 0, block: Vec::new() },
            pending: Vec::new(),
            segments: recovered.segments,
            prepared: None,
            preparing: false,
            prepare_waiters: Vec::new(),
            prepare_counter: 0,
            flushing: false,
            flush_generation: 0,
            waiters: Vec::new(),
            poisoned: None,
            reclaiming: false,
            index: recovered.index,
            stats: LogStats::default(),
        };
        let log = Log { shared: Rc::new(Shared { dir, options, state: RefCell::new(state) }) };
        log.prepare_next_segment();
        Ok((log, report))
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Enqueues `entries` for `group`: they replace any entries at or after
    /// `entries[0].index`. They must be consecutive and start in
    /// `first_index ..= last_index + 1` of the group: a new group starts at 1, or right
    /// after the point given to [`Log::compact_group`] (a snapshot installed first).
    ///
    /// Pass a `Vec<Entry>` to hand the entries over without copying them, or a slice.
    pub fn append_entries(&self, group: GroupId, entries: impl Into<Vec<Entry>>) -> Result<Ticket, LogError> {
        let entries = entries.into();
        let mut state = self.state_for_write()?;
        match state.index.group(group) {
            Some(existing) => existing.check_append(group, &entries)?,
            None => GroupIndex::default().check_append(group, &entries)?,
        }
        let record = Record { group, body: RecordBody::Entries(entries) };
        let (seq, loc) = self.reserve(&mut state, record.framed_len())?;
        if let RecordBody::Entries(entries) = &record.body {
            state.index.append(group, entries, loc, seq, true);
        }
        state.pending.push(Pending { seq, loc, record });
        Ok(Ticket(seq))
    }

    /// Enqueues the hard state of `group` (the latest one wins at recovery).
    pub fn save_hard_state(&self, group: GroupId, hard_state: HardState) -> Result<Ticket, LogError> {
        let mut state = self.state_for_write()?;
        let (seq, loc) = self.place(&mut state, Record { group, body: RecordBody::HardState(hard_state) })?;
        state.index.set_hard_state(group, hard_state, loc);
        Ok(Ticket(seq))
    }

    /// Enqueues `entries` and waits until they are durable.
    pub async fn append(&self, group: GroupId, entries: impl Into<Vec<Entry>>) -> Result<Ticket, LogError> {
        let ticket = self.append_entries(group, entries)?;
        self.wait_durable(ticket).await?;
        Ok(ticket)
    }

    /// The highest ticket known durable: every record up to it survives a crash.
    pub fn durable(&self) -> Ticket {
        Ticket(self.shared.state.borrow().durable_seq)
    }

    /// The ticket of the last record enqueued (durable or not).
    pub fn last_ticket(&self) -> Ticket {
        Ticket(self.shared.state.borrow().next_seq - 1)
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        self.shared.state.borrow().stats
    }

    /// Makes everything enqueued so far durable.
    pub async fn sync(&self) -> Result<Ticket, LogError> {
        let last = self.last_ticket();
        self.wait_durable(last).await?;
        Ok(last)
    }

    /// Returns once `ticket` is durable, flushing if no flush is under way (group commit:
    /// that flush carries every record enqueued by anyone until it starts).
    pub async fn wait_durable(&self, ticket: Ticket) -> Result<(), LogError> {
        loop {
            let generation = {
                let mut state = self.shared.state.borrow_mut();
                if let Some(why) = &state.poisoned {
                    return Err(LogError::Poisoned(why.clone()));
                }
                if state.durable_seq >= ticket.0 {
                    return Ok(());
                }
                if ticket.0 >= state.next_seq {
                    return Err(LogError::Invalid(format!("ticket {} was never issued", ticket.0)));
                }
                if !state.flushing {
                    state.flushing = true;
                    None
                } else {
                    Some(state.flush_generation)
                }
            };
            match generation {
                None => {
                    let guard = FlushGuard { shared: &self.shared, done: false };
                    let outcome = self.flush_pending().await;
                    guard.finish(outcome.as_ref().err())?;
                }
                Some(generation) => FlushDone { shared: &self.shared, generation }.await,
            }
        }
    }

    /// Resolves once `ticket` is durable, like [`Log::wait_durable`], but owns its handle
    /// on the log: the caller goes on using the log (enqueueing more) while it is pending.
    /// Await it to the end: a flush dropped half-way poisons the log.
    pub fn durability(&self, ticket: Ticket) -> impl std::future::Future<Output = Result<(), LogError>> + 'static {
        let log = Log { shared: Rc::clone(&self.shared) };
        async move { log.wait_durable(ticket).await }
    }

    /// The group's index summary, if the log knows the group.
    pub fn group(&self, group: GroupId) -> Option<GroupSummary> {
        let state = self.shared.state.borrow();
        let g = state.index.group(group)?;
        Some(GroupSummary {
            compacted: g.compacted,
            compacted_term: g.compacted_term,
            first_index: g.first_index(),
            last_index: g.last_index(),
            last_term: g.term(g.last_index()).unwrap_or(0),
            hard_state: g.hard_state.map(|(hs, _)| hs),
        })
    }

    /// The groups the log holds anything for.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared.state.borrow().index.groups.keys().copied().collect()
    }

    /// The term of entry `index` of `group` (also answers for the compaction point).
    pub fn term(&self, group: GroupId, index: u64) -> Option<u64> {
        self.shared.state.borrow().index.group(group)?.term(index)
    }

    /// Entries `lo..hi` of `group`, stopping early once their payloads reach `max_bytes`
    /// (at least one entry is returned). Served from the tail cache when possible,
    /// otherwise read back from the segments and checksummed again.
    pub async fn entries(&self, group: GroupId, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Entry>, LogError> {
        super::reader::read_entries(self, group, lo, hi, max_bytes).await
    }

    /// Assigns `record` its sequence number and place, rotating to a new segment when it
    /// does not fit in the current one.
    pub(super) fn place(&self, state: &mut State, record: Record) -> Result<(u64, RecordLoc), LogError> {
        let (seq, loc) = self.reserve(state, record.framed_len())?;
        state.pending.push(Pending { seq, loc, record });
        Ok((seq, loc))
    }

    /// Assigns the next sequence number and a place of `len` bytes; the caller pushes the
    /// record to `pending` right away.
    fn reserve(&self, state: &mut State, len: usize) -> Result<(u64, RecordLoc), LogError> {
        let len = len as u64;
        let segment_bytes = self.shared.options.segment_bytes;
        if len > segment_bytes {
            return Err(LogError::Invalid(format!("record of {len} bytes exceeds the segment size {segment_bytes}")));
        }
        let seq = state.next_seq;
        if state.tail_end + len > segment_bytes {
            state.tail_segment = seq;
            state.tail_end = 0;
        }
        let loc = RecordLoc {
            segment: state.tail_segment,
            offset: u32::try_from(state.tail_end).expect("segment size checked at open"),
            len: u32::try_from(len).expect("record fits in a segment"),
        };
        state.tail_end += len;
        state.next_seq += 1;
        state.stats.records += 1;
        Ok((seq, loc))
    }

    pub(super) fn state_for_write(&self) -> Result<std::cell::RefMut<'_, State>, LogError> {
        let state = self.shared.state.borrow_mut();
        match &state.poisoned {
            Some(why) => Err(LogError::Poisoned(why.clone())),
            None => Ok(state),
        }
    }

    /// Writes and syncs everything pending. Only one runs at a time (`flushing`).
    async fn flush_pending(&self) -> Result<(), LogError> {
        let batch = std::mem::take(&mut self.shared.state.borrow_mut().pending);
        let mut rest = batch.as_slice();
        while let Some(first) = rest.first() {
            let run_len = rest.iter().take_while(|p| p.loc.segment == first.loc.segment).count();
            let (run, after) = rest.split_at(run_len);
            self.write_run(run).await?;
            rest = after;
        }
        let mut state = self.shared.state.borrow_mut();
        let durable = state.durable_seq;
        let budget = self.shared.options.tail_cache_bytes;
        state.index.evict(durable, budget);
        Ok(())
    }

    /// One direct write and one `fdatasync` (none for an `O_DSYNC` segment: the write is
    /// durable when it completes) for consecutive records of one segment.
    async fn write_run(&self, run: &[Pending]) -> Result<(), LogError> {
        let first = run.first().expect("runs are non-empty");
        let last = run.last().expect("runs are non-empty");
        let segment_id = first.loc.segment;
        let (segment, fresh) = self.segment_for_write(segment_id).await?;
        // Writes cover whole filesystem blocks: ext4 serialises direct writes that are only
        // device-block aligned (512 B) and zeroes partial blocks of unwritten extents.
        let align = segment.file.alignment().max(WRITE_ALIGN);
        let (start, carried) = {
            let state = self.shared.state.borrow();
            if state.flushed.segment == segment_id {
                (align_down(state.flushed.end, align), state.flushed.block.clone())
            } else {
                (0, Vec::new())
            }
        };
        debug_assert_eq!(start + carried.len() as u64, u64::from(first.loc.offset), "records follow the durable end");
        let end = u64::from(last.loc.offset) + u64::from(last.loc.len);
        let buffer_len = (align_up(end, align) - start) as usize;
        let mut buffer = segment.file.alloc_dma_buffer(buffer_len);
        let bytes = buffer.as_bytes_mut();
        bytes[..carried.len()].copy_from_slice(&carried);
        for pending in run {
            let from = (u64::from(pending.loc.offset) - start) as usize;
            let to = from + pending.loc.len as usize;
            pending.record.encode_into(pending.seq, first.seq, &mut bytes[from..to]);
        }
        bytes[(end - start) as usize..].fill(0);
        let block = bytes[(align_down(end, align) - start) as usize..(end - start) as usize].to_vec();
        let path = segment.path.display().to_string();
        let written = segment.file.write_at(buffer, start).await.map_err(|e| LogError::glommio(format!("writing {path}"), e))?;
        if written != buffer_len {
            return Err(LogError::io(format!("writing {path}"), std::io::Error::other("short write")));
        }
        if !segment.dsync {
            segment.file.fdatasync().await.map_err(|e| LogError::glommio(format!("syncing {path}"), e))?;
        }
        if fresh {
            segment::sync_dir(&self.shared.dir).await?;
        }
        let mut state = self.shared.state.borrow_mut();
        state.flushed = Flushed { segment: segment_id, end, block };
        state.durable_seq = last.seq;
        state.stats.writes += 1;
        state.stats.syncs += 1;
        state.stats.bytes_written += buffer_len as u64;
        Ok(())
    }

    /// The open segment `id`, or a new one made from the prepared file (renamed to its
    /// final name; `true` then, and the directory must be synced after the data).
    async fn segment_for_write(&self, id: u64) -> Result<(Rc<SegmentFile>, bool), LogError> {
        if let Some(existing) = self.shared.state.borrow().segments.get(&id) {
            return Ok((existing.clone(), false));
        }
        let prepared = self.shared.state.borrow_mut().prepared.take();
        let prepared = match prepared {
            Some(ready) => ready,
            None => {
                let n = self.next_prepare_number();
                let options = &self.shared.options;
                segment::prepare_segment(&self.shared.dir, n, options.segment_bytes, options.zero_fill_segments, options.dsync_writes)
                    .await?
            }
        };
        let path = segment::segment_path(&self.shared.dir, id);
        prepared
            .file
            .rename(&path)
            .await
            .map_err(|e| LogError::glommio(format!("renaming {} to {}", prepared.path.display(), path.display()), e))?;
        let segment = Rc::new(SegmentFile { first_seq: id, path, file: Rc::new(prepared.file), dsync: prepared.dsync });
        {
            let mut state = self.shared.state.borrow_mut();
            state.segments.insert(id, segment.clone());
            state.stats.rotations += 1;
        }
        self.prepare_next_segment();
        Ok((segment, true))
    }

    fn next_prepare_number(&self) -> u64 {
        let mut state = self.shared.state.borrow_mut();
        state.prepare_counter += 1;
        state.prepare_counter
    }

    /// Starts preparing the next segment in the background unless one is ready or coming.
    fn prepare_next_segment(&self) {
        {
            let state = self.shared.state.borrow();
            if state.prepared.is_some() || state.preparing {
                return;
            }
        }
        let n = self.next_prepare_number();
        self.shared.state.borrow_mut().preparing = true;
        let shared = self.shared.clone();
        glommio::spawn_local(async move {
            let options = &shared.options;
            let made =
                segment::prepare_segment(&shared.dir, n, options.segment_bytes, options.zero_fill_segments, options.dsync_writes).await;
            let mut state = shared.state.borrow_mut();
            state.preparing = false;
            for waker in state.prepare_waiters.drain(..) {
                waker.wake();
            }
            match made {
                Ok(prepared) => state.prepared = Some(prepared),
                // Not fatal: the rotation that needs a segment prepares one itself and
                // reports the error to its callers if it fails again.
                Err(error) => tracing::warn!(%error, "preparing the next log segment failed"),
            }
        })
        .detach();
    }

    /// Waits until the background preparation of the next segment (if any) has ended, so
    /// the next rotation finds it ready. Useful before latency-sensitive work or a benchmark.
    pub async fn wait_prepared(&self) {
        PreparationDone { shared: &self.shared }.await
    }

    /// Makes everything durable and waits for background work (segment preparation) to end,
    /// so the directory is quiet afterwards.
    pub async fn close(self) -> Result<(), LogError> {
        self.sync().await?;
        self.wait_prepared().await;
        Ok(())
    }
}

/// What the log knows of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    /// Entries up to here are covered by a snapshot (0: none).
    pub compacted: u64,
    pub compacted_term: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub hard_state: Option<HardState>,
}

pub(super) fn align_down(value: u64, align: u64) -> u64 {
    value / align * align
}

pub(super) fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// Ends a flush: wakes the waiters, and poisons the log if the flush failed or its future
/// was dropped half-way (what reached the disk is then unknown).
struct FlushGuard<'a> {
    shared: &'a Rc<Shared>,
    done: bool,
}

impl FlushGuard<'_> {
    fn finish(mut self, error: Option<&LogError>) -> Result<(), LogError> {
        self.done = true;
        let why = error.map(|e| e.to_string());
        self.end(why.clone());
        match why {
            Some(why) => Err(LogError::Poisoned(why)),
            None => Ok(()),
        }
    }

    fn end(&self, poison: Option<String>) {
        let mut state = self.shared.state.borrow_mut();
        state.flushing = false;
        state.flush_generation += 1;
        if let Some(why) = poison {
            state.poisoned.get_or_insert(why);
        }
        for waker in state.waiters.drain(..) {
            waker.wake();
        }
    }
}

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.end(Some("a flush was cancelled half-way".to_string()));
        }
    }
}

/// Resolves when the flush running at `generation` has ended.
struct FlushDone<'a> {
    shared: &'a Rc<Shared>,
    generation: u64,
}

impl Future for FlushDone<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.state.borrow_mut();
        if state.flush_generation != self.generation {
            return Poll::Ready(());
        }
        state.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

/// Resolves when no segment preparation is running.
struct PreparationDone<'a> {
    shared: &'a Rc<Shared>,
}

impl Future for PreparationDone<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.state.borrow_mut();
        if !state.preparing {
            return Poll::Ready(());
        }
        state.prepare_waiters.push(cx.waker().clone());
        Poll::Pending
    }
}
