//! Configuration precedence and unknown file keys, through the real binary
//! (`espan-exporter config` prints the resolved settings), so environment
//! variables are set per process, not shared between tests.

use std::process::{Command, Output};

use espan::testkit::tempfile_dir::TempDir;

/// `espan-exporter <args> config` with only the given environment.
fn exporter(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_espan-exporter"))
        .env_clear()
        .args(args)
        .arg("config")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The `key = value` line of `key` in the printed configuration.
fn line<'a>(out: &'a Output, key: &str) -> &'a str {
    let stdout = std::str::from_utf8(&out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = TempDir::new("espan-exporter-precedence").unwrap();
    let path = dir.path().join("exporter.toml");
    std::fs::write(
        &path,
        "[[inputs.espan_exporter]]\ndataway = \"http://dataway:9528?token=tkn_file\"\n\
         concurrency = 2\nbatch_timeout = \"1s\"\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let sink = ("ENV_DATAWAY", "http://dataway:9528?token=tkn_env");
    let env = ("ESPAN_EXPORTER_CONCURRENCY", "3");

    let out = exporter(&[], &[sink]);
    assert_eq!(line(&out, "concurrency"), "concurrency = 4", "the default");
    assert_eq!(line(&out, "batch_timeout"), "batch_timeout = \"200ms\"");

    let out = exporter(&["--config", file], &[]);
    assert_eq!(line(&out, "concurrency"), "concurrency = 2", "the file");
    assert_eq!(line(&out, "batch_timeout"), "batch_timeout = \"1s\"");
    let out = exporter(&[], &[("ESPAN_EXPORTER_CONFIG", file)]);
    assert_eq!(
        line(&out, "concurrency"),
        "concurrency = 2",
        "the file named by its variable"
    );

    let out = exporter(&["--config", file], &[env]);
    assert_eq!(line(&out, "concurrency"), "concurrency = 3", "the variable");
    assert_eq!(line(&out, "batch_timeout"), "batch_timeout = \"1s\"");

    let out = exporter(&["--config", file, "--concurrency", "5"], &[env]);
    assert_eq!(line(&out, "concurrency"), "concurrency = 5", "the flag");
}

/// An unknown key is not an error (DataKit's files carry keys espan does not
/// read) but a warning naming the key and the file, the same in every service.
#[test]
fn an_unknown_key_is_warned_about_by_name() {
    let dir = TempDir::new("espan-exporter-unknown").unwrap();
    let path = dir.path().join("exporter.toml");
    std::fs::write(
        &path,
        "[[inputs.espan_exporter]]\ndataway = \"http://dataway:9528?token=t\"\nconcurency = 8\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let out = exporter(&["--config", file], &[]);
    assert_eq!(line(&out, "concurrency"), "concurrency = 4");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "unknown key `concurency` in [[inputs.espan_exporter]] of {file}: ignored (misspelt? --help lists every key)"
        )),
        "{stderr}"
    );
}

/// A bad value stops the binary with code 2 and an error naming where it came
/// from, as in the other services.
#[test]
fn a_bad_value_exits_2_naming_its_origin() {
    let out = exporter(
        &["--concurrency", "0"],
        &[("ENV_DATAWAY", "http://d:1?token=t")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("espan-exporter: flag --concurrency: invalid value \"0\""),
        "{stderr}"
    );
}
