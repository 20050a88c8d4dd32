//! Layered configuration: clap flags > environment variables > TOML file > default.
//!
//! Each service declares its options once, as a clap `Parser` whose args name
//! their variable in `env` (so `--help` lists both), and implements [`Load`]:
//! it asks [`Layers`] for each value with the key it has in the file. [`load`]
//! does the rest the same way for every service: parse the command line, read
//! the file, resolve, collect the [`UnknownKeys`] of the file, and on a bad
//! value print an error that names where it came from (the flag, the variable,
//! or the key and file) and exit with code 2. Every value goes through one
//! parser per type.
//!
//! The TOML file is DataKit's input configuration: the linker reads the first (and
//! only) `[[inputs.ebpftrace]]` table, the probe `[[inputs.ebpf]]`, the exporter
//! `[[inputs.espan_exporter]]`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

/// Where a value came from; errors name it so the user knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--window`.
    Flag(String),
    /// An environment variable, e.g. `ENV_INPUT_EBPFTRACE_WINDOW`.
    Env(String),
    /// A key in the TOML file.
    File {
        /// The file.
        path: PathBuf,
        /// The table, e.g. `inputs.ebpftrace`.
        table: String,
        /// The key in that table.
        key: String,
    },
    /// The built-in default.
    Default(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File { path, table, key } => {
                write!(f, "key `{key}` of [[{table}]] in {}", path.display())
            }
            Origin::Default(key) => write!(f, "default of {key}"),
        }
    }
}

/// A configuration error, always naming the key and the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse or is out of range. The value is shown
    /// [`redact`](crate::redact::redact)ed: a URL may hold a password or a token.
    #[error("{origin}: invalid value {shown:?}: {reason}", shown = crate::redact::redact(.value))]
    Invalid {
        /// Where the value came from.
        origin: Origin,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {source}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: toml::de::Error,
    },
    /// The file holds the table in a shape espan cannot use.
    #[error("config file {}: {what}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Two settings that cannot both hold.
    #[error("{0}")]
    Conflict(String),
}

/// One input table read from a DataKit-style TOML file.
#[derive(Debug, Clone)]
pub struct FileTable {
    path: PathBuf,
    table: String,
    values: toml::Table,
}

impl FileTable {
    /// Reads `[[inputs.<input>]]` (or `[inputs.<input>]`) from `path`. A file without
    /// the table is an empty table; a file with two of them is an error, since one
    /// service instance runs one input.
    pub fn load(path: &Path, input: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, input)
    }

    /// Like [`FileTable::load`], from text already read.
    pub fn parse(path: &Path, text: &str, input: &str) -> Result<Self, ConfigError> {
        let doc: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
            path: path.to_owned(),
            source,
        })?;
        let table = format!("inputs.{input}");
        let shape = |what: String| ConfigError::Shape {
            path: path.to_owned(),
            what,
        };
        let values = match doc.get("inputs").and_then(|inputs| inputs.get(input)) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t.clone(),
            Some(toml::Value::Array(entries)) => match entries.as_slice() {
                [] => toml::Table::new(),
                [toml::Value::Table(t)] => t.clone(),
                [_] => return Err(shape(format!("[[{table}]] is not a table"))),
                many => {
                    return Err(shape(format!(
                        "{} [[{table}]] tables; one espan service reads one",
                        many.len()
                    )));
                }
            },
            Some(_) => return Err(shape(format!("`{table}` is not a table"))),
        };
        Ok(Self {
            path: path.to_owned(),
            table,
            values,
        })
    }

    fn origin(&self, key: &str) -> Origin {
        Origin::File {
            path: self.path.clone(),
            table: self.table.clone(),
            key: key.to_owned(),
        }
    }
}

