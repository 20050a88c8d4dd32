//! The JetStream bus: connect, create the streams, publish batches with pipelined
//! acks, and consume with explicit acks, redelivery and a dead-letter subject.
//!
//! Data flows one way: probes publish on `espan.<host>` (stream `ESPANS`), linkers
//! consume it and publish on `trace.<linker>` (stream `TRACES`), exporters consume
//! that. A message that can never be handled goes to `deadletter.<stream>.<consumer>`
//! (stream `DEADLETTER`) with the reason in its headers, so nothing vanishes;
//! every service writes its dead letters through [`DeadLetters`].

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::nats::NatsConnect;
use crate::redact::{Redacted, redact};
use crate::shutdown::Shutdown;

/// Stream of eSpan batches from every probe.
pub const ESPANS_STREAM: &str = "ESPANS";
/// Subjects of [`ESPANS_STREAM`].
pub const ESPANS_SUBJECTS: &str = "espan.>";
/// Stream of finished traces from every linker.
pub const TRACES_STREAM: &str = "TRACES";
/// Subjects of [`TRACES_STREAM`].
pub const TRACES_SUBJECTS: &str = "trace.>";
/// Stream of messages no consumer could handle.
pub const DEADLETTER_STREAM: &str = "DEADLETTER";
/// Subjects of [`DEADLETTER_STREAM`].
pub const DEADLETTER_SUBJECTS: &str = "deadletter.>";

/// Header naming why a message was dead-lettered.
pub const DEAD_REASON_HEADER: &str = "Espan-Dead-Reason";
/// Header naming the subject the message was first published on.
pub const DEAD_SUBJECT_HEADER: &str = "Espan-Dead-Subject";
/// Header with the stream sequence the message had.
pub const DEAD_SEQ_HEADER: &str = "Espan-Dead-Seq";
/// Header `i/n` of a letter stored in `n` chunks (see [`DeadLetters`]).
pub const DEAD_CHUNK_HEADER: &str = "Espan-Dead-Chunk";

/// A NATS URL from config: DataKit's `host:port` becomes `nats://host:port`.
pub fn nats_url(text: &str) -> String {
    if text.contains("://") {
        text.to_owned()
    } else {
        format!("nats://{text}")
    }
}

/// `espan.<host>`, with characters NATS gives meaning to replaced.
pub fn espan_subject(host: &str) -> String {
    format!("espan.{}", subject_token(host))
}

/// `trace.<linker>`.
pub fn trace_subject(linker: &str) -> String {
    format!("trace.{}", subject_token(linker))
}

/// `deadletter.<stream>.<consumer>`.
pub fn deadletter_subject(stream: &str, consumer: &str) -> String {
    format!(
        "deadletter.{}.{}",
        subject_token(stream),
        subject_token(consumer)
    )
}

/// A name usable as one subject token (no `.`, `*`, `>` or white space).
pub fn subject_token(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if token.is_empty() { "_".into() } else { token }
}

/// Errors of the bus, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// NATS did not answer within the retry period.
    #[error("cannot connect to NATS at {url} (tried for {waited:?}): {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// How long it kept trying.
        waited: Duration,
        /// The last error.
        reason: String,
    },
    /// Creating or updating a stream failed.
    #[error("cannot create stream {stream}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// The server's answer.
        reason: String,
    },
    /// Creating a consumer failed.
    #[error("cannot create consumer {consumer} on {stream}: {reason}")]
    Consumer {
        /// The stream.
        stream: String,
        /// The durable name.
        consumer: String,
        /// The server's answer.
        reason: String,
    },
    /// A publish was not acknowledged by JetStream.
    #[error("publish to {subject} (msg id {msg_id}) failed: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// The `Nats-Msg-Id`.
        msg_id: String,
        /// Why.
        reason: String,
    },
    /// A message larger than the server takes (its `max_payload`, headers
    /// included): permanent, so it is never sent, and never retried as it is.
    /// The caller splits it or drops it, counted.
    #[error(
        "message for {subject} is {bytes} bytes with its headers; the server takes at most {max_payload}"
    )]
    TooLarge {
        /// The subject.
        subject: String,
        /// Payload and headers.
        bytes: usize,
        /// The server's `max_payload`.
        max_payload: usize,
    },
    /// A dead letter was not stored (the message stays unacked and comes back).
    #[error("dead-lettering to {subject} failed: {reason}")]
    DeadLetter {
        /// The dead-letter subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// Pulling messages failed.
    #[error("consuming {stream}/{consumer} failed: {reason}")]
    Consume {
        /// The stream.
        stream: String,
        /// The durable name.
        consumer: String,
        /// Why.
        reason: String,
    },
}

