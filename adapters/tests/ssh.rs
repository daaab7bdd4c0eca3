//! End-to-end tests of the SSH adapter against a real OpenSSH sshd on 127.0.0.1 (no mock): host key
//! checking (known_hosts, hashed known_hosts, trust on first use, pinned, changed key), key
//! authentication (ed25519, ECDSA, rejected key), command timeout, exit status, output caps, a
//! connection cut mid-command, the nvidia-smi → rocm-smi fallback, and the session pool.

#[path = "support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hwledger_adapters::gpu::{GpuParseError, NVIDIA_QUERY, parse_nvidia_csv, parse_rocm_smi};
use hwledger_adapters::ssh::{
    ClientIdentity, ExecLimits, HostKeyPolicy, HostKeyTrust, PoolLimits, ProbeTool, Session, SshClientConfig, SshError,
    SshPool, SshTarget, probe, probe_target,
};
use sshd::{HostKeyType, Sshd};

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")).join(rel)
}

const NVIDIA_FIXTURE: &str = "ssh/nvidia-smi-query-h100-80gb-hbm3-load.csv";
const ROCM_FIXTURE: &str = "gpu-and-cloud/rocm-smi/marimo-issue9237-rx7900xt-productname-use-vram.json";
const NVIDIA_FAILED_FIXTURE: &str =
    "gpu-and-cloud/nvidia-smi-csv/err-gcp-compute-gpu-installation-pr18-nvidia-smi-has-failed.txt";

