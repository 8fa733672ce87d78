//! The snapshot store: one durable snapshot file per group, written atomically.
//!
//! Layout: `<dir>/<group>/<index, 20 digits>-<term, 20 digits>.snap`, holding the snapshot
//! bytes followed by a 64-byte trailer (magic, version, group, index, term, data length,
//! `crc32fast` of the data, trailer checksum). A snapshot is streamed to `<name>.tmp` with
//! direct I/O, fsynced, renamed into place and the directory fsynced; only then are older
//! snapshots of the group removed. Leftover `.tmp` files are removed at open. Snapshots are
//! read back in chunks for sending, or whole with the checksum verified.

use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes};
use futures_lite::AsyncWriteExt;
use glommio::io::{DmaFile, DmaStreamWriter, DmaStreamWriterBuilder, OpenOptions};

use super::segment::{settle_iopoll_probe, sync_dir};
use super::{GroupId, LogError};

const MAGIC: &[u8; 8] = b"CNCLSNAP";
const VERSION: u32 = 1;
const TRAILER_BYTES: usize = 64;
const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";

/// A durable snapshot of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub group: GroupId,
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Bytes of snapshot data (without the trailer).
    pub size: u64,
    pub path: PathBuf,
}

/// The snapshots of every group of a shard, under one directory.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// A snapshot being written; nothing is visible until [`SnapshotWriter::finish`].
pub struct SnapshotWriter {
    group: GroupId,
    index: u64,
    term: u64,
    group_dir: PathBuf,
    temp_path: PathBuf,
    final_path: PathBuf,
    stream: DmaStreamWriter,
    crc: crc32fast::Hasher,
    size: u64,
}

impl SnapshotStore {
    /// Opens the store in `dir` (created if needed), removing half-written snapshots. Must
    /// run on a glommio executor.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, LogError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io(format!("creating {}", dir.display()), e))?;
        // Absolute from here on (glommio cannot fsync a directory given by a relative path).
        let dir = std::fs::canonicalize(&dir).map_err(|e| LogError::io(format!("resolving {}", dir.display()), e))?;
        let listing = |e| LogError::io(format!("listing {}", dir.display()), e);
        for group_dir in std::fs::read_dir(&dir).map_err(listing)? {
            let group_dir = group_dir.map_err(listing)?.path();
            if !group_dir.is_dir() {
                continue;
            }
            let listing = |e| LogError::io(format!("listing {}", group_dir.display()), e);
            for file in std::fs::read_dir(&group_dir).map_err(listing)? {
                let path = file.map_err(listing)?.path();
                if path.extension().is_some_and(|ext| ext == &TEMP_SUFFIX[1..]) {
                    std::fs::remove_file(&path).map_err(|e| LogError::io(format!("removing {}", path.display()), e))?;
                }
            }
        }
        settle_iopoll_probe(&dir).await?;
        Ok(SnapshotStore { dir })
    }

    fn group_dir(&self, group: GroupId) -> PathBuf {
        self.dir.join(group.to_string())
    }

    /// Starts writing the snapshot of `group` at (`index`, `term`).
    pub async fn create(&self, group: GroupId, index: u64, term: u64) -> Result<SnapshotWriter, LogError> {
        let group_dir = self.group_dir(group);
        std::fs::create_dir_all(&group_dir).map_err(|e| LogError::io(format!("creating {}", group_dir.display()), e))?;
        let final_path = group_dir.join(format!("{index:020}-{term:020}{SUFFIX}"));
        let temp_path = group_dir.join(format!("{index:020}-{term:020}{SUFFIX}{TEMP_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&temp_path)
            .await
            .map_err(|e| LogError::glommio(format!("creating {}", temp_path.display()), e))?;
        let stream = DmaStreamWriterBuilder::new(file).with_buffer_size(128 << 10).with_write_behind(2).build();
        Ok(SnapshotWriter { group, index, term, group_dir, temp_path, final_path, stream, crc: crc32fast::Hasher::new(), size: 0 })
    }

    /// Writes a whole snapshot durably and removes older ones of the group.
    pub async fn save(&self, group: GroupId, index: u64, term: u64, data: &[u8]) -> Result<SnapshotMeta, LogError> {
        let mut writer = self.create(group, index, term).await?;
        writer.write(data).await?;
        writer.finish().await
    }

    /// The (index, term, path) of the newest snapshot file of `group`, by its name.
    fn newest_file(&self, group: GroupId) -> Result<Option<(u64, u64, PathBuf)>, LogError> {
        let group_dir = self.group_dir(group);
        let listing = |e| LogError::io(format!("listing {}", group_dir.display()), e);
        let entries = match std::fs::read_dir(&group_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(listing(e)),
        };
        let mut newest: Option<(u64, u64, PathBuf)> = None;
        for item in entries {
            let path = item.map_err(listing)?.path();
            let Some((index, term)) = path.file_name().and_then(|n| n.to_str()).and_then(parse_name) else { continue };
            if newest.as_ref().is_none_or(|(i, _, _)| index > *i) {
                newest = Some((index, term, path));
            }
        }
        Ok(newest)
    }

    /// The newest durable snapshot of `group`, its trailer checked (not yet its data).
    pub async fn latest(&self, group: GroupId) -> Result<Option<SnapshotMeta>, LogError> {
        let Some((index, term, path)) = self.newest_file(group)? else { return Ok(None) };
        let meta = read_trailer(&path).await?;
        check_named(&meta, group, index, term)?;
        Ok(Some(meta))
    }

    /// The newest durable snapshot of `group` with its data, trailer and data checksums
    /// verified, in one open and one read of the file ([`SnapshotStore::latest`] then
    /// [`SnapshotStore::load`] open it twice): a node recovering thousands of groups loads
    /// one snapshot each.
    pub async fn load_latest(&self, group: GroupId) -> Result<Option<(SnapshotMeta, Bytes)>, LogError> {
        let Some((index, term, path)) = self.newest_file(group)? else { return Ok(None) };
        let (meta, data) = read_verified(&path).await?;
        check_named(&meta, group, index, term)?;
        Ok(Some((meta, data)))
    }

    /// Up to `max_len` bytes of snapshot data from `offset` (empty at the end), for sending.
    pub async fn read_chunk(&self, meta: &SnapshotMeta, offset: u64, max_len: usize) -> Result<Bytes, LogError> {
        if offset >= meta.size {
            return Ok(Bytes::new());
        }
        let len = (meta.size - offset).min(max_len as u64) as usize;
        let file = open_read(&meta.path).await?;
        let read = file.read_at(offset, len).await.map_err(|e| LogError::glommio(format!("reading {}", meta.path.display()), e));
        let _ = file.close().await;
        let read = read?;
        if read.len() != len {
            return Err(LogError::CorruptSnapshot { file: meta.path.clone(), reason: "file shorter than its trailer says".into() });
        }
        Ok(Bytes::copy_from_slice(&read))
    }

    /// The whole snapshot data, its checksum verified.
    pub async fn load(&self, meta: &SnapshotMeta) -> Result<Bytes, LogError> {
        Ok(read_verified(&meta.path).await?.1)
    }

    /// Removes every snapshot of `group`.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), LogError> {
        let group_dir = self.group_dir(group);
        match std::fs::remove_dir_all(&group_dir) {
            Ok(()) => sync_dir(&self.dir).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io(format!("removing {}", group_dir.display()), e)),
        }
    }
}

