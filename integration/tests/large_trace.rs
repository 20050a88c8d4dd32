//! One request fanning out to 1,000 calls with 900-byte paths, traced by the
//! probes, linked by the linker and exported over OTLP, through a real
//! nats-server: a trace of 2,003 spans and over 2 MiB, more than NATS's
//! max_payload (1 MiB). It comes out in parts under one trace id, every span
//! arrives, and every service is still running afterwards. Before, the
//! linker's one message for the whole trace was refused on every try and held
//! up everything after it.
//!
//! (A fan-out of 7,000 short calls, ~20 s long, came out as ~6,000 traces:
//! the probe named the front request as parent of only ~1,250 of its calls.)

use std::collections::BTreeSet;
use std::time::Duration;

use espan_integration::app::{App, AppOptions, Load};
use espan_integration::process::metric;
use espan_integration::stack::{Stack, StackOptions};

const FANOUT: u32 = 1_000;

#[test]
#[ignore = "needs root (network namespaces, eBPF); scripts/test.sh runs it as root"]
fn a_request_fanning_out_to_1000_large_calls_arrives_whole_in_parts() {
    let options = StackOptions {
        otlp_protocol: "http/protobuf",
        ..StackOptions::default()
    };
    let mut stack = Stack::start("large-trace", options).expect("the stack");
    let run = "large";
    let app = App::start(
        &mut stack,
        run,
        &AppOptions {
            keepalive: true,
            fanout: FANOUT,
            path_pad: 900,
            ..AppOptions::default()
        },
    )
    .expect("the app");
    app.load(
        &stack,
        &Load {
            count: 1,
            keepalive: true,
            ..Load::default()
        },
    )
    .expect("the request");
    app.stop();

    // The front's SERVER span, its CLIENT call and back1's SERVER span of each
    // of the FANOUT calls, and the call to back2 on both sides.
    let want = 1 + 2 * FANOUT as usize + 2;
    let window = stack.setup.options.window;
    let exported = stack
        .wait_exported(
            |s| s.path.contains("/large/"),
            want,
            Duration::from_secs(3),
            window + Duration::from_secs(120),
        )
        .expect("exported");
    let spans: Vec<_> = exported
        .spans
        .iter()
        .filter(|s| s.path.contains("/large/"))
        .collect();
    let trace_ids: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    println!(
        "{} spans of the request exported under {} trace id(s), {} duplicates",
        spans.len(),
        trace_ids.len(),
        exported.duplicates()
    );
    for host in stack.setup.options.hosts.clone() {
        let text = stack.probe_metrics_text(host).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.starts_with("espan_probe_parent_unset"))
        {
            println!("probe {host}: {line}");
        }
    }
    let linker = stack.linker_metrics_text().unwrap_or_default();
    for line in linker.lines().filter(|l| {
        l.starts_with("espan_linker_edges_ambiguous")
            || l.starts_with("espan_linker_spans_linked")
            || l.starts_with("espan_linker_spans_unlinked")
            || l.starts_with("espan_linker_trace_parts")
    }) {
        println!("linker: {line}");
    }
    assert_eq!(spans.len(), want, "every span of the request");
    assert_eq!(trace_ids.len(), 1, "one trace, not {}", trace_ids.len());
    assert_eq!(exported.duplicates(), 0);

    let linker = stack.linker_metrics_text().expect("the linker still runs");
    let parts = metric(&linker, "espan_linker_trace_parts_total").unwrap_or(0.0);
    println!("linker: the trace went out in {} parts", parts + 1.0);
    // Parts of at most 512 KiB: five or more hold over 2 MiB.
    assert!(parts >= 4.0, "{parts} extra parts");
    assert_eq!(
        metric(&linker, "espan_linker_spans_dropped_too_large_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(&linker, "espan_linker_spans_capped_total"),
        Some(0.0)
    );
    stack
        .exporter_metrics_text()
        .expect("the exporter still runs");
    for host in stack.setup.options.hosts.clone() {
        stack
            .probe_metrics_text(host)
            .expect("every probe still runs");
    }
}