/// A service's settings, read the one way every espan service reads them.
pub trait Load: Sized {
    /// The command line.
    type Cli: CommandFactory + FromArgMatches;
    /// The DataKit input whose table the file holds: `[[inputs.<INPUT>]]`.
    const INPUT: &'static str;
    /// The file named by `--config` (or its variable), if any.
    fn config_file(cli: &Self::Cli) -> Option<&Path>;
    /// Every setting, from the layers.
    fn resolve(cli: &Self::Cli, layers: &Layers<'_>) -> Result<Self, ConfigError>;
}

/// What [`load_from`] read.
pub struct Loaded<S: Load> {
    /// The parsed command line (subcommands, `--print-config`, …).
    pub cli: S::Cli,
    /// The resolved settings.
    pub settings: S,
    /// Keys of the file no setting read; warn with [`UnknownKeys::warn`].
    pub unknown_keys: UnknownKeys,
}

impl<S: Load + fmt::Debug> fmt::Debug for Loaded<S>
where
    S::Cli: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("cli", &self.cli)
            .field("settings", &self.settings)
            .field("unknown_keys", &self.unknown_keys)
            .finish()
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The command line: a usage error, or `--help` / `--version`.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// A value, or the file.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl LoadError {
    /// Ends the process the way every service does: clap prints `--help`,
    /// `--version` and usage errors and picks the code (0, or 2 for bad
    /// usage); a bad setting is printed as `<program>: <error>`, code 2.
    pub fn exit(self, program: &str) -> ! {
        match self {
            LoadError::Args(error) => error.exit(),
            LoadError::Config(error) => {
                eprintln!("{program}: {error}");
                std::process::exit(2)
            }
        }
    }
}

/// Reads `S` from `args` (first item: the program name) and the environment.
pub fn load_from<S, I, T>(args: I) -> Result<Loaded<S>, LoadError>
where
    S: Load,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = S::Cli::command();
    let matches = command.clone().try_get_matches_from(args)?;
    let cli = S::Cli::from_arg_matches(&matches)?;
    let file = S::config_file(&cli)
        .map(|path| FileTable::load(path, S::INPUT))
        .transpose()?;
    let layers = Layers::new(&command, &matches, file);
    let settings = S::resolve(&cli, &layers)?;
    let unknown_keys = layers.unknown_keys();
    Ok(Loaded {
        cli,
        settings,
        unknown_keys,
    })
}

/// Reads `S` from the process's arguments and environment; on an error,
/// prints it and exits (see [`LoadError::exit`]).
pub fn load<S: Load>() -> Loaded<S> {
    load_from(std::env::args_os()).unwrap_or_else(|error| error.exit(S::Cli::command().get_name()))
}

/// Keys of the file's table that no setting reads: typos, or DataKit keys
/// espan has no use for. Not an error, since DataKit's own files carry such
/// keys; every service warns about them with the same message at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnknownKeys {
    /// The file and the table (`inputs.<input>`) they are in.
    pub file: Option<(PathBuf, String)>,
    /// The keys, sorted.
    pub keys: Vec<String>,
}

impl UnknownKeys {
    /// True when every key of the file was read (or there is no file).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Logs the one warning, if there are unknown keys.
    pub fn warn(&self) {
        if !self.is_empty() {
            tracing::warn!("{self}");
        }
    }
}

impl fmt::Display for UnknownKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|k| format!("`{k}`")).collect();
        let plural = if keys.len() == 1 { "" } else { "s" };
        write!(f, "unknown key{plural} {}", keys.join(", "))?;
        if let Some((path, table)) = &self.file {
            write!(f, " in [[{table}]] of {}", path.display())?;
        }
        write!(f, ": ignored (misspelt? --help lists every key)")
    }
}

/// Resolves each setting from the layers, in precedence order.
pub struct Layers<'a> {
    command: &'a Command,
    matches: &'a ArgMatches,
    file: Option<FileTable>,
    used_keys: RefCell<BTreeSet<String>>,
}

