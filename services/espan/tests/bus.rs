//! The bus against a real nats-server (one per test, see `espan::testkit`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use espan::bus::{self, Bus, ConsumerSpec, Delivery, Handler, HandlerError, StreamLimits};
use espan::shutdown;
use espan::testkit::TestNats;
use espan::wire::{self, ESpanBatch};
use futures::StreamExt;

fn decode(bytes: &[u8]) -> Result<ESpanBatch, String> {
    wire::decode_espan_batch(bytes)
        .map(|c| c.batch)
        .map_err(|e| e.to_string())
}

async fn bus_for(nats: &TestNats) -> Bus {
    nats.bus("test", &StreamLimits::default()).await.unwrap()
}

/// Collects batches; fails the first `fail_first` groups, or every group when
/// `always_fail`.
struct Collect {
    got: tokio::sync::mpsc::UnboundedSender<(ESpanBatch, i64)>,
    fail_first: u64,
    always_fail: bool,
    calls: Arc<AtomicU64>,
}

impl Handler<ESpanBatch> for Collect {
    async fn handle(&mut self, deliveries: Vec<Delivery<ESpanBatch>>) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.always_fail || call < self.fail_first {
            // The reason quotes a URL with secrets, as a backend's error does.
            return Err(HandlerError(format!(
                "refusing call {call} (POST {PLANTED_URL})"
            )));
        }
        for d in deliveries {
            self.got.send((d.value, d.delivered)).unwrap();
        }
        Ok(())
    }
}

/// A URL with a password and a token that no dead letter may show.
const PLANTED_URL: &str = "http://alice:hunter2@dataway:9528/v1/write/tracing?token=tkn_PLANTED";

fn assert_redacted(reason: &str) {
    for secret in ["hunter2", "tkn_PLANTED", "alice"] {
        assert!(!reason.contains(secret), "{secret} leaked: {reason}");
    }
    assert!(
        reason.contains("http://<redacted>@dataway:9528/v1/write/tracing?<redacted>"),
        "the endpoint stays named: {reason}"
    );
}

fn spec(max_deliver: i64) -> ConsumerSpec {
    let mut spec = ConsumerSpec::new(bus::ESPANS_STREAM, "test-linker");
    spec.max_deliver = max_deliver;
    spec.retry_delay = Duration::from_millis(50);
    spec.ack_wait = Duration::from_secs(2);
    spec
}

fn run_consumer(
    bus: Bus,
    spec: ConsumerSpec,
    mut handler: Collect,
) -> (
    shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<Result<(), bus::BusError>>,
) {
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(async move {
        bus::consume(&bus, &spec, decode, &mut handler, &bus::NoObserver, stop).await
    });
    (trigger, task)
}

async fn stream_messages(bus: &Bus, stream: &str) -> u64 {
    let mut stream = bus.jetstream().get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_published_batch_is_consumed_and_decoded_intact() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let batch = wire::sample::batch(1, 200);
    let mut publisher = bus.publisher(16);
    publisher
        .publish(
            1,
            bus::espan_subject(&batch.host),
            "host-a/1/1".into(),
            wire::encode_espan_batch(&batch),
            None,
        )
        .await
        .unwrap();
    let acks = publisher.flush().await.unwrap();
    assert_eq!(acks.len(), 1);
    assert!(!acks[0].duplicate);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Collect {
        got: tx,
        fail_first: 0,
        always_fail: false,
        calls: Default::default(),
    };
    let (trigger, task) = run_consumer(bus.clone(), spec(5), handler);
    let (got, delivered) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, batch);
    assert_eq!(delivered, 1);
    trigger.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_republished_batch_with_the_same_msg_id_is_stored_once() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let batch = wire::sample::batch(2, 10);
    let payload = wire::encode_espan_batch(&batch);
    let mut publisher = bus.publisher(16);
    for tag in 0..3 {
        publisher
            .publish(
                tag,
                "espan.host-a".into(),
                "host-a/5eed/2".into(),
                payload.clone(),
                None,
            )
            .await
            .unwrap();
    }
    let acks = publisher.flush().await.unwrap();
    let duplicates: Vec<bool> = acks.iter().map(|a| a.duplicate).collect();
    assert_eq!(duplicates, vec![false, true, true]);
    assert!(acks.iter().all(|a| a.stream_seq == acks[0].stream_seq));
    assert_eq!(stream_messages(&bus, bus::ESPANS_STREAM).await, 1);
}

#[tokio::test]
async fn many_publishes_in_flight_are_all_acked_in_order() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let mut publisher = bus.publisher(64);
    let mut acked = Vec::new();
    for seq in 0..500u64 {
        let payload = wire::encode_espan_batch(&wire::sample::batch(seq, 3));
        acked.extend(
            publisher
                .publish(
                    seq,
                    "espan.host-a".into(),
                    format!("host-a/1/{seq}"),
                    payload,
                    None,
                )
                .await
                .unwrap(),
        );
        assert!(publisher.in_flight() <= 64);
    }
    acked.extend(publisher.flush().await.unwrap());
    let tags: Vec<u64> = acked.iter().map(|a| a.tag).collect();
    assert_eq!(tags, (0..500).collect::<Vec<_>>());
    assert_eq!(stream_messages(&bus, bus::ESPANS_STREAM).await, 500);
}

