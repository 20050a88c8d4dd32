//! How right espan's traces are, against the app's own OpenTelemetry spans.
//!
//! Three test hosts (network namespaces) each run a probe; a Flask app spread
//! over them (front → back1, front → back2 → redis) records its own spans with
//! the upstream SDK. Every case runs twice: with W3C context propagation, and
//! without it (`OTEL_PROPAGATORS=none`), where only TCP sequence numbers and
//! threads can link the spans. The report is printed as a table; the test fails
//! on any false edge, and when recall falls under 99%.

use std::time::Duration;

use espan_integration::accuracy::{Score, Truth, score, table};
use espan_integration::app::{App, AppOptions, Load, ServerModel};
use espan_integration::stack::{Stack, StackOptions};

struct Case {
    name: &'static str,
    app: AppOptions,
    load: Load,
}

/// `ESPAN_E2E_CASES=nat,slow-call` runs only those cases.
fn cases() -> Vec<Case> {
    let only = std::env::var("ESPAN_E2E_CASES").unwrap_or_default();
    let all = vec![
        Case {
            // Connections kept open: client → front and front → backends carry
            // many calls each.
            name: "keep-alive",
            app: AppOptions {
                keepalive: true,
                ..AppOptions::default()
            },
            load: Load {
                count: 30,
                concurrency: 2,
                keepalive: true,
                ..Load::default()
            },
        },
        Case {
            // 20 clients at once: 20 front threads serving, each calling out.
            name: "concurrency-20",
            app: AppOptions {
                keepalive: true,
                ..AppOptions::default()
            },
            load: Load {
                count: 100,
                concurrency: 20,
                keepalive: true,
                ..Load::default()
            },
        },
        Case {
            // front → back1 through DNAT + masquerade: the two sides of each
            // call see different addresses.
            name: "nat",
            app: AppOptions {
                nat: true,
                ..AppOptions::default()
            },
            load: Load {
                count: 30,
                concurrency: 2,
                ..Load::default()
            },
        },
        Case {
            // Four worker threads serve every connection in turn and keep their
            // backend connections across requests.
            name: "thread-pool",
            app: AppOptions {
                keepalive: true,
                front_server: ServerModel::Pool,
                back_server: ServerModel::Pool,
                ..AppOptions::default()
            },
            load: Load {
                count: 60,
                concurrency: 8,
                ..Load::default()
            },
        },
        Case {
            // back2 takes 2 s of the linker's 3 s window on two requests.
            name: "slow-call",
            app: AppOptions::default(),
            load: Load {
                count: 10,
                concurrency: 2,
                slow: vec![3, 7],
                sleep: Duration::from_secs(2),
                ..Load::default()
            },
        },
    ];
    all.into_iter()
        .filter(|c| only.is_empty() || only.split(',').any(|o| o == c.name))
        .collect()
}

fn run_case(stack: &mut Stack, case: &Case, propagation: bool) -> anyhow::Result<Score> {
    let run = format!("{}-{}", case.name, if propagation { "on" } else { "off" });
    let options = AppOptions {
        propagation,
        ..case.app.clone()
    };
    let app = App::start(stack, &run, &options)?;
    app.load(stack, &case.load)?;
    // The SDK writes each span as it ends, right after the response.
    std::thread::sleep(Duration::from_millis(500));
    let app_spans = app.app_spans()?;
    app.stop();
    let truth = Truth::build(&app_spans, &run, propagation);
    let marker = format!("/{run}/");
    let first_redis_call = truth
        .redis_calls
        .iter()
        .map(|c| c.start_ns)
        .min()
        .unwrap_or(u64::MAX);
    let window = stack.setup.options.window;
    let exported = stack.wait_exported(
        |s| {
            // redis-server's spans of the run count too (the scorer finds
            // which are the run's by their sequence numbers).
            let redis_server = s.is_server()
                && s.attributes.get("db.system.name").map(String::as_str) == Some("redis")
                && s.start_ns >= first_redis_call;
            s.path.contains(&marker) || truth.redis_call(s).is_some() || redis_server
        },
        truth.sides.len(),
        Duration::from_secs(1),
        window + Duration::from_secs(40),
    )?;
    // For whoever reads the work directory after a failure.
    for host in stack.setup.options.hosts.clone() {
        let text = stack.probe_metrics_text(host).unwrap_or_default();
        let _ = std::fs::write(
            stack.setup.work.join(format!("{run}/probe-{host}.metrics")),
            text,
        );
    }
    let _ = std::fs::write(
        stack.setup.work.join(format!("{run}/linker.metrics")),
        stack.linker_metrics_text().unwrap_or_default(),
    );
    Ok(score(case.name, propagation, &truth, &exported, &run))
}

