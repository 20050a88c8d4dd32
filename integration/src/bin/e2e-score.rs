//! Scores a finished run again from its work directory, for looking into a
//! failure after the fact:
//! `e2e-score $TMPDIR/espan-e2e/accuracy keep-alive-off [on|off]`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use espan_integration::accuracy::{Truth, score, table};
use espan_integration::observed::read_exported;
use espan_integration::truth::read_app_spans;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: e2e-score <work dir> <run> [on|off]";
    let work = PathBuf::from(args.next().context(usage)?);
    let run = args.next().context(usage)?;
    let propagation = args.next().is_some_and(|a| a == "on") || run.ends_with("-on");
    let mut app_spans = Vec::new();
    for role in ["front", "back1", "back2"] {
        app_spans.extend(read_app_spans(
            &work.join(&run).join(format!("{role}.spans.jsonl")),
        )?);
    }
    let truth = Truth::build(&app_spans, &run, propagation);
    let exported = read_exported(&work.join("otlp.jsonl"))?;
    let s = score(&run, propagation, &truth, &exported, &run);
    println!("{}", table(std::slice::from_ref(&s)));
    for e in &s.false_edges {
        println!("false edge: {e}");
    }
    for e in &s.missed_edges {
        println!("missed: {e}");
    }
    for m in &s.missing_spans {
        println!("not exported: {m}");
    }
    for p in &s.problems {
        println!("problem: {p}");
    }
    Ok(())
}
