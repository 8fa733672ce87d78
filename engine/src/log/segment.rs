//! Segment files: naming, listing, preparing ahead, whole-file reads.
//!
//! A segment is a fixed-size file `<first sequence number, 20 digits>.wal` in the log
//! directory. The next segment is prepared ahead under a temporary name
//! (`prepared-<n>.tmp`: created, its blocks reserved and optionally zero-filled) and renamed
//! to its final name when the first write goes to it. Leftover `.tmp` files are removed at
//! start; they never hold data.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::LogError;

const SEGMENT_SUFFIX: &str = ".wal";
const PREPARED_PREFIX: &str = "prepared-";
const TEMP_SUFFIX: &str = ".tmp";
const IO_CHUNK: usize = 1 << 20;

/// An open segment.
#[derive(Debug)]
pub struct SegmentFile {
    /// Sequence number of its first record; also its name.
    pub first_seq: u64,
    pub path: PathBuf,
    pub file: Rc<DmaFile>,
    /// Opened with `O_DSYNC`: a write is durable when it completes (no `fdatasync` after).
    pub dsync: bool,
}

/// A file created and sized ahead of need, not yet named after its first record.
#[derive(Debug)]
pub struct PreparedSegment {
    pub path: PathBuf,
    pub file: DmaFile,
    /// Reopened with `O_DSYNC` once prepared (see [`SegmentFile::dsync`]).
    pub dsync: bool,
}

/// The path of the segment whose first record has sequence number `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// The first sequence number encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Lists the segments of `dir` by first sequence number, removing leftover temporary files.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let reading = |e| LogError::io(format!("listing {}", dir.display()), e);
    let mut segments = Vec::new();
    for item in std::fs::read_dir(dir).map_err(reading)? {
        let item = item.map_err(reading)?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first_seq) = parse_segment_name(name) {
            segments.push((first_seq, item.path()));
        } else if name.starts_with(PREPARED_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            std::fs::remove_file(item.path()).map_err(|e| LogError::io(format!("removing {}", item.path().display()), e))?;
        }
    }
    segments.sort();
    Ok(segments)
}

/// Makes glommio decide the device's I/O polling support on a non-empty file.
///
/// glommio 0.9 probes whether a device supports polled I/O by reading the first block of
/// the first file opened on it, and caches the answer per device. If that file is empty the
/// read succeeds without reaching the device, the device is wrongly marked pollable, and
/// later reads fail with `EOPNOTSUPP` on devices without polling (virtio here). Opening a
/// file that holds a block first settles the probe correctly.
pub async fn settle_iopoll_probe(dir: &Path) -> Result<(), LogError> {
    let path = dir.join(format!("iopoll-probe{TEMP_SUFFIX}"));
    let failed = |e| LogError::io(format!("writing {}", path.display()), e);
    std::fs::write(&path, [0u8; 4096]).map_err(failed)?;
    let opened = DmaFile::open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = opened.map_err(|e| LogError::glommio(format!("opening {}", path.display()), e))?;
    file.close().await.map_err(|e| LogError::glommio(format!("closing {}", path.display()), e))
}

/// Opens an existing segment for reading and writing with direct I/O.
pub async fn open_segment(path: &Path) -> Result<DmaFile, LogError> {
    OpenOptions::new().read(true).write(true).dma_open(path).await.map_err(|e| LogError::glommio(format!("opening {}", path.display()), e))
}

/// Creates `prepared-<n>.tmp` of `size` bytes: blocks reserved, zero-filled if asked, synced;
/// then, with `dsync`, reopened with `O_DSYNC` for the log's writes.
pub async fn prepare_segment(dir: &Path, n: u64, size: u64, zero_fill: bool, dsync: bool) -> Result<PreparedSegment, LogError> {
    let path = dir.join(format!("{PREPARED_PREFIX}{n}{TEMP_SUFFIX}"));
    let failed = |what: &str| format!("{what} {}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(|e| LogError::glommio(failed("creating"), e))?;
    file.pre_allocate(size, false).await.map_err(|e| LogError::glommio(failed("allocating"), e))?;
    if zero_fill {
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(IO_CHUNK as u64) as usize;
            let mut zeros = file.alloc_dma_buffer(len);
            zeros.as_bytes_mut().fill(0);
            let written = file.write_at(zeros, offset).await.map_err(|e| LogError::glommio(failed("zeroing"), e))?;
            if written != len {
                return Err(LogError::io(failed("zeroing"), std::io::Error::other("short write")));
            }
            offset += len as u64;
        }
    }
    file.fdatasync().await.map_err(|e| LogError::glommio(failed("syncing"), e))?;
    if !dsync {
        return Ok(PreparedSegment { path, file, dsync });
    }
    file.close().await.map_err(|e| LogError::glommio(failed("closing"), e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(&path)
        .await
        .map_err(|e| LogError::glommio(failed("reopening with O_DSYNC"), e))?;
    Ok(PreparedSegment { path, file, dsync })
}

/// Reads the first `len` bytes of `file` into memory.
pub async fn read_prefix(file: &DmaFile, len: u64, path: &Path) -> Result<Vec<u8>, LogError> {
    let len = usize::try_from(len).map_err(|_| LogError::Invalid(format!("{} too large", path.display())))?;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let want = (len - bytes.len()).min(IO_CHUNK);
        let chunk =
            file.read_at(bytes.len() as u64, want).await.map_err(|e| LogError::glommio(format!("reading {}", path.display()), e))?;
        if chunk.is_empty() {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// fsyncs a directory so renames, creations and deletions in it are durable.
pub async fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let failed = |e| LogError::glommio(format!("syncing directory {}", dir.display()), e);
    let handle = glommio::io::Directory::open(dir).await.map_err(failed)?;
    handle.sync().await.map_err(failed)?;
    handle.close().await.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_reject_strangers() {
        let path = segment_path(Path::new("/x"), 123);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000123.wal");
        assert_eq!(parse_segment_name(name), Some(123));
        assert_eq!(parse_segment_name("123.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000012a.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000123.snap"), None);
    }
}
