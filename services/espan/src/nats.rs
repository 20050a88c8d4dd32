//! How a service reaches NATS: the server's URL, who the service is to it
//! (user and password, a token, an nkey seed or a `.creds` file) and TLS (a CA
//! of its own, a client certificate for mutual TLS).
//!
//! The probe, the linker and the exporter take the same options
//! ([`NatsArgs`], flattened into each command line, with the same variables and
//! file keys) and resolve them the same way ([`NatsArgs::resolve`]), so a bad
//! one stops any of them with the same error. Files are read and checked when
//! the settings are resolved: a missing certificate or a malformed seed is a
//! configuration error at start, not a connection that never comes up.
//!
//! Secrets never show: [`NatsConnect`]'s `Debug` names the method, not the
//! secret, and its URL is [`redact`]ed wherever it is displayed.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Layers, PemFile, percent_decode};
use crate::redact::redact;

/// The NATS options every service shares. Each has a variable and a file key
/// of the same name (`ESPAN_NATS_USER`, `nats_user`, …).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS user name; with --nats-password (file key nats_user). A URL's
    /// `user:password@` works too.
    #[arg(long, env = "ESPAN_NATS_USER", value_name = "NAME")]
    pub nats_user: Option<String>,
    /// Password of --nats-user; give it by variable or file, since flags show
    /// in `ps` (file key nats_password).
    #[arg(
        long,
        env = "ESPAN_NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// NATS authentication token (server `authorization { token }`); by
    /// variable or file, as the password (file key nats_token).
    #[arg(
        long,
        env = "ESPAN_NATS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,
    /// File holding an nkey user seed (`SU…`, as `nk -gen user` writes); the
    /// server knows the user by its public key (file key nats_nkey).
    #[arg(long, env = "ESPAN_NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<String>,
    /// A `.creds` file (user JWT and nkey seed, as `nsc` writes it) for a
    /// server in operator mode (file key nats_creds).
    #[arg(long, env = "ESPAN_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<String>,
    /// PEM file of the CA(s) that signed the NATS server's certificate, in
    /// place of the system's; implies TLS (file key nats_tls_ca).
    #[arg(long, env = "ESPAN_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<String>,
    /// PEM client certificate for mutual TLS, with --nats-tls-key; implies TLS
    /// (file key nats_tls_cert).
    #[arg(long, env = "ESPAN_NATS_TLS_CERT", value_name = "FILE")]
    pub nats_tls_cert: Option<String>,
    /// PEM private key of --nats-tls-cert (file key nats_tls_key).
    #[arg(long, env = "ESPAN_NATS_TLS_KEY", value_name = "FILE")]
    pub nats_tls_key: Option<String>,
    /// Refuse to talk to NATS without TLS, even with no file above (the
    /// system's roots then check the server); a tls:// URL does the same.
    /// [default: false] (file key nats_tls).
    #[arg(long, env = "ESPAN_NATS_TLS", value_name = "BOOL")]
    pub nats_tls: Option<String>,
}

/// Who a service is to NATS.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials of its own (or only the URL's `user:password@`).
    #[default]
    None,
    /// `authorization { users = [{user, password}] }`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// `authorization { token }`.
    Token(String),
    /// An nkey user's seed (`SU…`): the server sends a nonce, the client signs it.
    NkeySeed(String),
    /// The text of a `.creds` file: a user JWT and its seed.
    Creds(String),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => write!(f, "none"),
            NatsAuth::UserPassword { user, .. } => write!(f, "user {user:?} with a password"),
            NatsAuth::Token(_) => write!(f, "a token"),
            NatsAuth::NkeySeed(_) => write!(f, "an nkey seed"),
            NatsAuth::Creds(_) => write!(f, "a .creds file"),
        }
    }
}

/// TLS towards NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Refuse a connection without TLS.
    pub required: bool,
    /// The CA file that verifies the server, instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key files, for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Everything needed to connect to NATS: what [`crate::bus::Bus::connect`] takes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsConnect {
    /// `nats://host:port` (or `tls://`, several comma-separated).
    pub url: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
}

impl fmt::Debug for NatsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConnect")
            .field("url", &self.shown_url())
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A URL alone: no credentials but what it holds, TLS only if it says `tls://`.
impl From<&str> for NatsConnect {
    fn from(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Default::default()
        }
    }
}

impl From<String> for NatsConnect {
    fn from(url: String) -> Self {
        Self {
            url,
            ..Default::default()
        }
    }
}

impl From<&String> for NatsConnect {
    fn from(url: &String) -> Self {
        url.as_str().into()
    }
}

impl From<&NatsConnect> for NatsConnect {
    fn from(nats: &NatsConnect) -> Self {
        nats.clone()
    }
}

