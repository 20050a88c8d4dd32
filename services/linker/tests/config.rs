//! Configuration precedence and every bad-value error, through the real binary
//! (`espan-linker config` prints the resolved settings), so environment
//! variables are set per process, not shared between tests.

use std::process::{Command, Output};

fn linker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_espan-linker"));
    command.args(args);
    for var in [
        "ENV_INPUT_EBPFTRACE_DB_PATH",
        "ENV_INPUT_EBPFTRACE_USE_APP_TRACE_ID",
        "ENV_INPUT_EBPFTRACE_WINDOW",
        "ENV_INPUT_EBPFTRACE_SAMPLING_RATE",
        "ESPAN_LINKER_CONFIG",
        "ESPAN_NATS_URL",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = args.to_vec();
    all.push("config");
    let out = linker(&all, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn error(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = args.to_vec();
    all.push("config");
    let out = linker(&all, env);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a config error, got {out:?}"
    );
    String::from_utf8(out.stderr).unwrap()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn defaults_are_datakits() {
    let out = config(&[], &[]);
    assert!(out.contains("window: 20s"), "{out}");
    assert!(out.contains("sampling_rate: 0.1,"), "{out}");
    assert!(out.contains("use_app_trace_id: true"), "{out}");
    assert!(out.contains("url: \"nats://127.0.0.1:4222\""), "{out}");
    // The trace query API is not open to the network unless asked.
    assert!(out.contains("api_addr: 127.0.0.1:9532"), "{out}");
    assert!(out.contains("metrics_addr: 0.0.0.0:9530"), "{out}");
}

#[test]
fn flags_beat_environment_beat_file() {
    let toml = file(
        "[[inputs.ebpftrace]]\nwindow = \"10s\"\nsampling_rate = 0.5\ndb_path = \"/from/file\"\nuse_app_trace_id = false\n",
    );
    let path = toml.path().to_str().unwrap();
    let out = config(&["--config", path], &[]);
    assert!(
        out.contains("window: 10s")
            && out.contains("sampling_rate: 0.5")
            && out.contains("\"/from/file\""),
        "{out}"
    );
    assert!(out.contains("use_app_trace_id: false"), "{out}");

    let env = [
        ("ENV_INPUT_EBPFTRACE_WINDOW", "5s"),
        ("ENV_INPUT_EBPFTRACE_DB_PATH", "/from/env"),
    ];
    let out = config(&["--config", path], &env);
    assert!(
        out.contains("window: 5s")
            && out.contains("sampling_rate: 0.5")
            && out.contains("\"/from/env\""),
        "{out}"
    );

    let out = config(&["--config", path, "--window", "3s"], &env);
    assert!(
        out.contains("window: 3s") && out.contains("\"/from/env\""),
        "{out}"
    );

    // The file can come from the environment too, and DataKit's `host:port` works.
    let out = config(
        &[],
        &[
            ("ESPAN_LINKER_CONFIG", path),
            ("ESPAN_NATS_URL", "10.0.0.9:4222"),
        ],
    );
    assert!(
        out.contains("window: 10s") && out.contains("\"nats://10.0.0.9:4222\""),
        "{out}"
    );
}

/// An unknown key is not an error (DataKit's files carry keys espan does not
/// read) but a warning naming the key and the file, the same in every service.
#[test]
fn an_unknown_key_is_warned_about_by_name() {
    let toml = file("[[inputs.ebpftrace]]\nwindow = \"10s\"\nwindwo = \"5s\"\n");
    let path = toml.path().to_str().unwrap();
    let out = linker(&["--config", path, "config"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("window: 10s"),
        "{out:?}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "unknown key `windwo` in [[inputs.ebpftrace]] of {path}: ignored (misspelt? --help lists every key)"
        )),
        "{stderr}"
    );
}

#[test]
fn every_bad_value_names_its_key_and_value() {
    let toml = file("[[inputs.ebpftrace]]\nsampling_rate = 1.5\n");
    let err = error(&["--config", toml.path().to_str().unwrap()], &[]);
    assert!(
        err.contains("key `sampling_rate` of [[inputs.ebpftrace]]") && err.contains("\"1.5\""),
        "{err}"
    );
    assert!(err.contains("a rate must be a number from 0 to 1"), "{err}");

    let err = error(&[], &[("ENV_INPUT_EBPFTRACE_WINDOW", "soon")]);
    assert!(
        err.contains("environment variable ENV_INPUT_EBPFTRACE_WINDOW: invalid value \"soon\""),
        "{err}"
    );

    let err = error(&["--sampling-rate", "2"], &[]);
    assert!(
        err.contains("flag --sampling-rate: invalid value \"2\""),
        "{err}"
    );

    let err = error(&["--window", "500ms"], &[]);
    assert!(
        err.contains("flag --window") && err.contains("at least 1s"),
        "{err}"
    );

    let err = error(&[], &[("ENV_INPUT_EBPFTRACE_USE_APP_TRACE_ID", "maybe")]);
    assert!(
        err.contains(
            "ENV_INPUT_EBPFTRACE_USE_APP_TRACE_ID: invalid value \"maybe\": expected true or false"
        ),
        "{err}"
    );

    for (bad, what) in [
        (
            "[[inputs.ebpftrace]]\n[[inputs.ebpftrace]]\n",
            "2 [[inputs.ebpftrace]] tables",
        ),
        ("[[inputs.ebpftrace]\n", "is not valid TOML"),
        (
            "[[inputs.ebpftrace]]\nwindow = 20\n",
            "expected a string, found a integer",
        ),
        (
            "[[inputs.ebpftrace]]\nmax_store_size = \"lots\"\n",
            "expected a size",
        ),
        (
            "[[inputs.ebpftrace]]\nstore_sync = \"sometimes\"\n",
            "expected every, never",
        ),
    ] {
        let toml = file(bad);
        let err = error(&["--config", toml.path().to_str().unwrap()], &[]);
        assert!(err.contains(what), "{bad:?}: {err}");
    }
    let err = error(&["--config", "/no/such/file.toml"], &[]);
    assert!(
        err.contains("cannot read config file /no/such/file.toml"),
        "{err}"
    );
}

#[test]
fn help_explains_every_option() {
    let out = linker(&["--help"], &[]);
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "ENV_INPUT_EBPFTRACE_DB_PATH",
        "ENV_INPUT_EBPFTRACE_USE_APP_TRACE_ID",
        "ENV_INPUT_EBPFTRACE_WINDOW",
        "ENV_INPUT_EBPFTRACE_SAMPLING_RATE",
        "--retention",
        "--max-store-size",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    // A command is listed on a line of its own, its name first: "trace" alone
    // would match any mention of traces.
    for (command, what) in [
        ("traces", "List finished traces"),
        ("trace", "Print one trace"),
    ] {
        assert!(
            help.lines()
                .any(|l| l.split_whitespace().next() == Some(command) && l.contains(what)),
            "--help lacks the {command} command: {help}"
        );
    }
}

#[test]
fn durability_settings_resolve_and_store_sync_never_is_warned_about() {
    let out = config(
        &[
            "--stream-replicas",
            "3",
            "--max-trace-spans",
            "500",
            "--stream-max-age",
            "168h",
        ],
        &[],
    );
    assert!(out.contains("stream_replicas: 3"), "{out}");
    assert!(out.contains("stream_max_age: 604800s"), "{out}");
    assert!(out.contains("max_trace_spans: 500"), "{out}");
    let err = error(&["--stream-replicas", "2"], &[]);
    assert!(
        err.contains("flag --stream-replicas") && err.contains("stream replicas must be 1, 3 or 5"),
        "{err}"
    );
    let err = error(&["--max-trace-spans", "0"], &[]);
    assert!(err.contains("must be at least 1"), "{err}");

    let (_, settings) =
        espan_linker::settings::Settings::from_args(["espan-linker", "--store-sync", "never"])
            .unwrap();
    let warnings = settings.durability_warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("store_sync=never"), "{warnings:?}");
    let (_, settings) = espan_linker::settings::Settings::from_args(["espan-linker"]).unwrap();
    assert!(settings.durability_warnings().is_empty());
}