impl<'a> Layers<'a> {
    /// `command` is the clap command `matches` came from (for env var names).
    pub fn new(command: &'a Command, matches: &'a ArgMatches, file: Option<FileTable>) -> Self {
        Self {
            command,
            matches,
            file,
            used_keys: RefCell::new(BTreeSet::new()),
        }
    }

    /// The value of clap arg `id` (a `String` arg, possibly with `env`), else of
    /// `file_key` in the file, else `default`.
    pub fn get<T: Setting>(&self, id: &str, file_key: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.get_opt(id, file_key)?.unwrap_or(default))
    }

    /// Like [`Layers::get`], without a default.
    pub fn get_opt<T: Setting>(&self, id: &str, file_key: &str) -> Result<Option<T>, ConfigError> {
        self.used_keys.borrow_mut().insert(file_key.to_owned());
        if let Some(text) = self.arg_text(id) {
            let origin = self.arg_origin(id);
            return T::from_text(&text)
                .map(Some)
                .map_err(|reason| ConfigError::Invalid {
                    origin,
                    value: text,
                    reason,
                });
        }
        if let Some(file) = &self.file
            && let Some(value) = file.values.get(file_key)
        {
            return T::from_toml(value)
                .map(Some)
                .map_err(|reason| ConfigError::Invalid {
                    origin: file.origin(file_key),
                    value: value.to_string(),
                    reason,
                });
        }
        Ok(None)
    }

    /// The value of an environment variable that has no flag of its own (an
    /// alternative name, like `OTEL_EXPORTER_OTLP_ENDPOINT` beside its `TRACES` form).
    pub fn env_opt<T: Setting>(&self, var: &str) -> Result<Option<T>, ConfigError> {
        match std::env::var(var) {
            Ok(text) if !text.is_empty() => {
                T::from_text(&text)
                    .map(Some)
                    .map_err(|reason| ConfigError::Invalid {
                        origin: Origin::Env(var.into()),
                        value: text,
                        reason,
                    })
            }
            _ => Ok(None),
        }
    }

    /// Keys of the file table that no setting asked for.
    pub fn unknown_keys(&self) -> UnknownKeys {
        let used = self.used_keys.borrow();
        match &self.file {
            None => UnknownKeys::default(),
            Some(file) => {
                let mut keys: Vec<String> = file
                    .values
                    .keys()
                    .filter(|k| !used.contains(*k))
                    .cloned()
                    .collect();
                keys.sort();
                UnknownKeys {
                    file: Some((file.path.clone(), file.table.clone())),
                    keys,
                }
            }
        }
    }

    /// The error for a value of `id` that parsed but cannot be used, naming
    /// where it came from.
    pub fn invalid(
        &self,
        id: &str,
        file_key: &str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin_of(id, file_key),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// True when `id` was given as a flag or by its own variable (not by the
    /// file or a default): for settings with a second, weaker variable.
    pub fn given(&self, id: &str) -> bool {
        matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }

    /// Where the value of `id` came from, for messages that check two settings together.
    pub fn origin_of(&self, id: &str, file_key: &str) -> Origin {
        if self.arg_text(id).is_some() {
            return self.arg_origin(id);
        }
        match &self.file {
            Some(file) if file.values.contains_key(file_key) => file.origin(file_key),
            _ => Origin::Default(file_key.to_owned()),
        }
    }

    fn arg_text(&self, id: &str) -> Option<String> {
        match self.matches.try_get_one::<String>(id) {
            Ok(Some(text)) => Some(text.clone()),
            _ => None,
        }
    }

    fn arg_origin(&self, id: &str) -> Origin {
        let arg = self.command.get_arguments().find(|a| a.get_id() == id);
        match (self.matches.value_source(id), arg) {
            (Some(ValueSource::EnvVariable), Some(arg)) => Origin::Env(
                arg.get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            (_, Some(arg)) => Origin::Flag(match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => id.to_owned(),
            }),
            (_, None) => Origin::Flag(id.to_owned()),
        }
    }
}

