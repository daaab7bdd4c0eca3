//! Tests of the fleet PKI on disk, without TLS: idempotent CA creation and file modes, roles
//! read back from certificates, CSR signing (the server chooses the role; tampered, oversized
//! and malformed CSRs are refused), bundles, rotation and its trust set, and refusal of
//! corrupt state.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use hwledger_wire::pki::{Pki, PkiError, PkiOptions, Role, generate_key_and_csr, identity_from_cert_der, write_bundle};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const T0: OffsetDateTime = datetime!(2030-03-01 12:00:00 UTC);

/// Every regular file under `dir` (relative path → bytes), the lock file excepted.
fn snapshot(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, std::io::Error> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != ".lock") {
                let rel = path.strip_prefix(dir).map(|p| p.display().to_string()).unwrap_or_default();
                out.insert(rel, fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

fn mode(path: &Path) -> Result<u32, std::io::Error> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect::<Vec<_>>().concat();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[test]
fn init_is_idempotent_and_files_are_private() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    let first = Pki::init(&dir, PkiOptions::default(), T0)?;
    let before = snapshot(&dir)?;
    for name in ["state.json", "ca/ca-1.key", "ca/ca-1.crt", "server.crt", "server.key"] {
        assert!(before.contains_key(name), "missing {name}: {before:?}");
    }

    // A second init, later (but well before any renewal), loads and changes nothing.
    let second = Pki::init(&dir, PkiOptions::default(), T0 + Duration::days(3))?;
    assert_eq!(snapshot(&dir)?, before);
    assert_eq!(first.server_fingerprint(), second.server_fingerprint());
    assert_eq!(first.ca_bundle_pem(T0), second.ca_bundle_pem(T0));
    assert_eq!(second.issuing_generation(), 1);

    assert_eq!(mode(&dir)?, 0o700);
    assert_eq!(mode(&dir.join("ca"))?, 0o700);
    assert_eq!(mode(&dir.join("ca/ca-1.key"))?, 0o600);
    assert_eq!(mode(&dir.join("server.key"))?, 0o600);
    assert_eq!(mode(&dir.join("ca/ca-1.crt"))?, 0o644);
    let leftovers: Vec<_> = before.keys().filter(|k| k.contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

#[test]
fn existing_lax_directory_is_tightened() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pki");
    fs::create_dir(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    Pki::init(&dir, PkiOptions::default(), T0)?;
    assert_eq!(mode(&dir)?, 0o700);
    Ok(())
}

#[test]
fn server_cert_is_reissued_only_when_names_change_or_it_nears_expiry() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let pki = Pki::init(dir, PkiOptions::default(), T0)?;
    let ca_before = fs::read(dir.join("ca/ca-1.crt"))?;
    let fp = pki.server_fingerprint();

    let opts = PkiOptions {
        extra_server_names: vec!["ledger.example.net".into(), "10.1.2.3".into()],
        ..PkiOptions::default()
    };
    let renamed = Pki::init(dir, opts.clone(), T0)?;
    assert_ne!(renamed.server_fingerprint(), fp);
    let again = Pki::init(dir, opts.clone(), T0)?;
    assert_eq!(again.server_fingerprint(), renamed.server_fingerprint());
    let pem = fs::read_to_string(dir.join("server.crt"))?;
    let der = pem_to_der(&pem)?;
    assert!(der.windows(b"ledger.example.net".len()).any(|w| w == b"ledger.example.net"));

    // 180-day certificate, renewed within 30 days of its end.
    let late = T0 + Duration::days(160);
    let renewed = Pki::init(dir, opts, late)?;
    assert_ne!(renewed.server_fingerprint(), again.server_fingerprint());
    assert_eq!(fs::read(dir.join("ca/ca-1.crt"))?, ca_before);

    assert!(matches!(
        Pki::init(dir, PkiOptions { extra_server_names: vec!["not a name".into()], ..PkiOptions::default() }, T0),
        Err(PkiError::InvalidServerName { .. })
    ));
    Ok(())
}

#[test]
fn roles_are_read_back_from_issued_certificates() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::init(tmp.path(), PkiOptions::default(), T0)?;
    for role in [Role::agent("gpu-01.home")?, Role::operator("alice")?, Role::auditor("audit_team-2")?] {
        let issued = pki.issue(&role, Duration::days(30), T0)?;
        assert!(issued.key_pem.is_some());
        let id = identity_from_cert_der(&issued.cert_der)?;
        assert_eq!(id.role, role);
        assert_eq!(id.fingerprint, issued.fingerprint);
        assert_eq!(id.not_after, issued.not_after);
        assert_eq!(id.not_after, T0 + Duration::days(30));
        assert_eq!(id.not_before, issued.not_before);
        assert_eq!(id.serial, issued.serial);
        assert_eq!(id.serial.len(), 32);
        assert_eq!(pem_to_der(&issued.cert_pem)?, issued.cert_der);
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    }
    // The server certificate carries no role.
    let server_der = pem_to_der(&fs::read_to_string(pki.server_cert_path())?)?;
    assert!(matches!(identity_from_cert_der(&server_der), Err(PkiError::NoRole)));
    Ok(())
}

#[test]
fn validity_is_clamped_to_the_issuing_ca_and_checked() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::init(tmp.path(), PkiOptions::default(), T0)?;
    let role = Role::agent("d1")?;
    let issued = pki.issue(&role, Duration::days(800), T0)?;
    assert_eq!(issued.not_after, T0 + Duration::days(365));
    assert!(matches!(pki.issue(&role, Duration::days(-1), T0), Err(PkiError::InvalidValidity { .. })));
    assert!(matches!(
        pki.issue(&role, Duration::days(1), T0 + Duration::days(400)),
        Err(PkiError::InvalidValidity { .. })
    ));
    Ok(())
}

