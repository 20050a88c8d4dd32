//! The linker's durable state, in SurrealDB (embedded, `kv-surrealkv`) at `db_path`.
//!
//! Measured here, SurrealDB takes ~20k rows/s with secondary indexes but ~870k
//! spans/s when a row holds a whole batch as bytes, so nothing here is a row per
//! span:
//! - `batch`: each consumed ESPANS message as received (id = its stream
//!   sequence, so a redelivered message lands on the same row). Written before
//!   the JetStream ack; on start the open window is rebuilt from these rows;
//!   deleted in id ranges once the engine no longer needs them.
//! - `forgotten`: spans the engine forgot (trace finished, past late retention)
//!   as packed (batch, span id) pairs, one row per flush tick; a rebuild leaves
//!   them out of the batches still stored, or they would come out again as a
//!   trace of their own. Deleted with their batches.
//! - `tracebatch`: the kept traces of one flush, encoded as a `TraceBatch`, with
//!   an index on `finished_ns` for `traces --since` and for retention.
//! - `traceid`: one small row per kept trace and `tracebatch` row holding a part
//!   of it, with the id `[trace id in hex, tracebatch id]` and no field and no
//!   secondary index: a trace's parts are one range of record ids, and a row is
//!   only ever inserted, never updated (an update of an existing row, as in
//!   `ON DUPLICATE KEY UPDATE`, rolls back a save point, which SurrealDB makes
//!   cost the size of the whole transaction: measured, it took half the linker's
//!   CPU when traces came in many parts).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use surrealdb::Surreal;
use surrealdb::engine::local::{Db, SurrealKv};
use surrealdb::types::{SurrealValue, Value};

use espan::wire::{self, Trace, TraceBatch};