impl NatsConnect {
    /// The URL with its user info taken out: what logs and errors show.
    pub fn shown_url(&self) -> String {
        redact(&self.url)
    }

    /// The server URLs (comma-separated in `url`) as async-nats gets them:
    /// without their user info (handed over by [`NatsConnect::options`]
    /// instead), since async-nats logs the URLs it tries, at debug level,
    /// password and all.
    pub fn server_urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(|url| {
                let url = url.trim();
                let host_at = url.find("://").map_or(0, |i| i + 3);
                let host_end = url[host_at..].find('/').map_or(url.len(), |i| host_at + i);
                match url[host_at..host_end].rfind('@') {
                    Some(at) => format!("{}{}", &url[..host_at], &url[host_at + at + 1..]),
                    None => url.to_owned(),
                }
            })
            .filter(|url| !url.is_empty())
            .collect()
    }

    /// The credentials: those given, else the URL's `user:password@` (or
    /// `token@`), which async-nats does not read by itself.
    pub fn credentials(&self) -> Result<NatsAuth, String> {
        match &self.auth {
            NatsAuth::None => url_auth(&self.url),
            given => Ok(given.clone()),
        }
    }

    /// async-nats options with these credentials and TLS settings.
    pub fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let options = match &self.credentials()? {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
            NatsAuth::NkeySeed(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            // The file's content is never quoted: it holds the seed.
            NatsAuth::Creds(text) => async_nats::ConnectOptions::with_credentials(text)
                .map_err(|_| "the .creds file does not hold a user JWT and seed".to_owned())?,
        };
        let mut options = options.require_tls(self.tls.required || self.url.contains("tls://"));
        if let Some(ca) = &self.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }
}

impl NatsArgs {
    /// The connection for `url` with the credentials and TLS settings from
    /// `layers`. Errors name the option: two ways to authenticate at once, a
    /// password without a user, a file that cannot be read or does not hold
    /// what it should.
    pub fn resolve(layers: &Layers<'_>, url: String) -> Result<NatsConnect, ConfigError> {
        let user: Option<String> = layers.get_opt("nats_user", "nats_user")?;
        let password: Option<String> = layers.get_opt("nats_password", "nats_password")?;
        let token: Option<String> = layers.get_opt("nats_token", "nats_token")?;
        let nkey: Option<PathBuf> = layers.get_opt("nats_nkey", "nats_nkey")?;
        let creds: Option<PathBuf> = layers.get_opt("nats_creds", "nats_creds")?;

        let user_id = if user.is_some() {
            "nats_user"
        } else {
            "nats_password"
        };
        let given: Vec<&str> = [
            (user_id, user.is_some() || password.is_some()),
            ("nats_token", token.is_some()),
            ("nats_nkey", nkey.is_some()),
            ("nats_creds", creds.is_some()),
        ]
        .into_iter()
        .filter_map(|(id, set)| set.then_some(id))
        .collect();
        if let [first, second, ..] = given[..] {
            return Err(ConfigError::Conflict(format!(
                "{} and {}: give one way to authenticate to NATS",
                layers.origin_of(first, first),
                layers.origin_of(second, second),
            )));
        }

        let auth = match (user, password, token, nkey, creds) {
            (Some(user), Some(password), ..) => NatsAuth::UserPassword { user, password },
            (Some(user), None, ..) => {
                return Err(layers.invalid(
                    "nats_user",
                    "nats_user",
                    user,
                    "a NATS user needs its password (nats_password)",
                ));
            }
            (None, Some(_), ..) => {
                return Err(layers.invalid(
                    "nats_password",
                    "nats_password",
                    "<hidden>",
                    "a NATS password needs its user (nats_user)",
                ));
            }
            (_, _, Some(token), ..) => NatsAuth::Token(token),
            (_, _, _, Some(path), _) => {
                let seed = read(layers, "nats_nkey", &path)?.trim().to_owned();
                if nkeys::KeyPair::from_seed(&seed).is_err() || !seed.starts_with("SU") {
                    return Err(layers.invalid(
                        "nats_nkey",
                        "nats_nkey",
                        path.display(),
                        "the file does not hold an nkey user seed (SU…)",
                    ));
                }
                NatsAuth::NkeySeed(seed)
            }
            (_, _, _, _, Some(path)) => {
                let text = read(layers, "nats_creds", &path)?;
                if async_nats::ConnectOptions::with_credentials(&text).is_err() {
                    return Err(layers.invalid(
                        "nats_creds",
                        "nats_creds",
                        path.display(),
                        "the file does not hold a user JWT and seed (as nsc writes .creds files)",
                    ));
                }
                NatsAuth::Creds(text)
            }
            _ => NatsAuth::None,
        };

        let ca: Option<PemFile> = layers.get_opt("nats_tls_ca", "nats_tls_ca")?;
        let cert: Option<PemFile> = layers.get_opt("nats_tls_cert", "nats_tls_cert")?;
        let key: Option<PemFile> = layers.get_opt("nats_tls_key", "nats_tls_key")?;
        let required: bool = layers.get("nats_tls", "nats_tls", false)?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert.path, key.path)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(layers.invalid(
                    "nats_tls_cert",
                    "nats_tls_cert",
                    cert.path.display(),
                    "a client certificate needs its key (nats_tls_key)",
                ));
            }
            (None, Some(key)) => {
                return Err(layers.invalid(
                    "nats_tls_key",
                    "nats_tls_key",
                    key.path.display(),
                    "a client key needs its certificate (nats_tls_cert)",
                ));
            }
        };
        let tls = NatsTls {
            required: required || ca.is_some() || client.is_some(),
            ca: ca.map(|ca| ca.path),
            client,
        };
        let nats = NatsConnect { url, auth, tls };
        let in_url = url_auth(&nats.url).map_err(|reason| {
            ConfigError::Conflict(format!("NATS URL {}: {reason}", nats.shown_url()))
        })?;
        if let ([first, ..], false) = (&given[..], in_url == NatsAuth::None) {
            return Err(ConfigError::Conflict(format!(
                "the NATS URL holds credentials and {} gives others: give one way to authenticate to NATS",
                layers.origin_of(first, first),
            )));
        }
        Ok(nats)
    }
}