impl BusError {
    /// True for [`BusError::TooLarge`]: trying again cannot help.
    pub fn is_too_large(&self) -> bool {
        matches!(self, BusError::TooLarge { .. })
    }
}

/// The `max_payload` NATS servers have unless configured otherwise (1 MiB),
/// assumed while the server has not said its own.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Bytes a message takes on the wire against `max_payload`: the payload and
/// its headers (`NATS/1.0\r\n`, `name: value\r\n` each, a blank line), as
/// the server counts them.
pub fn message_size(payload: usize, headers: Option<&HeaderMap>, msg_id: Option<&str>) -> usize {
    let mut header_bytes = 0;
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            for value in values {
                header_bytes += name.to_string().len() + value.as_str().len() + 4;
            }
        }
    }
    if let Some(id) = msg_id {
        header_bytes += "Nats-Msg-Id".len() + id.len() + 4;
    }
    if header_bytes > 0 {
        header_bytes += "NATS/1.0\r\n\r\n".len();
    }
    payload + header_bytes
}

/// Limits of the streams, from each service's config.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Bytes a stream may hold; 0 = unlimited. When full, new publishes are
    /// refused (discard new), so the publisher sees back-pressure instead of old
    /// data disappearing.
    pub max_bytes: u64,
    /// How long a message is kept; zero = forever. Not for DEADLETTER: dead
    /// letters are kept until someone handles them (or max_bytes says no).
    pub max_age: Duration,
    /// How long JetStream remembers a `Nats-Msg-Id` for de-duplication.
    pub duplicate_window: Duration,
    /// Copies of each stream in a JetStream cluster (1, 3 or 5; 1 on a
    /// single server). With 1, a message acked is on one server's disk only.
    pub replicas: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_bytes: 2 << 30,
            max_age: Duration::from_secs(24 * 3600),
            // The linker's: whichever service creates a stream first, traces
            // re-sent after a restart are recognised for as long.
            duplicate_window: Duration::from_secs(600),
            replicas: 1,
        }
    }
}

/// A connection to NATS with its JetStream context.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    url: String,
}

