//! The bus against a real nats-server (one per test, see `espan::testkit`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use espan::bus::{self, Bus, ConsumerSpec, Delivery, Handler, HandlerError, StreamLimits};
use espan::shutdown;
use espan::testkit::{NatsOptions, TestNats};
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
    let bus = Bus::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
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

/// A stream that exists keeps its settings, whoever made them: an
/// operator's replicas, limits and ages are never overwritten by a service
/// starting with other ones, and a stream nobody made yet gets the starter's.
#[tokio::test]
async fn existing_streams_keep_their_settings_and_missing_ones_are_created() {
    let nats = TestNats::start().unwrap();
    let bus = Bus::connect(&nats.url(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    // The operator's TRACES, made by hand before espan ever ran.
    let operator = async_nats::jetstream::stream::Config {
        name: bus::TRACES_STREAM.into(),
        subjects: vec![bus::TRACES_SUBJECTS.into()],
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(900),
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    bus.jetstream()
        .create_stream(operator.clone())
        .await
        .unwrap();
    let starter = StreamLimits {
        max_bytes: 3 << 20,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    };
    bus.ensure_streams(&starter).await.unwrap();
    bus.ensure_streams(&starter).await.unwrap();
    let config = |name: &'static str| {
        let bus = bus.clone();
        async move {
            let mut stream = bus.jetstream().get_stream(name).await.unwrap();
            stream.info().await.unwrap().config.clone()
        }
    };
    let traces = config(bus::TRACES_STREAM).await;
    assert_eq!(traces.max_bytes, 1 << 20);
    assert_eq!(traces.max_age, operator.max_age);
    assert_eq!(traces.duplicate_window, Duration::from_secs(900));
    let espans = config(bus::ESPANS_STREAM).await;
    assert_eq!(espans.max_bytes, 3 << 20);
    assert_eq!(espans.max_age, Duration::from_secs(3600));
    assert_eq!(espans.num_replicas, 1);
    assert_eq!(espans.duplicate_window, Duration::from_secs(600));
}

/// Dead letters are kept until someone handles them: DEADLETTER has no age
/// limit (it had 24 h, so a letter nobody read over a weekend was gone).
#[tokio::test]
async fn dead_letters_never_expire() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    let mut dead = bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    let config = dead.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::ZERO);
    assert_eq!(
        config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New,
        "a full DEADLETTER refuses new letters instead of dropping old ones"
    );
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

/// A message over the server's max_payload is refused before it is sent, as
/// permanent (TooLarge), and the publishes around it go through.
#[tokio::test]
async fn a_message_over_max_payload_is_too_large_and_the_others_go_through() {
    let nats = TestNats::start_with(NatsOptions {
        max_payload: Some(64 << 10),
        ..Default::default()
    })
    .unwrap();
    let bus = bus_for(&nats).await;
    assert_eq!(bus.max_payload(), 64 << 10);
    let mut publisher = bus.publisher(16);
    let small = || wire::encode_espan_batch(&wire::sample::batch(1, 3));
    publisher
        .publish(1, "espan.h".into(), "m1".into(), small(), None)
        .await
        .unwrap();
    let error = publisher
        .publish(
            2,
            "espan.h".into(),
            "m2".into(),
            bytes::Bytes::from(vec![0u8; 64 << 10]),
            None,
        )
        .await
        .unwrap_err();
    assert!(error.is_too_large(), "{error}");
    assert!(error.to_string().contains("at most 65536"), "{error}");
    publisher
        .publish(3, "espan.h".into(), "m3".into(), small(), None)
        .await
        .unwrap();
    let mut acked = publisher.flush().await.unwrap();
    acked.sort_by_key(|a| a.tag);
    let tags: Vec<u64> = acked.iter().map(|a| a.tag).collect();
    assert!(tags.ends_with(&[3]), "{tags:?}");
    assert_eq!(stream_messages(&bus, bus::ESPANS_STREAM).await, 2);
    assert!(
        bus.is_connected(),
        "nothing was sent that the server would refuse"
    );
}

/// A letter larger than the server takes (a message near max_payload with the
/// letter's headers) is stored in chunks, never refused for its size.
#[tokio::test]
async fn a_dead_letter_over_max_payload_is_stored_in_chunks() {
    let nats = TestNats::start_with(NatsOptions {
        max_payload: Some(64 << 10),
        ..Default::default()
    })
    .unwrap();
    let bus = bus_for(&nats).await;
    let letters = bus::DeadLetters::new(&bus, bus::TRACES_STREAM, "exporter-otlp");
    let payload: Vec<u8> = (0..(64 << 10) + 100).map(|i| (i % 251) as u8).collect();
    let letter = || bus::DeadLetter {
        source_subject: "trace.l",
        stream_seq: 9,
        piece: None,
        payload: bytes::Bytes::from(payload.clone()),
        reason: "refused",
    };
    letters.store(letter()).await.unwrap();
    letters.store(letter()).await.unwrap();
    let stored = read_dead_letters(&bus, 2).await;
    assert_eq!(
        stream_messages(&bus, bus::DEADLETTER_STREAM).await,
        2,
        "a repeat is stored once"
    );
    let mut whole = Vec::new();
    for (n, (_, headers, chunk)) in stored.iter().enumerate() {
        assert_eq!(
            headers.get(bus::DEAD_CHUNK_HEADER).unwrap().as_str(),
            format!("{}/2", n + 1)
        );
        assert_eq!(headers.get(bus::DEAD_SEQ_HEADER).unwrap().as_str(), "9");
        whole.extend_from_slice(chunk);
    }
    assert_eq!(whole, payload);
}

/// Counts what the consumer loop reports.
#[derive(Default)]
struct Counts {
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_failed: AtomicU64,
}

impl bus::ConsumeObserver for Counts {
    fn retried(&self, messages: u64) {
        self.retried.fetch_add(messages, Ordering::SeqCst);
    }
    fn dead_lettered(&self, _reason: &str) {
        self.dead_lettered.fetch_add(1, Ordering::SeqCst);
    }
    fn dead_letter_failed(&self, _error: &bus::BusError) {
        self.dead_letter_failed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Makes DEADLETTER tiny and full, refusing new letters (discard new), as a
/// real one is once its max_bytes is reached.
async fn fill_deadletter(bus: &Bus) {
    let js = bus.jetstream();
    js.delete_stream(bus::DEADLETTER_STREAM).await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: bus::DEADLETTER_STREAM.into(),
        subjects: vec![bus::DEADLETTER_SUBJECTS.into()],
        max_bytes: 4096,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    // Large letters first, then ever smaller ones, until not even a tiny
    // one fits.
    let mut n = 0;
    for size in [1000, 100, 1] {
        loop {
            n += 1;
            let sent = js
                .publish(format!("deadletter.FILL.x{n}"), vec![b'f'; size].into())
                .await
                .unwrap()
                .await;
            if sent.is_err() {
                break;
            }
        }
    }
}

/// With DEADLETTER full, a message that must be dead-lettered is nak'd with
/// backoff and counted; the consumer goes on with the others, and once there
/// is room the letter is stored. Before, the consumer stopped with an error
/// (and the linker with it, to restart into the same message).
#[tokio::test]
async fn a_full_deadletter_stream_never_stops_the_consumer() {
    let nats = TestNats::start().unwrap();
    let bus = bus_for(&nats).await;
    fill_deadletter(&bus).await;
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
    publisher.flush().await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Collect {
        got: tx,
        fail_first: 0,
        always_fail: false,
        calls: Default::default(),
    };
    let counts = Arc::new(Counts::default());
    let (trigger, stop) = shutdown::channel();
    let task = {
        let (bus, counts) = (bus.clone(), counts.clone());
        let mut spec = spec(5);
        spec.max_retry_delay = Duration::from_millis(400);
        let mut handler = handler;
        tokio::spawn(async move {
            bus::consume(&bus, &spec, decode, &mut handler, &*counts, stop).await
        })
    };
    // Tried again and again, each time counted, and the consumer goes on.
    for good in 1..=3u64 {
        let batch = wire::sample::batch(10 + good, 1);
        publisher
            .publish(
                good,
                "espan.host-a".into(),
                format!("good-{good}"),
                wire::encode_espan_batch(&batch),
                None,
            )
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        let (got, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, batch);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!task.is_finished(), "the consumer still runs");
    let failed = counts.dead_letter_failed.load(Ordering::SeqCst);
    assert!(failed >= 2, "each try counted: {failed}");
    // Counted before its nak: one may be between the two.
    let retried = counts.retried.load(Ordering::SeqCst);
    assert!(
        retried + 1 >= failed,
        "each try nak'd: {retried} of {failed}"
    );
    assert_eq!(counts.dead_lettered.load(Ordering::SeqCst), 0);

    // Room again: the letter is stored, the message ends.
    let mut dead = bus
        .jetstream()
        .get_stream(bus::DEADLETTER_STREAM)
        .await
        .unwrap();
    dead.purge().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counts.dead_lettered.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
    trigger.trigger();
    task.await.unwrap().unwrap();
}

#[test]
fn backoff_doubles_per_delivery_up_to_its_cap() {
    let mut spec = ConsumerSpec::new(bus::ESPANS_STREAM, "c");
    spec.retry_delay = Duration::from_millis(500);
    spec.max_retry_delay = Duration::from_secs(30);
    let delays: Vec<u64> = [1, 2, 3, 7, 8, 100, i64::MAX]
        .iter()
        .map(|&d| spec.backoff(d).as_millis() as u64)
        .collect();
    assert_eq!(delays, [500, 1000, 2000, 30_000, 30_000, 30_000, 30_000]);
}
