//! The fleet PKI on disk: the CA generations and their state file, the server certificate,
//! issuing and CSR signing, rotation with an overlap, and status.
//!
//! Layout of the PKI directory (all directories 0700, keys 0600):
//!
//! ```text
//! <dir>/state.json          CA generations, which one issues, trust deadlines (the commit point)
//! <dir>/ca/ca-<n>.key       CA private key, PKCS#8 PEM
//! <dir>/ca/ca-<n>.crt       CA certificate (self-signed)
//! <dir>/ca/ca-<n>-by-<m>.crt  CA n cross-signed by its predecessor m (written on rotation)
//! <dir>/server.crt          server certificate, issued by the issuing CA
//! <dir>/server.key          its key
//! <dir>/.lock               held while the CA set is created or rotated
//! ```
//!
//! Every write is atomic. The state file is written after the CA files it names, so a crash
//! mid-way leaves either the old CA set or the new one; a server certificate that does not
//! match the state (other issuer, other names, near expiry, key mismatch) is re-issued on load.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use super::error::PkiError;
use super::fingerprint::Fingerprint;
use super::fsio::{self, DirLock, KEY_MODE, PUBLIC_MODE};
use super::identity::{parse_cert, serial_hex};
use super::issue::{self, whole_seconds};
use super::role::Role;

/// Version of `state.json`'s layout; bumped on incompatible change.
const STATE_FORMAT: u32 = 1;

/// Names the server certificate always carries: the loopback forms agents and tests use.
pub const DEFAULT_SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Settings of the PKI. Durations are `time::Duration`.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// Server names beyond `localhost`, `127.0.0.1` and `::1` (DNS names or IP literals).
    pub extra_server_names: Vec<String>,
    /// How long a CA issues before a rotation is due (`status().rotation_due_at`).
    pub rotation_interval: Duration,
    /// Lifetime of a CA certificate. Longer than the rotation interval, so certificates issued
    /// just before a rotation stay verifiable through the overlap.
    pub ca_validity: Duration,
    /// Lifetime of the server certificate (clamped to the issuing CA's).
    pub server_cert_validity: Duration,
    /// Re-issue the server certificate on load when it expires within this.
    pub server_renew_before: Duration,
}

impl Default for PkiOptions {
    fn default() -> Self {
        PkiOptions {
            extra_server_names: Vec::new(),
            rotation_interval: Duration::days(90),
            ca_validity: Duration::days(365),
            server_cert_validity: Duration::days(180),
            server_renew_before: Duration::days(30),
        }
    }
}

impl PkiOptions {
    fn validate(&self) -> Result<(), PkiError> {
        let bad = |reason: String| Err(PkiError::InvalidOptions { reason });
        if self.rotation_interval <= Duration::ZERO {
            return bad("rotation interval must be positive".into());
        }
        if self.ca_validity <= self.rotation_interval {
            return bad(format!(
                "CA validity ({}) must exceed the rotation interval ({})",
                self.ca_validity, self.rotation_interval
            ));
        }
        if self.server_cert_validity <= self.server_renew_before || self.server_renew_before < Duration::ZERO {
            return bad(format!(
                "server certificate validity ({}) must exceed its renewal margin ({}), which must not be negative",
                self.server_cert_validity, self.server_renew_before
            ));
        }
        if self.server_cert_validity > issue::MAX_LEAF_VALIDITY {
            return bad(format!(
                "server certificate validity must be at most {} days",
                issue::MAX_LEAF_VALIDITY.whole_days()
            ));
        }
        for name in &self.extra_server_names {
            issue::validate_server_name(name)?;
        }
        Ok(())
    }

    /// The full, normalised set of server names.
    fn server_names(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        DEFAULT_SERVER_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .chain(self.extra_server_names.iter().cloned())
            .filter(|n| seen.insert(normalise_name(n)))
            .collect()
    }
}

