//! Durability as claimed: what a power cut loses of the messages JetStream
//! acked, with `sync_interval: always` (what every espan launcher sets,
//! `scripts/nats.conf`) and with NATS's default of 2 minutes.
//!
//! What the test does: nats-server keeps its store on a
//! [`espan::testkit::PowerCutDisk`] (its docs say what that simulation shows
//! and what it does not); at the cut it gets SIGKILL and the disk is copied as
//! it is. A server started on the copy says which acked messages survived.
//! Needs root (loop devices, mount, sysctl): `--include-ignored`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use espan::bus::{self, StreamLimits};
use espan::testkit::{NatsOptions, PowerCutDisk, TestNats};

const MESSAGES: u64 = 2_000;

/// What one run measured.
struct Cut {
    acked: u64,
    kept: u64,
    /// Acked publishes per second before the cut.
    rate: f64,
}

/// Publishes acked messages to a server with `sync_interval`, cuts the power,
/// and says what survived.
async fn cut_power(sync_interval: &str) -> Cut {
    let mut disk = PowerCutDisk::new(256).unwrap();
    let mut nats = TestNats::start_with(NatsOptions {
        sync_interval: sync_interval.into(),
        store_dir: Some(disk.path().join("js")),
        ..Default::default()
    })
    .unwrap();
    let limits = StreamLimits {
        max_bytes: 64 << 20,
        ..Default::default()
    };
    let bus = nats.bus("durability", &limits).await.unwrap();
    // Everything before the messages (the streams) is on disk.
    disk.hold_writeback().unwrap();
    let started = std::time::Instant::now();
    let mut publisher = bus.publisher(64);
    let mut acked = 0;
    for n in 0..MESSAGES {
        acked += publisher
            .publish(
                n,
                "espan.host-a".into(),
                format!("m{n}"),
                bytes::Bytes::from(vec![b'e'; 1024]),
                None,
            )
            .await
            .unwrap()
            .len() as u64;
    }
    acked += publisher.flush().await.unwrap().len() as u64;
    let rate = acked as f64 / started.elapsed().as_secs_f64();
    // The cut: the process dies, and the disk is what reached it.
    nats.kill();
    let disk = disk.cut().unwrap();
    let nats = TestNats::start_with(NatsOptions {
        store_dir: Some(disk.path().join("js")),
        ..Default::default()
    })
    .unwrap();
    let bus = bus::Bus::connect(&nats.url(), "after", Duration::from_secs(10))
        .await
        .unwrap();
    let kept = match bus.jetstream().get_stream(bus::ESPANS_STREAM).await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    };
    drop(nats);
    drop(disk);
    Cut { acked, kept, rate }
}

#[tokio::test]
#[ignore = "needs root: loop devices, mount, sysctl"]
async fn a_power_cut_loses_no_acked_message_with_sync_always() {
    let always = cut_power("always").await;
    let default = cut_power("2m").await;
    for (setting, cut) in [("always", &always), ("2m (NATS's default)", &default)] {
        println!(
            "sync_interval {setting}: {} acked ({:.0}/s, 1 KiB each, 64 in flight), {} kept after the cut",
            cut.acked, cut.rate, cut.kept
        );
    }
    assert_eq!(always.acked, MESSAGES);
    assert_eq!(
        always.kept, always.acked,
        "always: every acked message survives"
    );
    // The simulation must be able to lose something, or the first
    // assertion proves nothing.
    assert!(
        default.kept < default.acked,
        "2m: acked messages not yet fsynced are lost ({} of {} kept)",
        default.kept,
        default.acked
    );
}

/// Every launcher's JetStream has `sync_interval: always`: the server started
/// with `scripts/nats.conf`, as the README, setup.sh and demo.sh start it,
/// says so on its monitoring port, and the Kubernetes config sets it too.
#[test]
fn the_launchers_run_jetstream_with_sync_always() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for launcher in [
        "scripts/setup.sh",
        "scripts/demo.sh",
        "README.md",
        "packaging/build-images.sh",
    ] {
        let text = std::fs::read_to_string(root.join(launcher)).unwrap();
        for line in text.lines().filter(|l| {
            (l.contains("nats-server") || l.contains("NATS_SERVER\"") || l.contains("nats:2."))
                && (l.contains(" -js") || l.contains("\"-js\""))
        }) {
            assert!(
                line.contains("nats.conf"),
                "{launcher}: a JetStream started without scripts/nats.conf: {line}"
            );
        }
    }
    let k8s = std::fs::read_to_string(root.join("k8s/components/nats/config/nats.conf")).unwrap();
    assert!(k8s.contains("sync_interval: always"));

    let store = tempfile::tempdir().unwrap();
    let port = espan::testkit::free_port().unwrap();
    let monitor = espan::testkit::free_port().unwrap();
    let mut server = Command::new(espan::testkit::nats_server_binary().unwrap())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &monitor.to_string(), "-sd"])
        .arg(store.path())
        .arg("-c")
        .arg(root.join("scripts/nats.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let varz = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            http_get(monitor, "/varz")
        })
        .expect("/varz answers");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        varz.replace(' ', "").contains("\"sync_always\":true"),
        "{varz}"
    );
}

/// A plain HTTP/1.0 GET on loopback (the monitoring port), its body.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}
