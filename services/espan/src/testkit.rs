//! Real servers for tests: a `nats-server` with JetStream on a free loopback
//! port and its own store directory, killed when dropped. Tests of every crate
//! use it, so each test has a bus of its own and can stop or restart it.
//! [`TestNats::start_with_config`] adds server configuration (TLS, accounts and
//! users); [`TestCerts`] makes the certificates such a server and its clients
//! use, fresh for each test. And a disk whose power can be cut
//! ([`PowerCutDisk`]), for durability tests.
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
    options: NatsOptions,
}

/// What a test server is configured with beyond its port and store.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The server's `max_payload`; `None`: its default, 1 MiB.
    pub max_payload: Option<usize>,
    /// JetStream's `sync_interval`: how often the store is fsynced ("always",
    /// or a duration). Tests say it explicitly, as every launcher of espan
    /// does: "always" by default (acked = on disk), as in production.
    pub sync_interval: String,
    /// Where JetStream keeps its files; `None`: in the server's own temporary
    /// directory.
    pub store_dir: Option<PathBuf>,
    /// More of the server's configuration file (`tls {…}`, `accounts {…}`).
    pub extra_config: String,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            max_payload: None,
            sync_interval: "always".into(),
            store_dir: None,
            extra_config: String::new(),
        }
    }
}

impl TestNats {
    /// Starts a server on a free port. Finds the binary in `ESPAN_NATS_SERVER` or on
    /// `PATH` (`.ci/run` installs it).
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(NatsOptions::default())
    }

    /// Starts a server whose configuration file also holds `config`: blocks
    /// such as `tls { … }`, `authorization { … }` or `accounts { … }` (an
    /// account that needs JetStream says `jetstream: enabled`).
    pub fn start_with_config(config: &str) -> std::io::Result<Self> {
        Self::start_with(NatsOptions {
            extra_config: config.to_owned(),
            ..NatsOptions::default()
        })
    }

    /// Starts a server configured with `options`.
    pub fn start_with(options: NatsOptions) -> std::io::Result<Self> {
        let mut nats = Self::reserve()?;
        nats.options = options;
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
            options: NatsOptions::default(),
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A connection named `name` with espan's streams made with `limits`
    /// where missing: what a test or bench of any service starts from.
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
        let store_dir = self
            .options
            .store_dir
            .clone()
            .unwrap_or_else(|| self.store.path().join("js"));
        let max_payload = self
            .options
            .max_payload
            .map(|n| format!("max_payload: {n}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "{max_payload}jetstream {{\n  store_dir: {store_dir:?}\n  max_file_store: 1T\n  max_memory_store: 256MB\n  sync_interval: {}\n}}\n{}\n",
                self.options.sync_interval, self.options.extra_config
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

/// A disk whose power can be cut, for durability tests (root: loop devices,
/// mount, sysctl).
///
/// It is an ext4 file system in a loop device over a plain backing file. While
/// writeback is held ([`PowerCutDisk::hold_writeback`]: the kernel's periodic
/// flush off, `vm.dirty_writeback_centisecs` 0), what a program wrote without
/// fsync stays dirty in the page cache of the mounted file system, and only
/// what it fsynced reaches the backing file. [`PowerCutDisk::cut`] copies the
/// backing file at that instant: the disk as a power cut leaves it, mounted
/// where the next program can read it.
///
/// What it cannot show: a disk's own volatile cache (the loop device's flush
/// reaches the backing file's page cache, which the copy reads), or writeback
/// that memory pressure forces meanwhile (it can only make a test lose less).
/// A real cut needs a device that drops writes (dm-flakey), and this kernel
/// has no device-mapper.
pub struct PowerCutDisk {
    dir: tempfile::TempDir,
    image: PathBuf,
    mounted: LoopMount,
    held: Option<WritebackHeld>,
}

impl PowerCutDisk {
    /// A fresh file system of `megabytes`, mounted.
    pub fn new(megabytes: u64) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("espan-disk").tempdir()?;
        let image = dir.path().join("disk.img");
        run(
            "truncate",
            &["-s", &format!("{megabytes}M"), path_str(&image)?],
        )?;
        run("mkfs.ext4", &["-q", "-F", path_str(&image)?])?;
        let mounted = LoopMount::new(&image, &dir.path().join("mnt"))?;
        Ok(Self {
            dir,
            image,
            mounted,
            held: None,
        })
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.mounted.mount
    }

    /// Syncs what is written so far, then holds the kernel's writeback off
    /// until the cut.
    pub fn hold_writeback(&mut self) -> std::io::Result<()> {
        run("sync", &[])?;
        self.held = Some(WritebackHeld::new()?);
        Ok(())
    }

    /// Cuts the power: copies the disk as it is now, lets writeback go again,
    /// and mounts the copy. Whatever still writes to the old disk writes to a
    /// disk nobody reads again.
    pub fn cut(self) -> std::io::Result<AfterCut> {
        let copy = self.dir.path().join("after-cut.img");
        std::fs::copy(&self.image, &copy)?;
        drop(self.held);
        drop(self.mounted);
        let mounted = LoopMount::new(&copy, &self.dir.path().join("mnt-after-cut"))?;
        Ok(AfterCut {
            mounted,
            _dir: self.dir,
        })
    }
}

/// The disk as the power cut left it, mounted.
pub struct AfterCut {
    mounted: LoopMount,
    _dir: tempfile::TempDir,
}

impl AfterCut {
    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mounted.mount
    }
}

struct LoopMount {
    device: String,
    mount: PathBuf,
}

impl LoopMount {
    fn new(image: &Path, mount: &Path) -> std::io::Result<Self> {
        let device = run("losetup", &["-f", "--show", path_str(image)?])?;
        std::fs::create_dir_all(mount)?;
        run("mount", &[&device, path_str(mount)?])?;
        Ok(Self {
            device,
            mount: mount.to_owned(),
        })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // Lazy: a writer may still hold files of a disk whose power was cut.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

const WRITEBACK: &str = "/proc/sys/vm/dirty_writeback_centisecs";

/// The kernel's periodic writeback off while it lives.
struct WritebackHeld {
    before: String,
}

impl WritebackHeld {
    fn new() -> std::io::Result<Self> {
        let before = std::fs::read_to_string(WRITEBACK)?;
        std::fs::write(WRITEBACK, "0")?;
        Ok(Self { before })
    }
}

impl Drop for WritebackHeld {
    fn drop(&mut self) {
        let _ = std::fs::write(WRITEBACK, self.before.trim());
    }
}

fn path_str(path: &Path) -> std::io::Result<&str> {
    path.to_str()
        .ok_or_else(|| std::io::Error::other(format!("not UTF-8: {}", path.display())))
}

/// Runs `program`; its trimmed standard output, or an error with its stderr.
fn run(program: &str, args: &[&str]) -> std::io::Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
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