/// Lower-cases DNS names and canonicalises IP literals so sets of names compare reliably.
fn normalise_name(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.to_ascii_lowercase(),
    }
}

/// `state.json`: the CA generations. Written last in every change (the commit point).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    /// Random id of this fleet, written into CA names so two fleets' CAs never share a subject
    /// (which would make "wrong CA" errors confusing).
    fleet_id: String,
    /// Generation of the CA that issues new certificates.
    issuing: u32,
    cas: Vec<CaRecord>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaRecord {
    generation: u32,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// End of trust: set on the old CA by a rotation (rotation time + overlap); `None` while
    /// the CA is current.
    #[serde(with = "time::serde::rfc3339::option")]
    trusted_until: Option<OffsetDateTime>,
    /// Generation of the predecessor that cross-signed this CA, if any.
    cross_signed_by: Option<u32>,
}

/// A CA generation loaded from disk.
struct LoadedCa {
    record: CaRecord,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    fingerprint: Fingerprint,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// This CA's certificate cross-signed by its predecessor, when there is one.
    cross_der: Option<CertificateDer<'static>>,
}

impl LoadedCa {
    fn trusted_at(&self, now: OffsetDateTime) -> bool {
        self.record.trusted_until.is_none_or(|t| now < t) && now < self.not_after
    }
}

/// The loaded server certificate and key.
struct ServerCert {
    cert_der: CertificateDer<'static>,
    key_pem: String,
    fingerprint: Fingerprint,
    not_after: OffsetDateTime,
}

