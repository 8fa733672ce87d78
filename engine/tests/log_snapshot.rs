//! The snapshot store on real files: atomic replacement, chunked reads, corruption found.

use std::future::Future;

use conclave_engine::log::{LogError, SnapshotStore};
use glommio::{LocalExecutorBuilder, Placement};

fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(1 << 20).make().expect("executor").run(make());
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn save_replace_read_in_chunks() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    run(move || async move {
        let store = SnapshotStore::open(&dir).await.unwrap();
        assert_eq!(store.latest(5).await.unwrap(), None);
        assert_eq!(store.load_latest(5).await.unwrap(), None);
        let first = store.save(5, 100, 2, &data(300_000, 1)).await.unwrap();
        assert_eq!((first.index, first.term, first.size), (100, 2, 300_000));
        // A newer snapshot written in pieces replaces it once durable.
        let mut writer = store.create(5, 250, 3).await.unwrap();
        let newer = data(1_000_003, 2);
        for piece in newer.chunks(65_537) {
            writer.write(piece).await.unwrap();
        }
        let second = writer.finish().await.unwrap();
        assert!(!first.path.exists(), "the older snapshot is removed");
        let latest = store.latest(5).await.unwrap().unwrap();
        assert_eq!(latest, second);
        assert_eq!(store.load(&latest).await.unwrap(), newer);
        // Recovery's one-read path finds the same snapshot and data.
        assert_eq!(store.load_latest(5).await.unwrap(), Some((second.clone(), newer.clone().into())));
        let mut reassembled = Vec::new();
        loop {
            let chunk = store.read_chunk(&latest, reassembled.len() as u64, 100_000).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            reassembled.extend_from_slice(&chunk);
        }
        assert_eq!(reassembled, newer);
        // Another group is independent; an empty snapshot is valid.
        let empty = store.save(6, 1, 1, &[]).await.unwrap();
        assert_eq!(store.load(&empty).await.unwrap().len(), 0);
        store.remove_group(5).await.unwrap();
        assert_eq!(store.latest(5).await.unwrap(), None);
        assert!(store.latest(6).await.unwrap().is_some());
        assert_eq!(store.load_latest(6).await.unwrap(), Some((empty, Vec::new().into())));
    });
}

#[test]
fn corruption_and_half_written_snapshots() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    run(move || async move {
        let store = SnapshotStore::open(&dir).await.unwrap();
        let meta = store.save(1, 10, 1, &data(50_000, 9)).await.unwrap();
        let pristine = std::fs::read(&meta.path).unwrap();
        // A flipped data byte fails the data checksum.
        let mut damaged = pristine.clone();
        damaged[12_345] ^= 0x40;
        std::fs::write(&meta.path, &damaged).unwrap();
        assert!(matches!(store.load(&meta).await, Err(LogError::CorruptSnapshot { .. })));
        assert!(matches!(store.load_latest(1).await, Err(LogError::CorruptSnapshot { .. })));
        // A flipped trailer byte or a cut file is caught when looking the snapshot up.
        let mut damaged = pristine.clone();
        let last = damaged.len() - 10;
        damaged[last] ^= 1;
        std::fs::write(&meta.path, &damaged).unwrap();
        assert!(matches!(store.latest(1).await, Err(LogError::CorruptSnapshot { .. })));
        assert!(matches!(store.load_latest(1).await, Err(LogError::CorruptSnapshot { .. })));
        std::fs::write(&meta.path, &pristine[..pristine.len() - 100]).unwrap();
        assert!(matches!(store.latest(1).await, Err(LogError::CorruptSnapshot { .. })));
        assert!(matches!(store.load_latest(1).await, Err(LogError::CorruptSnapshot { .. })));
        std::fs::write(&meta.path, &pristine[..10]).unwrap();
        assert!(matches!(store.load_latest(1).await, Err(LogError::CorruptSnapshot { .. })));
        std::fs::write(&meta.path, &pristine).unwrap();
        // A snapshot abandoned half-way (or cut by a crash) never becomes visible.
        let mut writer = store.create(1, 20, 2).await.unwrap();
        writer.write(&data(10_000, 3)).await.unwrap();
        writer.abort().await.unwrap();
        let mut crashed = store.create(1, 30, 2).await.unwrap();
        crashed.write(&data(10_000, 4)).await.unwrap();
        drop(crashed);
        let reopened = SnapshotStore::open(&dir).await.unwrap();
        assert_eq!(reopened.latest(1).await.unwrap(), Some(meta.clone()));
        assert_eq!(reopened.load(&meta).await.unwrap(), data(50_000, 9));
        assert_eq!(reopened.load_latest(1).await.unwrap(), Some((meta.clone(), data(50_000, 9).into())));
        let leftovers = std::fs::read_dir(meta.path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files removed at open");
    });
}
