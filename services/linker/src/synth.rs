//! Realistic synthetic traces for tests and benchmarks, with the truth: every
//! span comes with its true parent, so a test can check each edge the engine made.
//!
//! The model: services spread over several hosts, each a process with a pool of
//! worker threads; a request to a service makes 1–10 calls to services further
//! down (depth 1–6), sequential or in parallel, over keep-alive connection pools
//! whose TCP sequence numbers advance call after call (and wrap at 2^32), some
//! pipelined two at a time. Calls between hosts may go through NAT (the client
//! sees a virtual IP, the server a translated source); hosts' clocks differ by up
//! to ±20 ms. Some traces carry W3C or Datadog ids. Spans reach the linker when
//! their probe flushes (up to 200 ms after they end); by default 8% are delayed
//! further (reordered, up to 2 s) and 2% arrive late (25–35 s, after their trace
//! was finished with the default 20 s window).
//!
//! Deterministic from the seed. It uses its own SplitMix64 generator because
//! `rand`'s standard generators do not promise the same stream across versions,
//! and benchmark and crash-test inputs must not change under a dependency bump.

use espan::wire::{
    AppTrace, ESpan, Endpoint, Http, Protocol, SamplingDecision, SpanKind, TraceFormat,
};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Same seed, same spans.
    pub seed: u64,
    /// Number of traces.
    pub traces: usize,
    /// Hosts (each with its own clock offset).
    pub hosts: usize,
    /// Services (each a process on one host).
    pub services: usize,
    /// Mean time between the starts of two traces.
    pub trace_interval_ns: u64,
    /// Upper bound on one trace's spans (fan-out 10 at depth 6 would be a million).
    pub max_spans_per_trace: usize,
    /// Fraction of spans delayed by up to `reorder_delay_ns`.
    pub reordered: f64,
    /// Maximum extra delay of a reordered span.
    pub reorder_delay_ns: u64,
    /// Fraction of spans delayed by `late_delay_ns`.
    pub late: f64,
    /// Range of a late span's extra delay.
    pub late_delay_ns: (u64, u64),
    /// Fraction of traces whose requests carry an application trace id.
    pub app_trace: f64,
    /// Fraction of cross-host connections that go through NAT.
    pub nat: f64,
    /// Wall-clock time of the first trace.
    pub start_ns: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            traces: 1_000,
            hosts: 6,
            services: 16,
            trace_interval_ns: 100_000,
            max_spans_per_trace: 150,
            reordered: 0.08,
            reorder_delay_ns: 2_000_000_000,
            late: 0.02,
            late_delay_ns: (25_000_000_000, 35_000_000_000),
            app_trace: 0.3,
            nat: 0.3,
            start_ns: 1_750_000_000_000_000_000,
        }
    }
}

/// How a span's delivery was disturbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Flushed by its probe as usual.
    OnTime,
    /// Delayed by up to `reorder_delay_ns`.
    Reordered,
    /// Delayed by `late_delay_ns`.
    Late,
}

/// One generated span and the truth about it.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpan {
    /// The eSpan as a probe would publish it.
    pub span: ESpan,
    /// When it reaches the linker (true time, ns).
    pub arrive_ns: u64,
    /// The true parent's span_id; 0 for the trace's root.
    pub parent: u64,
    /// Index of its true trace.
    pub trace: u32,
    /// How its delivery was disturbed.
    pub delivery: Delivery,
}

/// The generated spans, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct Synth {
    /// Sorted by `arrive_ns` (ties in generation order).
    pub spans: Vec<SynthSpan>,
    /// Number of traces.
    pub traces: usize,
}