/// A type a setting can have: parsed from a flag or variable, or from TOML.
pub trait Setting: Sized {
    /// From the text of a flag or environment variable.
    fn from_text(text: &str) -> Result<Self, String>;
    /// From a TOML value; strings go through [`Setting::from_text`].
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(text) => Self::from_text(text),
            other => Err(format!("expected a string, found a {}", other.type_str())),
        }
    }
}

impl Setting for String {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl Setting for PathBuf {
    fn from_text(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty path".into());
        }
        Ok(PathBuf::from(text))
    }
}

impl Setting for bool {
    fn from_text(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Boolean(b) => Ok(*b),
            toml::Value::String(text) => Self::from_text(text),
            other => Err(format!(
                "expected true or false, found a {}",
                other.type_str()
            )),
        }
    }
}

macro_rules! integer_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn from_text(text: &str) -> Result<Self, String> {
                text.trim().parse::<$t>().map_err(|e| format!("expected a whole number ({e})"))
            }
            fn from_toml(value: &toml::Value) -> Result<Self, String> {
                match value {
                    toml::Value::Integer(i) => <$t>::try_from(*i)
                        .map_err(|_| format!("{i} is out of range")),
                    toml::Value::String(text) => Self::from_text(text),
                    other => Err(format!("expected a whole number, found a {}", other.type_str())),
                }
            }
        }
    )*};
}
integer_setting!(u16, u32, u64, usize, i64);

/// A list: comma-separated in a flag or variable, an array (or a comma-separated
/// string) in TOML. Blank items are dropped.
impl Setting for Vec<String> {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(text) => Self::from_text(text),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.trim().to_owned()),
                    other => Err(format!(
                        "list items must be strings, found a {}",
                        other.type_str()
                    )),
                })
                .filter(|item| !matches!(item, Ok(s) if s.is_empty()))
                .collect(),
            other => Err(format!(
                "expected a list of strings, found a {}",
                other.type_str()
            )),
        }
    }
}

/// Copies of a JetStream stream: 1 (a single server), 3 or 5 (a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas(usize);

impl Replicas {
    /// `n` must be 1, 3 or 5.
    pub fn new(n: usize) -> Result<Self, String> {
        if [1, 3, 5].contains(&n) {
            Ok(Replicas(n))
        } else {
            Err("stream replicas must be 1, 3 or 5".into())
        }
    }
    /// The count.
    pub fn get(self) -> usize {
        self.0
    }
}

impl Setting for Replicas {
    fn from_text(text: &str) -> Result<Self, String> {
        let n: usize = text
            .trim()
            .parse()
            .map_err(|_| "stream replicas must be 1, 3 or 5".to_owned())?;
        Replicas::new(n)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(i) => Replicas::new(usize::try_from(*i).unwrap_or(0)),
            toml::Value::String(text) => Self::from_text(text),
            other => Err(format!("expected a number, found a {}", other.type_str())),
        }
    }
}

/// A sampling rate: a fraction of traces to keep, from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Rate(f64);

impl Rate {
    /// Keep everything.
    pub const ALL: Rate = Rate(1.0);
    /// `rate` must be within 0..=1.
    pub fn new(rate: f64) -> Result<Self, String> {
        if rate.is_finite() && (0.0..=1.0).contains(&rate) {
            Ok(Rate(rate))
        } else {
            Err("a rate must be a number from 0 to 1".into())
        }
    }
    /// The fraction.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Setting for Rate {
    fn from_text(text: &str) -> Result<Self, String> {
        let rate: f64 = text
            .trim()
            .parse()
            .map_err(|_| "a rate must be a number from 0 to 1".to_owned())?;
        Rate::new(rate)
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Float(f) => Rate::new(*f),
            toml::Value::Integer(i) => Rate::new(*i as f64),
            toml::Value::String(text) => Self::from_text(text),
            other => Err(format!(
                "expected a number from 0 to 1, found a {}",
                other.type_str()
            )),
        }
    }
}

