//! What a power cut loses of the batches the linker stored, with each
//! `store_sync`: a stored batch is acked on ESPANS at once, so JetStream
//! forgets it, and the store is then its only copy.
//!
//! The store lives on an [`espan::testkit::PowerCutDisk`] (its docs say what
//! that simulation shows and what it does not); the disk is copied as it is
//! while the store is still open, and a store opened on the copy counts what
//! survived. Needs root (loop devices, mount, sysctl): `--include-ignored`.

use bytes::Bytes;
use espan::testkit::PowerCutDisk;
use espan_linker::store::{Store, StoredMessage, SyncMode};

const BATCHES: u64 = 200;

/// Stores `BATCHES` batches with `sync`, cuts the power, and returns how many
/// a store opened on what the disk kept holds.
async fn stored_then_kept(sync: &str) -> u64 {
    let mut disk = PowerCutDisk::new(256).unwrap();
    let db = disk.path().join("linker");
    let store = Store::open(&db, &SyncMode(sync.into())).await.unwrap();
    disk.hold_writeback().unwrap();
    for seq in 1..=BATCHES {
        let batch = StoredMessage {
            seq,
            received_ns: 1_750_000_000_000_000_000 + seq,
            data: Bytes::from(vec![b's'; 4096]),
        };
        store.put_messages(&[batch]).await.unwrap();
    }
    // The cut, with the store still open: what it did not sync is gone.
    let after = disk.cut().unwrap();
    let kept = match Store::open(&after.path().join("linker"), &SyncMode::default()).await {
        Ok(reopened) => reopened.message_count().await.unwrap(),
        Err(error) => {
            println!("store_sync {sync}: the store did not open after the cut: {error}");
            0
        }
    };
    drop(store);
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loop devices, mount, sysctl"]
async fn a_power_cut_loses_no_stored_batch_with_store_sync_every() {
    let every = stored_then_kept("every").await;
    let never = stored_then_kept("never").await;
    println!("store_sync every: {every} of {BATCHES} stored batches kept after the cut");
    println!("store_sync never: {never} of {BATCHES} stored batches kept after the cut");
    assert_eq!(every, BATCHES, "every: each stored batch survives");
    assert!(
        never < BATCHES,
        "never: the simulation loses what was not synced"
    );
}
