//! Crashes in the middle of a run: kill -9 the linker, the exporter and NATS (one
//! at a time, each while the app is under load) and start them again; every span
//! still reaches the OTLP receiver, exactly once, except a request the receiver
//! took just as the exporter was killed: the next exporter sends it again (no
//! exporter can know whether it landed), identical and counted as redelivered.
//! Then a probe is restarted under load: only what it could not see while it was
//! down may be missing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use espan_integration::accuracy::{Side, Truth, score, table};
use espan_integration::app::{App, AppOptions, Load};
use espan_integration::process::metric;
use espan_integration::stack::{Stack, StackOptions};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs `count` paced requests starting at `first` and calls `fault` 1.5 s in.
fn under_load(
    stack: &mut Stack,
    app: &App,
    first: u32,
    fault: impl FnOnce(&mut Stack) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let load = Load {
        first,
        count: 100,
        concurrency: 2,
        keepalive: true,
        pace: Duration::from_millis(40),
        ..Load::default()
    };
    let mut client = app.spawn_load(stack, &load)?;
    std::thread::sleep(Duration::from_millis(1500));
    fault(stack)?;
    let code = client.wait(Duration::from_secs(300))?;
    anyhow::ensure!(code == 0, "client failed:\n{}", client.log_text());
    Ok(())
}

#[test]
#[ignore = "needs root (network namespaces, eBPF); scripts/test.sh runs it as root"]
fn crashes_lose_nothing_and_duplicate_nothing() {
    let options = StackOptions {
        otlp_protocol: "http/protobuf",
        ..StackOptions::default()
    };
    let mut stack = Stack::start("faults", options).expect("the stack");
    let run = "faults";
    let app = App::start(
        &mut stack,
        run,
        &AppOptions {
            keepalive: true,
            ..AppOptions::default()
        },
    )
    .expect("the app");

    under_load(&mut stack, &app, 0, |s| {
        s.crash_linker(Duration::from_secs(1))
    })
    .expect("linker crash");
    let mut exporter_killed_ns = 0;
    under_load(&mut stack, &app, 1000, |s| {
        exporter_killed_ns = now_ns();
        s.crash_exporter(Duration::from_secs(1))
    })
    .expect("exporter crash");
    under_load(&mut stack, &app, 2000, |s| {
        s.crash_nats(Duration::from_secs(2))
    })
    .expect("NATS crash");

    // A probe restarted under load (SIGTERM: it flushes what it holds).
    let mut probe_down = (0, 0);
    let mut old_probe_log = String::new();
    under_load(&mut stack, &app, 3000, |s| {
        probe_down.0 = now_ns();
        old_probe_log = s.restart_probe("b", Duration::from_secs(1))?;
        probe_down.1 = now_ns();
        Ok(())
    })
    .expect("probe restart");

    std::thread::sleep(Duration::from_millis(500));
    let app_spans = app.app_spans().expect("app spans");
    app.stop();
    let truth = Truth::build(&app_spans, run, false);
    let window = stack.setup.options.window;
    let exported = stack
        .wait_exported(
            |s| s.path.contains("/faults/"),
            truth.sides.len(),
            Duration::from_secs(3),
            window + Duration::from_secs(90),
        )
        .expect("exported");
    let sc = score("faults", false, &truth, &exported, run);
    println!("\n{}", table(std::slice::from_ref(&sc)));

    // A call's side may be missing only if it was on host b and overlapped the
    // probe's downtime: back1's SERVER side, front's CLIENT side to back1 is
    // seen by host a's probe and must be there.
    let unobservable = |side: &Side, start: u64, end: u64| {
        side.server && side.path.starts_with("/b1/") && end >= probe_down.0 && start <= probe_down.1
    };
    let mut missing = Vec::new();
    let mut excused = 0;
    for span in &app_spans {
        let Some(path) = span.path.clone() else {
            continue;
        };
        if !path.contains("/faults/") || !(span.kind == "SERVER" || span.kind == "CLIENT") {
            continue;
        }
        let side = Side {
            server: span.kind == "SERVER",
            path,
        };
        let found = exported
            .spans
            .iter()
            .any(|e| e.path == side.path && e.is_server() == side.server);
        if found {
            continue;
        }
        if unobservable(&side, span.start_ns, span.end_ns) {
            excused += 1;
        } else {
            missing.push(side.to_string());
        }
    }
    println!(
        "calls: {} sides in truth, {} exported, {} duplicates; missing while probe b was down: {excused}",
        truth.sides.len(),
        sc.found_spans,
        exported.duplicates()
    );
    // A request the backend took just as the exporter was killed is sent
    // again by the next exporter: OTLP has no idempotency key, so no exporter
    // can know whether such a request landed. Every other span comes once.
    let killed = exporter_killed_ns as f64 / 1e9;
    let in_flight_at_kill = |at: f64| at >= killed - 1.0 && at <= killed + 5.0;
    let mut resent_at_kill = 0;
    let mut other_copies = Vec::new();
    for span in &exported.spans {
        let extra = exported.copies[&span.span_id].saturating_sub(1);
        if extra == 0 {
            continue;
        }
        if in_flight_at_kill(span.received_at) {
            resent_at_kill += extra;
        } else {
            other_copies.push(format!(
                "{} {} (first at {:.3})",
                span.kind, span.path, span.received_at
            ));
        }
    }
    let exporter_metrics = stack.exporter_metrics_text().expect("exporter metrics");
    let redelivered =
        metric(&exporter_metrics, "espan_exporter_spans_redelivered_total").unwrap_or(0.0);
    println!(
        "  copies of spans in flight at the exporter's kill: {resent_at_kill} (the exporter counted {redelivered} spans redelivered)"
    );
    // What the stopped probe could not publish, in its own words.
    for line in old_probe_log.lines().filter(|l| l.contains("stopping")) {
        println!("  old probe b: {line}");
    }
    assert!(
        missing.is_empty(),
        "spans lost ({}): {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        other_copies.is_empty(),
        "spans delivered more than once, not in flight at the exporter's kill ({}): {:?}",
        other_copies.len(),
        &other_copies[..other_copies.len().min(20)]
    );
    assert_eq!(
        exported.inconsistent_copies, 0,
        "a span sent again was linked differently"
    );
    assert!(
        f64::from(resent_at_kill) <= redelivered,
        "copies ({resent_at_kill}) beyond what the exporter counted as redelivered ({redelivered})"
    );
    assert!(
        sc.false_edges.is_empty(),
        "false edges: {:?}",
        sc.false_edges
    );
}
