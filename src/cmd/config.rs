//! The configuration file and its overrides: file < environment (`HWLEDGER_*`) < flags.
//!
//! ```toml
//! data_dir = "/var/lib/hwledger"      # HWLEDGER_DATA, --data
//! origin = "hwledger.example/fleet"   # checkpoint origin line
//! checkpoint_interval_ms = 1000       # bounded checkpoint staleness
//! listen = "0.0.0.0:8443"             # HWLEDGER_LISTEN
//! dashboard_listen = "127.0.0.1:8080" # always loopback
//! max_connections = 1024              # per TLS listener; more are closed at once
//! handshake_timeout_ms = 10000        # a TLS handshake must finish within this
//! header_read_timeout_ms = 30000      # request headers (and the first request after the handshake)
//! body_limit = 65536                  # bytes; larger request bodies get 413
//! server = "https://ledger.lan:8443"  # HWLEDGER_SERVER, --server: act on a server, not the data directory
//! bundle = "/etc/hwledger/operator"   # HWLEDGER_BUNDLE, --bundle: credentials for `server`
//! tailscale_bin = "tailscale"          # `discover tailscale`, --tailscale-bin
//!
//! [ssh]                                # defaults for agentless hosts
//! key = "/home/ops/.ssh/id_ed25519"    # ed25519 or ECDSA, unencrypted
//! known_hosts = "/home/ops/.ssh/known_hosts"  # omit: trust on first use, pinned in the ledger
//! connect_timeout_secs = 10
//! probe_timeout_secs = 30
//! concurrency = 8                      # probes in flight for `probe --all`
//!
//! [[ssh_hosts]]                        # `probe --all`, `dispatch --device`
//! device_id = "gpu-box-1"
//! target = "ops@10.0.0.7:22"
//! key = "/home/ops/.ssh/id_gpu"        # optional, else [ssh].key
//! known_hosts = "/etc/ssh/ssh_known_hosts"  # optional, else [ssh].known_hosts, else TOFU
//!
//! [clouds]
//! cache_ttl_secs = 3600                # rental price cache (<data>/cache/prices.json)
//! [clouds.vast]                        # also runpod, lambda; a provider is used when it has a
//! base_url = "https://console.vast.ai" # table here or its key variable (VAST_API_KEY, ...) is set
//! api_key = "..."                      # the environment variable overrides it; never logged
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hwledger_engine::note::Signer;
use hwledger_engine::{Ledger, LedgerOptions};
use serde::Deserialize;

use super::Global;
use super::target::{Credentials, RemoteArgs, RemoteSettings};

/// Resolved configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Checkpoint origin.
    pub origin: String,
    /// Checkpoint staleness bound.
    pub checkpoint_interval_ms: i64,
    /// API listen address.
    pub listen: String,
    /// Dashboard listen address (loopback only).
    pub dashboard_listen: String,
    /// Most connections open at once per TLS listener.
    pub max_connections: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout_ms: u64,
    /// Longest a client may take to send request headers (and its first request after the handshake).
    pub header_read_timeout_ms: u64,
    /// Largest request body accepted, in bytes.
    pub body_limit: u64,
    /// A server to act on instead of the data directory (`https://HOST:PORT`).
    pub server: Option<String>,
    /// The credential bundle directory for `server`.
    pub bundle: Option<PathBuf>,
    /// The `tailscale` binary `discover tailscale` runs.
    pub tailscale_bin: PathBuf,
    /// Defaults for agentless SSH hosts.
    pub ssh: SshSettings,
    /// Agentless hosts (`probe --all`, `dispatch`).
    pub ssh_hosts: Vec<SshHostConfig>,
    /// Rental-cloud providers.
    pub clouds: CloudSettings,
}