impl SnapshotWriter {
    /// Appends snapshot bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), LogError> {
        self.crc.update(chunk);
        self.size += chunk.len() as u64;
        self.stream.write_all(chunk).await.map_err(|e| LogError::io(format!("writing {}", self.temp_path.display()), e))
    }

    /// Seals the snapshot: trailer, fsync, rename, directory fsync; then removes older
    /// snapshots of the group.
    pub async fn finish(mut self) -> Result<SnapshotMeta, LogError> {
        let data_crc = self.crc.clone().finalize();
        let trailer = encode_trailer(self.group, self.index, self.term, self.size, data_crc);
        let failed = |e| LogError::io(format!("writing {}", self.temp_path.display()), e);
        self.stream.write_all(&trailer).await.map_err(failed)?;
        self.stream.close().await.map_err(failed)?;
        glommio::io::rename(&self.temp_path, &self.final_path)
            .await
            .map_err(|e| LogError::glommio(format!("renaming {}", self.temp_path.display()), e))?;
        sync_dir(&self.group_dir).await?;
        let listing = |e| LogError::io(format!("listing {}", self.group_dir.display()), e);
        let mut removed = false;
        for item in std::fs::read_dir(&self.group_dir).map_err(listing)? {
            let path = item.map_err(listing)?.path();
            let older = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_name)
                .is_some_and(|(i, t)| (i, t) != (self.index, self.term) && i <= self.index);
            if older {
                std::fs::remove_file(&path).map_err(|e| LogError::io(format!("removing {}", path.display()), e))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.group_dir).await?;
        }
        Ok(SnapshotMeta { group: self.group, index: self.index, term: self.term, size: self.size, path: self.final_path })
    }

    /// Gives up: the temporary file is removed.
    pub async fn abort(mut self) -> Result<(), LogError> {
        let _ = self.stream.close().await;
        std::fs::remove_file(&self.temp_path).map_err(|e| LogError::io(format!("removing {}", self.temp_path.display()), e))
    }
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (index, term) = stem.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