#[tokio::test]
async fn a_failing_handler_leaves_the_message_unacked_and_it_is_redelivered() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let batch = wire::sample::batch(3, 5);
    let mut publisher = bus.publisher(4);
    publisher
        .publish(
            0,
            "espan.host-a".into(),
            "m-3".into(),
            wire::encode_espan_batch(&batch),
            None,
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(AtomicU64::new(0));
    let handler = Collect {
        got: tx,
        fail_first: 2,
        always_fail: false,
        calls: calls.clone(),
    };
    let (trigger, task) = run_consumer(bus.clone(), spec(5), handler);
    let (got, delivered) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, batch);
    assert_eq!(
        delivered, 3,
        "two failures, then the third delivery succeeds"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    trigger.trigger();
    task.await.unwrap().unwrap();
    assert_eq!(stream_messages(&bus, bus::DEADLETTER_STREAM).await, 0);
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dead_letter_subject_after_max_deliver() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let mut publisher = bus.publisher(4);
    let good = wire::sample::batch(4, 2);
    publisher
        .publish(
            0,
            "espan.host-a".into(),
            "poison".into(),
            wire::encode_espan_batch(&good),
            None,
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();

    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(AtomicU64::new(0));
    let handler = Collect {
        got: tx,
        fail_first: 0,
        always_fail: true,
        calls: calls.clone(),
    };
    let (trigger, task) = run_consumer(bus.clone(), spec(3), handler);
    let dead = read_dead_letters(&bus, 1).await;
    trigger.trigger();
    task.await.unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "tried exactly max_deliver times"
    );
    let (subject, headers, payload) = &dead[0];
    assert_eq!(subject, "deadletter.ESPANS.test-linker");
    let reason = headers.get(bus::DEAD_REASON_HEADER).unwrap().as_str();
    assert!(
        reason.starts_with("handler failed 3 times: refusing call 2"),
        "{reason}"
    );
    assert_redacted(reason);
    assert_eq!(
        headers.get(bus::DEAD_SUBJECT_HEADER).unwrap().as_str(),
        "espan.host-a"
    );
    assert_eq!(
        decode(payload).unwrap(),
        good,
        "the dead letter keeps the message intact"
    );
}

#[tokio::test]
async fn an_undecodable_message_is_dead_lettered_at_once_and_the_next_one_still_flows() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let mut publisher = bus.publisher(4);
    publisher
        .publish(
            0,
            "espan.host-a".into(),
            "junk".into(),
            bytes::Bytes::from_static(b"\xff\xff junk"),
            None,
        )
        .await
        .unwrap();
    let good = wire::sample::batch(5, 1);
    publisher
        .publish(
            1,
            "espan.host-a".into(),
            "good".into(),
            wire::encode_espan_batch(&good),
            None,
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Collect {
        got: tx,
        fail_first: 0,
        always_fail: false,
        calls: Default::default(),
    };
    let (trigger, task) = run_consumer(bus.clone(), spec(5), handler);
    let (got, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, good);
    let dead = read_dead_letters(&bus, 1).await;
    let reason = dead[0].1.get(bus::DEAD_REASON_HEADER).unwrap().as_str();
    assert!(
        reason.starts_with("undecodable: malformed protobuf"),
        "{reason}"
    );
    trigger.trigger();
    task.await.unwrap().unwrap();
}

