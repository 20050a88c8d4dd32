//! The linker on an authenticated, encrypted NATS, configured by its flags:
//! TLS with a CA and a client certificate made for the test, a user and
//! password; a batch whose host does not match its subject is dead-lettered,
//! not linked; and no secret reaches its log, its `config` or its `--help`,
//! even when NATS refuses it.

mod common;

use std::time::Duration;

use espan::bus::{self, Bus};
use espan::nats::{NatsAuth, NatsConnect, NatsTls};
use espan::testkit::{TestCerts, TestNats};
use espan::wire::{self, ESpanBatch};
use espan_linker::metrics::Metrics;
use espan_linker::service;
use espan_linker::settings::Settings;
use futures::StreamExt;

const LINKER_PASSWORD: &str = "pw_PLANTED_linker";
const PROBE_PASSWORD: &str = "pw_PLANTED_probe";

fn secured_nats(certs: &TestCerts) -> TestNats {
    TestNats::start_with_config(&format!(
        r#"{}
accounts {{
  ESPAN {{
    jetstream: enabled
    users: [
      {{ user: linker, password: "{LINKER_PASSWORD}" }}
      {{ user: probe, password: "{PROBE_PASSWORD}",
         permissions: {{ publish: ["espan.>"], subscribe: ["_INBOX.>"] }} }}
    ]
  }}
}}
"#,
        certs.nats_tls_block(true)
    ))
    .unwrap()
}

