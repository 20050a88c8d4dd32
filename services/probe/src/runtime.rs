//! Which runtime a traced process runs on, as far as it decides how a client
//! call can be tied to the request being served.
//!
//! The thread rule (a client call's parent is the one request its thread is
//! serving) holds for thread-per-request servers only. It is unsound where a
//! request is not a thread:
//! - Go: goroutines move between threads, and net/http's client writes a
//!   request on the connection's own write-loop goroutine, so the thread that
//!   writes may be serving another request at the time;
//! - event loops (Node.js, nginx, Envoy, HAProxy, …): one thread serves many
//!   requests, and a call made after an asynchronous gap runs in the turn of
//!   whichever request the loop is at.
//!
//! For those the probe leaves the parent unset and counts why, until a
//! runtime-aware rule applies. A process not recognised here is held to the
//! thread rule, and loses it the first time one of its threads is seen serving
//! two requests at once ([`crate::assemble`]).

use std::path::Path;

/// How client calls of a process may be tied to the requests it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Runtime {
    /// Threads serve one request at a time: the thread rule applies.
    #[default]
    Threads,
    /// A Go binary (it carries Go's build information).
    Go,
    /// Node.js.
    NodeJs,
    /// An event-loop server known by name (nginx, Envoy, HAProxy, …).
    EventLoop,
}

impl Runtime {
    /// Whether the thread rule is sound for this runtime.
    pub fn thread_rule(self) -> bool {
        self == Runtime::Threads
    }

    /// The label that counts client calls left without a parent because of it.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::Threads => "threads",
            Runtime::Go => "go",
            Runtime::NodeJs => "nodejs",
            Runtime::EventLoop => "event_loop",
        }
    }
}

/// Event-loop servers known by their process or executable name.
const EVENT_LOOP_NAMES: &[&str] = &[
    "nginx",
    "openresty",
    "envoy",
    "haproxy",
    "varnishd",
    "h2o",
    "caddy",
    "traefik",
    "redis-server",
    "memcached",
];

/// The runtime of process `pid`, from its names and its executable.
pub fn detect(pid: u32, comm: &str, exe: &str) -> Runtime {
    let names = [comm, exe];
    if names
        .iter()
        .any(|n| *n == "node" || *n == "nodejs" || n.starts_with("node-"))
    {
        return Runtime::NodeJs;
    }
    if names.iter().any(|n| EVENT_LOOP_NAMES.contains(n)) {
        return Runtime::EventLoop;
    }
    if is_go_binary(Path::new(&format!("/proc/{pid}/exe"))) {
        return Runtime::Go;
    }
    Runtime::Threads
}

/// Whether the ELF file at `path` was built by Go: the Go linker always writes
/// the `.go.buildinfo` section (Go 1.13 and later), stripped binaries included.
pub fn is_go_binary(path: &Path) -> bool {
    use object::{Object, ObjectSection};
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // Reads the headers and the section table only, not a whole binary.
    let cache = object::ReadCache::new(file);
    match object::File::parse(&cache) {
        Ok(elf) => elf
            .sections()
            .any(|s| s.name().is_ok_and(|n| n == ".go.buildinfo")),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_binaries() {
        let me = std::process::id();
        assert_eq!(detect(me, "node", "node"), Runtime::NodeJs);
        assert_eq!(detect(me, "nginx", "nginx"), Runtime::EventLoop);
        // This test binary is Rust, not Go.
        assert_eq!(detect(me, "cargo-test", "x"), Runtime::Threads);
        assert!(!is_go_binary(Path::new("/proc/self/exe")));
        assert!(!is_go_binary(Path::new("/nonexistent")));
        assert!(Runtime::Threads.thread_rule());
        assert!(!Runtime::Go.thread_rule());
    }

    /// A real Go binary, built here (scripts/setup.sh installs golang-go).
    #[test]
    fn a_go_binary_is_recognised() {
        let go = which("go").expect("no go on PATH: scripts/setup.sh installs golang-go");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("main.go"), "package main\nfunc main() {}\n").unwrap();
        let out = std::process::Command::new(go)
            .args(["build", "-o", "hello", "main.go"])
            .current_dir(&dir)
            .env("GOCACHE", dir.join("cache"))
            .env("GO111MODULE", "off")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(is_go_binary(&dir.join("hello")));
        // Stripped, it still is.
        let strip = std::process::Command::new("strip")
            .arg(dir.join("hello"))
            .status();
        if strip.is_ok_and(|s| s.success()) {
            assert!(is_go_binary(&dir.join("hello")));
        }
    }

    fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .ok_or(())
    }
}
