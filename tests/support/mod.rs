//! Shared harness of the end-to-end tests that drive the real `hwledger` binary with external clients:
//! finds the tools (curl, openssl, chromium) or fails with a message saying how to install them, runs
//! one-shot subcommands on a data directory, starts `hwledger --json serve` on 127.0.0.1:0 and learns its
//! ports from the startup line, stops it with SIGINT (killing it on drop if a test panicked), and runs
//! external clients with a deadline, so no test can hang.
//!
//! Each test binary includes this module (`mod support;`) and uses what it needs.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest any external client or server start may take before the test gives up on it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The path of an external tool, or a panic that says what is missing and how to get it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
    });
    match found {
        Some(path) => path,
        None => panic!(
            "this end-to-end test needs `{name}`, which is not on PATH; install the Debian package \
             `{package}` (scripts/test.sh does: apt-get install {package})"
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a finished external process left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit status; `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Finished {
    /// The exit code (`None`: killed or ended by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `program args`, feeding `stdin`, and waits at most `deadline` (then kills it). Output is drained
/// by threads, so a chatty child never blocks on a full pipe.
pub fn run_with_deadline<I, S>(program: &Path, args: I, stdin: &[u8], deadline: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(program)
        .args(args)
        .env_remove("HWLEDGER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // A child that never reads its input must not block us: write from a thread.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_until(&mut child, Instant::now() + deadline);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = writer.join();
    Finished { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Polls `child` until it exits or `deadline` passes (bounded: at most one poll every 20 ms).
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The `hwledger` binary under test.
pub fn hwledger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hwledger"))
}

/// Runs `hwledger --data DATA ARGS`, feeding `stdin`; panics (with its output) unless it exits 0.
pub fn hw_ok(data: &Path, args: &[&str], stdin: &[u8]) -> String {
    let f = hw(data, args, stdin);
    assert!(f.success(), "hwledger {args:?} failed ({:?}):\n{}\n{}", f.status, f.stdout, f.stderr);
    f.stdout
}

/// Runs `hwledger --data DATA ARGS`, feeding `stdin`.
pub fn hw(data: &Path, args: &[&str], stdin: &[u8]) -> Finished {
    let mut all: Vec<&OsStr> = vec![OsStr::new("--data"), data.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    run_with_deadline(&hwledger_bin(), all, stdin, DEADLINE)
}

/// Submits JSON-lines commands to a data directory whose server is not running (the store is exclusive).
pub fn submit_offline(data: &Path, lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut input = String::new();
    for l in lines {
        input.push_str(&l.to_string());
        input.push('\n');
    }
    let out = hw_ok(data, &["--json", "submit", "-"], input.as_bytes());
    let receipts: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("receipt {l:?}: {e}"))).collect();
    for r in &receipts {
        assert_eq!(r["status"], "accepted", "seed command not accepted: {r}");
    }
    receipts
}

/// A credential bundle on disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// CA bundle to trust.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl Bundle {
    /// The bundle `hwledger --json enroll ROLE NAME --out DIR` printed.
    pub fn from_enroll_json(line: &str) -> Bundle {
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let path = |k: &str| PathBuf::from(v[k].as_str().unwrap_or_else(|| panic!("enroll output lacks {k}: {v}")));
        Bundle { ca: path("ca"), cert: path("cert"), key: path("key") }
    }

    /// `--cert C --key K --cacert CA` for curl.
    pub fn curl_args(&self) -> Vec<String> {
        vec![
            "--cert".into(),
            self.cert.display().to_string(),
            "--key".into(),
            self.key.display().to_string(),
            "--cacert".into(),
            self.ca.display().to_string(),
        ]
    }
}

/// A running `hwledger serve`.
pub struct Server {
    child: Option<Child>,
    /// The mTLS API.
    pub api: SocketAddr,
    /// The loopback dashboard.
    pub dashboard: SocketAddr,
    /// The enrollment listener, if started with one.
    pub enroll: Option<SocketAddr>,
    /// The bootstrap operator's bundle (written by the server on first start).
    pub operator: Bundle,
    /// Everything the server wrote to stderr so far (its log).
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `hwledger --json --data DATA serve` on 127.0.0.1:0 (API, dashboard and, if `enroll`, the
    /// enrollment listener) and waits for its startup line.
    pub fn start(data: &Path, enroll: bool) -> Server {
        let mut args: Vec<&OsStr> = ["--json", "--data"].iter().map(OsStr::new).collect();
        args.push(data.as_os_str());
        args.extend(["serve", "--listen", "127.0.0.1:0", "--dashboard-listen", "127.0.0.1:0"].iter().map(OsStr::new));
        if enroll {
            args.extend(["--enroll-listen", "127.0.0.1:0"].iter().map(OsStr::new));
        }
        let mut child = Command::new(hwledger_bin())
            .args(&args)
            .env_remove("HWLEDGER_CONFIG")
            .env("HWLEDGER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hwledger serve");
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            let stderr = child.stderr.take().expect("piped stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            api: "0.0.0.0:0".parse().expect("addr"),
            dashboard: "0.0.0.0:0".parse().expect("addr"),
            enroll: None,
            operator: Bundle { ca: PathBuf::new(), cert: PathBuf::new(), key: PathBuf::new() },
            log,
        };
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(e) => {
                let status = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                panic!("hwledger serve printed no startup line ({e}; exit {status:?}); its log:\n{}", server.log());
            }
        };
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("startup line {line:?} is not JSON: {e}"));
        let addr = |v: &serde_json::Value| -> Option<SocketAddr> { v.as_str().and_then(|s| s.parse().ok()) };
        server.api = addr(&ready["api"]).unwrap_or_else(|| panic!("no api address in {ready}"));
        server.dashboard = addr(&ready["dashboard"]).unwrap_or_else(|| panic!("no dashboard address in {ready}"));
        server.enroll = addr(&ready["enroll"]);
        assert_eq!(server.enroll.is_some(), enroll, "enrollment listener in {ready}");
        assert_eq!(ready["event"], "listening", "startup line {ready}");
        // The bootstrap operator `admin`'s bundle, as `serve` writes it on first start.
        let dir = PathBuf::from(ready["operator_bundle"].as_str().unwrap_or_else(|| panic!("no bundle in {ready}")));
        let ca = PathBuf::from(ready["ca"].as_str().unwrap_or_else(|| panic!("no ca in {ready}")));
        server.operator = Bundle { ca, cert: dir.join("operator-admin.crt"), key: dir.join("operator-admin.key") };
        server
    }

    /// `https://127.0.0.1:PORT{path}` on the API listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api.port())
    }

    /// `https://127.0.0.1:PORT{path}` on the enrollment listener.
    pub fn enroll_url(&self, path: &str) -> String {
        let port = self.enroll.map(|a| a.port()).expect("server started without an enrollment listener");
        format!("https://127.0.0.1:{port}{path}")
    }

    /// `http://127.0.0.1:PORT{path}` on the dashboard listener.
    pub fn dashboard_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.dashboard.port())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`; returns whether it did.
    pub fn log_contains_eventually(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines of the log so far that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (bounded) until `needle` occurs at least `n` times in the log; returns whether it did and the
    /// last line containing it (for the result table).
    pub fn log_contains_eventually_n(&self, needle: &str, n: usize) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
            if lines.len() >= n || Instant::now() >= deadline {
                let last = lines.last().map_or("not logged".to_owned(), |l| {
                    // From the needle on: the timestamp and level do not belong in the table.
                    l.find(needle).map_or(*l, |i| &l[i..]).chars().take(90).collect()
                });
                return (lines.len() >= n, last);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server like Ctrl-C does (SIGINT) and waits for a clean exit; returns its log.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("server running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("send SIGINT to hwledger serve");
        let status = wait_until(&mut child, Instant::now() + DEADLINE);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The stderr reader ends at EOF; give it a moment to append the last lines.
        let _ = self.log_contains_eventually("stopped cleanly");
        let log = self.log();
        assert!(status.is_some_and(|s| s.success()), "hwledger serve did not stop cleanly ({status:?}):\n{log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What curl saw.
#[derive(Debug)]
pub struct CurlAnswer {
    /// curl's exit code (0 = an HTTP answer arrived, whatever its status).
    pub exit: Option<i32>,
    /// The HTTP status (0 when there was none, e.g. the handshake failed).
    pub status: u16,
    /// The body.
    pub body: String,
    /// curl's error text.
    pub stderr: String,
}

impl CurlAnswer {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The JSON error `code`.
    pub fn code(&self) -> Option<String> {
        self.json().and_then(|j| j.get("code").and_then(|c| c.as_str()).map(str::to_owned))
    }

    /// `200`, `403 not_pinned`, or `curl exit 56: <error>` — for the matrix table.
    pub fn outcome(&self) -> String {
        match (self.exit, self.status) {
            (Some(0), status) => match self.code() {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            },
            (exit, _) => {
                let lines = || self.stderr.lines().map(str::trim);
                let last =
                    lines().find(|l| l.starts_with("curl: (")).or_else(|| lines().next_back()).unwrap_or_default();
                // `curl: (35) OpenSSL/3.0.19: error:0A000418:SSL routines::tlsv1 alert unknown ca` → the alert.
                let why = last.rsplit_once("SSL routines::").map_or(last, |(_, alert)| alert);
                // `curl: (55) getpeername() failed…` → the message (the code is shown already).
                let why = why.strip_prefix("curl: (").and_then(|r| r.split_once(") ")).map_or(why, |(_, m)| m);
                format!("curl exit {}: {why}", exit.map_or("killed".to_owned(), |e| e.to_string()))
            }
        }
    }
}

/// Marks where curl's `--write-out` starts, after the body.
const STATUS_MARK: &str = "\n@@hwledger-test-http-status@@";

/// Runs curl (silent, errors shown, bounded time) with `args`; the status is taken from `--write-out`.
pub fn curl(args: &[String]) -> CurlAnswer {
    let curl = tool("curl", "curl");
    let mut all: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "20".into(),
        "--write-out".into(),
        format!("{STATUS_MARK}%{{http_code}}"),
    ];
    all.extend(args.iter().cloned());
    let f = run_with_deadline(&curl, &all, b"", DEADLINE);
    let (body, status) = match f.stdout.rsplit_once(STATUS_MARK) {
        Some((body, code)) => (body.to_owned(), code.trim().parse().unwrap_or(0)),
        None => (f.stdout.clone(), 0),
    };
    CurlAnswer { exit: f.code(), status, body, stderr: f.stderr }
}

/// `curl` GET with a bundle.
pub fn curl_get(bundle: &Bundle, url: &str) -> CurlAnswer {
    let mut args = bundle.curl_args();
    args.push(url.to_owned());
    curl(&args)
}

/// `curl` POST of a JSON body with a bundle (`None`: no client certificate, trust `ca` only).
pub fn curl_post_json(bundle: Option<&Bundle>, ca: &Path, url: &str, body: &serde_json::Value) -> CurlAnswer {
    let mut args = match bundle {
        Some(b) => b.curl_args(),
        None => vec!["--cacert".into(), ca.display().to_string()],
    };
    args.extend([
        "-H".into(),
        "content-type: application/json".into(),
        "--data-binary".into(),
        body.to_string(),
        url.to_owned(),
    ]);
    curl(&args)
}

/// Runs openssl with `args` (bounded time).
pub fn openssl(args: &[&str]) -> Finished {
    let openssl = tool("openssl", "openssl");
    let f = run_with_deadline(&openssl, args, b"", DEADLINE);
    assert!(f.success(), "openssl {args:?} failed: {}{}", f.stdout, f.stderr);
    f
}

/// Current unix time in ms (the test's clock, the same system clock the server reads).
pub fn now_ms() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).expect("time in range")
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// One row of a printed result table.
#[derive(Debug)]
pub struct Row {
    /// What was tried.
    pub case: String,
    /// With which client.
    pub client: &'static str,
    /// What must happen.
    pub expected: String,
    /// What happened.
    pub observed: String,
    /// Whether that is what must happen.
    pub ok: bool,
}

/// Collects rows, prints them as a table, and fails the test listing every row that did not pass.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    /// Records a result.
    pub fn record(&mut self, case: &str, client: &'static str, expected: &str, observed: String, ok: bool) {
        self.rows.push(Row { case: case.to_owned(), client, expected: expected.to_owned(), observed, ok });
    }

    /// Prints the table to stdout and panics if any row failed.
    pub fn finish(self, title: &str) {
        let w = |f: fn(&Row) -> usize, min: usize| self.rows.iter().map(f).max().unwrap_or(0).max(min);
        let (wc, wl, we) = (w(|r| r.case.len(), 4), w(|r| r.client.len(), 6), w(|r| r.expected.len(), 8));
        println!("\n{title}\n");
        println!("| {:wc$} | {:wl$} | {:we$} | observed |", "case", "client", "expected");
        println!("| {} | {} | {} | --- |", "-".repeat(wc), "-".repeat(wl), "-".repeat(we));
        for r in &self.rows {
            let mark = if r.ok { "" } else { " **FAILED**" };
            println!(
                "| {:wc$} | {:wl$} | {:we$} | {}{mark} |",
                r.case,
                r.client,
                r.expected,
                r.observed.replace('|', "/")
            );
        }
        let failed: Vec<&Row> = self.rows.iter().filter(|r| !r.ok).collect();
        assert!(failed.is_empty(), "{} case(s) did not behave as expected: {failed:#?}", failed.len());
    }
}