fn read_fixture(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

fn target(sshd: &Sshd) -> SshTarget {
    sshd.target_string().parse().unwrap_or_else(|e| panic!("harness target does not parse: {e}"))
}

fn config_with(key: &Path) -> SshClientConfig {
    let identity = ClientIdentity::from_file(key).unwrap_or_else(|e| panic!("cannot load {key:?}: {e}"));
    let mut config = SshClientConfig::new(identity);
    config.connect_timeout = Duration::from_secs(10);
    config.command_timeout = Duration::from_secs(10);
    config
}

fn config(sshd: &Sshd) -> SshClientConfig {
    config_with(&sshd.ed25519_key())
}

fn tofu() -> HostKeyPolicy {
    HostKeyPolicy::Pinned { expected: None }
}

/// A fake nvidia-smi that prints the fixture only when called with exactly hwledger's arguments.
fn install_fake_nvidia(sshd: &Sshd) {
    let data = sshd.install_data("nvidia.csv", &fixture(NVIDIA_FIXTURE));
    sshd.install_tool(
        "nvidia-smi",
        &format!(
            "if [ \"$1\" = \"--query-gpu={}\" ] && [ \"$2\" = \"--format=csv,noheader,nounits\" ] \
             && [ $# -eq 2 ]; then cat '{}'; else echo \"unexpected arguments: $*\" >&2; exit 2; fi",
            NVIDIA_QUERY.join(","),
            data.display()
        ),
    );
}

fn install_fake_rocm(sshd: &Sshd) {
    let data = sshd.install_data("rocm.json", &fixture(ROCM_FIXTURE));
    sshd.install_tool(
        "rocm-smi",
        &format!(
            "case \"$*\" in *--json*) cat '{}' ;; *) echo \"unexpected arguments: $*\" >&2; exit 2 ;; esac",
            data.display()
        ),
    );
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, SshError>, what: &str) -> SshError {
    match result {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_via_known_hosts_returns_fixture_samples() {
    let sshd = Sshd::start();
    install_fake_nvidia(&sshd);
    let known_hosts = sshd.dir().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);

    let report = probe_target(&target(&sshd), &HostKeyPolicy::KnownHosts(known_hosts), &config(&sshd))
        .await
        .unwrap_or_else(|e| panic!("probe failed: {e}\nsshd log:\n{}", sshd.log()));

    assert_eq!(report.tool, ProbeTool::NvidiaSmi);
    assert_eq!(report.host_key_trust, HostKeyTrust::KnownHosts);
    assert_eq!(report.host_key_fingerprint, sshd.host_fingerprint());
    assert_eq!(report.raw_output, read_fixture(NVIDIA_FIXTURE));
    let expected = parse_nvidia_csv(&read_fixture(NVIDIA_FIXTURE), Some(NVIDIA_QUERY))
        .unwrap_or_else(|e| panic!("fixture does not parse: {e}"));
    assert_eq!(report.samples, expected);
    // Independent of the parser: the values written in the fixture.
    assert_eq!(report.samples.len(), 1);
    let gpu = &report.samples[0];
    assert_eq!(gpu.index, Some(0));
    assert_eq!(gpu.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!(gpu.vram_total_mib, Some(81559));
    assert_eq!(gpu.vram_used_mib, Some(19818));
    assert_eq!(gpu.power_w, Some(631.95));
    assert_eq!(gpu.driver_version.as_deref(), Some("590.48.01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_known_hosts_entry_is_accepted() {
    let sshd = Sshd::start();
    let known_hosts = sshd.dir().join("known_hosts_hashed");
    sshd.write_hashed_known_hosts(&known_hosts);
    let session = Session::connect(&target(&sshd), &HostKeyPolicy::KnownHosts(known_hosts), &config(&sshd))
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}\n{}", sshd.log()));
    assert_eq!(session.host_key_trust(), HostKeyTrust::KnownHosts);
    let out = session.exec("echo hashed").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout, b"hashed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_in_known_hosts_is_refused_before_login() {
    let sshd = Sshd::start();
    let known_hosts = sshd.dir().join("known_hosts_other");
    // The right key, but recorded for another port: it must not match.
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {}\n", sshd.port().wrapping_add(1), sshd.host_public_key()))
        .unwrap_or_else(|e| panic!("{e}"));
    let err = expect_err(
        Session::connect(&target(&sshd), &HostKeyPolicy::KnownHosts(known_hosts), &config(&sshd)).await,
        "host absent from known_hosts",
    );
    assert_eq!(err.code(), "host_key_unknown", "{err}");
    assert_eq!(sshd.accepted_logins(), 0, "no login may happen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tofu_reports_fingerprint_and_pin_is_enforced_after_host_key_change() {
    let mut sshd = Sshd::start();
    install_fake_nvidia(&sshd);
    let t = target(&sshd);
    let cfg = config(&sshd);

    // First use: accepted, and the observed fingerprint is reported for pinning.
    let first =
        probe_target(&t, &tofu(), &cfg).await.unwrap_or_else(|e| panic!("TOFU probe failed: {e}\n{}", sshd.log()));
    assert_eq!(first.host_key_trust, HostKeyTrust::FirstUse);
    let pinned = first.host_key_fingerprint.clone();
    assert_eq!(pinned, sshd.host_fingerprint());
    assert_eq!(first.samples.len(), 1);

    // With the pin: accepted as pinned.
    let pin = HostKeyPolicy::Pinned { expected: Some(pinned.clone()) };
    let again = probe_target(&t, &pin, &cfg).await.unwrap_or_else(|e| panic!("pinned probe failed: {e}"));
    assert_eq!(again.host_key_trust, HostKeyTrust::Pinned);
    let known_hosts = sshd.dir().join("known_hosts_before");
    sshd.write_known_hosts(&known_hosts);

    // The host comes back with a NEW key on the same address.
    sshd.restart_with_new_host_key();
    let new_fp = sshd.host_fingerprint();
    assert_ne!(new_fp, pinned);
    let logins_before = sshd.accepted_logins();

    match probe_target(&t, &pin, &cfg).await {
        Err(SshError::HostKeyChanged { host, expected, found }) => {
            assert_eq!(host, format!("[127.0.0.1]:{}", sshd.port()));
            assert_eq!(expected, pinned);
            assert_eq!(found, new_fp);
        }
        other => panic!("expected HostKeyChanged, got {other:?}"),
    }
    // The same through the old known_hosts file.
    let err =
        expect_err(probe_target(&t, &HostKeyPolicy::KnownHosts(known_hosts), &cfg).await, "changed key vs known_hosts");
    assert_eq!(err.code(), "host_key_changed", "{err}");
    assert!(err.is_host_key_problem());
    assert_eq!(sshd.accepted_logins(), logins_before, "the client must refuse before authenticating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_host_key_and_ecdsa_client_key() {
    let sshd = Sshd::start_with(HostKeyType::EcdsaP256);
    install_fake_nvidia(&sshd);
    assert!(sshd.host_public_key().starts_with("ecdsa-sha2-nistp256 "));
    let known_hosts = sshd.dir().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let report = probe_target(&target(&sshd), &HostKeyPolicy::KnownHosts(known_hosts), &config_with(&sshd.ecdsa_key()))
        .await
        .unwrap_or_else(|e| panic!("ECDSA probe failed: {e}\n{}", sshd.log()));
    assert_eq!(report.host_key_fingerprint, sshd.host_fingerprint());
    assert_eq!(report.tool, ProbeTool::NvidiaSmi);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_user_key_is_auth_failed() {
    let sshd = Sshd::start();
    let cfg = config_with(&sshd.unauthorized_key());
    let fp = cfg.identity.fingerprint().to_owned();
    match Session::connect(&target(&sshd), &tofu(), &cfg).await {
        Err(SshError::AuthFailed { user, key_fingerprint, .. }) => {
            assert_eq!(user, sshd.user());
            assert_eq!(key_fingerprint, fp);
        }
        other => panic!("expected AuthFailed, got {other:?}"),
    }
    assert_eq!(sshd.accepted_logins(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_timeout_closes_channel_and_session_survives() {
    let sshd = Sshd::start();
    let session = Session::connect(&target(&sshd), &tofu(), &config(&sshd)).await.unwrap_or_else(|e| panic!("{e}"));
    let limits = ExecLimits { timeout: Duration::from_secs(1), max_output_bytes: 1024 };
    let started = Instant::now();
    let err = expect_err(session.exec_with("echo started; sleep 30", limits).await, "sleep 30 with a 1 s timeout");
    let elapsed = started.elapsed();
    match &err {
        SshError::CommandTimeout { timeout, partial, .. } => {
            assert_eq!(*timeout, Duration::from_secs(1));
            assert_eq!(partial.stdout, b"started\n");
            assert_eq!(partial.exit_status, None);
        }
        other => panic!("expected CommandTimeout, got {other:?}"),
    }
    assert!(err.outcome_unknown());
    assert!(elapsed < Duration::from_secs(5), "timeout took {elapsed:?}");
    // The kill signal we also send is refused by OpenSSH for root logins ("session signalling
    // requires privilege separation"), so the remote `sleep` may outlive the closed channel: that is
    // why a timeout is an unknown outcome, not a failure.
    // The session itself is still usable.
    let out = session.exec("echo alive").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout, b"alive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonzero_exit_status_is_an_output_not_an_error() {
    let sshd = Sshd::start();
    let session = Session::connect(&target(&sshd), &tofu(), &config(&sshd)).await.unwrap_or_else(|e| panic!("{e}"));
    let out = session.exec("echo out; echo err >&2; exit 3").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.exit_status, Some(3));
    assert!(!out.success());
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let ok = session.exec("true").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.exit_status, Some(0));

    let killed = session.exec("kill -TERM $$").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(killed.exit_status, None);
    assert_eq!(killed.exit_signal.as_deref(), Some("TERM"));

    // Output beyond the cap is cut and flagged, and the command still completes.
    let capped = session
        .exec_with(
            "head -c 100000 /dev/zero; exit 0",
            ExecLimits { timeout: Duration::from_secs(10), max_output_bytes: 1000 },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(capped.stdout.len(), 1000);
    assert!(capped.stdout_truncated);
    assert_eq!(capped.exit_status, Some(0));
}

async fn run_and_cut(kill_whole_server: bool) {
    let mut sshd = Sshd::start();
    let session = Session::connect(&target(&sshd), &tofu(), &config(&sshd)).await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let running = tokio::spawn(async move {
        let result = session.exec("echo begun; sleep 5; echo done").await;
        (result, session.is_closed())
    });
    // Wait (bounded) until the command is past its `echo` — its `sleep` runs on the server — then give
    // the echoed line a moment to reach the client, and cut. (A fixed delay after the login is not enough
    // on a loaded machine: the command may not have printed yet.)
    let mut waited = 0;
    while !sshd.descendant_cmdlines().iter().any(|c| c.starts_with("sleep 5")) && waited < 250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    if kill_whole_server {
        sshd.kill_all();
    } else {
        sshd.kill_connections();
    }
    let (result, closed) = running.await.unwrap_or_else(|e| panic!("task: {e}"));
    match result {
        Err(SshError::ConnectionLost { partial, .. }) => {
            assert_eq!(partial.stdout, b"begun\n");
            assert_eq!(partial.exit_status, None);
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(closed, "the session must report itself closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the loss must be noticed before the command would have finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_command_is_connection_lost() {
    run_and_cut(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_sshd_killed_mid_command_is_connection_lost() {
    run_and_cut(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocm_smi_fallback_when_nvidia_smi_missing() {
    let sshd = Sshd::start();
    install_fake_rocm(&sshd);
    let report = probe_target(&target(&sshd), &tofu(), &config(&sshd))
        .await
        .unwrap_or_else(|e| panic!("probe failed: {e}\n{}", sshd.log()));
    assert_eq!(report.tool, ProbeTool::RocmSmi);
    assert_eq!(report.raw_output, read_fixture(ROCM_FIXTURE));
    let expected = parse_rocm_smi(&read_fixture(ROCM_FIXTURE)).unwrap_or_else(|e| panic!("fixture: {e}"));
    assert_eq!(report.samples, expected);
    assert_eq!(report.samples.len(), 1);
    assert_eq!(report.samples[0].name.as_deref(), Some("Radeon RX 7900 XT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocm_smi_fallback_when_nvidia_smi_fails() {
    let sshd = Sshd::start();
    install_fake_rocm(&sshd);
    let banner = sshd.install_data("nvfail.txt", &fixture(NVIDIA_FAILED_FIXTURE));
    sshd.install_tool("nvidia-smi", &format!("cat '{}'; exit 9", banner.display()));
    let report =
        probe_target(&target(&sshd), &tofu(), &config(&sshd)).await.unwrap_or_else(|e| panic!("probe failed: {e}"));
    assert_eq!(report.tool, ProbeTool::RocmSmi);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_nvidia_smi_without_fallback_is_a_typed_parse_error() {
    let sshd = Sshd::start();
    let banner = sshd.install_data("nvfail.txt", &fixture(NVIDIA_FAILED_FIXTURE));
    sshd.install_tool("nvidia-smi", &format!("cat '{}'; exit 9", banner.display()));
    match probe_target(&target(&sshd), &tofu(), &config(&sshd)).await {
        Err(SshError::GpuParse { tool, raw_output, source, .. }) => {
            assert_eq!(tool, ProbeTool::NvidiaSmi);
            assert_eq!(raw_output, read_fixture(NVIDIA_FAILED_FIXTURE));
            assert!(matches!(*source, GpuParseError::DriverUnreachable), "{source:?}");
        }
        other => panic!("expected GpuParse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_nvidia_smi_keeps_raw_output() {
    let sshd = Sshd::start();
    sshd.install_tool("nvidia-smi", "echo 'this is, not, csv'");
    let err = expect_err(probe_target(&target(&sshd), &tofu(), &config(&sshd)).await, "garbage output");
    match &err {
        SshError::GpuParse { raw_output, .. } => assert_eq!(raw_output, "this is, not, csv\n"),
        other => panic!("expected GpuParse, got {other:?}"),
    }
    assert_eq!(err.code(), "gpu_output_invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gpu_tool_at_all() {
    let sshd = Sshd::start();
    match probe_target(&target(&sshd), &tofu(), &config(&sshd)).await {
        Err(SshError::NoGpuTool { nvidia_exit, rocm_exit, .. }) => {
            assert_eq!(nvidia_exit, Some(127));
            assert_eq!(rocm_exit, Some(127));
        }
        other => panic!("expected NoGpuTool, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_on_silent_server() {
    // Accepts TCP (the kernel completes the handshake) but never speaks SSH.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let sshd = Sshd::start(); // only for a client key
    let mut cfg = config(&sshd);
    cfg.connect_timeout = Duration::from_millis(500);
    let t = SshTarget::new("nobody", "127.0.0.1", port).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let err = expect_err(Session::connect(&t, &tofu(), &cfg).await, "silent server");
    assert_eq!(err.code(), "connect_timeout", "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reuses_sessions_and_enforces_bounds() {
    let sshd_a = Sshd::start();
    let sshd_b = Sshd::start();
    let cfg = config(&sshd_a);
    // The same client key must be accepted by both servers.
    sshd_b.authorize(&sshd_a.ed25519_key());

    let a = target(&sshd_a);
    // Another "host" for the per-host bound: same machine under another name.
    let b = SshTarget::new(sshd_b.user(), "localhost", sshd_b.port()).unwrap_or_else(|e| panic!("{e}"));
    let pool = SshPool::new(
        cfg,
        PoolLimits {
            max_sessions: 1,
            max_per_host: 1,
            idle_timeout: Duration::from_secs(60),
            acquire_timeout: Duration::from_millis(300),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Reuse: two checkouts in sequence, one TCP connection (sshd logs one login).
    {
        let s = pool.get(&a, &tofu()).await.unwrap_or_else(|e| panic!("{e}"));
        let out = s.exec("echo one").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.stdout, b"one\n");
    }
    let first = pool.get(&a, &tofu()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.exec("echo two").await.map(|o| o.stdout).ok(), Some(b"two\n".to_vec()));
    assert_eq!(sshd_a.accepted_logins(), 1, "the idle session must be reused");
    let stats = pool.stats();
    assert_eq!((stats.connects, stats.reuses, stats.live), (1, 1, 1));

    // Per-host bound: a second checkout for the same host waits, then gives up.
    let err = expect_err(pool.get(&a, &tofu()).await, "second session for host a");
    assert_eq!(err.code(), "pool_exhausted", "{err}");
    // Overall bound: host b cannot connect while a's session is checked out.
    let err = expect_err(pool.get(&b, &tofu()).await, "session for host b");
    assert_eq!(err.code(), "pool_exhausted", "{err}");
    assert_eq!(sshd_b.accepted_logins(), 0);

    // A waiter is served as soon as the session comes back.
    let pool2 = pool.clone();
    let a2 = a.clone();
    let waiter =
        tokio::spawn(async move { pool2.get(&a2, &tofu()).await.map(|s| s.host_key_fingerprint().to_owned()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(first);
    let fp = waiter.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("waiter: {e}"));
    assert_eq!(fp, sshd_a.host_fingerprint());
    assert_eq!(sshd_a.accepted_logins(), 1);

    // With a idle, host b evicts it (global bound 1) and connects.
    let sb = pool.get(&b, &tofu()).await.unwrap_or_else(|e| panic!("{e}\n{}", sshd_b.log()));
    assert_eq!(sb.target(), &b);
    assert_eq!(sshd_b.accepted_logins(), 1);
    assert_eq!(pool.stats().live, 1);
    drop(sb);

    // A session whose connection died is not handed out again.
    let s = pool.get(&b, &tofu()).await.unwrap_or_else(|e| panic!("{e}"));
    sshd_b.kill_connections();
    let err = expect_err(s.exec("sleep 5").await, "exec on a killed connection");
    assert_eq!(err.code(), "connection_lost", "{err}");
    drop(s);
    let fresh = pool.get(&b, &tofu()).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(fresh.exec("true").await.is_ok());
    assert_eq!(sshd_b.accepted_logins(), 2);
    drop(fresh);

    // Per-host bound with an idle session of another target on the same host (127.0.0.1 via
    // sshd_b's port): the idle one is closed to make room instead of waiting.
    let sa = pool.get(&a, &tofu()).await.unwrap_or_else(|e| panic!("{e}"));
    drop(sa);
    let c = SshTarget::new(sshd_b.user(), "127.0.0.1", sshd_b.port()).unwrap_or_else(|e| panic!("{e}"));
    let sc = pool.get(&c, &tofu()).await.unwrap_or_else(|e| panic!("same-host eviction: {e}"));
    assert_eq!(sc.target(), &c);
    assert_eq!(sshd_b.accepted_logins(), 3);
    assert_eq!(pool.stats().live, 1);
    assert_eq!(pool.stats().idle, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_rejects_zero_limits() {
    let sshd = Sshd::start();
    let err =
        expect_err(SshPool::new(config(&sshd), PoolLimits { max_sessions: 0, ..PoolLimits::default() }), "zero pool");
    assert_eq!(err.code(), "invalid_config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_many_reports_each_host_in_order() {
    let nv = Sshd::start();
    install_fake_nvidia(&nv);
    let amd = Sshd::start();
    install_fake_rocm(&amd);
    amd.authorize(&nv.ed25519_key());
    // A port with nothing listening: the host is down.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
    };
    let down = SshTarget::new("root", "127.0.0.1", closed_port).unwrap_or_else(|e| panic!("{e}"));
    let known_hosts = nv.dir().join("known_hosts");
    nv.write_known_hosts(&known_hosts);

    let pool = SshPool::new(config(&nv), PoolLimits::default()).unwrap_or_else(|e| panic!("{e}"));
    let results = pool
        .probe_many(
            vec![(target(&nv), HostKeyPolicy::KnownHosts(known_hosts)), (down.clone(), tofu()), (target(&amd), tofu())],
            2,
        )
        .await;
    assert_eq!(results.len(), 3);
    let tools: Vec<Result<ProbeTool, &'static str>> =
        results.iter().map(|(_, r)| r.as_ref().map(|p| p.tool).map_err(SshError::code)).collect();
    assert_eq!(tools, vec![Ok(ProbeTool::NvidiaSmi), Err("connect_failed"), Ok(ProbeTool::RocmSmi)]);
    assert_eq!(results[1].0, down);
    // Probing through a checked-out pooled session works the same.
    let s = pool.get(&target(&nv), &tofu()).await.unwrap_or_else(|e| panic!("{e}"));
    let report = probe(&s).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.tool, ProbeTool::NvidiaSmi);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_client_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = dir.path().join("id_rsa");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
    let err = expect_err(ClientIdentity::from_file(&key), "RSA key");
    assert!(matches!(err.code(), "key_unsupported" | "key_load_failed"), "{err}");
    let err = expect_err(ClientIdentity::from_file(&dir.path().join("missing")), "missing key");
    assert_eq!(err.code(), "key_load_failed");
}