/// A duration written the way DataKit (Go) writes them: `20s`, `1m30s`, `500ms`, `2h`
/// (also `d` for days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Parses `text`; a bare number without a unit is an error, as in Go.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        if text == "0" {
            return Ok(Duration::ZERO);
        }
        let bad = || {
            "expected a duration such as 20s, 1m30s or 500ms; units are ns, us, ms, s, m, h, d"
                .to_string()
        };
        let mut rest = text;
        let mut total = 0f64;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let seconds = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return Err(bad()),
            };
            total += number * seconds;
            rest = &rest[unit_len..];
        }
        Duration::try_from_secs_f64(total).map_err(|_| bad())
    }
}

impl Setting for GoDuration {
    fn from_text(text: &str) -> Result<Self, String> {
        GoDuration::parse(text).map(GoDuration)
    }
}

impl Setting for Duration {
    fn from_text(text: &str) -> Result<Self, String> {
        GoDuration::parse(text)
    }
}

/// A size in bytes: `512MiB`, `10GB`, `4096` (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl Setting for ByteSize {
    fn from_text(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let bad = || "expected a size such as 512MiB, 10GB or 4096".to_owned();
        let number: f64 = text[..split].parse().map_err(|_| bad())?;
        let unit = match text[split..].trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1u64,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        Ok(ByteSize((number * unit as f64) as u64))
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(i) if *i >= 0 => Ok(ByteSize(*i as u64)),
            toml::Value::String(text) => Self::from_text(text),
            other => Err(format!("expected a size such as \"512MiB\", found {other}")),
        }
    }
}

/// `text` with its `%XX` escapes decoded (URL user info, OTLP header values).
/// Errors do not quote the text: it may be a secret.
pub fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad percent escape (% and two hex digits)")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once percent-decoded".to_owned())
}

/// A PEM file (a certificate, a CA bundle, a private key), read when the
/// settings are resolved so that a missing or wrong file is a configuration
/// error at start. `Debug` shows the path only: a key is a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub pem: String,
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.path)
    }
}

impl Setting for PemFile {
    fn from_text(text: &str) -> Result<Self, String> {
        let path = PathBuf::from_text(text)?;
        let pem = std::fs::read_to_string(&path).map_err(|e| format!("cannot read it: {e}"))?;
        if !pem.contains("-----BEGIN ") {
            return Err("not a PEM file".into());
        }
        Ok(Self { path, pem })
    }
}