/// Generates spans for `config`.
pub fn generate(config: &SynthConfig) -> Synth {
    let mut world = World::new(config);
    let mut t = config.start_ns;
    for trace in 0..config.traces {
        t += world.rng.below(2 * config.trace_interval_ns.max(1));
        world.trace(trace as u32, t);
    }
    let mut spans = world.out;
    spans.sort_by_key(|s| s.arrive_ns); // stable: ties keep generation order
    Synth {
        spans,
        traces: config.traces,
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

struct Service {
    host: usize,
    name: String,
    comm: String,
    pid: u32,
    ip: [u8; 4],
    port: u32,
    /// Next free time of each worker thread (thread pool).
    workers: Vec<u64>,
}

/// A keep-alive connection from one service to another.
struct Conn {
    /// What the client sees: its own end and the server's (a VIP under NAT).
    client_local: ([u8; 4], u32),
    client_remote: ([u8; 4], u32),
    /// What the server sees.
    server_local: ([u8; 4], u32),
    server_remote: ([u8; 4], u32),
    req_seq: u32,
    resp_seq: u32,
    busy_until: u64,
}

/// One call's context while generating a trace.
struct Ctx {
    trace: u32,
    budget: usize,
    max_depth: u32,
    app: Option<AppTrace>,
}

struct World<'a> {
    config: &'a SynthConfig,
    rng: Rng,
    services: Vec<Service>,
    clock_offset: Vec<i64>,
    host_names: Vec<String>,
    host_ips: Vec<[u8; 4]>,
    /// Connection pools per (caller, callee); the caller u32::MAX is the outside.
    pools: std::collections::HashMap<(usize, usize), Vec<Conn>>,
    next_port: u32,
    out: Vec<SynthSpan>,
}

const NAMES: [&str; 8] = [
    "frontend",
    "checkout",
    "cart",
    "catalog",
    "payment",
    "shipping",
    "auth",
    "inventory",
];

impl<'a> World<'a> {
    fn new(config: &'a SynthConfig) -> Self {
        let mut rng = Rng(config.seed ^ 0x5eed_5eed_5eed_5eed);
        let hosts = config.hosts.max(1);
        let clock_offset = (0..hosts)
            .map(|_| rng.below(40_000_001) as i64 - 20_000_000)
            .collect();
        let host_ips = (0..hosts).map(|h| [10, 0, h as u8, 1]).collect();
        let host_names = (0..hosts).map(|h| format!("node-{h}")).collect();
        let services = (0..config.services.max(2))
            .map(|i| {
                let host = i % hosts;
                let base = NAMES[i % NAMES.len()];
                Service {
                    host,
                    name: format!("{base}-{i}"),
                    comm: if i % 3 == 0 { "java" } else { "python3" }.to_owned(),
                    pid: 1000 + i as u32 * 17,
                    ip: [10, 1, i as u8, 2],
                    port: 8000 + i as u32,
                    workers: vec![0; 8],
                }
            })
            .collect();
        Self {
            config,
            rng,
            services,
            clock_offset,
            host_names,
            host_ips,
            pools: Default::default(),
            next_port: 32768,
            out: Vec::new(),
        }
    }

    fn span_id(&mut self) -> u64 {
        self.rng.next() | 1
    }

    fn trace(&mut self, trace: u32, t: u64) {
        let app = if self.rng.chance(self.config.app_trace) {
            let datadog = self.rng.chance(0.3);
            let sampling = match self.rng.below(3) {
                0 => SamplingDecision::Unset,
                1 => SamplingDecision::Keep,
                _ => SamplingDecision::Drop,
            };
            Some(AppTrace {
                format: if datadog {
                    TraceFormat::Datadog
                } else {
                    TraceFormat::W3c
                } as i32,
                trace_id_high: if datadog { 0 } else { self.rng.next() | 1 },
                trace_id_low: self.rng.next() | 1,
                parent_span_id: self.rng.next(),
                sampling: sampling as i32,
            })
        } else {
            None
        };
        let mut ctx = Ctx {
            trace,
            budget: self.config.max_spans_per_trace.max(1),
            max_depth: self.rng.range(1, 6) as u32,
            app,
        };
        let frontends = 2.min(self.services.len());
        let callee = self.rng.below(frontends as u64) as usize;
        if self.rng.chance(0.15) {
            // A traced batch job calls the frontend: the root is a CLIENT span.
            let job = self.services.len() - 1;
            let tid = self.services[job].pid + 1;
            self.call(&mut ctx, Some((job, 0, tid)), callee, t, 0);
        } else {
            self.call(&mut ctx, None, callee, t, 0);
        }
    }

    /// One call to `callee` starting at `t`; `caller` is (service, server span id
    /// it serves, its tid) or None for an untraced outside client. Returns the
    /// time the caller has the whole response.
    fn call(
        &mut self,
        ctx: &mut Ctx,
        caller: Option<(usize, u64, u32)>,
        callee: usize,
        t: u64,
        depth: u32,
    ) -> u64 {
        let same_host =
            caller.is_some_and(|(c, _, _)| self.services[c].host == self.services[callee].host);
        let latency = if same_host {
            self.rng.range(20_000, 60_000)
        } else {
            self.rng.range(150_000, 600_000)
        };
        let pipelined = caller.is_some() && self.rng.chance(0.05);
        let req_len = self.rng.range(120, 900) as u32;
        let resp_len = self.rng.range(200, 40_000) as u32;
        let conn = self.connection(caller.map(|c| c.0), callee, t);

        // The server side, then its own calls.
        let server_start = t + latency;
        let server_id = self.span_id();
        let (worker, tid) = self.worker(callee, server_start);
        ctx.budget = ctx
            .budget
            .saturating_sub(if caller.is_some() { 2 } else { 1 });
        let mut now = server_start + self.rng.range(10_000, 200_000);
        if depth + 1 < ctx.max_depth && ctx.budget >= 2 {
            let fanout = self.rng.range(1, 10) as usize;
            let parallel = self.rng.chance(0.3);
            let downstream = callee + 1..self.services.len() - 1;
            let mut last = now;
            for _ in 0..fanout {
                if ctx.budget < 2 || downstream.is_empty() {
                    break;
                }
                let next = downstream.start
                    + self.rng.below((downstream.end - downstream.start) as u64) as usize;
                let at = if parallel { now } else { last };
                let done = self.call(ctx, Some((callee, server_id, tid)), next, at, depth + 1);
                last = last.max(done);
                if !parallel {
                    last += self.rng.range(5_000, 50_000);
                }
            }
            now = last;
        }
        let server_end = now + self.rng.range(10_000, 100_000);
        self.services[callee].workers[worker] = server_end;
        let client_end = server_end + latency;

        let (req_seq, resp_seq) = {
            let c = &mut self.pools.get_mut(&conn.0).expect("pool")[conn.1];
            let seqs = (c.req_seq, c.resp_seq);
            c.req_seq = c.req_seq.wrapping_add(req_len);
            c.resp_seq = c.resp_seq.wrapping_add(resp_len);
            // A pipelined second request goes out before the first answer.
            c.busy_until = if pipelined { t } else { client_end };
            seqs
        };
        let (client_local, client_remote, server_local, server_remote) = {
            let c = &self.pools[&conn.0][conn.1];
            (
                c.client_local,
                c.client_remote,
                c.server_local,
                c.server_remote,
            )
        };
        let client_id = caller.map(|_| self.span_id());
        let app = ctx.app;
        let path = format!(
            "/api/{}/{}",
            self.services[callee].name,
            self.rng.below(100)
        );
        let status = if self.rng.chance(0.02) { 500 } else { 200 };
        let server = self.espan(
            callee,
            SpanKind::Server,
            server_id,
            (server_local, server_remote),
            (req_seq, resp_seq),
            (server_start, server_end),
            tid,
            0,
            &path,
            status,
            app,
        );
        self.emit(server, server_end, client_id.unwrap_or(0), ctx.trace);
        if let (Some((c, parent_server, caller_tid)), Some(client_id)) = (caller, client_id) {
            let client = self.espan(
                c,
                SpanKind::Client,
                client_id,
                (client_local, client_remote),
                (req_seq, resp_seq),
                (t, client_end),
                caller_tid,
                parent_server,
                &path,
                status,
                app,
            );
            self.emit(client, client_end, parent_server, ctx.trace);
        }
        client_end
    }

    /// A free keep-alive connection from `caller` to `callee`, or a new one.
    fn connection(
        &mut self,
        caller: Option<usize>,
        callee: usize,
        t: u64,
    ) -> ((usize, usize), usize) {
        let key = (caller.unwrap_or(usize::MAX), callee);
        let pool = self.pools.entry(key).or_default();
        if let Some(i) = pool.iter().position(|c| c.busy_until <= t) {
            return (key, i);
        }
        let port = self.next_port;
        self.next_port = if self.next_port >= 60999 {
            32768
        } else {
            self.next_port + 1
        };
        let server = (self.services[callee].ip, self.services[callee].port);
        let (client_ip, same_host) = match caller {
            Some(c) => (
                self.services[c].ip,
                self.services[c].host == self.services[callee].host,
            ),
            None => ([203, 0, 113, (port % 250) as u8 + 1], false),
        };
        let client = (client_ip, port);
        let nat = caller.is_some() && !same_host && self.rng.chance(self.config.nat);
        let (client_remote, server_remote) = if nat {
            // The client dials a virtual IP; the server sees the client's node,
            // on a translated port.
            let vip = ([10, 96, 0, callee as u8], 80);
            let node = self.host_ips[self.services[caller.unwrap_or(0)].host];
            (vip, (node, 10_000 + port % 50_000))
        } else {
            (server, client)
        };
        // Random ISNs, some just below 2^32 so the sequence wraps mid-connection.
        let isn = |rng: &mut Rng| {
            if rng.chance(0.1) {
                u32::MAX - rng.below(100_000) as u32
            } else {
                rng.next() as u32
            }
        };
        let conn = Conn {
            client_local: client,
            client_remote,
            server_local: server,
            server_remote,
            req_seq: isn(&mut self.rng),
            resp_seq: isn(&mut self.rng),
            busy_until: 0,
        };
        let pool = self.pools.get_mut(&key).expect("pool");
        pool.push(conn);
        (key, pool.len() - 1)
    }

    /// A worker thread of `service` free at `t` (or the least busy one): its
    /// index and tid.
    fn worker(&mut self, service: usize, t: u64) -> (usize, u32) {
        let s = &self.services[service];
        let i = s
            .workers
            .iter()
            .position(|&free| free <= t)
            .unwrap_or_else(|| {
                (0..s.workers.len())
                    .min_by_key(|&i| s.workers[i])
                    .unwrap_or(0)
            });
        self.services[service].workers[i] = u64::MAX; // busy until its span ends
        (i, self.services[service].pid + 1 + i as u32)
    }

    #[allow(clippy::too_many_arguments)]
    fn espan(
        &mut self,
        service: usize,
        kind: SpanKind,
        span_id: u64,
        (local, remote): (([u8; 4], u32), ([u8; 4], u32)),
        (req_seq, resp_seq): (u32, u32),
        (start, end): (u64, u64),
        tid: u32,
        local_parent_id: u64,
        path: &str,
        status: u32,
        app: Option<AppTrace>,
    ) -> ESpan {
        let s = &self.services[service];
        let offset = self.clock_offset[s.host];
        let skew = |t: u64| t.saturating_add_signed(offset);
        ESpan {
            span_id,
            kind: kind as i32,
            protocol: Protocol::Http1 as i32,
            local: Some(Endpoint {
                ip: local.0.to_vec(),
                port: local.1,
            }),
            remote: Some(Endpoint {
                ip: remote.0.to_vec(),
                port: remote.1,
            }),
            req_seq,
            resp_seq,
            start_ns: skew(start),
            end_ns: skew(end),
            pid: s.pid,
            tid,
            comm: s.comm.clone(),
            service: s.name.clone(),
            local_parent_id,
            http: Some(Http {
                method: if status == 200 { "GET" } else { "POST" }.to_owned(),
                path: path.to_owned(),
                version: "HTTP/1.1".to_owned(),
                status,
                host: format!("{}:{}", s.name, s.port),
            }),
            bytes_in: 512,
            bytes_out: 2048,
            error: String::new(),
            app_trace: app,
            host: self.host_names[s.host].clone(),
            container_id: String::new(),
            conn_id: u64::from(local.1) << 32 | u64::from(remote.1),
            db: None,
            grpc: None,
        }
    }

    /// Queues a span for delivery; `end` is its true (unskewed) end.
    fn emit(&mut self, span: ESpan, end: u64, parent: u64, trace: u32) {
        // The probe flushes when its batch is full or 200 ms old.
        let mut arrive = end + self.rng.range(1_000_000, 200_000_000);
        let delivery = if self.rng.chance(self.config.late) {
            let (lo, hi) = self.config.late_delay_ns;
            arrive += self.rng.range(lo, hi);
            Delivery::Late
        } else if self.rng.chance(self.config.reordered) {
            arrive += self.rng.below(self.config.reorder_delay_ns);
            Delivery::Reordered
        } else {
            Delivery::OnTime
        };
        self.out.push(SynthSpan {
            span,
            arrive_ns: arrive,
            parent,
            trace,
            delivery,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn sample() -> Synth {
        generate(&SynthConfig {
            traces: 300,
            ..SynthConfig::default()
        })
    }

    #[test]
    fn same_seed_same_spans_other_seed_other_spans() {
        assert_eq!(sample(), sample());
        let other = generate(&SynthConfig {
            seed: 2,
            traces: 300,
            ..SynthConfig::default()
        });
        assert_ne!(other.spans[0].span, sample().spans[0].span);
    }

    #[test]
    fn traces_have_the_shapes_asked_for() {
        let synth = sample();
        let by_id: HashMap<u64, &SynthSpan> =
            synth.spans.iter().map(|s| (s.span.span_id, s)).collect();
        assert_eq!(by_id.len(), synth.spans.len(), "span ids are unique");
        assert!(
            synth
                .spans
                .windows(2)
                .all(|w| w[0].arrive_ns <= w[1].arrive_ns)
        );

        // Depth counted in calls (a call is a client and a server span).
        let mut max_depth = 0;
        let mut children: HashMap<u64, usize> = HashMap::new();
        for s in &synth.spans {
            let (mut depth, mut at) = (0, s);
            while at.parent != 0 {
                at = by_id[&at.parent];
                depth += 1;
            }
            max_depth = max_depth.max(depth);
            if s.span.kind == SpanKind::Client as i32 && s.parent != 0 {
                *children.entry(s.parent).or_default() += 1;
            }
            assert!(s.parent == 0 || by_id[&s.parent].trace == s.trace);
        }
        assert!((6..=12).contains(&max_depth), "depth {max_depth} spans");
        let fanouts: HashSet<usize> = children.values().copied().collect();
        assert!(fanouts.contains(&1) && fanouts.contains(&10));
        assert!(fanouts.iter().all(|&f| f <= 10));

        let hosts: HashSet<&str> = synth.spans.iter().map(|s| s.span.host.as_str()).collect();
        assert_eq!(hosts.len(), 6);
        let delayed = synth
            .spans
            .iter()
            .filter(|s| s.delivery != Delivery::OnTime)
            .count();
        let share = delayed as f64 / synth.spans.len() as f64;
        assert!((0.07..0.13).contains(&share), "{share} delayed");
    }

    #[test]
    fn connections_are_reused_wrap_and_go_through_nat() {
        let synth = sample();
        let clients: Vec<&ESpan> = synth
            .spans
            .iter()
            .map(|s| &s.span)
            .filter(|s| s.kind == SpanKind::Client as i32)
            .collect();
        let mut per_conn: HashMap<(u32, Vec<u8>), usize> = HashMap::new();
        for c in &clients {
            let local = c.local.as_ref().unwrap();
            *per_conn.entry((local.port, local.ip.clone())).or_default() += 1;
        }
        assert!(per_conn.values().any(|&n| n >= 10), "keep-alive reuse");
        assert!(clients.iter().any(|c| c.req_seq < 50_000), "seqs past 2^32");
        assert!(
            clients
                .iter()
                .any(|c| c.remote.as_ref().unwrap().ip[..2] == [10, 96]),
            "some calls dial a virtual IP"
        );
        let with_app = synth
            .spans
            .iter()
            .filter(|s| s.span.app_trace.is_some())
            .count();
        assert!(with_app > 0 && with_app < synth.spans.len());
    }
}
