//! Child processes of a test: output to a log file, stopped (and reaped) on drop,
//! and stoppable the hard way (SIGKILL) or the polite way (SIGTERM).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running child with its log.
pub struct Service {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// Where this process's output starts in the log (a restarted service
    /// appends to its predecessor's).
    log_start: u64,
}

impl Service {
    /// Starts `cmd` with stdout and stderr appended to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let log_start = out.metadata()?.len();
        let err = out.try_clone()?;
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the
        // child when the thread that started it ends, so a test that dies (or is
        // killed) leaves no probe or app behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
            log_start,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What this process has logged so far.
    pub fn log_text(&self) -> String {
        let mut raw = Vec::new();
        if let Ok(mut f) = File::open(&self.log)
            && f.seek(SeekFrom::Start(self.log_start)).is_ok()
        {
            let _ = f.read_to_end(&mut raw);
        }
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            self.fail_if_exited()?;
            if start.elapsed() > timeout {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    tail(&self.log_text())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `addr` accepts TCP connections.
    pub fn wait_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            self.fail_if_exited()?;
            if start.elapsed() > timeout {
                bail!(
                    "{} never listened on {addr}; log:\n{}",
                    self.name,
                    tail(&self.log_text())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn fail_if_exited(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            // Let the last writes of whatever it forked reach the log.
            std::thread::sleep(Duration::from_millis(200));
            bail!(
                "{} exited ({status}); log:\n{}",
                self.name,
                tail(&self.log_text())
            );
        }
        Ok(())
    }

    /// SIGKILL and reap: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Waits for it to exit by itself; its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Result<i32> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.name);
        };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code().unwrap_or(-1));
            }
            if start.elapsed() > timeout {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The last lines of a log, for error messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A TCP port nobody listens on now (on all addresses).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("0.0.0.0:0")?;
    Ok(l.local_addr()?.port())
}

/// GET `http://addr/path` with a plain socket; the body (status 200 only).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}{path}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {addr}{path}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// The value of a Prometheus sample `name` (exact series text before the
/// value, e.g. `espan_linker_spans_in_total`); sums series with labels when
/// `name` has none and several match.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let matches = series == name
            || (!name.contains('{')
                && series.starts_with(name)
                && series[name.len()..].starts_with('{'));
        if matches && let Ok(v) = value.parse::<f64>() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}