#[test]
fn csr_is_signed_with_the_role_the_server_chooses() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::init(tmp.path(), PkiOptions::default(), T0)?;
    // The device asks to be an operator; the server enrolls it as agent "dev-7".
    let (key_pem, csr_pem) = generate_key_and_csr(&Role::operator("mallory")?)?;
    assert!(key_pem.contains("BEGIN PRIVATE KEY"));
    let chosen = Role::agent("dev-7")?;
    let signed = pki.sign_csr(&csr_pem, &chosen, Duration::days(7), T0)?;
    assert!(signed.key_pem.is_none());
    assert_eq!(identity_from_cert_der(&signed.cert_der)?.role, chosen);

    // The certificate holds the CSR's key: the device's key matches it.
    let key = rcgen::KeyPair::from_pem(&key_pem)?;
    let cert_der = signed.cert_der.clone();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    assert!(cert_der.windows(spki.len()).any(|w| w == spki.as_slice()));
    Ok(())
}

#[test]
fn tampered_oversized_and_malformed_csrs_are_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::init(tmp.path(), PkiOptions::default(), T0)?;
    let role = Role::agent("dev-1")?;
    let (_key, csr_pem) = generate_key_and_csr(&Role::agent("dev-1")?)?;

    // Change one letter of the signed subject: the signature no longer matches.
    let mut der = pem_to_der(&csr_pem)?;
    let at = der.windows(b"agent:dev-1".len()).position(|w| w == b"agent:dev-1").ok_or("subject not found in CSR")?;
    if let Some(b) = der.get_mut(at) {
        *b = b'b';
    }
    let tampered = der_to_pem("CERTIFICATE REQUEST", &der);
    assert!(matches!(pki.sign_csr(&tampered, &role, Duration::days(1), T0), Err(PkiError::CsrBadSignature)));

    let huge = format!("{csr_pem}{}", " ".repeat(9000));
    assert!(matches!(pki.sign_csr(&huge, &role, Duration::days(1), T0), Err(PkiError::CsrTooLarge { .. })));
    for bad in [
        String::new(),
        "hello".to_owned(),
        der_to_pem("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00"),
        der_to_pem("CERTIFICATE", &der),
        format!("{csr_pem}{csr_pem}"),
    ] {
        assert!(
            matches!(pki.sign_csr(&bad, &role, Duration::days(1), T0), Err(PkiError::MalformedCsr { .. })),
            "accepted {bad:?}"
        );
    }
    Ok(())
}

#[test]
fn bundle_files_have_the_right_names_and_modes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::init(&tmp.path().join("pki"), PkiOptions::default(), T0)?;
    let issued = pki.issue(&Role::agent("ca")?, Duration::days(30), T0)?;
    let out = tmp.path().join("bundle");
    let paths = write_bundle(&out, &issued, &pki.ca_bundle_pem(T0))?;
    assert_eq!(paths.ca, out.join("ca.crt"));
    assert_eq!(paths.cert, out.join("agent-ca.crt"));
    assert_eq!(paths.key.as_deref(), Some(out.join("agent-ca.key").as_path()));
    assert_eq!(mode(&out)?, 0o700);
    assert_eq!(mode(&out.join("agent-ca.key"))?, 0o600);
    assert_eq!(fs::read_to_string(&paths.ca)?, pki.ca_bundle_pem(T0));
    assert_eq!(fs::read_to_string(&paths.cert)?, issued.cert_pem);

    let (_k, csr) = generate_key_and_csr(&Role::auditor("bob")?)?;
    let signed = pki.sign_csr(&csr, &Role::auditor("bob")?, Duration::days(1), T0)?;
    let paths = write_bundle(&out, &signed, &pki.ca_bundle_pem(T0))?;
    assert_eq!(paths.key, None);
    assert!(!out.join("auditor-bob.key").exists());
    Ok(())
}