/// `[ssh]`: defaults for every agentless host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSettings {
    /// Client key used when a host names none.
    pub key: Option<PathBuf>,
    /// known_hosts file used when a host names none; neither = trust on first use, pinned in the ledger.
    pub known_hosts: Option<PathBuf>,
    /// TCP connect + key exchange + authentication.
    pub connect_timeout_secs: u64,
    /// One GPU-tool command of a probe.
    pub probe_timeout_secs: u64,
    /// Probes in flight during `probe --all`.
    pub concurrency: usize,
    /// Live sessions of the probe pool (overall / per host).
    pub max_sessions: usize,
    /// See `max_sessions`.
    pub max_per_host: usize,
}

impl Default for SshSettings {
    fn default() -> SshSettings {
        SshSettings {
            key: None,
            known_hosts: None,
            connect_timeout_secs: 10,
            probe_timeout_secs: 30,
            concurrency: 8,
            max_sessions: 64,
            max_per_host: 2,
        }
    }
}

/// `[[ssh_hosts]]`: one agentless host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshHostConfig {
    /// The device it is in the ledger (enrolled as kind `ssh` on its first successful probe).
    pub device_id: String,
    /// `user@host[:port]`.
    pub target: String,
    /// Client key (else `[ssh].key`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// known_hosts file (else `[ssh].known_hosts`, else trust on first use).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
}

/// `[clouds]`: rental providers and the price cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudSettings {
    /// How long a fetched price stays fresh.
    pub cache_ttl_secs: u64,
    /// Vast.ai.
    pub vast: Option<ProviderSettings>,
    /// RunPod.
    pub runpod: Option<ProviderSettings>,
    /// Lambda.
    pub lambda: Option<ProviderSettings>,
}

impl Default for CloudSettings {
    fn default() -> CloudSettings {
        CloudSettings { cache_ttl_secs: 3600, vast: None, runpod: None, lambda: None }
    }
}

impl CloudSettings {
    /// The table of `provider`, if the file has one.
    pub fn provider(&self, provider: hwledger_adapters::cloud::Provider) -> Option<&ProviderSettings> {
        use hwledger_adapters::cloud::Provider;
        match provider {
            Provider::Vast => self.vast.as_ref(),
            Provider::RunPod => self.runpod.as_ref(),
            Provider::Lambda => self.lambda.as_ref(),
        }
    }
}

/// `[clouds.<provider>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// API base URL (default: the provider's real API).
    pub base_url: Option<String>,
    /// API key; the provider's environment variable (`VAST_API_KEY`, ...) overrides it.
    pub api_key: Option<Secret>,
    /// Request timeout.
    pub timeout_secs: Option<u64>,
}

/// A secret from the configuration file: `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for Config {
    fn default() -> Config {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        Config {
            data_dir: home.join(".local/share/hwledger"),
            origin: "hwledger".into(),
            checkpoint_interval_ms: 1_000,
            listen: "127.0.0.1:8443".into(),
            dashboard_listen: "127.0.0.1:8080".into(),
            max_connections: 1024,
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 30_000,
            body_limit: hwledger_wire::server::DEFAULT_BODY_LIMIT,
            server: None,
            bundle: None,
            tailscale_bin: PathBuf::from("tailscale"),
            ssh: SshSettings::default(),
            ssh_hosts: Vec::new(),
            clouds: CloudSettings::default(),
        }
    }
}

