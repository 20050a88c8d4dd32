//! Which processes are traced, with DataKit's `[[inputs.ebpf]]` options and
//! meaning, except that every list applies (DataKit's switch lets the first
//! non-empty list win, so its env blacklist is never consulted):
//! never `datakit*`, espan's own binaries or the probe itself; then a name or
//! env blacklist match excludes; then a name or env list match, or
//! `trace_all_process`, includes. The service name is the first set of
//! `DKE_SERVICE` and the env list's variables, else the process name.

use std::collections::HashMap;

use crate::assemble::ProcInfo;
use crate::runtime::Runtime;

/// The selection options.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub trace_all: bool,
    pub env_list: Vec<String>,
    pub env_blacklist: Vec<String>,
    pub name_list: Vec<String>,
    pub name_blacklist: Vec<String>,
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Default)]
pub struct ProcFacts {
    /// `/proc/<pid>/comm`.
    pub comm: String,
    /// The basename of `/proc/<pid>/exe`, when readable.
    pub exe: String,
    pub env: HashMap<String, String>,
}

impl ProcFacts {
    /// Reads them; `None` when the process is gone (or a kernel thread).
    pub fn read(pid: u32) -> Option<Self> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        Some(Self {
            comm: comm.trim_end().to_owned(),
            exe,
            env: parse_environ(&environ),
        })
    }
}

/// `KEY=value\0…` into a map (first occurrence wins, as getenv does).
pub fn parse_environ(raw: &[u8]) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for entry in raw.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let key = String::from_utf8_lossy(&entry[..eq]).into_owned();
        let value = String::from_utf8_lossy(&entry[eq + 1..]).into_owned();
        env.entry(key).or_insert(value);
    }
    env
}

fn is_never_traced(name: &str) -> bool {
    name.starts_with("datakit") || name.starts_with("espan-")
}

impl Selection {
    /// `Some(info)` when the process is to be traced.
    pub fn decide(&self, facts: &ProcFacts) -> Option<ProcInfo> {
        let names = [facts.comm.as_str(), facts.exe.as_str()];
        if names.iter().any(|n| is_never_traced(n)) {
            return None;
        }
        let has_env = |list: &[String]| {
            list.iter()
                .any(|k| facts.env.get(k).is_some_and(|v| !v.is_empty()))
        };
        let name_in = |list: &[String]| {
            names
                .iter()
                .any(|n| !n.is_empty() && list.iter().any(|l| l == n))
        };
        if name_in(&self.name_blacklist) || has_env(&self.env_blacklist) {
            return None;
        }
        if !(self.trace_all || name_in(&self.name_list) || has_env(&self.env_list)) {
            return None;
        }
        let service = std::iter::once("DKE_SERVICE")
            .chain(self.env_list.iter().map(String::as_str))
            .find_map(|k| facts.env.get(k).filter(|v| !v.is_empty()).cloned())
            .unwrap_or_else(|| facts.comm.clone());
        Some(ProcInfo {
            comm: facts.comm.clone(),
            service,
            runtime: Runtime::default(),
        })
    }
}

/// Pids of the processes in `/proc` now.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The child processes of `pid` now (from every thread's `children` list).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    children
}

/// The thread group of a task id (a forked child is its own group; a new
/// thread is not).
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(comm: &str, env: &[(&str, &str)]) -> ProcFacts {
        ProcFacts {
            comm: comm.into(),
            exe: comm.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn sel() -> Selection {
        Selection {
            env_list: vec![
                "DK_BPFTRACE_SERVICE".into(),
                "DD_SERVICE".into(),
                "OTEL_SERVICE_NAME".into(),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn env_list_selects_and_names_the_service() {
        let s = sel();
        assert!(s.decide(&facts("python3", &[])).is_none());
        let info = s
            .decide(&facts("python3", &[("DD_SERVICE", "shop")]))
            .unwrap();
        assert_eq!(info.service, "shop");
        let info = s
            .decide(&facts(
                "python3",
                &[("DD_SERVICE", "shop"), ("DKE_SERVICE", "front")],
            ))
            .unwrap();
        assert_eq!(info.service, "front");
        // Empty values do not count.
        assert!(s.decide(&facts("python3", &[("DD_SERVICE", "")])).is_none());
    }

    #[test]
    fn every_list_applies() {
        let mut s = sel();
        s.trace_all = true;
        s.name_blacklist = vec!["nginx".into()];
        s.env_blacklist = vec!["NO_TRACE".into()];
        assert_eq!(s.decide(&facts("curl", &[])).unwrap().service, "curl");
        assert!(s.decide(&facts("nginx", &[])).is_none());
        // The env blacklist is honoured even with a name blacklist set (DataKit skips it).
        assert!(s.decide(&facts("curl", &[("NO_TRACE", "1")])).is_none());
        s.trace_all = false;
        s.name_list = vec!["curl".into()];
        assert!(s.decide(&facts("curl", &[])).is_some());
        assert!(s.decide(&facts("wget", &[])).is_none());
    }

    #[test]
    fn datakit_and_espan_never() {
        let mut s = sel();
        s.trace_all = true;
        s.name_list = vec!["datakit".into()];
        assert!(s.decide(&facts("datakit", &[])).is_none());
        assert!(s.decide(&facts("datakit-ebpf", &[])).is_none());
        assert!(s.decide(&facts("espan-linker", &[])).is_none());
    }

    #[test]
    fn environ_parsing() {
        let env = parse_environ(b"A=1\0B=x=y\0junk\0A=2\0");
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn children_are_listed_once_forked() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let listed = children_of(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(listed.contains(&child.id()), "{listed:?}");
        assert!(children_of(u32::MAX).is_empty());
    }
}
