//! Authenticated, encrypted NATS: the bus against a real nats-server with TLS
//! (a CA made for the test, client certificates required), accounts with
//! users, passwords, nkeys and subject permissions, and a token; every missing
//! or wrong piece is refused, and no refusal quotes a secret.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use espan::bus::{self, Bus, StreamLimits};
use espan::nats::{NatsAuth, NatsConnect, NatsTls};
use espan::testkit::{TestCerts, TestNats};

const LINKER_PASSWORD: &str = "pw_PLANTED_linker";
const PROBE_PASSWORD: &str = "pw_PLANTED_probe";

/// A server that demands TLS with a client certificate from `certs`' CA, and
/// knows a linker, a probe allowed to publish only on `espan.host-a`, and an
/// nkey user.
fn secured_nats(certs: &TestCerts, nkey_user: &str) -> TestNats {
    let accounts = format!(
        r#"
accounts {{
  ESPAN {{
    jetstream: enabled
    users: [
      {{ user: linker, password: "{LINKER_PASSWORD}" }}
      {{ user: probe-a, password: "{PROBE_PASSWORD}",
         permissions: {{
           publish: {{ allow: ["espan.host-a", "$JS.API.INFO", "$JS.API.STREAM.INFO.*"] }}
           subscribe: {{ allow: ["_INBOX.>"] }}
         }} }}
      {{ nkey: {nkey_user} }}
    ]
  }}
}}
"#
    );
    TestNats::start_with_config(&format!("{}{accounts}", certs.nats_tls_block(true))).unwrap()
}

fn with_tls(url: String, certs: &TestCerts, auth: NatsAuth) -> NatsConnect {
    NatsConnect {
        url,
        auth,
        tls: NatsTls {
            required: true,
            ca: Some(certs.ca.clone()),
            client: Some((certs.client_cert.clone(), certs.client_key.clone())),
        },
    }
}

fn user(name: &str, password: &str) -> NatsAuth {
    NatsAuth::UserPassword {
        user: name.into(),
        password: password.into(),
    }
}

