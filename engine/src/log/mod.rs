//! The segmented write-ahead log of a shard and the snapshot store, on io_uring.
//!
//! One [`Log`] per glommio shard holds the Raft log of every group of that shard: entries,
//! hard states and compaction markers of many groups are framed as records
//! ([`record`]), batched into one aligned `O_DIRECT` write and made durable by one
//! `fdatasync` (group commit, [`writer`]). Records go to fixed-size, pre-allocated segment
//! files named by the sequence number of their first record ([`segment`]). An in-memory
//! index maps (group, index) to the record holding the entry and keeps a cache of the recent
//! tail ([`index`]). [`recovery`] rebuilds everything at start and tells a torn tail (cut
//! off silently) from corruption (refused, naming file and offset). [`compaction`] drops
//! entries covered by snapshots and deletes or rewrites old segments. [`snapshot`] stores
//! one snapshot file per group.
//!
//! The log is single-threaded (`!Send`): it lives on the shard's executor and is shared by
//! that shard's tasks through `Rc`.
//!
//! API in short: [`Log::open`] → ([`Log`], [`Recovery`]); enqueue with
//! [`Log::append_entries`], [`Log::save_hard_state`], [`Log::compact_group`],
//! [`Log::remove_group`] (each returns a [`Ticket`], synchronously); make durable with
//! [`Log::wait_durable`] / [`Log::sync`] (group commit) or [`Log::append`]; read with
//! [`Log::entries`], [`Log::term`], [`Log::group`]; free space with [`Log::reclaim`]; end with
//! [`Log::close`]. Snapshots: [`SnapshotStore`].
//!
//! Typical use from a shard loop:
//! ```no_run
//! # async fn demo() -> Result<(), conclave_engine::log::LogError> {
//! use conclave_engine::log::{Entry, HardState, Log, LogOptions};
//! let (log, recovered) = Log::open("/data/shard-0/log", LogOptions::default()).await?;
//! for (group, state) in &recovered.groups { let _ = (group, state.last_index()); }
//! // Enqueue the output of one Raft step for many groups, then wait once.
//! let t1 = log.append_entries(7, &[Entry::new(1, 1, 0, b"cmd".as_slice())])?;
//! let t2 = log.save_hard_state(7, HardState { term: 1, vote: 2, commit: 0 })?;
//! log.wait_durable(t1.max(t2)).await?;
//! # Ok(()) }
//! ```

pub mod compaction;
mod error;
pub mod index;
mod reader;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod snapshot;
pub mod writer;

pub use compaction::CompactionReport;
pub use error::LogError;
pub use record::{Entry, HardState};
pub use recovery::{RecoveredGroup, Recovery};
pub use snapshot::{SnapshotMeta, SnapshotStore, SnapshotWriter};
pub use writer::{GroupSummary, Log, LogStats, Ticket};

/// Raft group identifier, as used across the engine.
pub type GroupId = u32;

/// Tunables of a [`Log`].
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Size of every segment file, pre-allocated when the segment is prepared. A record
    /// never spans segments, so this also bounds the largest record. Default 64 MiB.
    pub segment_bytes: u64,
    /// Byte budget of the in-memory cache of recent entries (payload bytes). Entries not yet
    /// durable are always cached regardless of the budget. Default 64 MiB.
    pub tail_cache_bytes: usize,
    /// Write zeros over a new segment while preparing it (instead of only reserving its
    /// blocks), so appends do not pay for converting unwritten extents at `fdatasync`.
    /// Default true; see tuning.md.
    pub zero_fill_segments: bool,
    /// When recovery finds corruption (a bad record followed by durable data), truncate the
    /// log there instead of refusing to start. Loses acknowledged records. Default false.
    pub repair_corruption: bool,
    /// [`Log::reclaim`] rewrites the live records of the oldest segment forward (then deletes
    /// it) when they take at most this many bytes. Default 1/8 of `segment_bytes`.
    pub relocate_max_bytes: u64,
    /// Open new segments with `O_DSYNC`, so a flush is one direct write that is durable when
    /// it completes, instead of a write then an `fdatasync`. Default true (15% more churn on
    /// a 3-node cluster; see tuning.md).
    pub dsync_writes: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        let segment_bytes = 64 << 20;
        LogOptions {
            segment_bytes,
            tail_cache_bytes: 64 << 20,
            zero_fill_segments: true,
            repair_corruption: false,
            relocate_max_bytes: segment_bytes / 8,
            dsync_writes: true,
        }
    }
}

impl LogOptions {
    /// Options with a given segment size (other fields default, relocation at 1/8 of it).
    pub fn with_segment_bytes(segment_bytes: u64) -> Self {
        LogOptions { segment_bytes, relocate_max_bytes: segment_bytes / 8, ..Self::default() }
    }
}