impl Config {
    /// Loads the file (explicit, or the default location if it exists) and applies overrides.
    pub fn load(global: &Global) -> anyhow::Result<Config> {
        let default_path = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/hwledger/config.toml"));
        let path = global.config.clone().or_else(|| default_path.filter(|p| p.exists()));
        let mut config = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("read configuration {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parse configuration {}", p.display()))?
            }
            None => Config::default(),
        };
        if let Ok(listen) = std::env::var("HWLEDGER_LISTEN") {
            config.listen = listen;
        }
        if let Some(server) = std::env::var("HWLEDGER_SERVER").ok().filter(|s| !s.is_empty()) {
            config.server = Some(server);
        }
        if let Some(bundle) = std::env::var_os("HWLEDGER_BUNDLE").filter(|s| !s.is_empty()) {
            config.bundle = Some(PathBuf::from(bundle));
        }
        if let Some(d) = &global.data {
            config.data_dir = d.clone();
        }
        Ok(config)
    }

    /// The server a subcommand acts on, if any: `--server`, else `server` (file or `HWLEDGER_SERVER`).
    /// Credentials: `--cert/--key/--ca`, else `--bundle`, else `bundle` (file or `HWLEDGER_BUNDLE`), else
    /// the server's own operator bundle `<data>/operator` when it exists (on the server's host).
    pub fn remote(&self, args: &RemoteArgs) -> anyhow::Result<Option<RemoteSettings>> {
        let Some(url) = args.server.clone().or_else(|| self.server.clone()) else {
            if args.bundle.is_some() || args.cert.is_some() || args.ca.is_some() {
                anyhow::bail!("--bundle, --cert, --key and --ca need --server (or HWLEDGER_SERVER)");
            }
            return Ok(None);
        };
        let credentials = match (&args.cert, &args.key, &args.ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Credentials::Files { ca: ca.clone(), cert: cert.clone(), key: key.clone() }
            }
            (None, None, None) => {
                let default = self.data_dir.join("operator");
                let dir =
                    args.bundle.clone().or_else(|| self.bundle.clone()).or_else(|| default.is_dir().then_some(default));
                match dir {
                    Some(dir) => Credentials::Bundle(dir),
                    None => anyhow::bail!(
                        "--server {url} needs credentials: --bundle DIR (or HWLEDGER_BUNDLE), or --cert, --key and --ca"
                    ),
                }
            }
            _ => anyhow::bail!("--cert, --key and --ca go together (or use --bundle DIR alone)"),
        };
        Ok(Some(RemoteSettings { url, credentials }))
    }

    /// The on-disk rental price cache (derived data; safe to delete).
    pub fn price_cache_path(&self) -> PathBuf {
        self.data_dir.join("cache").join("prices.json")
    }

    /// Directory of the log signing key.
    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// Creates the data directory if needed and makes it 0700 (keys, the CA and the operator bundle live
    /// below it). Called by every command that writes into it, before anything else is created there.
    pub fn create_data_dir(&self) -> anyhow::Result<()> {
        create_private_dir(&self.data_dir)
    }

    /// Opens the ledger with the log key (created on first use, 0600).
    pub fn open_ledger(&self) -> anyhow::Result<Ledger> {
        self.create_data_dir()?;
        let signer = load_or_create_log_key(&self.keys_dir(), &self.origin)?;
        let options = LedgerOptions {
            signer: Some(signer),
            origin: self.origin.clone(),
            checkpoint_interval_ms: self.checkpoint_interval_ms,
            ..LedgerOptions::default()
        };
        Ledger::open(&self.data_dir.join("ledger"), options)
            .with_context(|| format!("open ledger in {}", self.data_dir.display()))
    }

    /// The log's verifier key (vkey string), if the log key exists.
    pub fn vkey(&self) -> anyhow::Result<Option<String>> {
        let path = self.keys_dir().join("log.vkey");
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }
}

/// Loads the Ed25519 log key, creating it (and its vkey) on first use.
pub fn load_or_create_log_key(dir: &Path, origin: &str) -> anyhow::Result<Signer> {
    let key_path = dir.join("log.key");
    if key_path.exists() {
        let text = std::fs::read_to_string(&key_path).with_context(|| format!("read {}", key_path.display()))?;
        return Signer::from_key_string(text.trim()).with_context(|| format!("parse log key {}", key_path.display()));
    }
    create_private_dir(dir)?;
    let (signer, skey, vkey) = hwledger_engine::note::generate_signer(origin).context("generate log key")?;
    write_private(&key_path, format!("{skey}\n").as_bytes())?;
    std::fs::write(dir.join("log.vkey"), format!("{vkey}\n")).context("write log.vkey")?;
    Ok(signer)
}

/// Creates `dir` (0700 from the start, never briefly wider) and tightens it to 0700 if it already existed.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).with_context(|| format!("create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    }
    Ok(())
}

/// Writes a secret file with mode 0600 from the start (never world-readable, not even briefly).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("write {}", path.display()))
}