/// The credentials in the (first) URL's user info, percent-decoded: a user
/// and a password, or a token alone (`nats://token@host`).
fn url_auth(url: &str) -> Result<NatsAuth, String> {
    let first = url.split(',').next().unwrap_or_default().trim();
    let Ok(addr) = first.parse::<async_nats::ServerAddr>() else {
        return Ok(NatsAuth::None);
    };
    let decode = |text: &str| percent_decode(text).map_err(|e| format!("the URL's user info: {e}"));
    Ok(match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => NatsAuth::UserPassword {
            user: decode(user)?,
            password: decode(password)?,
        },
        (Some(token), None) => NatsAuth::Token(decode(token)?),
        _ => NatsAuth::None,
    })
}

/// The text of a file an option names; the error names the option and the
/// path, never the content.
fn read(layers: &Layers<'_>, id: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| layers.invalid(id, id, path.display(), format!("cannot read it: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Load, load_from};

    #[derive(Debug, clap::Parser)]
    #[command(name = "svc")]
    struct Cli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        nats_url: Option<String>,
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[derive(Debug)]
    struct Settings(NatsConnect);

    impl Load for Settings {
        type Cli = Cli;
        const INPUT: &'static str = "svc";
        fn config_file(cli: &Cli) -> Option<&Path> {
            cli.config.as_deref()
        }
        fn resolve(_: &Cli, layers: &Layers<'_>) -> Result<Self, ConfigError> {
            let url = layers.get("nats_url", "nats_url", "nats://127.0.0.1:4222".to_owned())?;
            NatsArgs::resolve(layers, url).map(Settings)
        }
    }

    fn load(args: &[&str]) -> Result<NatsConnect, String> {
        let mut all = vec!["svc"];
        all.extend_from_slice(args);
        load_from::<Settings, _, _>(all)
            .map(|loaded| loaded.settings.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_way_to_authenticate_resolves_and_hides_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().unwrap();
        let seed_file = dir.path().join("user.nk");
        std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let pem = pem.to_str().unwrap();

        let none = load(&[]).unwrap();
        assert_eq!(none.auth, NatsAuth::None);
        assert!(!none.tls.required);

        let user = load(&["--nats-user", "probe", "--nats-password", "pw_PLANTED"]).unwrap();
        assert_eq!(
            user.auth,
            NatsAuth::UserPassword {
                user: "probe".into(),
                password: "pw_PLANTED".into()
            }
        );
        let token = load(&["--nats-token", "tok_PLANTED"]).unwrap();
        assert_eq!(token.auth, NatsAuth::Token("tok_PLANTED".into()));
        let nkey = load(&["--nats-nkey", seed_file.to_str().unwrap()]).unwrap();
        assert_eq!(nkey.auth, NatsAuth::NkeySeed(seed.clone()));
        for (nats, secret) in [
            (&user, "pw_PLANTED"),
            (&token, "tok_PLANTED"),
            (&nkey, &seed),
        ] {
            assert!(!format!("{nats:?}").contains(secret), "{nats:?}");
        }
        let in_url = load(&["--nats-url", "nats://a:pw_PLANTED%40x@h:4222"]).unwrap();
        assert_eq!(
            in_url.credentials().unwrap(),
            NatsAuth::UserPassword {
                user: "a".into(),
                password: "pw_PLANTED@x".into()
            },
            "async-nats does not read the URL's user info: espan does"
        );
        assert_eq!(in_url.server_urls(), ["nats://h:4222"]);
        let two = load(&["--nats-url", "nats://u:p@a:1, tls://b:2"]).unwrap();
        assert_eq!(two.server_urls(), ["nats://a:1", "tls://b:2"]);
        let token_url = load(&["--nats-url", "nats://tok_PLANTED@h:4222"]).unwrap();
        assert_eq!(
            token_url.credentials().unwrap(),
            NatsAuth::Token("tok_PLANTED".into())
        );
        assert_eq!(
            format!("{in_url:?}"),
            "NatsConnect { url: \"nats://<redacted>@h:4222\", auth: none, tls: NatsTls { required: false, ca: None, client: None } }"
        );

        let tls = load(&[
            "--nats-tls-ca",
            pem,
            "--nats-tls-cert",
            pem,
            "--nats-tls-key",
            pem,
        ])
        .unwrap();
        assert!(tls.tls.required, "a CA or a client certificate means TLS");
        assert_eq!(tls.tls.ca.as_deref(), Some(Path::new(pem)));
        assert!(load(&["--nats-tls", "true"]).unwrap().tls.required);
    }

    #[test]
    fn the_file_keys_and_flags_over_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.toml");
        std::fs::write(
            &file,
            "[[inputs.svc]]\nnats_user = \"linker\"\nnats_password = \"pw_file\"\nnats_tls = true\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let from_file = load(&["--config", file]).unwrap();
        assert_eq!(
            from_file.auth,
            NatsAuth::UserPassword {
                user: "linker".into(),
                password: "pw_file".into()
            }
        );
        assert!(from_file.tls.required);
        let flagged = load(&["--config", file, "--nats-password", "pw_flag"]).unwrap();
        assert_eq!(
            flagged.auth,
            NatsAuth::UserPassword {
                user: "linker".into(),
                password: "pw_flag".into()
            }
        );
        let error = load(&["--config", file, "--nats-token", "t"]).unwrap_err();
        assert!(
            error.contains("key `nats_user`") && error.contains("flag --nats-token"),
            "{error}"
        );
    }

    #[test]
    fn bad_nats_options_are_errors_that_name_the_option_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_seed = dir.path().join("bad.nk");
        std::fs::write(&not_a_seed, "SUnotaseed_PLANTED\n").unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let creds = dir.path().join("bad.creds");
        std::fs::write(&creds, "creds_PLANTED").unwrap();
        for (args, want) in [
            (
                vec!["--nats-user", "probe"],
                "flag --nats-user: invalid value \"probe\": a NATS user needs its password",
            ),
            (
                vec!["--nats-password", "pw_PLANTED"],
                "a NATS password needs its user",
            ),
            (
                vec![
                    "--nats-token",
                    "tok_PLANTED",
                    "--nats-user",
                    "u",
                    "--nats-password",
                    "p",
                ],
                "flag --nats-user and flag --nats-token: give one way to authenticate to NATS",
            ),
            (
                vec!["--nats-nkey", not_a_seed.to_str().unwrap()],
                "does not hold an nkey user seed",
            ),
            (
                vec!["--nats-nkey", "/nonexistent/user.nk"],
                "flag --nats-nkey: invalid value \"/nonexistent/user.nk\": cannot read it",
            ),
            (
                vec!["--nats-creds", creds.to_str().unwrap()],
                "does not hold a user JWT and seed",
            ),
            (
                vec!["--nats-tls-ca", not_pem.to_str().unwrap()],
                "not a PEM file",
            ),
            (
                vec!["--nats-tls-cert", not_pem.to_str().unwrap()],
                "not a PEM file",
            ),
            (vec!["--nats-tls", "maybe"], "expected true or false"),
            (
                vec!["--nats-url", "nats://h:4222?x=1", "--nats-tls", "maybe"],
                "flag --nats-tls",
            ),
            (
                vec![
                    "--nats-url",
                    "nats://u:pw_PLANTED@h:4222",
                    "--nats-token",
                    "tok_PLANTED",
                ],
                "the NATS URL holds credentials and flag --nats-token gives others",
            ),
        ] {
            let error = load(&args).unwrap_err();
            assert!(error.contains(want), "{args:?}: {error}");
            assert!(!error.contains("PLANTED"), "{args:?}: {error}");
        }
        let pem = dir.path().join("cert.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let error = load(&["--nats-tls-cert", pem.to_str().unwrap()]).unwrap_err();
        assert!(error.contains("needs its key"), "{error}");
    }
}