/// A certificate issued by the fleet CA, with its key when the server generated it.
#[derive(Clone)]
pub struct IssuedCert {
    /// Whom it was issued to.
    pub role: Role,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The PKCS#8 private key, PEM; `None` for a signed CSR (the key stayed on the device).
    pub key_pem: Option<String>,
    /// SHA-256 of the certificate DER: what the registry pins.
    pub fingerprint: Fingerprint,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity (possibly clamped to the issuing CA's).
    pub not_after: OffsetDateTime,
    /// Generation of the CA that issued it.
    pub ca_generation: u32,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("role", &self.role)
            .field("fingerprint", &self.fingerprint)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("ca_generation", &self.ca_generation)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One CA generation as reported by [`Pki::status`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaInfo {
    /// Generation number (1, 2, ...).
    pub generation: u32,
    /// SHA-256 of the CA certificate.
    pub fingerprint: Fingerprint,
    /// When the generation was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Certificate start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Certificate expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// End of trust set by a rotation; `None` for the issuing CA.
    #[serde(with = "time::serde::rfc3339::option")]
    pub trusted_until: Option<OffsetDateTime>,
}

/// What [`Pki::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PkiStatus {
    /// The CA that issues new certificates.
    pub issuing: CaInfo,
    /// When the issuing CA is due for rotation (created + rotation interval).
    #[serde(with = "time::serde::rfc3339")]
    pub rotation_due_at: OffsetDateTime,
    /// Whether that time has passed.
    pub rotation_due: bool,
    /// The CAs trusted at the time asked about (the issuing one included, if still valid).
    pub trusted: Vec<CaInfo>,
    /// SHA-256 of the server certificate.
    pub server_fingerprint: Fingerprint,
    /// Expiry of the server certificate.
    #[serde(with = "time::serde::rfc3339")]
    pub server_not_after: OffsetDateTime,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    /// The CA that issued until now.
    pub previous_generation: u32,
    /// The new issuing CA.
    pub new_generation: u32,
    /// Until when the previous CA stays trusted.
    #[serde(with = "time::serde::rfc3339")]
    pub previous_trusted_until: OffsetDateTime,
    /// SHA-256 of the new server certificate.
    pub server_fingerprint: Fingerprint,
}

/// The fleet PKI: CA generations, the issuing key, the server certificate.
pub struct Pki {
    dir: PathBuf,
    opts: PkiOptions,
    state: StateFile,
    /// Same order as `state.cas`.
    cas: Vec<LoadedCa>,
    issuer: Issuer<'static, KeyPair>,
    issuing_not_after: OffsetDateTime,
    server: ServerCert,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("issuing", &self.state.issuing)
            .field("generations", &self.cas.len())
            .field("server_fingerprint", &self.server.fingerprint)
            .finish()
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}
fn ca_dir(dir: &Path) -> PathBuf {
    dir.join("ca")
}
fn ca_key_path(dir: &Path, generation: u32) -> PathBuf {
    ca_dir(dir).join(format!("ca-{generation}.key"))
}
fn ca_cert_path(dir: &Path, generation: u32) -> PathBuf {
    ca_dir(dir).join(format!("ca-{generation}.crt"))
}
fn cross_cert_path(dir: &Path, generation: u32, by: u32) -> PathBuf {
    ca_dir(dir).join(format!("ca-{generation}-by-{by}.crt"))
}
fn server_cert_path(dir: &Path) -> PathBuf {
    dir.join("server.crt")
}
fn server_key_path(dir: &Path) -> PathBuf {
    dir.join("server.key")
}

impl Pki {
    /// Opens the PKI in `dir`, creating the fleet CA the first time.
    ///
    /// Idempotent: on an initialised directory it loads and changes nothing, except that a
    /// server certificate that is missing, unreadable, for other names, from a CA that no longer
    /// issues, or expiring within `server_renew_before` is re-issued.
    pub fn init(dir: &Path, opts: PkiOptions, now: OffsetDateTime) -> Result<Pki, PkiError> {
        opts.validate()?;
        fsio::ensure_private_dir(dir)?;
        fsio::ensure_private_dir(&ca_dir(dir))?;
        let _lock = DirLock::acquire(dir)?;
        if !fsio::exists(&state_path(dir))? {
            create_first_ca(dir, &opts, now)?;
        }
        let mut pki = load(dir, opts, now)?;
        pki.ensure_server_cert_locked(now, false)?;
        Ok(pki)
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Generation of the issuing CA.
    pub fn issuing_generation(&self) -> u32 {
        self.state.issuing
    }

    /// Issues a certificate for `role`, with a key generated here (ECDSA P-256).
    pub fn issue(&self, role: &Role, validity: Duration, now: OffsetDateTime) -> Result<IssuedCert, PkiError> {
        let key = issue::new_key()?;
        let mut cert = self.sign(role, &key, validity, now)?;
        cert.key_pem = Some(key.serialize_pem());
        Ok(cert)
    }

    /// Signs a device's CSR as `role`. The role, the name and the validity come from the
    /// caller; only the public key is taken from the CSR, after its signature is checked.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        role: &Role,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let public_key = issue::csr_public_key(csr_pem)?;
        self.sign(role, &public_key, validity, now)
    }

    fn sign(
        &self,
        role: &Role,
        public_key: &impl PublicKeyData,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let (not_before, not_after) = issue::leaf_window(now, validity, self.issuing_not_after)?;
        let params = issue::role_params(role, not_before, not_after)?;
        let cert =
            params.signed_by(public_key, &self.issuer).map_err(|e| PkiError::generate("sign the certificate", e))?;
        let der = cert.der().to_vec();
        let parsed = parse_cert(&der)?;
        let serial = serial_hex(parsed.raw_serial());
        Ok(IssuedCert {
            role: role.clone(),
            cert_pem: cert.pem(),
            fingerprint: Fingerprint::of_der(&der),
            cert_der: der,
            key_pem: None,
            serial,
            not_before,
            not_after,
            ca_generation: self.state.issuing,
        })
    }

    /// The CA certificates trusted at `now`: not past their overlap deadline and not expired.
    pub fn trust_roots(&self, now: OffsetDateTime) -> Vec<CertificateDer<'static>> {
        self.cas.iter().filter(|ca| ca.trusted_at(now)).map(|ca| ca.cert_der.clone()).collect()
    }

    /// The trusted CA certificates as one PEM bundle: what agents fetch and trust.
    pub fn ca_bundle_pem(&self, now: OffsetDateTime) -> String {
        self.cas.iter().filter(|ca| ca.trusted_at(now)).map(|ca| ca.cert_pem.as_str()).collect()
    }

    /// The server's certificate chain for TLS: the server certificate, followed during an
    /// overlap by the issuing CA cross-signed by its still-trusted predecessor, so clients that
    /// have not yet fetched the new bundle can still verify the server.
    pub fn server_cert_chain(&self, now: OffsetDateTime) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![self.server.cert_der.clone()];
        if let Some(issuing) = self.issuing_ca()
            && let (Some(by), Some(cross)) = (issuing.record.cross_signed_by, issuing.cross_der.as_ref())
            && self.cas.iter().any(|ca| ca.record.generation == by && ca.trusted_at(now))
        {
            chain.push(cross.clone());
        }
        chain
    }