impl Bus {
    /// Connects to `nats` (a URL, or a URL with credentials and TLS settings),
    /// retrying for up to `retry_for` (the server may still be starting), then
    /// fails with an error naming the URL, its credentials taken out.
    pub async fn connect(
        nats: impl Into<NatsConnect>,
        client_name: &str,
        retry_for: Duration,
    ) -> Result<Self, BusError> {
        let nats = nats.into();
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let last_event = LastEvent::default();
        loop {
            let options = connect_options(&nats, client_name, &last_event)?;
            // retry_on_initial_connect makes connect() return at once and keep
            // trying in the background; we wait for the first real connection
            // ourselves so that a wrong URL is reported instead of hanging.
            let attempt = async_nats::connect_with_options(nats.server_urls(), options).await;
            let reason = match attempt {
                Ok(client) => {
                    let left = retry_for.saturating_sub(started.elapsed());
                    match wait_connected(&client, left.max(Duration::from_millis(200))).await {
                        Ok(()) => {
                            let jetstream = jetstream::new(client.clone());
                            return Ok(Self {
                                client,
                                jetstream,
                                url: nats.shown_url(),
                            });
                        }
                        Err(reason) => last_event.take().unwrap_or(reason),
                    }
                }
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= retry_for {
                return Err(BusError::Connect {
                    url: nats.shown_url(),
                    waited: started.elapsed(),
                    reason: redact(&reason),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A bus that connects (and reconnects) in the background: it returns at
    /// once, even with the server away, and its publishes fail until the
    /// server is there. For a service that must start and buffer while NATS is
    /// down (the probe). A URL that cannot be parsed is still an error.
    pub async fn connect_in_background(
        nats: impl Into<NatsConnect>,
        client_name: &str,
    ) -> Result<Self, BusError> {
        let nats = nats.into();
        let options = connect_options(&nats, client_name, &LastEvent::default())?;
        let client = async_nats::connect_with_options(nats.server_urls(), options)
            .await
            .map_err(|error| BusError::Connect {
                url: nats.shown_url(),
                waited: Duration::ZERO,
                reason: redact(&error.to_string()),
            })?;
        let jetstream = jetstream::new(client.clone());
        Ok(Self {
            client,
            jetstream,
            url: nats.shown_url(),
        })
    }

    /// The URL this bus was connected with, its credentials taken out (for
    /// messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The largest message the server takes, headers included (its
    /// `max_payload`; [`DEFAULT_MAX_PAYLOAD`] until it said).
    pub fn max_payload(&self) -> usize {
        max_payload(&self.client)
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates `ESPANS`, `TRACES` and `DEADLETTER` where missing, with
    /// `limits`. A stream that exists keeps its settings, whoever made them
    /// (an operator's replicas and limits, or another service's): they are
    /// never overwritten; where they differ from `limits`, a warning says so.
    pub async fn ensure_streams(&self, limits: &StreamLimits) -> Result<(), BusError> {
        for (name, subjects) in ALL_STREAMS {
            self.ensure_stream(name, subjects, limits).await?;
        }
        Ok(())
    }

    /// Creates one stream unless it exists; see [`Bus::ensure_streams`].
    pub async fn ensure_stream(
        &self,
        name: &str,
        subjects: &str,
        limits: &StreamLimits,
    ) -> Result<(), BusError> {
        let wanted = stream_config(name, subjects, limits);
        match self.jetstream.create_stream(wanted.clone()).await {
            // Created, or there with exactly these settings.
            Ok(_) => Ok(()),
            // There with settings of its own (made meanwhile by another
            // service starting too, or long ago by an operator): kept.
            Err(e) if created_meanwhile(&e) => {
                if let Ok(mut stream) = self.jetstream.get_stream(name).await
                    && let Ok(info) = stream.info().await
                {
                    for (setting, have, want) in differences(&info.config, &wanted) {
                        tracing::warn!(
                            stream = name,
                            setting,
                            have,
                            configured = want,
                            "the stream exists with a setting of its own; kept (change it with the nats CLI if meant)"
                        );
                    }
                }
                Ok(())
            }
            Err(e) => Err(stream_error(name, e)),
        }
    }

    /// A publisher that keeps up to `max_in_flight` publishes waiting for their acks.
    pub fn publisher(&self, max_in_flight: usize) -> Publisher {
        Publisher {
            client: self.client.clone(),
            jetstream: self.jetstream.clone(),
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }
}

fn max_payload(client: &async_nats::Client) -> usize {
    match client.server_info().max_payload {
        0 => DEFAULT_MAX_PAYLOAD,
        n => n,
    }
}

/// Every stream espan uses, with its subjects.
const ALL_STREAMS: [(&str, &str); 3] = [
    (ESPANS_STREAM, ESPANS_SUBJECTS),
    (TRACES_STREAM, TRACES_SUBJECTS),
    (DEADLETTER_STREAM, DEADLETTER_SUBJECTS),
];

fn stream_config(name: &str, subjects: &str, limits: &StreamLimits) -> stream::Config {
    // Dead letters wait for someone to look at them: no age limit.
    let max_age = if name == DEADLETTER_STREAM {
        Duration::ZERO
    } else {
        limits.max_age
    };
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: stream::StorageType::File,
        max_bytes: if limits.max_bytes == 0 {
            -1
        } else {
            limits.max_bytes as i64
        },
        max_age,
        duplicate_window: limits.duplicate_window,
        num_replicas: limits.replicas.max(1),
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// The settings espan configures that `have` holds otherwise than `want`:
/// `(setting, have, want)`.
fn differences(
    have: &stream::Config,
    want: &stream::Config,
) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let mut check = |setting, have: String, want: String| {
        if have != want {
            out.push((setting, have, want));
        }
    };
    check(
        "max_bytes",
        have.max_bytes.to_string(),
        want.max_bytes.to_string(),
    );
    check(
        "max_age",
        format!("{:?}", have.max_age),
        format!("{:?}", want.max_age),
    );
    check(
        "duplicate_window",
        format!("{:?}", have.duplicate_window),
        format!("{:?}", want.duplicate_window),
    );
    check(
        "num_replicas",
        have.num_replicas.to_string(),
        want.num_replicas.to_string(),
    );
    check("subjects", have.subjects.join(","), want.subjects.join(","));
    check(
        "discard",
        format!("{:?}", have.discard),
        format!("{:?}", want.discard),
    );
    check(
        "storage",
        format!("{:?}", have.storage),
        format!("{:?}", want.storage),
    );
    out
}

fn stream_error(name: &str, e: jetstream::context::CreateStreamError) -> BusError {
    BusError::Stream {
        stream: name.to_owned(),
        reason: e.to_string(),
    }
}

/// True when a create found the stream there already, made by another service
/// (with limits of its own: with the same ones JetStream just says yes).
fn created_meanwhile(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
    )
}

/// The async-nats options for one connection: `nats`'s credentials and TLS,
/// reconnecting for ever, and its events logged ([`redact`]ed: a server's
/// error may quote what it was sent).
fn connect_options(
    nats: &NatsConnect,
    client_name: &str,
    last_event: &LastEvent,
) -> Result<async_nats::ConnectOptions, BusError> {
    let options = nats.options().map_err(|reason| BusError::Connect {
        url: nats.shown_url(),
        waited: Duration::ZERO,
        reason,
    })?;
    let last_event = last_event.clone();
    Ok(options
        .name(client_name)
        .connection_timeout(Duration::from_secs(2))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let last_event = last_event.clone();
            async move {
                let text = Redacted(&event).to_string();
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS: {text}"),
                    async_nats::Event::Disconnected | async_nats::Event::LameDuckMode => {
                        tracing::warn!("NATS: {text}")
                    }
                    _ => {
                        tracing::warn!("NATS: {text}");
                        last_event.set(text);
                    }
                }
            }
        }))
}

/// The last error NATS reported while connecting (an authorization
/// violation, a TLS failure), to say why a connection never came up.
#[derive(Clone, Default)]
struct LastEvent(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl LastEvent {
    fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }
    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

async fn wait_connected(client: &async_nats::Client, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("no answer from the server".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A publish that JetStream acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The caller's tag for this publish.
    pub tag: u64,
    /// The stream sequence it was stored at.
    pub stream_seq: u64,
    /// True when JetStream had it already (same `Nats-Msg-Id`): stored once.
    pub duplicate: bool,
}

struct InFlight {
    tag: u64,
    subject: String,
    msg_id: String,
    ack: std::pin::Pin<
        Box<
            dyn Future<
                    Output = Result<
                        jetstream::publish::PublishAck,
                        jetstream::context::PublishError,
                    >,
                > + Send,
        >,
    >,
}

/// Publishes messages with a `Nats-Msg-Id` and many acks outstanding at once
/// (one awaited ack per message would cap throughput at one round trip each).
pub struct Publisher {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
}

impl Publisher {
    /// Sends one message; when `max_in_flight` publishes are outstanding, first
    /// waits for the oldest ack. Returns the acks that completed meanwhile, in
    /// publish order. `tag` is the caller's name for this publish.
    ///
    /// A message larger than the server's `max_payload` is not sent:
    /// [`BusError::TooLarge`], and the publishes in flight are untouched (the
    /// caller splits or drops that one message and goes on).
    pub async fn publish(
        &mut self,
        tag: u64,
        subject: String,
        msg_id: String,
        payload: Bytes,
        headers: Option<HeaderMap>,
    ) -> Result<Vec<Acked>, BusError> {
        let bytes = message_size(payload.len(), headers.as_ref(), Some(&msg_id));
        let max_payload = max_payload(&self.client);
        if bytes > max_payload {
            return Err(BusError::TooLarge {
                subject,
                bytes,
                max_payload,
            });
        }
        let mut done = Vec::new();
        while self.in_flight.len() >= self.max_in_flight {
            done.push(self.await_oldest().await?);
        }
        let mut message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(&msg_id);
        if let Some(headers) = headers {
            for (name, values) in headers.iter() {
                for value in values {
                    message = message.header(name.clone(), value.clone());
                }
            }
        }
        let ack = self
            .jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| BusError::Publish {
                subject: subject.clone(),
                msg_id: msg_id.clone(),
                reason: e.to_string(),
            })?;
        let ack = std::future::IntoFuture::into_future(ack);
        self.in_flight.push_back(InFlight {
            tag,
            subject,
            msg_id,
            ack,
        });
        // Collect acks that are already there without waiting.
        while let Some(front) = self.in_flight.front_mut() {
            match (&mut front.ack).now_or_never() {
                None => break,
                Some(result) => {
                    let front = self.in_flight.pop_front().expect("front exists");
                    done.push(finish(front.tag, &front.subject, &front.msg_id, result)?);
                }
            }
        }
        Ok(done)
    }

    /// Waits for every outstanding ack.
    pub async fn flush(&mut self) -> Result<Vec<Acked>, BusError> {
        let mut done = Vec::new();
        while !self.in_flight.is_empty() {
            done.push(self.await_oldest().await?);
        }
        Ok(done)
    }

    /// Publishes outstanding.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Tags of the publishes still waiting for an ack, oldest first (after an
    /// error the caller re-sends these; their msg ids make that safe).
    pub fn pending_tags(&self) -> Vec<u64> {
        self.in_flight.iter().map(|f| f.tag).collect()
    }

    /// Forgets the outstanding publishes (after an error, before re-sending).
    pub fn abandon(&mut self) {
        self.in_flight.clear();
    }

    async fn await_oldest(&mut self) -> Result<Acked, BusError> {
        let oldest = self
            .in_flight
            .pop_front()
            .expect("caller checked non-empty");
        let result = oldest.ack.await;
        finish(oldest.tag, &oldest.subject, &oldest.msg_id, result)
    }
}

fn finish(
    tag: u64,
    subject: &str,
    msg_id: &str,
    result: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<Acked, BusError> {
    match result {
        Ok(ack) => Ok(Acked {
            tag,
            stream_seq: ack.sequence,
            duplicate: ack.duplicate,
        }),
        Err(e) => Err(BusError::Publish {
            subject: subject.to_owned(),
            msg_id: msg_id.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// How a durable pull consumer is set up.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream to read.
    pub stream: String,
    /// The durable consumer name (shared by replicas of one service).
    pub durable: String,
    /// Only these subjects (empty = the whole stream).
    pub filter_subject: String,
    /// Deliveries before a failing message is dead-lettered; 0 or below: never
    /// (retry forever, for handlers whose failures are always transient).
    /// Applied by [`consume`], not by JetStream, which redelivers until the
    /// letter is stored.
    pub max_deliver: i64,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Unacked messages JetStream lets this consumer hold (back-pressure).
    pub max_ack_pending: i64,
    /// Messages handed to the handler at once, at most.
    pub batch: usize,
    /// Delay before a nak'd message comes back the first time; it doubles
    /// with each delivery, up to `max_retry_delay`.
    pub retry_delay: Duration,
    /// The longest a nak'd message waits before it comes back.
    pub max_retry_delay: Duration,
}

impl ConsumerSpec {
    /// True when a message delivered `delivered` times must be dead-lettered.
    pub fn gives_up_after(&self, delivered: i64) -> bool {
        self.max_deliver > 0 && delivered >= self.max_deliver
    }

    /// How long a message delivered `delivered` times waits before it comes
    /// back: `retry_delay` doubled per delivery, at most `max_retry_delay`.
    /// A failure that lasts (DEADLETTER full, a store that is down) then costs
    /// a try every `max_retry_delay`, not a busy loop.
    pub fn backoff(&self, delivered: i64) -> Duration {
        let doublings = delivered.saturating_sub(1).clamp(0, 20) as u32;
        self.retry_delay
            .saturating_mul(1 << doublings)
            .min(self.max_retry_delay.max(self.retry_delay))
    }

    /// Defaults for `durable` on `stream`.
    pub fn new(stream: &str, durable: &str) -> Self {
        Self {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            filter_subject: String::new(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            batch: 64,
            retry_delay: Duration::from_millis(500),
            max_retry_delay: Duration::from_secs(30),
        }
    }
}

/// One message handed to a handler, decoded.
#[derive(Debug)]
pub struct Delivery<T> {
    /// The decoded payload.
    pub value: T,
    /// The subject it was published on.
    pub subject: String,
    /// Its sequence in the stream.
    pub stream_seq: u64,
    /// 1 on first delivery.
    pub delivered: i64,
}

/// Why a handler could not take a group of messages. The messages stay unacked
/// and come back; after `max_deliver` tries one goes to the dead-letter subject.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// Handles decoded messages; `Ok` means they are safe (stored or delivered) and
/// may be acked.
pub trait Handler<T>: Send {
    /// Takes a group of deliveries, in stream order.
    fn handle(
        &mut self,
        deliveries: Vec<Delivery<T>>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Counts what a consumer loop did.
pub trait ConsumeObserver: Send + Sync {
    /// A message was acked after its handler succeeded.
    fn acked(&self, _messages: u64) {}
    /// A message failed and will come back.
    fn retried(&self, _messages: u64) {}
    /// A message went to the dead-letter subject.
    fn dead_lettered(&self, _reason: &str) {}
    /// A message was to be dead-lettered but DEADLETTER did not take it (full,
    /// unreachable): nak'd with backoff, it comes back and is tried again.
    fn dead_letter_failed(&self, _error: &BusError) {}
}

/// Observes nothing.
pub struct NoObserver;
impl ConsumeObserver for NoObserver {}

/// Why a message could not even be decoded.
pub type DecodeFn<T> = fn(&[u8]) -> Result<T, String>;

/// Creates (or binds to) the durable pull consumer `spec` describes and opens
/// its message stream. JetStream redelivers without limit; `max_deliver` is
/// applied by [`consume`].
pub async fn pull_messages(
    bus: &Bus,
    spec: &ConsumerSpec,
) -> Result<consumer::pull::Stream, BusError> {
    let consume_error = |reason: String| BusError::Consume {
        stream: spec.stream.clone(),
        consumer: spec.durable.clone(),
        reason,
    };
    let stream = bus
        .jetstream
        .get_stream(&spec.stream)
        .await
        .map_err(|e| consume_error(format!("stream {}: {e}", spec.stream)))?;
    let config = consumer::pull::Config {
        durable_name: Some(spec.durable.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        // Giving up is ours (`ConsumerSpec::gives_up_after`, then a dead
        // letter): with JetStream's own limit, a message whose last delivery
        // found DEADLETTER full would never come back, neither stored nor
        // dead-lettered.
        max_deliver: -1,
        filter_subject: spec.filter_subject.clone(),
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    };
    let pull = stream
        .create_consumer(config)
        .await
        .map_err(|e| BusError::Consumer {
            stream: spec.stream.clone(),
            consumer: spec.durable.clone(),
            reason: e.to_string(),
        })?;
    pull.stream()
        .max_messages_per_batch(spec.batch.max(1))
        .messages()
        .await
        .map_err(|e| consume_error(e.to_string()))
}

/// Pulls messages from a durable consumer and hands them to `handler` until
/// `shutdown`. Acks only what the handler accepted. A message that does not
/// decode can never succeed and goes straight to the dead-letter subject; one
/// whose handler fails is nak'd and retried, alone, with backoff, until
/// `max_deliver`, then dead-lettered. Either way it is acked only after the
/// dead letter was stored; when DEADLETTER does not take it (full,
/// unreachable), it is nak'd with backoff and counted, never a reason to stop.
pub async fn consume<T: Send, H: Handler<T>>(
    bus: &Bus,
    spec: &ConsumerSpec,
    decode: DecodeFn<T>,
    handler: &mut H,
    observer: &dyn ConsumeObserver,
    shutdown: Shutdown,
) -> Result<(), BusError> {
    let consume_error = |reason: String| BusError::Consume {
        stream: spec.stream.clone(),
        consumer: spec.durable.clone(),
        reason,
    };
    let mut messages = pull_messages(bus, spec).await?;
    let giving_up = GivingUp {
        dead_letters: DeadLetters::new(bus, &spec.stream, &spec.durable),
        spec,
        observer,
    };
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);

    loop {
        // Wait for one message, then take whatever else is already here, so a
        // busy stream is handled in groups and a quiet one without delay.
        let first = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = messages.next() => next,
        };
        let mut raw = Vec::with_capacity(spec.batch);
        match first {
            None => return Err(consume_error("message stream ended".into())),
            Some(Err(e)) => {
                tracing::warn!(stream = %spec.stream, consumer = %spec.durable, error = %e, "pull failed; continuing");
                continue;
            }
            Some(Ok(m)) => raw.push(m),
        }
        while raw.len() < spec.batch {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => raw.push(m),
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "pull failed; continuing");
                    break;
                }
                _ => break,
            }
        }

        let mut group = Vec::with_capacity(raw.len());
        let mut group_msgs = Vec::with_capacity(raw.len());
        for message in raw {
            let (stream_seq, delivered) = delivery_info(&message);
            match decode(&message.payload) {
                Ok(value) => {
                    group.push(Delivery {
                        value,
                        subject: message.subject.to_string(),
                        stream_seq,
                        delivered,
                    });
                    group_msgs.push(message);
                }
                Err(reason) => {
                    giving_up
                        .dead_letter(&message, &format!("undecodable: {reason}"))
                        .await
                }
            }
        }
        if group.is_empty() {
            continue;
        }
        let count = group.len();
        match handler.handle(group).await {
            Ok(()) => {
                ack_all(&group_msgs).await;
                observer.acked(count as u64);
            }
            Err(error) if count == 1 => giving_up.failed(&group_msgs[0], &error).await,
            Err(error) => {
                // One bad message must not hold back the good ones: hand them over
                // one by one, so only the failing one is retried.
                tracing::warn!(%error, count, "group failed; retrying its messages one by one");
                for message in group_msgs {
                    let (stream_seq, delivered) = delivery_info(&message);
                    let Ok(value) = decode(&message.payload) else {
                        continue;
                    };
                    let one = vec![Delivery {
                        value,
                        subject: message.subject.to_string(),
                        stream_seq,
                        delivered,
                    }];
                    match handler.handle(one).await {
                        Ok(()) => {
                            ack_all(std::slice::from_ref(&message)).await;
                            observer.acked(1);
                        }
                        Err(error) => giving_up.failed(&message, &error).await,
                    }
                }
            }
        }
    }
}

/// `(stream sequence, deliveries)` of a JetStream message; `(0, 1)` when it
/// carries no delivery info.
fn delivery_info(message: &jetstream::Message) -> (u64, i64) {
    message
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1))
}

/// What [`consume`] does with a message that failed: nak it with backoff, or
/// dead-letter it once it is out of tries.
struct GivingUp<'a> {
    dead_letters: DeadLetters,
    spec: &'a ConsumerSpec,
    observer: &'a dyn ConsumeObserver,
}

impl GivingUp<'_> {
    /// The handler failed on `message`.
    async fn failed(&self, message: &jetstream::Message, error: &HandlerError) {
        let (stream_seq, delivered) = delivery_info(message);
        if self.spec.gives_up_after(delivered) {
            let reason = format!("handler failed {delivered} times: {error}");
            self.dead_letter(message, &reason).await;
        } else {
            tracing::warn!(%error, stream_seq, delivered, "handler failed; message will be redelivered");
            self.nak(message, delivered).await;
        }
    }

    /// Dead-letters `message`; when DEADLETTER does not take it, naks it with
    /// backoff and counts that, so the consumer goes on with the others.
    async fn dead_letter(&self, message: &jetstream::Message, reason: &str) {
        let (stream_seq, delivered) = delivery_info(message);
        match self
            .dead_letters
            .take_message(message, stream_seq, reason)
            .await
        {
            Ok(()) => self.observer.dead_lettered(reason),
            Err(error) => {
                tracing::error!(%error, stream_seq, delivered, "dead letter not stored; the message comes back after a backoff");
                self.observer.dead_letter_failed(&error);
                self.nak(message, delivered).await;
            }
        }
    }

    async fn nak(&self, message: &jetstream::Message, delivered: i64) {
        let delay = self.spec.backoff(delivered);
        if let Err(error) = message.ack_with(jetstream::AckKind::Nak(Some(delay))).await {
            // Then it comes back after ack_wait instead.
            tracing::warn!(%error, "nak failed");
        }
        self.observer.retried(1);
    }
}

async fn ack_all(messages: &[jetstream::Message]) {
    // Double ack: wait for the server to confirm, so a lost ack does not cause
    // a redelivery we would not expect.
    let acks = messages.iter().map(|m| m.double_ack());
    for (result, message) in futures::future::join_all(acks)
        .await
        .into_iter()
        .zip(messages)
    {
        if let Err(error) = result {
            tracing::warn!(%error, subject = %message.subject, "ack failed; the message may be redelivered");
        }
    }
}

/// Where one consumer puts the messages it can never handle: the subject
/// `deadletter.<stream>.<consumer>` of [`DEADLETTER_STREAM`]. Every service
/// dead-letters through this type, so every letter looks the same: the payload,
/// and in its headers the reason ([`redact`]ed), the source subject and the
/// stream sequence.
///
/// Each letter's `Nats-Msg-Id` is `deadletter/<stream>/<consumer>/<seq>`, with
/// `/<piece>` appended when it holds only part of the message. It dedups
/// correctly because a stream sequence names one message of one stream and is
/// never given to another, so the id names exactly one letter: the same
/// message (or piece), failed by the same consumer. That letter is only ever
/// published again after its source message came back, e.g. when the letter
/// was stored but the ack that ends the source message was lost; the repeat
/// has the same id and JetStream keeps one copy (within the duplicate window
/// of [`DEADLETTER_STREAM`]). Two consumers of one message (the exporter's
/// sinks) have different ids, so one's letter never hides the other's, which
/// an id made of the source subject and sequence alone would do.
///
/// A letter larger than the server takes (a message near `max_payload` plus
/// the headers) is stored in chunks, each a letter of its own with
/// [`DEAD_CHUNK_HEADER`] `i/n` and `/chunk-i` appended to its id: never
/// refused for its size.
#[derive(Clone)]
pub struct DeadLetters {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: String,
    consumer: String,
    subject: String,
}

/// One dead letter for [`DeadLetters::store`].
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The subject the source message was published on.
    pub source_subject: &'a str,
    /// The source message's stream sequence; 0 if unknown, and then the
    /// letter has no message id (better stored twice than one lost).
    pub stream_seq: u64,
    /// Which part of the message this letter holds, named the same way on
    /// every delivery; `None` for the whole message.
    pub piece: Option<&'a str>,
    /// What to store.
    pub payload: Bytes,
    /// Why; redacted and made one line before it is stored or logged.
    pub reason: &'a str,
}

impl DeadLetters {
    /// Letters of durable `consumer` reading `stream`.
    pub fn new(bus: &Bus, stream: &str, consumer: &str) -> Self {
        Self {
            client: bus.client.clone(),
            jetstream: bus.jetstream.clone(),
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            subject: deadletter_subject(stream, consumer),
        }
    }

    /// `deadletter.<stream>.<consumer>`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The message id of the letter for `piece` of message `stream_seq` (see
    /// the type's docs for why it dedups correctly).
    pub fn msg_id(&self, stream_seq: u64, piece: Option<&str>) -> String {
        let id = format!("deadletter/{}/{}/{stream_seq}", self.stream, self.consumer);
        match piece {
            Some(piece) => format!("{id}/{piece}"),
            None => id,
        }
    }

    /// Stores one letter and waits until JetStream has it.
    pub async fn store(&self, letter: DeadLetter<'_>) -> Result<(), BusError> {
        let reason = reason_header(letter.reason);
        let mut headers = HeaderMap::new();
        headers.insert(DEAD_REASON_HEADER, reason.as_str());
        headers.insert(DEAD_SUBJECT_HEADER, letter.source_subject);
        headers.insert(DEAD_SEQ_HEADER, letter.stream_seq.to_string().as_str());
        let msg_id = (letter.stream_seq > 0).then(|| self.msg_id(letter.stream_seq, letter.piece));
        // Room for the chunk header and the longer id a chunk has.
        let overhead = message_size(0, Some(&headers), msg_id.as_deref()) + 64;
        let max_payload = max_payload(&self.client);
        let chunk = max_payload.saturating_sub(overhead).max(1);
        let chunks = letter.payload.len().div_ceil(chunk).max(1);
        for i in 0..chunks {
            let mut headers = headers.clone();
            let mut id = msg_id.clone();
            let payload = if chunks == 1 {
                letter.payload.clone()
            } else {
                headers.insert(DEAD_CHUNK_HEADER, format!("{}/{chunks}", i + 1).as_str());
                id = id.map(|id| format!("{id}/chunk-{}", i + 1));
                let from = i * chunk;
                letter
                    .payload
                    .slice(from..(from + chunk).min(letter.payload.len()))
            };
            self.publish(payload, headers, id).await?;
        }
        tracing::warn!(
            stream_seq = letter.stream_seq,
            piece = letter.piece,
            chunks,
            reason,
            dead_subject = %self.subject,
            "dead-lettered"
        );
        Ok(())
    }

    async fn publish(
        &self,
        payload: Bytes,
        headers: HeaderMap,
        msg_id: Option<String>,
    ) -> Result<(), BusError> {
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers);
        if let Some(id) = msg_id {
            publish = publish.message_id(id);
        }
        let failed = |e: &dyn std::fmt::Display| BusError::DeadLetter {
            subject: self.subject.clone(),
            reason: e.to_string(),
        };
        self.jetstream
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(|e| failed(&e))?
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    /// Stores the whole `message` as a letter, then terminates it: it can
    /// never succeed, so it must not be delivered again.
    pub async fn take_message(
        &self,
        message: &jetstream::Message,
        stream_seq: u64,
        reason: &str,
    ) -> Result<(), BusError> {
        self.store(DeadLetter {
            source_subject: message.subject.as_str(),
            stream_seq,
            piece: None,
            payload: message.payload.clone(),
            reason,
        })
        .await?;
        // If the term is lost the message comes back and is dead-lettered
        // again under the same id, which JetStream drops: nothing to undo.
        if let Err(error) = message.ack_with(jetstream::AckKind::Term).await {
            tracing::warn!(%error, stream_seq, "terminating a dead-lettered message failed; a repeat will be dropped as a duplicate");
        }
        Ok(())
    }
}

/// What the reason header holds: [`redact`]ed, one line, at most 1000 characters.
fn reason_header(reason: &str) -> String {
    redact(reason)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_header_is_redacted_and_one_line() {
        let header = reason_header("POST http://d:1/w?token=tkn_PLANTED\r\nanswered 400");
        assert_eq!(header, "POST http://d:1/w?<redacted>  answered 400");
        assert_eq!(reason_header(&"x".repeat(5000)).len(), 1000);
    }
}