#[test]
fn rotation_keeps_the_old_ca_trusted_through_the_overlap_only() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let mut pki = Pki::init(dir, PkiOptions::default(), T0)?;
    let status = pki.status(T0)?;
    assert_eq!(status.issuing.generation, 1);
    assert_eq!(status.rotation_due_at, T0 + Duration::days(90));
    assert!(!status.rotation_due);
    assert!(pki.status(T0 + Duration::days(91))?.rotation_due);
    let old_server = pki.server_fingerprint();

    let t1 = T0 + Duration::days(80);
    let rotation = pki.rotate(Duration::hours(24), t1)?;
    assert_eq!(rotation.previous_generation, 1);
    assert_eq!(rotation.new_generation, 2);
    assert_eq!(rotation.previous_trusted_until, t1 + Duration::hours(24));
    assert_ne!(pki.server_fingerprint(), old_server);
    assert_eq!(rotation.server_fingerprint, pki.server_fingerprint());
    assert_eq!(pki.issuing_generation(), 2);
    assert!(dir.join("ca/ca-2-by-1.crt").exists());
    assert_eq!(mode(&dir.join("ca/ca-2.key"))?, 0o600);

    assert_eq!(pki.trust_roots(t1).len(), 2);
    assert_eq!(pki.trust_roots(t1 + Duration::hours(23)).len(), 2);
    assert_eq!(pki.trust_roots(t1 + Duration::hours(25)).len(), 1);
    assert_eq!(pki.ca_bundle_pem(t1).matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(pki.ca_bundle_pem(t1 + Duration::hours(25)).matches("BEGIN CERTIFICATE").count(), 1);
    // During the overlap the server also sends the cross certificate.
    assert_eq!(pki.server_cert_chain(t1).len(), 2);
    assert_eq!(pki.server_cert_chain(t1 + Duration::hours(25)).len(), 1);

    let status = pki.status(t1)?;
    assert_eq!(status.issuing.generation, 2);
    assert_eq!(status.rotation_due_at, t1 + Duration::days(90));
    let gens: Vec<u32> = status.trusted.iter().map(|c| c.generation).collect();
    assert_eq!(gens, vec![1, 2]);
    assert_eq!(status.trusted.first().and_then(|c| c.trusted_until), Some(t1 + Duration::hours(24)));
    let json = serde_json::to_value(&status)?;
    assert_eq!(json["issuing"]["generation"], 2);

    let issued = pki.issue(&Role::agent("d")?, Duration::days(10), t1)?;
    assert_eq!(issued.ca_generation, 2);

    // Persisted: a reload sees the same CA set and server certificate.
    let reloaded = Pki::init(dir, PkiOptions::default(), t1)?;
    assert_eq!(reloaded.issuing_generation(), 2);
    assert_eq!(reloaded.server_fingerprint(), pki.server_fingerprint());
    assert_eq!(reloaded.ca_bundle_pem(t1), pki.ca_bundle_pem(t1));

    // A second rotation within the overlap does not extend the first CA's trust.
    let t2 = t1 + Duration::hours(1);
    let rotation = pki.rotate(Duration::days(7), t2)?;
    assert_eq!(rotation.new_generation, 3);
    assert_eq!(pki.trust_roots(t1 + Duration::hours(25)).len(), 2);
    assert!(matches!(pki.rotate(Duration::seconds(-1), t2), Err(PkiError::InvalidOptions { .. })));
    Ok(())
}

#[test]
fn corrupt_or_mismatched_files_are_reported_not_replaced() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    Pki::init(dir, PkiOptions::default(), T0)?;
    let state = fs::read(dir.join("state.json"))?;

    fs::write(dir.join("state.json"), b"{\"format\": 1, \"cas\": [")?;
    assert!(matches!(Pki::init(dir, PkiOptions::default(), T0), Err(PkiError::State { .. })));
    fs::write(dir.join("state.json"), &state)?;

    // A CA key that does not belong to the CA certificate.
    let key = fs::read(dir.join("ca/ca-1.key"))?;
    let other = rcgen::KeyPair::generate()?;
    fs::write(dir.join("ca/ca-1.key"), other.serialize_pem())?;
    let err = Pki::init(dir, PkiOptions::default(), T0).err().ok_or("mismatched CA key accepted")?;
    assert!(matches!(err, PkiError::BadFile { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
    fs::write(dir.join("ca/ca-1.key"), &key)?;

    fs::write(dir.join("ca/ca-1.crt"), b"garbage")?;
    assert!(matches!(Pki::init(dir, PkiOptions::default(), T0), Err(PkiError::BadFile { .. })));

    assert!(matches!(
        Pki::init(&tmp.path().join("x"), PkiOptions { ca_validity: Duration::days(30), ..PkiOptions::default() }, T0),
        Err(PkiError::InvalidOptions { .. })
    ));
    Ok(())
}