fn connect(nats: &TestNats, certs: &TestCerts, user: &str, password: &str) -> NatsConnect {
    NatsConnect {
        url: format!("nats://localhost:{}", nats.port()),
        auth: NatsAuth::UserPassword {
            user: user.into(),
            password: password.into(),
        },
        tls: NatsTls {
            required: true,
            ca: Some(certs.ca.clone()),
            client: Some((certs.client_cert.clone(), certs.client_key.clone())),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_password_and_a_forged_host_is_dead_lettered() {
    let certs = TestCerts::generate();
    let nats = secured_nats(&certs);
    let db = tempfile::tempdir().unwrap();
    let port = nats.port().to_string();
    let (_, settings) = Settings::from_args([
        "espan-linker",
        "--db-path",
        db.path().to_str().unwrap(),
        "--nats-url",
        &format!("nats://localhost:{port}"),
        "--nats-tls-ca",
        certs.ca.to_str().unwrap(),
        "--nats-tls-cert",
        certs.client_cert.to_str().unwrap(),
        "--nats-tls-key",
        certs.client_key.to_str().unwrap(),
        "--nats-user",
        "linker",
        "--nats-password",
        LINKER_PASSWORD,
        "--window",
        "1s",
        "--sampling-rate",
        "1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--flush-interval",
        "100ms",
        "--ack-wait",
        "1s",
    ])
    .unwrap();
    assert!(settings.nats.tls.required);
    assert!(!format!("{settings:?}").contains(LINKER_PASSWORD));

    let (trigger, stop) = espan::shutdown::channel();
    let store = std::sync::Arc::new(
        espan_linker::store::Store::open(&settings.db_path, &settings.store_sync)
            .await
            .unwrap(),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let linker = tokio::spawn(service::run(
        settings.clone(),
        store.clone(),
        metrics.clone(),
        Default::default(),
        stop,
    ));
    let linker_bus = Bus::connect(
        connect(&nats, &certs, "linker", LINKER_PASSWORD),
        "reader",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let probe_bus = Bus::connect(
        connect(&nats, &certs, "probe", PROBE_PASSWORD),
        "probe",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // The linker creates the streams; wait for them before publishing.
    for _ in 0..100 {
        if linker_bus
            .jetstream()
            .get_stream(bus::ESPANS_STREAM)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // host-b's spans, published on host-a's subject.
    let mut forged_span = wire::sample::span(99);
    forged_span.host = "host-b".into();
    let forged = ESpanBatch {
        version: 0,
        host: "host-b".into(),
        boot_id: 1,
        seq: 1,
        spans: vec![forged_span],
    };
    let mut publisher = probe_bus.publisher(4);
    publisher
        .publish(
            1,
            bus::espan_subject("host-a"),
            "forged/1".into(),
            wire::encode_espan_batch(&forged),
            None,
        )
        .await
        .unwrap();
    // A batch of host-a on its own subject that smuggles in a host-b span.
    let mut smuggled = forged.clone();
    smuggled.host = "host-a".into();
    publisher
        .publish(
            2,
            bus::espan_subject("host-a"),
            "smuggled/1".into(),
            wire::encode_espan_batch(&smuggled),
            None,
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    // And honest spans, which are linked as always.
    let mut seq = 10;
    common::publish_spans(&probe_bus, &mut seq, &honest_spans()).await;

    let traces = common::read_traces(&linker_bus, "reader", Duration::from_secs(8)).await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    assert!(
        traces[0]
            .spans
            .iter()
            .all(|s| s.span.as_ref().unwrap().span_id != 99),
        "the forged span was not linked"
    );
    assert_eq!(metrics.batches_host_mismatch.get(), 2);

    let letters = dead_letters(&linker_bus, 2).await;
    let reasons: Vec<String> = letters
        .iter()
        .map(|h| {
            h.get(bus::DEAD_REASON_HEADER)
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        reasons[0].contains("does not match its subject espan.host-a"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("a span of host \"host-b\""),
        "{reasons:?}"
    );

    trigger.trigger();
    linker.await.unwrap().unwrap();
}

/// One client and one server span of host-a and host-b, linked by sequence numbers.
fn honest_spans() -> Vec<wire::ESpan> {
    let t = 1_750_000_000_000_000_000u64;
    let mut call = wire::sample::span(12);
    call.kind = wire::SpanKind::Client as i32;
    call.host = "host-a".into();
    call.start_ns = t;
    call.end_ns = t + 9_000_000;
    call.local_parent_id = 0;
    call.req_seq = 1_000;
    call.resp_seq = 2_000;
    call.local = Some(wire::Endpoint::from_socket_addr(
        "10.0.0.1:40000".parse().unwrap(),
    ));
    call.remote = Some(wire::Endpoint::from_socket_addr(
        "10.0.0.2:8080".parse().unwrap(),
    ));
    let mut back = wire::sample::span(21);
    back.kind = wire::SpanKind::Server as i32;
    back.host = "host-b".into();
    back.start_ns = t + 2_000_000;
    back.end_ns = t + 8_000_000;
    back.local_parent_id = 0;
    back.req_seq = 1_000;
    back.resp_seq = 2_000;
    back.local = call.remote.clone();
    back.remote = call.local.clone();
    vec![call, back]
}

async fn dead_letters(bus: &Bus, n: usize) -> Vec<async_nats::HeaderMap> {
    let stream = bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("letters".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await
            .expect("a dead letter")
            .unwrap()
            .unwrap();
        m.ack().await.unwrap();
        out.push(m.headers.clone().unwrap_or_default());
    }
    out
}

/// A linker whose NATS password is wrong stops after its retry period with
/// an error naming the URL, not the password; nothing it logs on the way,
/// nor `config` or `--help` with the secrets in its environment, holds one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_named_by_no_log_line() {
    let certs = TestCerts::generate();
    let nats = secured_nats(&certs);
    let db = tempfile::tempdir().unwrap();
    let url = format!("nats://linker:pw_PLANTED_wrong@localhost:{}", nats.port());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_espan-linker"));
        command
            .env_clear()
            .env("RUST_LOG", "trace")
            .env("ENV_INPUT_EBPFTRACE_DB_PATH", db.path())
            .env("ESPAN_METRICS_ADDR", "127.0.0.1:0")
            .env("ESPAN_API_ADDR", "127.0.0.1:0")
            .env("ESPAN_NATS_TLS_CA", &certs.ca)
            .env("ESPAN_NATS_TLS_CERT", &certs.client_cert)
            .env("ESPAN_NATS_TLS_KEY", &certs.client_key)
            .args(args)
            .envs(env.iter().copied());
        command.output()
    };
    let output = run(&[], &[("ESPAN_NATS_URL", &url)]).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to NATS at nats://<redacted>@localhost:"),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("authorization"),
        "the error says why: {stderr}"
    );
    for args in [&["config"][..], &["--help"][..]] {
        let output = run(
            args,
            &[
                ("ESPAN_NATS_URL", "nats://localhost:4222"),
                ("ESPAN_NATS_USER", "linker"),
                ("ESPAN_NATS_PASSWORD", "pw_PLANTED_env"),
            ],
        )
        .await
        .unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert!(!out.contains("pw_PLANTED"), "{args:?}: {out}");
    }
    for line in stderr.lines() {
        assert!(!line.contains("pw_PLANTED"), "{line}");
    }
}