/// Connecting must fail; returns the error's text.
async fn refused(nats: NatsConnect, what: &str) -> String {
    match Bus::connect(nats, "test", Duration::from_secs(2)).await {
        Ok(_) => panic!("{what}: connected"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_users_connect_and_every_wrong_piece_is_refused() {
    let certs = TestCerts::generate();
    let nkey = nkeys::KeyPair::new_user();
    let nats = secured_nats(&certs, &nkey.public_key());
    let url = format!("nats://localhost:{}", nats.port());

    // The linker: TLS with the test CA, its client certificate, a password.
    let linker = with_tls(url.clone(), &certs, user("linker", LINKER_PASSWORD));
    let bus = Bus::connect(&linker, "linker", Duration::from_secs(10))
        .await
        .expect("the linker connects over TLS");
    bus.ensure_streams(&StreamLimits::default()).await.unwrap();
    let mut publisher = bus.publisher(4);
    publisher
        .publish(
            1,
            "espan.host-a".into(),
            "m1".into(),
            Bytes::from("x"),
            None,
        )
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    assert!(!bus.url().contains(LINKER_PASSWORD));

    // An nkey user signs the server's nonce with its seed.
    let seed = nkey.seed().unwrap();
    let by_nkey = with_tls(url.clone(), &certs, NatsAuth::NkeySeed(seed.clone()));
    Bus::connect(by_nkey, "nkey", Duration::from_secs(10))
        .await
        .expect("the nkey user connects");

    // Every missing or wrong piece is refused, and no error quotes a secret.
    let mut no_client_cert = linker.clone();
    no_client_cert.tls.client = None;
    let mut other_ca = linker.clone();
    let strangers = TestCerts::generate();
    other_ca.tls.ca = Some(strangers.ca.clone());
    let mut stranger_cert = linker.clone();
    stranger_cert.tls.client = Some((strangers.client_cert.clone(), strangers.client_key.clone()));
    let mut plain = linker.clone();
    plain.tls = NatsTls::default();
    let wrong_password = with_tls(url.clone(), &certs, user("linker", "pw_PLANTED_wrong"));
    let other_nkey = with_tls(
        url.clone(),
        &certs,
        NatsAuth::NkeySeed(nkeys::KeyPair::new_user().seed().unwrap()),
    );
    let password_in_url = with_tls(
        format!("nats://linker:pw_PLANTED_wrong@localhost:{}", nats.port()),
        &certs,
        NatsAuth::None,
    );
    for (nats, what) in [
        (no_client_cert, "no client certificate"),
        (other_ca, "a CA that did not sign the server"),
        (stranger_cert, "a client certificate of another CA"),
        (plain, "no TLS settings (system roots)"),
        (wrong_password, "a wrong password"),
        (other_nkey, "an nkey the server does not know"),
        (password_in_url, "a wrong password in the URL"),
    ] {
        let error = refused(nats, what).await;
        for secret in [LINKER_PASSWORD, "pw_PLANTED_wrong", seed.as_str()] {
            assert!(!error.contains(secret), "{what}: {error}");
        }
        assert!(
            error.starts_with("cannot connect to NATS at nats://"),
            "{what}: {error}"
        );
    }
    let error = refused(
        with_tls(url.clone(), &certs, user("linker", "pw_PLANTED_wrong")),
        "a wrong password",
    )
    .await;
    assert!(
        error.to_lowercase().contains("authorization"),
        "the error says why: {error}"
    );
}

/// A probe's user may publish on its own subject only: what the bundled NATS
/// of the Kubernetes manifests grants each probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_user_publishes_on_its_subject_and_no_other() {
    let certs = TestCerts::generate();
    let nats = secured_nats(&certs, &nkeys::KeyPair::new_user().public_key());
    let url = format!("nats://localhost:{}", nats.port());
    let linker = with_tls(url.clone(), &certs, user("linker", LINKER_PASSWORD));
    Bus::connect(linker, "linker", Duration::from_secs(10))
        .await
        .unwrap()
        .ensure_streams(&StreamLimits::default())
        .await
        .unwrap();

    let probe = with_tls(url, &certs, user("probe-a", PROBE_PASSWORD));
    let bus = Bus::connect_in_background(&probe, "probe-a").await.unwrap();
    for _ in 0..200 {
        if bus.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(bus.is_connected(), "the probe connects in the background");
    let mut own = bus.publisher(1);
    own.publish(
        1,
        bus::espan_subject("host-a"),
        "a1".into(),
        Bytes::from("x"),
        None,
    )
    .await
    .unwrap();
    own.flush().await.expect("its own subject is allowed");
    let mut other = bus.publisher(1);
    let forged = async {
        other
            .publish(
                2,
                bus::espan_subject("host-b"),
                "b1".into(),
                Bytes::from("x"),
                None,
            )
            .await?;
        other.flush().await
    };
    assert!(
        forged.await.is_err(),
        "another host's subject is not allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_the_server_has_one() {
    let nats = TestNats::start_with_config("authorization { token: \"tok_PLANTED\" }\n").unwrap();
    let with_token = |token: &str| NatsConnect {
        url: nats.url(),
        auth: NatsAuth::Token(token.into()),
        tls: NatsTls::default(),
    };
    let bus = Bus::connect(with_token("tok_PLANTED"), "test", Duration::from_secs(10))
        .await
        .expect("the token is taken");
    bus.ensure_streams(&StreamLimits::default()).await.unwrap();
    let error = refused(with_token("tok_PLANTED_wrong"), "a wrong token").await;
    assert!(!error.contains("tok_PLANTED"), "{error}");
    refused(nats.url().into(), "no token").await;
}

#[tokio::test]
async fn a_file_that_is_not_there_is_a_connect_error_naming_no_secret() {
    let nats = NatsConnect {
        url: "nats://alice:pw_PLANTED@127.0.0.1:1".into(),
        auth: NatsAuth::None,
        tls: NatsTls {
            required: true,
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            client: None,
        },
    };
    let error = refused(nats, "a missing CA file").await;
    assert!(!error.contains("pw_PLANTED"), "{error}");
}

/// A handler that passes each payload on and takes everything.
struct Forward(tokio::sync::mpsc::UnboundedSender<Bytes>);

impl bus::Handler<Bytes> for Forward {
    async fn handle(
        &mut self,
        deliveries: Vec<bus::Delivery<Bytes>>,
    ) -> Result<(), bus::HandlerError> {
        for d in deliveries {
            let _ = self.0.send(d.value);
        }
        Ok(())
    }
}

fn as_bytes(bytes: &[u8]) -> Result<Bytes, String> {
    Ok(Bytes::copy_from_slice(bytes))
}

/// Consumes `stream` as `durable` until the returned trigger fires.
fn consume(
    bus: &Bus,
    stream: &str,
    durable: &str,
) -> (
    espan::shutdown::ShutdownTrigger,
    tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    tokio::task::JoinHandle<Result<(), bus::BusError>>,
) {
    let (trigger, stop) = espan::shutdown::channel();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = bus::ConsumerSpec::new(stream, durable);
    let bus = bus.clone();
    let task = tokio::spawn(async move {
        bus::consume(
            &bus,
            &spec,
            as_bytes,
            &mut Forward(tx),
            &bus::NoObserver,
            stop,
        )
        .await
    });
    (trigger, rx, task)
}

async fn publish_one(bus: &Bus, subject: &str, id: &str) -> Result<(), bus::BusError> {
    let mut publisher = bus.publisher(1);
    publisher
        .publish(0, subject.into(), id.into(), Bytes::from("x"), None)
        .await?;
    publisher.flush().await.map(|_| ())
}

/// The users and permissions of the bundled NATS in `k8s/components/nats`,
/// with a real nats-server: each service can do what it does (the probe
/// publishes eSpans and creates missing streams; the linker owns the streams,
/// consumes ESPANS, publishes traces and dead letters; the exporter consumes
/// TRACES and dead-letters), and a probe can neither publish a trace nor read
/// the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_kubernetes_users_can_do_their_part_and_no_more() {
    let conf = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../k8s/components/nats/config/nats.conf"),
    )
    .unwrap();
    // Its accounts and users, with passwords in place of the Secret's
    // variables (the server block and JetStream's store are the testkit's).
    let accounts = &conf[conf.find("\naccounts {").expect("an accounts block")..];
    let mut accounts = accounts.to_owned();
    for user in ["PROBE", "LINKER", "EXPORTER"] {
        accounts = accounts.replace(
            &format!("$ESPAN_NATS_{user}_PASSWORD"),
            &format!("\"pw_{user}\""),
        );
    }
    let nats = TestNats::start_with_config(&accounts).unwrap();
    let login = |user: &str| NatsConnect {
        url: nats.url(),
        auth: NatsAuth::UserPassword {
            user: user.to_lowercase(),
            password: format!("pw_{user}"),
        },
        tls: NatsTls::default(),
    };
    let limits = StreamLimits {
        max_bytes: 64 << 20,
        ..Default::default()
    };

    // The probe first: it may create the streams that are missing.
    let probe = Bus::connect(login("PROBE"), "probe", Duration::from_secs(10))
        .await
        .unwrap();
    probe.ensure_streams(&limits).await.unwrap();
    let linker = Bus::connect(login("LINKER"), "linker", Duration::from_secs(10))
        .await
        .unwrap();
    linker.ensure_streams(&limits).await.unwrap();
    let exporter = Bus::connect(login("EXPORTER"), "exporter", Duration::from_secs(10))
        .await
        .unwrap();
    exporter.ensure_streams(&limits).await.unwrap();

    publish_one(&probe, &bus::espan_subject("node-1"), "e1")
        .await
        .expect("a probe publishes eSpans");
    let (stop_linker, mut espans, linker_task) = consume(&linker, bus::ESPANS_STREAM, "linker");
    let got = tokio::time::timeout(Duration::from_secs(10), espans.recv())
        .await
        .expect("the linker consumes ESPANS");
    assert_eq!(got.as_deref(), Some(&b"x"[..]));
    publish_one(&linker, &bus::trace_subject("linker"), "t1")
        .await
        .expect("the linker publishes traces");
    bus::DeadLetters::new(&linker, bus::ESPANS_STREAM, "linker")
        .store(bus::DeadLetter {
            source_subject: "espan.node-1",
            stream_seq: 1,
            piece: None,
            payload: Bytes::from("x"),
            reason: "test",
        })
        .await
        .expect("the linker dead-letters ESPANS messages");

    let (stop_exporter, mut traces, exporter_task) =
        consume(&exporter, bus::TRACES_STREAM, "exporter-otlp");
    let got = tokio::time::timeout(Duration::from_secs(10), traces.recv())
        .await
        .expect("the exporter consumes TRACES");
    assert_eq!(got.as_deref(), Some(&b"x"[..]));
    bus::DeadLetters::new(&exporter, bus::TRACES_STREAM, "exporter-otlp")
        .store(bus::DeadLetter {
            source_subject: "trace.linker",
            stream_seq: 1,
            piece: None,
            payload: Bytes::from("x"),
            reason: "test",
        })
        .await
        .expect("the exporter dead-letters TRACES messages");
    let stream = exporter
        .jetstream()
        .get_stream(bus::TRACES_STREAM)
        .await
        .unwrap();
    stream
        .consumer_info("exporter-otlp")
        .await
        .expect("the exporter reads its consumer's state");

    // What a probe must not do.
    assert!(
        publish_one(&probe, &bus::trace_subject("forged"), "f1")
            .await
            .is_err(),
        "a probe cannot publish a trace"
    );
    let mut probe_reads = bus::ConsumerSpec::new(bus::ESPANS_STREAM, "probe-reader");
    probe_reads.max_deliver = 1;
    assert!(
        bus::pull_messages(&probe, &probe_reads).await.is_err(),
        "a probe cannot read ESPANS"
    );
    assert!(
        publish_one(&exporter, &bus::espan_subject("node-1"), "f2")
            .await
            .is_err(),
        "the exporter cannot publish eSpans"
    );

    stop_linker.trigger();
    stop_exporter.trigger();
    linker_task.await.unwrap().unwrap();
    exporter_task.await.unwrap().unwrap();
}

/// base64url without padding, as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT (decentralized auth) with `claims` for `subject`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: &str) -> String {
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = format!(
        r#"{{"jti":"{name}-{subject}","iat":1700000000,"iss":"{}","name":"{name}","sub":"{subject}","nats":{nats}}}"#,
        issuer.public_key()
    );
    let signed = format!("{header}.{}", base64url(claims.as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64url(&signature))
}

/// A server in operator mode (accounts and users as signed JWTs, as `nsc`
/// makes them): a service logs in with a `.creds` file, given by its option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_logs_in_to_a_server_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "espan-operator",
        r#"{"type":"operator","version":2}"#,
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "ESPAN",
        r#"{"limits":{"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1},"type":"account","version":2}"#,
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        r#"{"limits":{"subs":-1,"data":-1,"payload":-1,"imports":-1,"exports":-1,"wildcards":true,"conn":-1,"leaf":-1},"type":"account","version":2}"#,
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "espan-linker",
        r#"{"pub":{},"sub":{},"subs":-1,"data":-1,"payload":-1,"type":"user","version":2}"#,
    );
    let nats = TestNats::start_with_config(&format!(
        "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: {account_jwt}\n  {}: {system_jwt}\n}}\n",
        system.public_key(),
        account.public_key(),
        system.public_key()
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("linker.creds");
    let seed = user.seed().unwrap();
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(&creds).unwrap();
    let bus = Bus::connect(
        NatsConnect {
            url: nats.url(),
            auth: NatsAuth::Creds(text),
            tls: NatsTls::default(),
        },
        "creds",
        Duration::from_secs(10),
    )
    .await
    .expect("the .creds file logs in");
    bus.client()
        .publish("espan.test", "x".into())
        .await
        .unwrap();
    bus.client().flush().await.unwrap();
    let error = refused(nats.url().into(), "no credentials").await;
    assert!(!error.contains(&seed), "{error}");
}
