//! Real servers for tests: a `nats-server` with JetStream on a free loopback
//! port and its own store directory, killed when dropped. Tests of every crate
//! use it, so each test has a bus of its own and can stop or restart it.
//! [`TestNats::start_with_config`] adds server configuration (TLS, accounts and
//! users); [`TestCerts`] makes the certificates such a server and its clients
//! use, fresh for each test.
//!
//! Behind the `testkit` feature: tests and benches ask for it, release builds
//! of the services leave it out.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server -js`.
pub struct TestNats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
    /// More of the server's configuration file (`tls {…}`, `accounts {…}`).
    extra_config: String,
}

impl TestNats {
    /// Starts a server on a free port. Finds the binary in `ESPAN_NATS_SERVER` or on
    /// `PATH` (`.ci/run` installs it).
    pub fn start() -> std::io::Result<Self> {
        Self::start_with_config("")
    }

    /// Starts a server whose configuration file also holds `config`: blocks
    /// such as `tls { … }`, `authorization { … }` or `accounts { … }` (an
    /// account that needs JetStream says `jetstream: enabled`).
    pub fn start_with_config(config: &str) -> std::io::Result<Self> {
        let mut nats = Self::reserve()?;
        nats.extra_config = config.to_owned();
        nats.spawn()?;
        Ok(nats)
    }

    /// A server not started yet (its port and store chosen): what a service
    /// that starts before NATS sees. [`TestNats::restart`] starts it.
    pub fn reserve() -> std::io::Result<Self> {
        Ok(Self {
            child: None,
            port: free_port()?,
            store: tempfile::Builder::new().prefix("espan-nats").tempdir()?,
            binary: nats_server_binary()?,
            extra_config: String::new(),
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A connection named `name` with espan's streams made (or updated) with
    /// `limits`: what a test or bench of any service starts from.
    pub async fn bus(
        &self,
        name: &str,
        limits: &crate::bus::StreamLimits,
    ) -> Result<crate::bus::Bus, crate::bus::BusError> {
        let bus = crate::bus::Bus::connect(&self.url(), name, Duration::from_secs(10)).await?;
        bus.ensure_streams(limits).await?;
        Ok(bus)
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): what a crash looks like.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        // Streams reserve their max_bytes against max_file_store, which defaults
        // to 75% of the free disk: many tests at once, each with three 10 GiB
        // streams, would be refused. Nothing here writes more than a few MB.
        let config = self.store.path().join("nats.conf");
        let store_dir = self.store.path().join("js");
        std::fs::write(
            &config,
            format!(
                "jetstream {{\n  store_dir: {store_dir:?}\n  max_file_store: 1T\n  max_memory_store: 256MB\n}}\n{}\n",
                self.extra_config
            ),
        )?;
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", self.binary.display()),
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other(format!(
            "nats-server did not listen on port {} within 10 s",
            self.port
        )))
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Certificates for one test, as PEM files in a directory of their own: a CA,
/// a server certificate for `localhost` and `127.0.0.1` and a client
/// certificate, both signed by the CA.
pub struct TestCerts {
    _dir: tempfile::TempDir,
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client's certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TestCerts {
    /// A new CA and the two certificates it signs.
    pub fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::Builder::new()
            .prefix("espan-certs")
            .tempdir()
            .expect("a temporary directory");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write a PEM file");
            path
        };
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "espan test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let leaf = |cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("a key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("espan-client", ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            _dir: dir,
        }
    }

    /// A nats-server `tls { … }` block with these certificates; `verify`
    /// makes it demand a client certificate signed by the CA.
    pub fn nats_tls_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n}}\n",
            self.server_cert, self.server_key, self.ca
        )
    }
}

/// The `nats-server` binary to run.
pub fn nats_server_binary() -> std::io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ESPAN_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    find_on_path("nats-server").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "nats-server not found on PATH (run `bash .ci/run`, or set ESPAN_NATS_SERVER)",
        )
    })
}

/// The first executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The probe's tests still call this; new code uses `tempfile` directly.
pub mod tempfile_dir {
    /// `tempfile`'s directory, named `<tmp>/<prefix><random>`.
    pub struct TempDir;

    impl TempDir {
        /// Creates the directory (removed with its content on drop).
        #[allow(clippy::new_ret_no_self)]
        pub fn new(prefix: &str) -> std::io::Result<tempfile::TempDir> {
            tempfile::Builder::new().prefix(prefix).tempdir()
        }
    }
}