    /// The server's private key for TLS.
    pub fn server_key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.server.key_pem.as_bytes())
            .map_err(|e| PkiError::bad_file(server_key_path(&self.dir), e.to_string()))
    }

    /// SHA-256 of the server certificate.
    pub fn server_fingerprint(&self) -> Fingerprint {
        self.server.fingerprint
    }

    /// Path of the server certificate file (`server.crt`).
    pub fn server_cert_path(&self) -> PathBuf {
        server_cert_path(&self.dir)
    }

    /// Re-issues the server certificate if it is missing, mismatched or expiring within
    /// `server_renew_before`. Returns whether it did. Call periodically in a long-lived server.
    pub fn renew_server_cert_if_due(&mut self, now: OffsetDateTime) -> Result<bool, PkiError> {
        let _lock = DirLock::acquire(&self.dir)?;
        self.ensure_server_cert_locked(now, false)
    }

    /// Rotates the CA: creates generation n+1, which issues from now on; generation n stays
    /// trusted until `now + overlap`, then drops out of [`Pki::trust_roots`]. The new CA is
    /// cross-signed by the old one, and the server certificate is re-issued by the new CA.
    pub fn rotate(&mut self, overlap: Duration, now: OffsetDateTime) -> Result<Rotation, PkiError> {
        if overlap < Duration::ZERO {
            return Err(PkiError::InvalidOptions {
                reason: format!("rotation overlap must not be negative, got {overlap}"),
            });
        }
        let _lock = DirLock::acquire(&self.dir)?;
        // Another process may have rotated since we loaded: start from what is on disk.
        let current = load(&self.dir, self.opts.clone(), now)?;
        let previous = current.state.issuing;
        let new_generation =
            current.cas.iter().map(|ca| ca.record.generation).max().unwrap_or(previous).checked_add(1).ok_or_else(
                || PkiError::State { path: state_path(&self.dir), reason: "CA generation counter overflowed".into() },
            )?;

        let key = issue::new_key()?;
        let params = issue::ca_params(&current.state.fleet_id, new_generation, now, self.opts.ca_validity)?;
        let cert = params.self_signed(&key).map_err(|e| PkiError::generate("self-sign the new CA", e))?;
        let cross_signed_by = if now < current.issuing_not_after {
            let cross = issue::cross_params(&params, current.issuing_not_after)?
                .signed_by(&key, &current.issuer)
                .map_err(|e| PkiError::generate("cross-sign the new CA", e))?;
            fsio::write_atomic(
                &cross_cert_path(&self.dir, new_generation, previous),
                cross.pem().as_bytes(),
                PUBLIC_MODE,
            )?;
            Some(previous)
        } else {
            None
        };
        fsio::write_atomic(&ca_key_path(&self.dir, new_generation), key.serialize_pem().as_bytes(), KEY_MODE)?;
        fsio::write_atomic(&ca_cert_path(&self.dir, new_generation), cert.pem().as_bytes(), PUBLIC_MODE)?;

        let mut state = current.state.clone();
        let deadline = whole_seconds(now + overlap);
        let mut previous_trusted_until = deadline;
        for record in &mut state.cas {
            if record.generation == previous {
                let until = record.trusted_until.map_or(deadline, |t| t.min(deadline));
                record.trusted_until = Some(until);
                previous_trusted_until = until;
            }
        }
        state.cas.push(CaRecord {
            generation: new_generation,
            created_at: whole_seconds(now),
            trusted_until: None,
            cross_signed_by,
        });
        state.issuing = new_generation;
        write_state(&self.dir, &state)?;

        let mut fresh = load(&self.dir, self.opts.clone(), now)?;
        fresh.ensure_server_cert_locked(now, true)?;
        *self = fresh;
        tracing::info!(
            previous,
            new_generation,
            trusted_until = %previous_trusted_until,
            "rotated the fleet CA"
        );
        Ok(Rotation {
            previous_generation: previous,
            new_generation,
            previous_trusted_until,
            server_fingerprint: self.server.fingerprint,
        })
    }

    /// The state of the CA set at `now`.
    pub fn status(&self, now: OffsetDateTime) -> Result<PkiStatus, PkiError> {
        let issuing = self.issuing_ca().ok_or_else(|| PkiError::State {
            path: state_path(&self.dir),
            reason: format!("issuing CA {} is not listed", self.state.issuing),
        })?;
        let rotation_due_at = issuing.record.created_at + self.opts.rotation_interval;
        Ok(PkiStatus {
            issuing: ca_info(issuing),
            rotation_due_at,
            rotation_due: now >= rotation_due_at,
            trusted: self.cas.iter().filter(|ca| ca.trusted_at(now)).map(ca_info).collect(),
            server_fingerprint: self.server.fingerprint,
            server_not_after: self.server.not_after,
        })
    }

    fn issuing_ca(&self) -> Option<&LoadedCa> {
        self.cas.iter().find(|ca| ca.record.generation == self.state.issuing)
    }

    /// Loads the server certificate or (re-)issues it; the caller holds the directory lock.
    fn ensure_server_cert_locked(&mut self, now: OffsetDateTime, force: bool) -> Result<bool, PkiError> {
        let names = self.opts.server_names();
        if !force {
            match self.check_server_cert(&names, now)? {
                Ok(server) => {
                    self.server = server;
                    return Ok(false);
                }
                Err(reason) => {
                    tracing::info!(%reason, "issuing a new server certificate");
                }
            }
        }
        let key = issue::new_key()?;
        let (not_before, not_after) = issue::leaf_window(now, self.opts.server_cert_validity, self.issuing_not_after)?;
        let cert = issue::server_params(&names, not_before, not_after)?
            .signed_by(&key, &self.issuer)
            .map_err(|e| PkiError::generate("sign the server certificate", e))?;
        let key_pem = key.serialize_pem();
        // Key first: a crash between the two writes leaves a key/cert mismatch, which the next
        // load detects and repairs; the reverse order would too, but this never exposes a
        // certificate whose key was never written.
        fsio::write_atomic(&server_key_path(&self.dir), key_pem.as_bytes(), KEY_MODE)?;
        fsio::write_atomic(&server_cert_path(&self.dir), cert.pem().as_bytes(), PUBLIC_MODE)?;
        let der = cert.der().clone();
        self.server = ServerCert { fingerprint: Fingerprint::of_der(&der), cert_der: der, key_pem, not_after };
        Ok(true)
    }

    /// The on-disk server certificate if it is usable, or why not (`Ok(Err(reason))`).
    /// I/O errors other than "not found" are real errors.
    fn check_server_cert(&self, names: &[String], now: OffsetDateTime) -> Result<Result<ServerCert, String>, PkiError> {
        let cert_path = server_cert_path(&self.dir);
        let key_path = server_key_path(&self.dir);
        if !fsio::exists(&cert_path)? || !fsio::exists(&key_path)? {
            return Ok(Err("no server certificate yet".into()));
        }
        let cert_pem = fsio::read_text(&cert_path)?;
        let key_pem = fsio::read_private(&key_path)?;
        let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
            return Ok(Err(format!("{} holds no PEM certificate", cert_path.display())));
        };
        let Ok(cert) = parse_cert(&der) else {
            return Ok(Err(format!("{} is not a valid certificate", cert_path.display())));
        };
        let Ok(key) = KeyPair::from_pem(&key_pem) else {
            return Ok(Err(format!("{} is not a valid key", key_path.display())));
        };
        if key.subject_public_key_info() != cert.public_key().raw {
            return Ok(Err("server key does not match the server certificate".into()));
        }
        let issuing = self.issuing_ca().ok_or_else(|| PkiError::State {
            path: state_path(&self.dir),
            reason: format!("issuing CA {} is not listed", self.state.issuing),
        })?;
        let issuing_parsed = parse_cert(&issuing.cert_der)?;
        if cert.issuer().as_raw() != issuing_parsed.subject().as_raw() {
            return Ok(Err("server certificate is from a CA that no longer issues".into()));
        }
        let want: BTreeSet<String> = names.iter().map(|n| normalise_name(n)).collect();
        let have = cert_names(&cert);
        if want != have {
            return Ok(Err(format!("server names changed (certificate has {have:?}, configured {want:?})")));
        }
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        if not_before > now {
            return Ok(Err(format!("server certificate starts in the future ({not_before})")));
        }
        if not_after - now < self.opts.server_renew_before {
            return Ok(Err(format!("server certificate expires at {not_after}")));
        }
        let der = der.into_owned();
        Ok(Ok(ServerCert { fingerprint: Fingerprint::of_der(&der), cert_der: der, key_pem, not_after }))
    }
}

