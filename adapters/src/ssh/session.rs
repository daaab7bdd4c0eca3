//! An authenticated SSH session to one target: TCP connect, key exchange with the host key checked by
//! a [`HostKeyPolicy`], public-key authentication, all under one connect timeout. Commands then run on
//! fresh channels of the same session (see [`Session::exec`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, decode_secret_key};
use russh::{Disconnect, Preferred};
use tokio::time::Instant;

use super::error::SshError;
use super::exec::{self, DEFAULT_MAX_OUTPUT_BYTES, ExecLimits, ExecOutput};
use super::hostkey::{
    AcceptedHostKey, HandlerError, HostKeyHandler, HostKeyPolicy, HostKeyTrust, ResolvedPolicy, fingerprint_sha256,
};
use super::target::SshTarget;

/// Largest private key file read. OpenSSH ed25519/ECDSA keys are a few hundred bytes.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Default connect timeout (TCP + key exchange + authentication).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default per-command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idle session sends a keepalive, so a dead peer is noticed (and the session dropped
/// from the pool) without waiting for TCP to give up.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Unanswered keepalives before the session is declared dead.
const KEEPALIVE_MAX: usize = 3;

/// The client's private key (ed25519 or ECDSA, OpenSSH format, unencrypted).
#[derive(Clone)]
pub struct ClientIdentity {
    key: Arc<PrivateKey>,
    source: PathBuf,
    fingerprint: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ClientIdentity").field("source", &self.source).field("fingerprint", &self.fingerprint).finish()
    }
}