#[test]
#[ignore = "needs root (network namespaces, eBPF); scripts/test.sh runs it as root"]
fn accuracy_against_the_apps_own_spans() {
    let mut stack = Stack::start("accuracy", StackOptions::default()).expect("the stack");
    let mut scores = Vec::new();
    let mut requests = Vec::new();
    for case in cases() {
        for propagation in [true, false] {
            requests.push(case.load.count as usize);
            let s = run_case(&mut stack, &case, propagation)
                .unwrap_or_else(|e| panic!("{} (propagation {propagation}): {e:#}", case.name));
            scores.push(s);
        }
    }
    let table = table(&scores);
    println!(
        "\nespan against the apps' own spans (work dir {}):\n{table}",
        stack.setup.work.display(),
    );
    // The README quotes this file as written.
    std::fs::write(stack.setup.work.join("table.md"), &table).expect("table.md");
    for s in &scores {
        let mode = if s.propagation { "on" } else { "off" };
        for e in s.false_edges.iter().take(10) {
            println!("  {} {mode}: FALSE EDGE {e}", s.case);
        }
        for e in s.missed_edges.iter().take(5) {
            println!("  {} {mode}: missed {e}", s.case);
        }
        for m in s.missing_spans.iter().take(5) {
            println!("  {} {mode}: not exported {m}", s.case);
        }
        for p in s.problems.iter().take(5) {
            println!("  {} {mode}: problem {p}", s.case);
        }
    }
    println!(
        "linker: {}",
        stack
            .linker_metrics_text()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("espan_linker_") && !l.contains("bucket"))
            .collect::<Vec<_>>()
            .join("\n        ")
    );
    for (s, &requests) in scores.iter().zip(&requests) {
        let mode = if s.propagation { "on" } else { "off" };
        assert!(s.problems.is_empty(), "{} {mode}: {:?}", s.case, s.problems);
        assert!(
            s.false_edges.is_empty(),
            "{} {mode}: false edges {:?}",
            s.case,
            s.false_edges
        );
        assert!(
            s.recall() >= 0.99,
            "{} {mode}: recall {:.3} (missed {}, e.g. {:?})",
            s.case,
            s.recall(),
            s.missed_edges.len(),
            &s.missed_edges[..s.missed_edges.len().min(5)]
        );
        if s.propagation {
            assert_eq!(
                s.app_id_traces, s.traces,
                "{}: espan's trace ids must be the app's",
                s.case
            );
        }
        // What the README's table shows, asserted: every span, nothing more,
        // nothing twice, one trace per request, each rebuilt whole.
        assert!(
            s.missing_spans.is_empty(),
            "{} {mode}: spans not exported {:?}",
            s.case,
            &s.missing_spans[..s.missing_spans.len().min(5)]
        );
        assert_eq!(
            s.found_spans, s.truth_spans,
            "{} {mode}: spans found",
            s.case
        );
        assert_eq!(
            s.extra_spans, 0,
            "{} {mode}: spans the app does not have",
            s.case
        );
        assert_eq!(s.duplicates, 0, "{} {mode}: spans exported twice", s.case);
        assert_eq!(
            s.traces, requests,
            "{} {mode}: one trace per request",
            s.case
        );
        assert_eq!(
            s.exact_traces, s.traces,
            "{} {mode}: traces rebuilt exactly",
            s.case
        );
    }
}