impl Setting for std::net::SocketAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| "expected an address such as 0.0.0.0:9464".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(GoDuration::parse("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(GoDuration::parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(GoDuration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(GoDuration::parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(GoDuration::parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(GoDuration::parse("0"), Ok(Duration::ZERO));
        for bad in ["soon", "20", "s", "", "1x", "-5s", "1m30"] {
            assert!(GoDuration::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn rates_are_fractions() {
        assert_eq!(Rate::from_text("0.1").unwrap().get(), 0.1);
        assert_eq!(Rate::from_text("1").unwrap().get(), 1.0);
        assert_eq!(Rate::from_text("0").unwrap().get(), 0.0);
        for bad in ["1.5", "-0.1", "NaN", "inf", "half"] {
            assert!(Rate::from_text(bad).is_err(), "{bad:?}");
        }
        assert!(Rate::from_toml(&toml::Value::Integer(2)).is_err());
    }

    #[test]
    fn sizes_and_lists() {
        assert_eq!(ByteSize::from_text("512MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::from_text("10GB").unwrap().0, 10_000_000_000);
        assert_eq!(ByteSize::from_text("4096").unwrap().0, 4096);
        assert!(ByteSize::from_text("lots").is_err());
        assert_eq!(
            Vec::<String>::from_text("a, b,,c ").unwrap(),
            vec!["a", "b", "c"]
        );
    }

    /// A service of two settings, to test [`load_from`] itself.
    #[derive(Debug, clap::Parser)]
    #[command(name = "svc")]
    struct TestCli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        window: Option<String>,
        #[arg(long)]
        rate: Option<String>,
    }

    #[derive(Debug, PartialEq)]
    struct TestSettings {
        window: Duration,
        rate: f64,
    }

    impl Load for TestSettings {
        type Cli = TestCli;
        const INPUT: &'static str = "svc";
        fn config_file(cli: &TestCli) -> Option<&Path> {
            cli.config.as_deref()
        }
        fn resolve(_: &TestCli, layers: &Layers<'_>) -> Result<Self, ConfigError> {
            Ok(Self {
                window: layers.get("window", "window", Duration::from_secs(20))?,
                rate: layers.get("rate", "rate", Rate::ALL)?.get(),
            })
        }
    }

    #[test]
    fn load_takes_flags_over_the_file_over_defaults_and_names_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.toml");
        std::fs::write(
            &path,
            "[[inputs.svc]]\nwindow = \"5s\"\nrate = 0.5\nwindwo = \"1s\"\ntags = {}\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let load = |args: &[&str]| load_from::<TestSettings, _, _>(args.iter().copied());

        let defaults = load(&["svc"]).unwrap();
        assert_eq!(defaults.settings.window, Duration::from_secs(20));
        assert_eq!(defaults.settings.rate, 1.0);
        assert!(defaults.unknown_keys.is_empty());

        let from_file = load(&["svc", "--config", file]).unwrap();
        assert_eq!(from_file.settings.window, Duration::from_secs(5));
        assert_eq!(from_file.settings.rate, 0.5);
        assert_eq!(from_file.unknown_keys.keys, ["tags", "windwo"]);
        assert_eq!(
            from_file.unknown_keys.to_string(),
            format!(
                "unknown keys `tags`, `windwo` in [[inputs.svc]] of {file}: ignored (misspelt? --help lists every key)"
            )
        );

        let flagged = load(&["svc", "--config", file, "--window", "3s"]).unwrap();
        assert_eq!(flagged.settings.window, Duration::from_secs(3));
        assert_eq!(flagged.settings.rate, 0.5);

        let err = load(&["svc", "--config", file, "--rate", "2"]).unwrap_err();
        assert!(matches!(err, LoadError::Config(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("flag --rate: invalid value \"2\""),
            "{err}"
        );
        let err = load(&["svc", "--no-such-flag"]).unwrap_err();
        assert!(matches!(err, LoadError::Args(_)), "{err:?}");
    }

    #[test]
    fn two_tables_are_an_error_one_is_read() {
        let path = Path::new("x.toml");
        let one = FileTable::parse(
            path,
            "[[inputs.ebpftrace]]\nwindow = \"20s\"\n",
            "ebpftrace",
        )
        .unwrap();
        assert_eq!(one.values.get("window").unwrap().as_str(), Some("20s"));
        let plain =
            FileTable::parse(path, "[inputs.ebpftrace]\nwindow = \"5s\"\n", "ebpftrace").unwrap();
        assert_eq!(plain.values.get("window").unwrap().as_str(), Some("5s"));
        let err = FileTable::parse(
            path,
            "[[inputs.ebpftrace]]\n[[inputs.ebpftrace]]\n",
            "ebpftrace",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("2 [[inputs.ebpftrace]] tables"),
            "{err}"
        );
        let err = FileTable::parse(path, "[[inputs.ebpftrace]\n", "ebpftrace").unwrap_err();
        assert!(matches!(err, ConfigError::Toml { .. }));
        let empty = FileTable::parse(path, "[[inputs.ebpf]]\n", "ebpftrace").unwrap();
        assert!(empty.values.is_empty());
    }
}