/// One letter per (consumer, message, piece): a repeat after a lost ack is
/// stored once, two consumers of one message each keep theirs, and the reason
/// never shows a URL's secrets.
#[tokio::test]
async fn dead_letters_dedup_by_consumer_message_and_piece() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let otlp = bus::DeadLetters::new(&bus, bus::TRACES_STREAM, "exporter-otlp");
    let dataway = bus::DeadLetters::new(&bus, bus::TRACES_STREAM, "exporter-dataway");
    assert_eq!(otlp.subject(), "deadletter.TRACES.exporter-otlp");
    let reason = format!("POST {PLANTED_URL} answered 400");
    let letter = |stream_seq: u64, piece: Option<&'static str>| bus::DeadLetter {
        source_subject: "trace.linker-1",
        stream_seq,
        piece,
        payload: bytes::Bytes::from(format!("letter {stream_seq} {piece:?}")),
        reason: &reason,
    };
    let stored = || stream_messages(&bus, bus::DEADLETTER_STREAM);

    otlp.store(letter(7, None)).await.unwrap();
    otlp.store(letter(7, None)).await.unwrap();
    assert_eq!(stored().await, 1, "a repeat of one letter is stored once");
    dataway.store(letter(7, None)).await.unwrap();
    assert_eq!(stored().await, 2, "another consumer's letter is its own");
    otlp.store(letter(7, Some("0.500"))).await.unwrap();
    otlp.store(letter(7, Some("0.500"))).await.unwrap();
    assert_eq!(stored().await, 3, "a piece is a letter of its own, once");
    otlp.store(letter(8, None)).await.unwrap();
    assert_eq!(stored().await, 4, "another message");
    otlp.store(letter(0, None)).await.unwrap();
    otlp.store(letter(0, None)).await.unwrap();
    assert_eq!(
        stored().await,
        6,
        "an unknown sequence is never taken for a repeat"
    );

    for (subject, headers, payload) in read_dead_letters(&bus, 6).await {
        assert!(
            subject.starts_with("deadletter.TRACES.exporter-"),
            "{subject}"
        );
        assert_eq!(
            headers.get(bus::DEAD_SUBJECT_HEADER).unwrap().as_str(),
            "trace.linker-1"
        );
        let seq = headers.get(bus::DEAD_SEQ_HEADER).unwrap().as_str();
        assert!(
            std::str::from_utf8(&payload)
                .unwrap()
                .starts_with(&format!("letter {seq} ")),
            "{payload:?}"
        );
        let reason = headers.get(bus::DEAD_REASON_HEADER).unwrap().as_str();
        assert!(reason.starts_with("POST http://"), "{reason}");
        assert_redacted(reason);
    }
}

#[tokio::test]
async fn ensure_streams_is_idempotent() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let limits = StreamLimits {
        max_bytes: 1 << 20,
        ..Default::default()
    };
    bus.ensure_streams(&limits).await.unwrap();
    bus.ensure_streams(&limits).await.unwrap();
    let mut stream = bus
        .jetstream()
        .get_stream(bus::ESPANS_STREAM)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_bytes, 1 << 20);
}

/// A probe or exporter starting after the linker leaves the linker's limits;
/// a stream nobody made yet gets the starter's.
#[tokio::test]
async fn creating_missing_streams_leaves_existing_limits() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    // bus_for made every stream: ESPANS plays the one nobody made yet.
    bus.jetstream()
        .delete_stream(bus::ESPANS_STREAM)
        .await
        .unwrap();
    let owner = StreamLimits {
        max_bytes: 1 << 20,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    bus.ensure_stream(bus::TRACES_STREAM, bus::TRACES_SUBJECTS, &owner)
        .await
        .unwrap();
    let starter = StreamLimits {
        max_bytes: 3 << 20,
        ..Default::default()
    };
    bus.create_missing_streams(&starter).await.unwrap();
    bus.create_missing_streams(&starter).await.unwrap();
    let config = |name: &'static str| {
        let bus = bus.clone();
        async move {
            let mut stream = bus.jetstream().get_stream(name).await.unwrap();
            stream.info().await.unwrap().config.clone()
        }
    };
    let traces = config(bus::TRACES_STREAM).await;
    assert_eq!(traces.max_bytes, 1 << 20);
    assert_eq!(traces.duplicate_window, Duration::from_secs(600));
    assert_eq!(config(bus::ESPANS_STREAM).await.max_bytes, 3 << 20);
}

/// Services start together and each creates the streams with limits of its
/// own: every one of them must get its stream, none an "already in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_creating_the_same_streams_at_once_all_succeed() {
    let nats = TestNats::start().unwrap();
    let mut buses = Vec::new();
    for _ in 0..8 {
        buses.push(bus_for(&nats).await);
    }
    for round in 0..10 {
        let name = format!("RACE{round}");
        let subjects = format!("race{round}.>");
        let tasks: Vec<_> = buses
            .iter()
            .enumerate()
            .map(|(n, bus)| {
                let (bus, name, subjects) = (bus.clone(), name.clone(), subjects.clone());
                tokio::spawn(async move {
                    let limits = StreamLimits {
                        max_bytes: (1 << 20) * (n as u64 + 1),
                        ..Default::default()
                    };
                    bus.ensure_stream(&name, &subjects, &limits).await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }
}

#[tokio::test]
async fn connecting_to_nothing_names_the_url() {
    let port = espan::testkit::free_port().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let err = match Bus::connect(&url, "test", Duration::from_millis(500)).await {
        Ok(_) => panic!("connected to nothing"),
        Err(err) => err,
    };
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot connect to NATS at {url}")),
        "{text}"
    );
}

async fn read_dead_letters(
    bus: &Bus,
    n: usize,
) -> Vec<(String, async_nats::HeaderMap, bytes::Bytes)> {
    let stream = bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("test-reader".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        m.ack().await.unwrap();
        out.push((
            m.subject.to_string(),
            m.headers.clone().unwrap_or_default(),
            m.payload.clone(),
        ));
    }
    out
}
