//! Test "hosts": network namespaces with their own addresses on one segment.
//!
//! ```text
//!  root namespace 10.213.0.1 (NATS, linker, exporter, OTLP receiver, test client)
//!        │ veth
//!  ┌─────┴──────────── router namespace: bridge br0 10.213.0.254 ─────────────┐
//!  │  DNAT 10.213.100.<n>:<port> → host:port, then MASQUERADE (an L4 balancer) │
//!  └──┬──────────────┬──────────────┬─────────────────────────────────────────┘
//!   host a .11     host b .12     host c .13      (one veth each)
//! ```
//!
//! The router has a namespace of its own, so forwarding and NAT rules never touch
//! the machine's (Docker's) firewall. Everything is deleted on drop, and leftovers
//! of a run that died are deleted before a new one starts.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Namespace and interface names start with this.
const PREFIX: &str = "espe2e";
const ROUTER: &str = "espe2e-r";
/// The root namespace's end of its veth to the router.
const ROOT_LINK: &str = "espe2e-root";

/// The root namespace's address on the test segment.
pub const ROOT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 254);
/// Virtual addresses (DNAT'd by the router) come from this /24.
const VIP_NET: &str = "10.213.100.0/24";

/// Runs `ip`/`iptables`-style commands, failing with their stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `iptables -t nat <args>` in the router's namespace.
fn router_nat(args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ROUTER, "iptables", "-t", "nat"];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// One test host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name (`a`, `b`, …).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }
}

/// The hosts, the router and the root's link; deleted on drop.
pub struct Topology {
    pub hosts: Vec<Host>,
    vips: u8,
}

impl Topology {
    /// Makes hosts with the given short names (at most 8), addresses .11, .12, …
    pub fn create(names: &[&str]) -> Result<Self> {
        if names.len() > 8 {
            bail!("at most 8 hosts");
        }
        remove_leftovers();
        let mut topo = Self {
            hosts: Vec::new(),
            vips: 0,
        };
        topo.build(names)
            .context("cannot build the test network (needs root and iproute2)")?;
        Ok(topo)
    }

    fn build(&mut self, names: &[&str]) -> Result<()> {
        run("ip", &["netns", "add", ROUTER])?;
        let rip = |args: &[&str]| {
            let mut all = vec!["-n", ROUTER];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        rip(&["link", "set", "lo", "up"])?;
        rip(&["link", "add", "br0", "type", "bridge"])?;
        rip(&["link", "set", "br0", "up"])?;
        rip(&["addr", "add", &format!("{ROUTER_ADDR}/24"), "dev", "br0"])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                ROUTER,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        let root_peer = format!("{ROOT_LINK}p");
        run(
            "ip",
            &[
                "link", "add", ROOT_LINK, "type", "veth", "peer", "name", &root_peer,
            ],
        )?;
        run("ip", &["link", "set", &root_peer, "netns", ROUTER])?;
        rip(&["link", "set", &root_peer, "master", "br0", "up"])?;
        run(
            "ip",
            &["addr", "add", &format!("{ROOT_ADDR}/24"), "dev", ROOT_LINK],
        )?;
        run("ip", &["link", "set", ROOT_LINK, "up"])?;
        // Masquerade what the router DNATs, so replies come back through it (as
        // with kube-proxy or an L4 balancer): each side then sees other addresses.
        router_nat(&[
            "-A",
            "POSTROUTING",
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-j",
            "MASQUERADE",
        ])?;
        for (i, name) in names.iter().enumerate() {
            let netns = format!("{PREFIX}-{name}");
            let addr = Ipv4Addr::new(10, 213, 0, 11 + i as u8);
            let link = format!("{PREFIX}-{name}");
            let peer = format!("{link}p");
            run("ip", &["netns", "add", &netns])?;
            run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &["link", "add", &link, "type", "veth", "peer", "name", &peer],
            )?;
            run("ip", &["link", "set", &link, "netns", &netns])?;
            run("ip", &["link", "set", &peer, "netns", ROUTER])?;
            rip(&["link", "set", &peer, "master", "br0", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &link,
                ],
            )?;
            run("ip", &["-n", &netns, "link", "set", &link, "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &netns,
                    "route",
                    "add",
                    VIP_NET,
                    "via",
                    &ROUTER_ADDR.to_string(),
                ],
            )?;
            self.hosts.push(Host {
                name: name.to_string(),
                netns,
                addr,
            });
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// A virtual address whose `port` the router DNATs to `host:port`: the client
    /// sees the virtual address, the server sees the router's (NAT).
    pub fn nat_to(&mut self, host: &str, port: u16) -> Result<Ipv4Addr> {
        self.vips += 1;
        let vip = Ipv4Addr::new(10, 213, 100, self.vips);
        let to = format!("{}:{port}", self.host(host).addr);
        router_nat(&[
            "-A",
            "PREROUTING",
            "-d",
            &vip.to_string(),
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])?;
        Ok(vip)
    }
}

/// Deletes every namespace and link of an earlier run, and waits until the
/// kernel has let go of their names (namespace teardown is asynchronous).
fn remove_leftovers() {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) {
            // Processes of a run that died keep a namespace alive: end them first.
            let pids = Command::new("ip")
                .args(["netns", "pids", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    let _ = run("ip", &["link", "del", ROOT_LINK]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let links = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !links.contains(PREFIX) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove_leftovers();
    }
}
