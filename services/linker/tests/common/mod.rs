//! Helpers for the linker's tests: publish spans, read traces.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use espan::bus::{self, Bus};
use espan::wire::{self, ESpan, ESpanBatch, Trace};
use futures::StreamExt;

/// Publishes `spans` as one batch per host, in order.
pub async fn publish_spans(bus: &Bus, seq: &mut u64, spans: &[ESpan]) {
    let mut by_host: BTreeMap<String, Vec<ESpan>> = BTreeMap::new();
    for span in spans {
        by_host
            .entry(span.host.clone())
            .or_default()
            .push(span.clone());
    }
    let mut publisher = bus.publisher(256);
    for (host, spans) in by_host {
        *seq += 1;
        let batch = ESpanBatch {
            version: 0,
            host: host.clone(),
            boot_id: 7,
            seq: *seq,
            spans,
        };
        publisher
            .publish(
                *seq,
                bus::espan_subject(&host),
                format!("{host}/7/{seq}"),
                wire::encode_espan_batch(&batch),
                None,
            )
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
}

/// Reads trace messages from TRACES until none came for `quiet`.
pub async fn read_traces(bus: &Bus, durable: &str, quiet: Duration) -> Vec<Trace> {
    let stream = bus
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(durable.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, messages.next()).await {
        m.ack().await.unwrap();
        let batch = wire::decode_trace_batch(&m.payload).unwrap();
        assert!(batch.rejected.is_empty());
        out.extend(batch.batch.traces);
    }
    out
}

/// A trace as a comparable value: id, late flag and (span_id, parent_id) pairs.
pub fn shape(trace: &Trace) -> (u64, u64, bool, Vec<(u64, u64)>) {
    let mut edges: Vec<(u64, u64)> = trace
        .spans
        .iter()
        .map(|s| (s.span.as_ref().unwrap().span_id, s.parent_id))
        .collect();
    edges.sort_unstable();
    (trace.trace_id_high, trace.trace_id_low, trace.late, edges)
}