/// A store error, naming the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened at `path`.
    #[error("cannot open SurrealDB store at {}: {reason}", path.display())]
    Open {
        /// `db_path`.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process (a running linker) has the store open.
    #[error("the store at {} is in use by another process (a running espan-linker?)", path.display())]
    Locked {
        /// `db_path`.
        path: PathBuf,
    },
    /// A query failed.
    #[error("store {operation} failed: {reason}")]
    Query {
        /// What was being done.
        operation: &'static str,
        /// The database's message.
        reason: String,
    },
    /// A stored row did not decode (a bug or a damaged store).
    #[error("stored {what} {id} does not decode: {reason}")]
    Corrupt {
        /// The table.
        what: &'static str,
        /// The row id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// How SurrealDB syncs commits to disk: `every` commit (default, grouped), `never`
/// (leave it to the OS), or an interval such as `1s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMode(pub String);

impl Default for SyncMode {
    fn default() -> Self {
        SyncMode("every".into())
    }
}

impl espan::config::Setting for SyncMode {
    fn from_text(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "every" || text == "never" {
            return Ok(SyncMode(text.into()));
        }
        match espan::config::GoDuration::parse(text) {
            Ok(d) if d.as_millis() > 100 => Ok(SyncMode(text.into())),
            _ => Err("expected every, never, or an interval above 100ms such as 1s".into()),
        }
    }
}

/// A consumed ESPANS message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Its ESPANS stream sequence (the engine's tag for its spans).
    pub seq: u64,
    /// When the linker received it (linker clock, ns).
    pub received_ns: u64,
    /// The message payload, as published by the probe.
    pub data: Bytes,
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct MessageRow {
    id: u64,
    received_ns: u64,
    codec: String,
    data: surrealdb::types::Bytes,
}

/// Spans the engine forgot: (batch seq, span id) pairs, 16 bytes each, little-endian. `max_seq` says when the row can go.
#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct ForgottenRow {
    id: u64,
    max_seq: u64,
    data: surrealdb::types::Bytes,
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct ForgottenOut {
    seq: u64,
    data: surrealdb::types::Bytes,
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct MessageOut {
    seq: u64,
    received_ns: u64,
    codec: Option<String>,
    data: surrealdb::types::Bytes,
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct DataOut {
    seq: u64,
    codec: Option<String>,
    data: surrealdb::types::Bytes,
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct TraceBatchRow {
    id: u64,
    finished_ns: u64,
    traces: u64,
    spans: u64,
    ids: Vec<String>,
    codec: String,
    data: surrealdb::types::Bytes,
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct TraceIdRow {
    id: (String, u64),
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct MaxOut {
    seq: u64,
}

#[derive(SurrealValue)]
#[surreal(crate = "surrealdb::types")]
struct SeqIdsOut {
    seq: u64,
    ids: Vec<String>,
}

/// The trace id as stored and printed: 32 lowercase hex digits.
pub fn trace_id_hex(high: u64, low: u64) -> String {
    format!("{high:016x}{low:016x}")
}

/// The linker's SurrealDB store.
pub struct Store {
    db: Surreal<Db>,
    path: PathBuf,
}

const SCHEMA: &str = "
DEFINE TABLE IF NOT EXISTS batch SCHEMALESS;
DEFINE TABLE IF NOT EXISTS tracebatch SCHEMALESS;
DEFINE INDEX IF NOT EXISTS tracebatch_finished ON tracebatch FIELDS finished_ns;
DEFINE TABLE IF NOT EXISTS traceid SCHEMALESS;
DEFINE TABLE IF NOT EXISTS forgotten SCHEMALESS;
";

fn query_error(operation: &'static str) -> impl Fn(surrealdb::Error) -> StoreError {
    move |e| StoreError::Query {
        operation,
        reason: e.to_string(),
    }
}

impl Store {
    /// Opens (or creates) the store at `path`. SurrealKV holds a lock file while
    /// a process has the store open; one that was just closed releases it in the
    /// background, so a locked store is retried for up to `wait_for_lock`.
    pub async fn open_waiting(
        path: &Path,
        sync: &SyncMode,
        wait_for_lock: Duration,
    ) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;
        let started = std::time::Instant::now();
        let db = loop {
            match Surreal::new::<SurrealKv>(path.to_string_lossy().as_ref())
                .sync(&sync.0)
                .await
            {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("already locked") => {
                    if started.elapsed() >= wait_for_lock {
                        return Err(StoreError::Locked {
                            path: path.to_owned(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(open_error(e.to_string())),
            }
        };
        db.use_ns("espan")
            .use_db("linker")
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let store = Self {
            db,
            path: path.to_owned(),
        };
        store.run("define schema", SCHEMA, vec![]).await?;
        Ok(store)
    }

    /// [`Store::open_waiting`] with a 10 s wait for the lock.
    pub async fn open(path: &Path, sync: &SyncMode) -> Result<Self, StoreError> {
        Self::open_waiting(path, sync, Duration::from_secs(10)).await
    }

    /// `db_path`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run(
        &self,
        operation: &'static str,
        sql: &str,
        vars: Vec<(&'static str, Value)>,
    ) -> Result<surrealdb::IndexedResults, StoreError> {
        let mut query = self.db.query(sql);
        for (name, value) in vars {
            query = query.bind((name, value));
        }
        let response = query.await.map_err(query_error(operation))?;
        response.check().map_err(query_error(operation))
    }

    /// Runs one `SELECT` and takes its rows.
    async fn select<T: SurrealValue>(
        &self,
        operation: &'static str,
        sql: &str,
        vars: Vec<(&'static str, Value)>,
    ) -> Result<Vec<T>, StoreError> {
        let mut response = self.run(operation, sql, vars).await?;
        response.take(0).map_err(query_error(operation))
    }

    /// Stores consumed messages; a message stored before (redelivered after a
    /// crash) is left as it is.
    pub async fn put_messages(&self, messages: &[StoredMessage]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let rows: Vec<MessageRow> = messages
            .iter()
            .map(|b| MessageRow {
                id: b.seq,
                received_ns: b.received_ns,
                codec: LZ4.into(),
                data: pack(&b.data).into(),
            })
            .collect();
        self.run(
            "put messages",
            "INSERT IGNORE INTO batch $rows RETURN NONE",
            vec![("rows", rows.into_value())],
        )
        .await?;
        Ok(())
    }

    /// Every stored message, by stream sequence: the open window to rebuild.
    pub async fn window_messages(&self) -> Result<Vec<StoredMessage>, StoreError> {
        let rows: Vec<MessageOut> = self
            .select(
                "read window",
                "SELECT record::id(id) AS seq, received_ns, codec, data FROM batch ORDER BY seq",
                vec![],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredMessage {
                    seq: r.seq,
                    received_ns: r.received_ns,
                    data: unpack(r.codec.as_deref(), r.data.into_inner(), "batch", r.seq)?,
                })
            })
            .collect()
    }

    /// Deletes the messages with a sequence below `seq`, as one range, then
    /// the records of forgotten spans that only concern them.
    pub async fn delete_messages_below(&self, seq: u64) -> Result<(), StoreError> {
        if seq == 0 {
            return Ok(());
        }
        // Record-id ranges are scanned in key order; the bounds are our own
        // integers. A crash between the two leaves records about batches that
        // are gone: harmless, and deleted next time.
        let sql = format!(
            "DELETE batch:0..{seq} RETURN NONE; DELETE forgotten WHERE max_seq < {seq} RETURN NONE"
        );
        self.run("delete batches", &sql, vec![]).await?;
        Ok(())
    }

    /// Records spans the engine forgot, as (batch seq, span id), in row `id`:
    /// a rebuild leaves them out.
    pub async fn put_forgotten(&self, id: u64, spans: &[(u64, u64)]) -> Result<(), StoreError> {
        let Some(max_seq) = spans.iter().map(|(seq, _)| *seq).max() else {
            return Ok(());
        };
        let mut data = Vec::with_capacity(spans.len() * 16);
        for (seq, span_id) in spans {
            data.extend_from_slice(&seq.to_le_bytes());
            data.extend_from_slice(&span_id.to_le_bytes());
        }
        let row = ForgottenRow {
            id,
            max_seq,
            data: Bytes::from(data).into(),
        };
        self.run(
            "put forgotten spans",
            "INSERT INTO forgotten $row RETURN NONE",
            vec![("row", row.into_value())],
        )
        .await?;
        Ok(())
    }

    /// Every recorded forgotten span as (batch seq, span id), and the next
    /// free row id.
    pub async fn forgotten_spans(
        &self,
    ) -> Result<(std::collections::HashSet<(u64, u64)>, u64), StoreError> {
        let rows: Vec<ForgottenOut> = self
            .select(
                "read forgotten spans",
                "SELECT record::id(id) AS seq, data FROM forgotten",
                vec![],
            )
            .await?;
        let mut spans = std::collections::HashSet::new();
        let mut next_id = 1;
        for row in rows {
            next_id = next_id.max(row.seq + 1);
            let data = row.data.into_inner();
            if data.len() % 16 != 0 {
                return Err(StoreError::Corrupt {
                    what: "forgotten",
                    id: row.seq.to_string(),
                    reason: format!(
                        "{} bytes is not a whole number of 16-byte pairs",
                        data.len()
                    ),
                });
            }
            for pair in data.chunks_exact(16) {
                let seq = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
                let span_id = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
                spans.insert((seq, span_id));
            }
        }
        Ok((spans, next_id))
    }

    /// Rows in `batch` (for metrics and tests).
    pub async fn message_count(&self) -> Result<u64, StoreError> {
        self.count("batch").await
    }

    async fn count(&self, table: &'static str) -> Result<u64, StoreError> {
        let sql = format!("SELECT count() AS seq FROM {table} GROUP ALL");
        let rows: Vec<MaxOut> = self.select("count", &sql, vec![]).await?;
        Ok(rows.first().map_or(0, |r| r.seq))
    }

    /// The next free `tracebatch` id (after a restart, continue after the last).
    pub async fn next_trace_batch_seq(&self) -> Result<u64, StoreError> {
        let rows: Vec<MaxOut> = self
            .select(
                "read last trace batch",
                "SELECT record::id(id) AS seq FROM tracebatch ORDER BY seq DESC LIMIT 1",
                vec![],
            )
            .await?;
        Ok(rows.first().map_or(1, |r| r.seq + 1))
    }

    /// Stores the kept traces of one flush as row `seq`, and indexes their ids.
    pub async fn put_traces(
        &self,
        seq: u64,
        finished_ns: u64,
        traces: &[Trace],
    ) -> Result<(), StoreError> {
        if traces.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = traces
            .iter()
            .map(|t| trace_id_hex(t.trace_id_high, t.trace_id_low))
            .collect();
        let mut batch = TraceBatch {
            version: 0,
            linker: String::new(),
            boot_id: 0,
            seq,
            traces: traces.to_vec(),
        };
        let data = wire::encode_trace_batch(&mut batch);
        let spans = traces.iter().map(|t| t.spans.len() as u64).sum();
        self.put_trace_batch(seq, finished_ns, ids, spans, data)
            .await
    }

    /// Stores an encoded `TraceBatch` (`data`) as row `seq`: `ids` are its
    /// traces' ids in order (a trace id once per part), `spans` its span count.
    pub async fn put_trace_batch(
        &self,
        seq: u64,
        finished_ns: u64,
        ids: Vec<String>,
        spans: u64,
        data: Bytes,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // The index names each batch once per trace, however many parts it holds.
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let row = TraceBatchRow {
            id: seq,
            finished_ns,
            traces: ids.len() as u64,
            spans,
            ids,
            codec: LZ4.into(),
            data: pack(&data).into(),
        };
        let index: Vec<TraceIdRow> = distinct
            .into_iter()
            .map(|id| TraceIdRow { id: (id, seq) })
            .collect();
        self.run(
            "put traces",
            "BEGIN TRANSACTION;
             INSERT IGNORE INTO tracebatch $row RETURN NONE;
             INSERT IGNORE INTO traceid $index RETURN NONE;
             COMMIT TRANSACTION;",
            vec![("row", row.into_value()), ("index", index.into_value())],
        )
        .await?;
        Ok(())
    }

    /// The traces finished at or after `since_ns`, in finishing order (a trace
    /// with late parts appears once per part).
    pub async fn traces_since(&self, since_ns: u64) -> Result<Vec<Trace>, StoreError> {
        let rows: Vec<DataOut> = self
            .select("list traces", "SELECT record::id(id) AS seq, codec, data FROM tracebatch WHERE finished_ns >= $since ORDER BY seq", vec![("since", since_ns.into_value())])
            .await?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(decode_traces(&row)?);
        }
        Ok(out)
    }

    /// The newest traces finished at or after `since_ns` that `keep`, at most
    /// `limit` of them, in finishing order: the store is read newest batch
    /// first, a page at a time, and no further than it takes (a long `since`
    /// does not load the whole store). Also returns the batches read.
    pub async fn newest_traces(
        &self,
        since_ns: u64,
        limit: usize,
        keep: impl Fn(&Trace) -> bool,
    ) -> Result<(Vec<Trace>, usize), StoreError> {
        const PAGE: u64 = 64;
        let mut newest_first = Vec::new();
        let mut read = 0;
        // SurrealDB integers are i64: u64::MAX would read as -1.
        let mut before = i64::MAX as u64;
        while newest_first.len() < limit {
            let rows: Vec<DataOut> = self
                .select(
                    "list newest traces",
                    "SELECT record::id(id) AS seq, codec, data FROM tracebatch WHERE finished_ns >= $since AND record::id(id) < $before ORDER BY seq DESC LIMIT $page",
                    vec![
                        ("since", since_ns.into_value()),
                        ("before", before.into_value()),
                        ("page", PAGE.into_value()),
                    ],
                )
                .await?;
            for row in &rows {
                if newest_first.len() >= limit {
                    break;
                }
                read += 1;
                before = before.min(row.seq);
                let traces = decode_traces(row)?;
                newest_first.extend(traces.into_iter().rev().filter(|t| keep(t)));
            }
            if (rows.len() as u64) < PAGE {
                break;
            }
        }
        newest_first.truncate(limit);
        newest_first.reverse();
        Ok((newest_first, read))
    }

    /// Every stored part of trace `id` (32 hex digits), oldest first.
    pub async fn trace(&self, id: &str) -> Result<Vec<Trace>, StoreError> {
        // The id goes into the query text (a record-id range takes no
        // parameters): only 32 hex digits can.
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Vec::new());
        }
        let id = id.to_ascii_lowercase();
        let sql = format!(
            "SELECT VALUE record::id(id)[1] FROM traceid:['{id}', 0]..=['{id}', {}]",
            i64::MAX
        );
        let batches: Vec<u64> = self.select("find trace", &sql, vec![]).await?;
        let mut parts = Vec::new();
        for seq in batches {
            let rows: Vec<DataOut> = self
            .select("read trace batch", "SELECT record::id(id) AS seq, codec, data FROM type::record('tracebatch', $seq)", vec![("seq", seq.into_value())])
            .await?;
            for row in rows {
                parts.extend(
                    decode_traces(&row)?
                        .into_iter()
                        .filter(|t| trace_id_hex(t.trace_id_high, t.trace_id_low) == id),
                );
            }
        }
        Ok(parts)
    }

    /// Deletes finished traces older than `before_ns` (the retention period):
    /// the `tracebatch` rows by their indexed time, then their id rows. Returns
    /// the number of traces deleted.
    pub async fn expire_traces(&self, before_ns: u64) -> Result<u64, StoreError> {
        let rows: Vec<SeqIdsOut> = self
            .select(
                "expire traces",
                "SELECT record::id(id) AS seq, ids FROM tracebatch WHERE finished_ns < $before",
                vec![("before", before_ns.into_value())],
            )
            .await?;
        let count = rows.iter().map(|r| r.ids.len() as u64).sum();
        if count == 0 {
            return Ok(0);
        }
        let index: Vec<(String, u64)> = rows
            .into_iter()
            .flat_map(|r| r.ids.into_iter().map(move |id| (id, r.seq)))
            .collect();
        self.run(
            "expire traces",
            "BEGIN;
             DELETE tracebatch WHERE finished_ns < $before RETURN NONE;
             FOR $key IN $index { DELETE type::record('traceid', $key) RETURN NONE; };
             COMMIT;",
            vec![
                ("before", before_ns.into_value()),
                ("index", index.into_value()),
            ],
        )
        .await?;
        Ok(count)
    }

    /// Bytes the store takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.path)
    }
}

fn decode_traces(row: &DataOut) -> Result<Vec<Trace>, StoreError> {
    let data = unpack(
        row.codec.as_deref(),
        row.data.clone().into_inner(),
        "tracebatch",
        row.seq,
    )?;
    let batch = TraceBatch::decode(&data[..]).map_err(|e| StoreError::Corrupt {
        what: "tracebatch",
        id: row.seq.to_string(),
        reason: e.to_string(),
    })?;
    Ok(batch.traces)
}

/// The `codec` of a row whose `data` is an LZ4 block with its size in front
/// (rows without a codec hold their bytes as they are). Messages of spans
/// compress about 2.4 times, at about 550 MB/s a core, and SurrealDB copies
/// every byte of a row several times on its way to disk, so smaller rows should
/// cost it less than the compression costs; on the 2-core VM the service bench
/// could not tell raw from compressed rows apart within its noise.
const LZ4: &str = "lz4";

/// Rows hold at most this much once decompressed (NATS messages are smaller).
const MAX_UNPACKED: usize = 256 << 20;

fn pack(data: &[u8]) -> Bytes {
    Bytes::from(lz4_flex::compress_prepend_size(data))
}

fn unpack(
    codec: Option<&str>,
    data: Bytes,
    what: &'static str,
    seq: u64,
) -> Result<Bytes, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what,
        id: seq.to_string(),
        reason,
    };
    match codec {
        None => Ok(data),
        Some(LZ4) => {
            let size = data
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| corrupt("lz4 block shorter than its size".into()))?;
            if size > MAX_UNPACKED {
                return Err(corrupt(format!("lz4 block claims {size} bytes")));
            }
            lz4_flex::decompress_size_prepended(&data)
                .map(Bytes::from)
                .map_err(|e| corrupt(e.to_string()))
        }
        Some(other) => Err(corrupt(format!("unknown codec {other:?}"))),
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_size(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use espan::wire::{LinkedSpan, sample};

    fn trace(high: u64, low: u64, spans: u64) -> Trace {
        Trace {
            trace_id_high: high,
            trace_id_low: low,
            spans: (0..spans)
                .map(|n| LinkedSpan {
                    span: Some(sample::span(low * 100 + n)),
                    parent_id: 0,
                })
                .collect(),
            app_trace_id: false,
            late: false,
        }
    }

    #[tokio::test]
    async fn batches_survive_a_reopen_and_are_deleted_in_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &SyncMode::default()).await.unwrap();
        let batches: Vec<StoredMessage> = (1..=5)
            .map(|seq| StoredMessage {
                seq,
                received_ns: 1000 + seq,
                data: wire::encode_espan_batch(&sample::batch(seq, 3)),
            })
            .collect();
        store.put_messages(&batches).await.unwrap();
        // A redelivered message is stored once.
        store.put_messages(&batches[1..2]).await.unwrap();
        assert_eq!(store.window_messages().await.unwrap(), batches);
        drop(store);

        let store = Store::open(dir.path(), &SyncMode::default()).await.unwrap();
        assert_eq!(store.window_messages().await.unwrap(), batches);
        store.delete_messages_below(4).await.unwrap();
        let left: Vec<u64> = store
            .window_messages()
            .await
            .unwrap()
            .iter()
            .map(|b| b.seq)
            .collect();
        assert_eq!(left, vec![4, 5]);
        assert_eq!(store.message_count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn forgotten_spans_survive_a_reopen_and_go_with_their_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &SyncMode::default()).await.unwrap();
        let (none, next) = store.forgotten_spans().await.unwrap();
        assert!(none.is_empty());
        assert_eq!(next, 1);
        store.put_forgotten(1, &[(3, 30), (5, 50)]).await.unwrap();
        store
            .put_forgotten(2, &[(7, 70), (8, u64::MAX)])
            .await
            .unwrap();
        store.put_forgotten(3, &[]).await.unwrap();
        drop(store);

        let store = Store::open(dir.path(), &SyncMode::default()).await.unwrap();
        let (spans, next) = store.forgotten_spans().await.unwrap();
        let mut spans: Vec<_> = spans.into_iter().collect();
        spans.sort();
        assert_eq!(spans, vec![(3, 30), (5, 50), (7, 70), (8, u64::MAX)]);
        assert_eq!(next, 3, "an empty record writes no row");
        // A row goes once every batch it names is gone.
        store.delete_messages_below(6).await.unwrap();
        let (spans, _) = store.forgotten_spans().await.unwrap();
        assert_eq!(spans.len(), 2);
        store.delete_messages_below(9).await.unwrap();
        let (spans, next) = store.forgotten_spans().await.unwrap();
        assert!(spans.is_empty());
        assert_eq!(next, 1);
    }

    #[tokio::test]
    async fn rows_written_before_compression_are_read_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &SyncMode("never".into()))
            .await
            .unwrap();
        let data = wire::encode_espan_batch(&sample::batch(1, 2));
        let bytes = surrealdb::types::Bytes::from(data.clone());
        store
            .run(
                "old row",
                "CREATE batch:7 CONTENT { received_ns: 5, data: $data } RETURN NONE",
                vec![("data", bytes.into_value())],
            )
            .await
            .unwrap();
        let batches = store.window_messages().await.unwrap();
        assert_eq!(
            batches,
            vec![StoredMessage {
                seq: 7,
                received_ns: 5,
                data
            }]
        );
        assert!(unpack(Some("zip"), Bytes::new(), "batch", 1).is_err());
        assert!(
            unpack(
                Some(LZ4),
                Bytes::from_static(&[255, 255, 255, 255, 0]),
                "batch",
                1
            )
            .is_err()
        );
        assert_eq!(
            unpack(Some(LZ4), pack(b"abc"), "batch", 1).unwrap(),
            &b"abc"[..]
        );
    }

    #[tokio::test]
    async fn traces_are_found_by_id_and_time_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &SyncMode("never".into()))
            .await
            .unwrap();
        assert_eq!(store.next_trace_batch_seq().await.unwrap(), 1);
        store
            .put_traces(1, 100, &[trace(1, 2, 3), trace(0, 7, 1)])
            .await
            .unwrap();
        let mut late = trace(1, 2, 1);
        late.late = true;
        store.put_traces(2, 200, &[late.clone()]).await.unwrap();
        assert_eq!(store.next_trace_batch_seq().await.unwrap(), 3);

        let parts = store.trace(&trace_id_hex(1, 2)).await.unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].spans.len(), 3);
        assert_eq!(parts[1], late);
        assert!(store.trace(&trace_id_hex(9, 9)).await.unwrap().is_empty());
        assert_eq!(store.traces_since(150).await.unwrap(), vec![late.clone()]);
        assert_eq!(store.traces_since(0).await.unwrap().len(), 3);
        // The newest first, as far as the limit: only the newest batch read.
        let (newest, read) = store.newest_traces(0, 1, |_| true).await.unwrap();
        assert_eq!((newest, read), (vec![late.clone()], 1));
        let (all, read) = store.newest_traces(0, 10, |_| true).await.unwrap();
        assert_eq!((all.len(), read), (3, 2));
        assert_eq!(all[2], late, "in finishing order");
        let (one, _) = store
            .newest_traces(0, 10, |t| t.trace_id_high == 0)
            .await
            .unwrap();
        assert_eq!(one, vec![trace(0, 7, 1)]);

        assert_eq!(store.expire_traces(150).await.unwrap(), 2);
        assert_eq!(store.traces_since(0).await.unwrap().len(), 1);
        assert!(store.trace(&trace_id_hex(0, 7)).await.unwrap().is_empty());
        // The part in a batch not yet expired is still found.
        assert_eq!(store.trace(&trace_id_hex(1, 2)).await.unwrap(), vec![late]);
        // Not an id: nothing, and nothing goes into a query.
        assert!(store.trace("x' OR 1=1 --").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn newest_traces_read_the_store_only_as_far_as_the_limit_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &SyncMode("never".into()))
            .await
            .unwrap();
        for seq in 1..=150u64 {
            store
                .put_traces(seq, 1000 + seq, &[trace(0, seq, 1)])
                .await
                .unwrap();
        }
        let (newest, read) = store.newest_traces(0, 100, |_| true).await.unwrap();
        assert_eq!(newest.len(), 100);
        assert_eq!(
            read, 100,
            "read newest first up to the limit, not the whole store"
        );
        assert_eq!(newest.first().unwrap().trace_id_low, 51);
        assert_eq!(newest.last().unwrap().trace_id_low, 150);
        let (all, read) = store.newest_traces(0, 1000, |_| true).await.unwrap();
        assert_eq!((all.len(), read), (150, 150));
        let (recent, _) = store.newest_traces(1140, 1000, |_| true).await.unwrap();
        assert_eq!(recent.len(), 11);
    }
}