impl ClientIdentity {
    /// Loads an OpenSSH private key file; refuses RSA/DSA keys, encrypted keys and oversized files.
    pub fn from_file(path: &Path) -> Result<ClientIdentity, SshError> {
        let fail = |reason: String| SshError::KeyLoad { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(fail(format!("file is {} bytes; a private key is under {MAX_KEY_FILE_BYTES}", meta.len())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        ClientIdentity::from_openssh(&text, path)
    }

    /// Decodes an OpenSSH private key held in memory; `source` names it in messages.
    pub fn from_openssh(text: &str, source: &Path) -> Result<ClientIdentity, SshError> {
        let key = decode_secret_key(text, None)
            .map_err(|e| SshError::KeyLoad { path: source.to_owned(), reason: e.to_string() })?;
        let algorithm = key.algorithm();
        if !matches!(algorithm, russh::keys::Algorithm::Ed25519 | russh::keys::Algorithm::Ecdsa { .. }) {
            return Err(SshError::KeyUnsupported { path: source.to_owned(), algorithm: algorithm.to_string() });
        }
        let fingerprint = fingerprint_sha256(key.public_key());
        Ok(ClientIdentity { key: Arc::new(key), source: source.to_owned(), fingerprint })
    }

    /// `SHA256:` fingerprint of the public half (what the server's log shows).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Settings shared by every session: identity, timeouts, output cap.
#[derive(Debug, Clone)]
pub struct SshClientConfig {
    /// The key to authenticate with.
    pub identity: ClientIdentity,
    /// Limit for TCP connect + key exchange + authentication.
    pub connect_timeout: Duration,
    /// Default limit for one command.
    pub command_timeout: Duration,
    /// Cap per output stream of one command.
    pub max_output_bytes: usize,
}

impl SshClientConfig {
    /// Config with the default timeouts and output cap.
    pub fn new(identity: ClientIdentity) -> SshClientConfig {
        SshClientConfig {
            identity,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    /// The default per-command limits.
    pub fn exec_limits(&self) -> ExecLimits {
        ExecLimits { timeout: self.command_timeout, max_output_bytes: self.max_output_bytes }
    }
}

/// An authenticated SSH session.
pub struct Session {
    handle: Handle<HostKeyHandler>,
    target: SshTarget,
    host_key: AcceptedHostKey,
    limits: ExecLimits,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .field("host_key", &self.host_key.fingerprint)
            .field("trust", &self.host_key.trust)
            .field("closed", &self.handle.is_closed())
            .finish()
    }
}

impl Session {
    /// Connects, checks the host key against `policy` and authenticates, all within
    /// `config.connect_timeout`.
    pub async fn connect(
        target: &SshTarget,
        policy: &HostKeyPolicy,
        config: &SshClientConfig,
    ) -> Result<Session, SshError> {
        let policy = ResolvedPolicy::resolve(policy)?;
        let deadline = Instant::now() + config.connect_timeout;
        match tokio::time::timeout_at(deadline, Session::connect_inner(target, policy, config)).await {
            Ok(result) => result,
            Err(_) => Err(SshError::ConnectTimeout { target: target.clone(), timeout: config.connect_timeout }),
        }
    }

    async fn connect_inner(
        target: &SshTarget,
        policy: ResolvedPolicy,
        config: &SshClientConfig,
    ) -> Result<Session, SshError> {
        let host_name = target.known_hosts_name();
        let preferred = Preferred { key: policy.preferred_algorithms(&host_name).into(), ..Preferred::default() };
        let russh_config = Arc::new(client::Config {
            preferred,
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..client::Config::default()
        });
        let accepted = Arc::new(Mutex::new(None));
        let handler = HostKeyHandler { host_name, policy, accepted: Arc::clone(&accepted) };
        let stream = tokio::net::TcpStream::connect(target.socket_addr_string())
            .await
            .map_err(|source| SshError::Connect { target: target.clone(), source })?;
        let mut handle =
            client::connect_stream(russh_config, stream, handler).await.map_err(|e| handler_error(target, e))?;
        // check_server_key ran during the key exchange; connect_stream only returns after it.
        let Some(host_key) = accepted.lock().take() else {
            return Err(SshError::Handshake {
                target: target.clone(),
                detail: "key exchange finished without a host key check".to_owned(),
            });
        };
        let identity = &config.identity;
        let auth = handle
            .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(Arc::clone(&identity.key), None))
            .await
            .map_err(|e| SshError::Handshake {
                target: target.clone(),
                detail: format!("during authentication: {e}"),
            })?;
        match auth {
            AuthResult::Success => {
                Ok(Session { handle, target: target.clone(), host_key, limits: config.exec_limits() })
            }
            AuthResult::Failure { .. } => {
                // Leave politely so sshd logs a clean disconnect rather than a reset.
                let _ = handle.disconnect(Disconnect::ByApplication, "authentication failed", "en").await;
                Err(SshError::AuthFailed {
                    target: target.clone(),
                    user: target.user.clone(),
                    key_fingerprint: identity.fingerprint.clone(),
                })
            }
        }
    }

    /// The target this session is logged into.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The host key the session was established with.
    pub fn host_key(&self) -> &AcceptedHostKey {
        &self.host_key
    }

    /// `SHA256:` fingerprint of the server's host key.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key.fingerprint
    }

    /// Why the host key was trusted; [`HostKeyTrust::FirstUse`] means the caller must pin it.
    pub fn host_key_trust(&self) -> HostKeyTrust {
        self.host_key.trust
    }

    /// True once the connection is gone (the session can no longer run commands).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command` with the configured timeout and output cap.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput, SshError> {
        self.exec_with(command, self.limits).await
    }

    /// Runs `command` with explicit limits.
    pub async fn exec_with(&self, command: &str, limits: ExecLimits) -> Result<ExecOutput, SshError> {
        exec::run(&self.handle, &self.target, command, limits).await
    }

    /// The per-command limits this session uses by default.
    pub fn limits(&self) -> ExecLimits {
        self.limits
    }

    /// Sends an SSH disconnect. Dropping a session also ends it, less politely.
    pub async fn close(self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "", "en").await;
    }

    /// Re-checks this session's host key against `policy` (used before reusing a pooled session
    /// under a possibly different policy).
    pub(crate) fn satisfies(&self, policy: &HostKeyPolicy) -> bool {
        ResolvedPolicy::resolve(policy)
            .and_then(|p| p.verify(&self.target.known_hosts_name(), &self.host_key.key))
            .is_ok()
    }
}

fn handler_error(target: &SshTarget, err: HandlerError) -> SshError {
    match err {
        HandlerError::Rejected(e) => *e,
        HandlerError::Russh(russh::Error::IO(source)) => SshError::Connect { target: target.clone(), source },
        HandlerError::Russh(e) => SshError::Handshake { target: target.clone(), detail: e.to_string() },
    }
}