fn encode_trailer(group: GroupId, index: u64, term: u64, size: u64, data_crc: u32) -> [u8; TRAILER_BYTES] {
    let mut trailer = [0u8; TRAILER_BYTES];
    {
        let mut out = &mut trailer[..];
        out.put_slice(MAGIC);
        out.put_u32_le(VERSION);
        out.put_u32_le(group);
        out.put_u64_le(index);
        out.put_u64_le(term);
        out.put_u64_le(size);
        out.put_u32_le(data_crc);
    }
    let crc = crc32fast::hash(&trailer[..TRAILER_BYTES - 4]);
    trailer[TRAILER_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
    trailer
}

async fn open_read(path: &Path) -> Result<DmaFile, LogError> {
    DmaFile::open(path).await.map_err(|e| LogError::glommio(format!("opening {}", path.display()), e))
}

/// The whole snapshot file at `path` in one read: its meta and data, the trailer and the
/// data checksum verified.
async fn read_verified(path: &Path) -> Result<(SnapshotMeta, Bytes), LogError> {
    let file = open_read(path).await?;
    let outcome = async {
        let size = file.file_size().await.map_err(|e| LogError::glommio(format!("sizing {}", path.display()), e))?;
        let read = file.read_at(0, size as usize).await.map_err(|e| LogError::glommio(format!("reading {}", path.display()), e))?;
        Ok((size, read))
    }
    .await;
    let _ = file.close().await;
    let (size, read) = outcome?;
    let corrupt = |reason: &str| LogError::CorruptSnapshot { file: path.to_path_buf(), reason: reason.into() };
    if (read.len() as u64) != size || size < TRAILER_BYTES as u64 {
        return Err(corrupt("shorter than its trailer or its size"));
    }
    let data_len = read.len() - TRAILER_BYTES;
    let (meta, data_crc) = parse_trailer(path, &read[data_len..], size)?;
    if crc32fast::hash(&read[..data_len]) != data_crc {
        return Err(corrupt("data checksum mismatch"));
    }
    Ok((meta, Bytes::copy_from_slice(&read[..data_len])))
}

/// A trailer that does not say what the file's name says is corrupt.
fn check_named(meta: &SnapshotMeta, group: GroupId, index: u64, term: u64) -> Result<(), LogError> {
    if meta.group != group || meta.index != index || meta.term != term {
        return Err(LogError::CorruptSnapshot { file: meta.path.clone(), reason: "trailer does not match the file name".into() });
    }
    Ok(())
}

/// Reads and checks the trailer; returns the meta and the stored data checksum.
async fn read_trailer_raw(path: &Path) -> Result<(SnapshotMeta, u32), LogError> {
    let corrupt = |reason: &str| LogError::CorruptSnapshot { file: path.to_path_buf(), reason: reason.into() };
    let file = open_read(path).await?;
    let outcome = async {
        let size = file.file_size().await.map_err(|e| LogError::glommio(format!("sizing {}", path.display()), e))?;
        if size < TRAILER_BYTES as u64 {
            return Err(corrupt("shorter than its trailer"));
        }
        let read = file
            .read_at(size - TRAILER_BYTES as u64, TRAILER_BYTES)
            .await
            .map_err(|e| LogError::glommio(format!("reading {}", path.display()), e))?;
        Ok((size, read.to_vec()))
    }
    .await;
    let _ = file.close().await;
    let (size, trailer) = outcome?;
    parse_trailer(path, &trailer, size)
}

/// Checks the trailer bytes of a file of `size` bytes; returns the meta and the stored
/// data checksum.
fn parse_trailer(path: &Path, trailer: &[u8], size: u64) -> Result<(SnapshotMeta, u32), LogError> {
    let corrupt = |reason: &str| LogError::CorruptSnapshot { file: path.to_path_buf(), reason: reason.into() };
    if trailer.len() != TRAILER_BYTES {
        return Err(corrupt("trailer cut short"));
    }
    let stored_crc = u32::from_le_bytes(trailer[TRAILER_BYTES - 4..].try_into().expect("4 bytes"));
    if crc32fast::hash(&trailer[..TRAILER_BYTES - 4]) != stored_crc {
        return Err(corrupt("trailer checksum mismatch"));
    }
    let mut cursor = trailer;
    if &cursor[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    cursor.advance(8);
    if cursor.get_u32_le() != VERSION {
        return Err(corrupt("unknown version"));
    }
    let group = cursor.get_u32_le();
    let index = cursor.get_u64_le();
    let term = cursor.get_u64_le();
    let data_size = cursor.get_u64_le();
    let data_crc = cursor.get_u32_le();
    if data_size != size - TRAILER_BYTES as u64 {
        return Err(corrupt("data length does not match the file size"));
    }
    Ok((SnapshotMeta { group, index, term, size: data_size, path: path.to_path_buf() }, data_crc))
}

async fn read_trailer(path: &Path) -> Result<SnapshotMeta, LogError> {
    Ok(read_trailer_raw(path).await?.0)
}