/// DNS names and IPs in a certificate's SAN, normalised.
fn cert_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    out.insert(d.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = <[u8; 4]>::try_from(*bytes)
                        .map(IpAddr::from)
                        .or_else(|_| <[u8; 16]>::try_from(*bytes).map(IpAddr::from));
                    if let Ok(ip) = ip {
                        out.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn ca_info(ca: &LoadedCa) -> CaInfo {
    CaInfo {
        generation: ca.record.generation,
        fingerprint: ca.fingerprint,
        created_at: ca.record.created_at,
        not_before: ca.not_before,
        not_after: ca.not_after,
        trusted_until: ca.record.trusted_until,
    }
}

fn write_state(dir: &Path, state: &StateFile) -> Result<(), PkiError> {
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| PkiError::State { path: state_path(dir), reason: format!("cannot encode: {e}") })?;
    fsio::write_atomic(&state_path(dir), &json, PUBLIC_MODE)
}

/// Creates CA generation 1 and the state file naming it. The caller holds the lock.
fn create_first_ca(dir: &Path, opts: &PkiOptions, now: OffsetDateTime) -> Result<(), PkiError> {
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(PkiError::Random)?;
    let fleet_id = hex::encode(id);
    let key = issue::new_key()?;
    let cert = issue::ca_params(&fleet_id, 1, now, opts.ca_validity)?
        .self_signed(&key)
        .map_err(|e| PkiError::generate("self-sign the fleet CA", e))?;
    fsio::write_atomic(&ca_key_path(dir, 1), key.serialize_pem().as_bytes(), KEY_MODE)?;
    fsio::write_atomic(&ca_cert_path(dir, 1), cert.pem().as_bytes(), PUBLIC_MODE)?;
    write_state(
        dir,
        &StateFile {
            format: STATE_FORMAT,
            fleet_id,
            issuing: 1,
            cas: vec![CaRecord {
                generation: 1,
                created_at: whole_seconds(now),
                trusted_until: None,
                cross_signed_by: None,
            }],
        },
    )?;
    tracing::info!(dir = %dir.display(), "created the fleet CA");
    Ok(())
}

/// Loads the state file, every CA certificate and the issuing key. The server certificate is
/// left empty for the caller to fill (`ensure_server_cert_locked`).
fn load(dir: &Path, opts: PkiOptions, now: OffsetDateTime) -> Result<Pki, PkiError> {
    let path = state_path(dir);
    let state: StateFile = serde_json::from_slice(&fsio::read_bounded(&path)?)
        .map_err(|e| PkiError::State { path: path.clone(), reason: e.to_string() })?;
    let bad_state = |reason: String| PkiError::State { path: path.clone(), reason };
    if state.format != STATE_FORMAT {
        return Err(bad_state(format!("format {} is not supported (expected {STATE_FORMAT})", state.format)));
    }
    let mut seen = BTreeSet::new();
    for record in &state.cas {
        if !seen.insert(record.generation) {
            return Err(bad_state(format!("CA generation {} is listed twice", record.generation)));
        }
    }
    if !seen.contains(&state.issuing) {
        return Err(bad_state(format!("issuing CA {} is not listed", state.issuing)));
    }

    let mut cas = Vec::with_capacity(state.cas.len());
    for record in &state.cas {
        cas.push(load_ca(dir, record)?);
    }
    let issuing = cas
        .iter()
        .find(|ca| ca.record.generation == state.issuing)
        .ok_or_else(|| bad_state(format!("issuing CA {} is not listed", state.issuing)))?;
    let key_path = ca_key_path(dir, state.issuing);
    let key = KeyPair::from_pem(&fsio::read_private(&key_path)?)
        .map_err(|e| PkiError::bad_file(&key_path, format!("not a usable private key: {e}")))?;
    let parsed = parse_cert(&issuing.cert_der)?;
    if key.subject_public_key_info() != parsed.public_key().raw {
        return Err(PkiError::bad_file(
            &key_path,
            format!("does not match the CA certificate {}", ca_cert_path(dir, state.issuing).display()),
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&issuing.cert_der, key)
        .map_err(|e| PkiError::bad_file(ca_cert_path(dir, state.issuing), format!("cannot act as issuer: {e}")))?;
    let issuing_not_after = issuing.not_after;
    if now >= issuing_not_after {
        tracing::warn!(
            generation = state.issuing,
            %issuing_not_after,
            "the issuing fleet CA has expired; rotate it"
        );
    }
    Ok(Pki {
        dir: dir.to_path_buf(),
        opts,
        state,
        cas,
        issuer,
        issuing_not_after,
        server: ServerCert {
            cert_der: CertificateDer::from(Vec::new()),
            key_pem: String::new(),
            fingerprint: Fingerprint([0; 32]),
            not_after: OffsetDateTime::UNIX_EPOCH,
        },
    })
}

/// Loads one CA generation's certificate (and cross certificate) and checks it is a CA.
fn load_ca(dir: &Path, record: &CaRecord) -> Result<LoadedCa, PkiError> {
    let path = ca_cert_path(dir, record.generation);
    let (cert_der, cert_pem) = read_single_cert(&path)?;
    let cert = parse_cert(&cert_der).map_err(|e| PkiError::bad_file(&path, e.to_string()))?;
    if !cert.is_ca() {
        return Err(PkiError::bad_file(&path, "is not a CA certificate"));
    }
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let cross_der = match record.cross_signed_by {
        Some(by) => Some(read_single_cert(&cross_cert_path(dir, record.generation, by))?.0),
        None => None,
    };
    Ok(LoadedCa {
        record: record.clone(),
        fingerprint: Fingerprint::of_der(&cert_der),
        cert_der,
        cert_pem,
        not_before,
        not_after,
        cross_der,
    })
}

/// Reads a PEM file that must hold exactly one certificate.
fn read_single_cert(path: &Path) -> Result<(CertificateDer<'static>, String), PkiError> {
    let pem = fsio::read_text(path)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        certs.push(item.map_err(|e| PkiError::bad_file(path, format!("bad PEM: {e}")))?);
    }
    match <[CertificateDer<'static>; 1]>::try_from(certs) {
        Ok([one]) => Ok((one, pem)),
        Err(v) => Err(PkiError::bad_file(path, format!("holds {} certificates, expected one", v.len()))),
    }
}

/// Paths written by [`write_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundlePaths {
    /// The CA bundle (`ca.crt`).
    pub ca: PathBuf,
    /// The certificate (`<kind>-<name>.crt`).
    pub cert: PathBuf,
    /// The private key (`<kind>-<name>.key`, 0600), when the bundle has one.
    pub key: Option<PathBuf>,
}

/// Writes a credential bundle into `out_dir` (created 0700 if missing): `ca.crt`, and
/// `<kind>-<name>.crt` / `<kind>-<name>.key` (0600) for the role, e.g. `agent-gpu1.crt`.
pub fn write_bundle(out_dir: &Path, cert: &IssuedCert, ca_bundle_pem: &str) -> Result<BundlePaths, PkiError> {
    cert.role.validate()?;
    fsio::ensure_private_dir(out_dir)?;
    let stem = cert.role.file_stem();
    let ca = out_dir.join("ca.crt");
    let cert_path = out_dir.join(format!("{stem}.crt"));
    fsio::write_atomic(&ca, ca_bundle_pem.as_bytes(), PUBLIC_MODE)?;
    let key = match &cert.key_pem {
        Some(key_pem) => {
            let path = out_dir.join(format!("{stem}.key"));
            fsio::write_atomic(&path, key_pem.as_bytes(), KEY_MODE)?;
            Some(path)
        }
        None => None,
    };
    fsio::write_atomic(&cert_path, cert.cert_pem.as_bytes(), PUBLIC_MODE)?;
    Ok(BundlePaths { ca, cert: cert_path, key })
}

/// Writes a new private key for `role` into `out_dir` (created 0700 if missing) as `<kind>-<name>.key`,
/// mode 0600, refusing to replace an existing key or certificate of that identity: the first step of
/// enrollment with a bootstrap token, before the CSR for the key is sent.
pub fn write_new_private_key(out_dir: &Path, role: &Role, key_pem: &str) -> Result<PathBuf, PkiError> {
    role.validate()?;
    fsio::ensure_private_dir(out_dir)?;
    let stem = role.file_stem();
    for existing in [out_dir.join(format!("{stem}.key")), out_dir.join(format!("{stem}.crt"))] {
        if fsio::exists(&existing)? {
            return Err(PkiError::AlreadyExists { path: existing });
        }
    }
    let path = out_dir.join(format!("{stem}.key"));
    fsio::write_atomic(&path, key_pem.as_bytes(), KEY_MODE)?;
    Ok(path)
}

/// Completes a bundle whose key [`write_new_private_key`] wrote: the certificate received for it as
/// `<kind>-<name>.crt` and the CA bundle as `ca.crt`, in the layout of [`write_bundle`].
pub fn write_enrolled_bundle(
    out_dir: &Path,
    role: &Role,
    cert_pem: &str,
    ca_bundle_pem: &str,
) -> Result<BundlePaths, PkiError> {
    role.validate()?;
    let stem = role.file_stem();
    let key = out_dir.join(format!("{stem}.key"));
    let ca = out_dir.join("ca.crt");
    let cert = out_dir.join(format!("{stem}.crt"));
    fsio::write_atomic(&ca, ca_bundle_pem.as_bytes(), PUBLIC_MODE)?;
    fsio::write_atomic(&cert, cert_pem.as_bytes(), PUBLIC_MODE)?;
    Ok(BundlePaths { ca, cert, key: Some(key) })
}
