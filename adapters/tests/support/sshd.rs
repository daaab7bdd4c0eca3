//! Test harness: a real OpenSSH `sshd` on 127.0.0.1, private to one test.
//!
//! [`Sshd::start`] creates a temporary directory with a generated host key, generated client keys
//! (ed25519 and ECDSA) in `authorized_keys`, and a `bin/` directory that is the remote session's
//! `PATH` (via `environment="PATH=..."` + `PermitUserEnvironment yes`), so tests install fake tools
//! such as `nvidia-smi` with [`Sshd::install_tool`]. sshd runs in the foreground (`-D -e`) with its
//! log in the directory; it and every process it spawned are killed on drop.
//!
//! It depends only on std, tempfile and the OpenSSH binaries, so any test target can include it with
//! `#[path = "support/sshd.rs"] mod sshd;`. If `/usr/sbin/sshd` is missing, tests fail with a message
//! saying to install `openssh-server`.

#![allow(dead_code)] // Each test target uses a different subset of the harness.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Where Debian/Ubuntu's `openssh-server` installs the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd gets to start accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts with a fresh port if another process grabbed ours between probing and binding.
const START_ATTEMPTS: usize = 3;

/// Host key type for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyType {
    /// `ssh-keygen -t ed25519`
    Ed25519,
    /// `ssh-keygen -t ecdsa -b 256`
    EcdsaP256,
}

impl HostKeyType {
    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            HostKeyType::Ed25519 => &["-t", "ed25519"],
            HostKeyType::EcdsaP256 => &["-t", "ecdsa", "-b", "256"],
        }
    }
}

/// A running sshd.
pub struct Sshd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    user: String,
    host_key_type: HostKeyType,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keygen(path: &Path, args: &[&str]) {
    run(Command::new("ssh-keygen").args(args).args(["-q", "-N", "", "-C", "hwledger-test", "-f"]).arg(path));
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a probe port on 127.0.0.1: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("probe port has no address: {e}")).port()
}

/// `ppid` of a process from `/proc/<pid>/stat` (the field after the parenthesised command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `root` (children first-level and below), from one `/proc` scan.
fn descendants(root: u32) -> Vec<u32> {
    let mut pairs = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(ppid) = parent_of(pid)
            {
                pairs.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    // Bounded by the number of processes: each pid is added at most once.
    while i < found.len() && found.len() <= pairs.len() + 1 {
        let parent = found[i];
        for (pid, ppid) in &pairs {
            if *ppid == parent && !found.contains(pid) {
                found.push(*pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    // Already-exited processes make `kill` return non-zero; that is fine here.
    let _ = Command::new("kill").arg("-KILL").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
}

impl Sshd {
    /// Starts sshd with an ed25519 host key.
    pub fn start() -> Sshd {
        Sshd::start_with(HostKeyType::Ed25519)
    }

    /// Starts sshd with the given host key type.
    pub fn start_with(host_key_type: HostKeyType) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: install it with `apt-get install -y openssh-server` \
             (the SSH tests run a real OpenSSH server on 127.0.0.1)"
        );
        // sshd refuses to start without its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create temp dir: {e}"));
        let user = run(Command::new("id").arg("-un")).trim().to_owned();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap_or_else(|e| panic!("cannot create {bin:?}: {e}"));
        keygen(&dir.path().join("host_key"), host_key_type.keygen_args());
        keygen(&dir.path().join("id_ed25519"), &["-t", "ed25519"]);
        keygen(&dir.path().join("id_ecdsa"), &["-t", "ecdsa", "-b", "256"]);
        keygen(&dir.path().join("id_unauthorized"), &["-t", "ed25519"]);
        let mut sshd = Sshd { dir, child: None, port: 0, user, host_key_type };
        sshd.authorize(&sshd.ed25519_key());
        sshd.authorize(&sshd.ecdsa_key());
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            sshd.port = free_port();
            match sshd.spawn() {
                Ok(()) => return sshd,
                Err(log) => last_log = log,
            }
        }
        panic!("sshd did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}");
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        // LogLevel VERBOSE: tests count logins in the log. Not DEBUG: with -e, sshd would copy debug
        // lines into the sessions' stderr. SetEnv HOME: sessions run the login user's shell, and bash run by
        // sshd reads ~/.bashrc; the machine's own (root's, here) must not run in them — one that runs
        // `pyenv init` waits on a lock a killed session can leave behind, so every command timed out.
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitUserEnvironment yes\n\
             MaxStartups 100\n\
             MaxSessions 50\n\
             LogLevel VERBOSE\n\
             SetEnv HOME={d}\n",
            port = self.port
        );
        fs::write(self.dir.path().join("sshd_config"), config)
            .unwrap_or_else(|e| panic!("cannot write sshd_config: {e}"));
    }

    /// Spawns sshd on `self.port` and waits for its banner; on failure returns the log.
    fn spawn(&mut self) -> Result<(), String> {
        self.write_config();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open sshd log: {e}"));
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {SSHD}: {e}"));
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("sshd exited with {status}:\n{}", self.log()));
            }
            if banner_ok(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("sshd did not answer within {START_TIMEOUT:?}:\n{}", self.log()))
    }

    /// Port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login name (the user running the tests).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `user@127.0.0.1:port`.
    pub fn target_string(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user, self.port)
    }

    /// The harness's temporary directory (for scratch files such as known_hosts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An authorized ed25519 client key.
    pub fn ed25519_key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// An authorized ECDSA P-256 client key.
    pub fn ecdsa_key(&self) -> PathBuf {
        self.dir.path().join("id_ecdsa")
    }

    /// A valid key that is *not* in authorized_keys.
    pub fn unauthorized_key(&self) -> PathBuf {
        self.dir.path().join("id_unauthorized")
    }

    /// Adds `<private_key>.pub` to authorized_keys (with this server's tool PATH), e.g. to let one
    /// client key log into several harness servers.
    pub fn authorize(&self, private_key: &Path) {
        let mut pub_path = private_key.as_os_str().to_owned();
        pub_path.push(".pub");
        let public = fs::read_to_string(&pub_path).unwrap_or_else(|e| panic!("cannot read {pub_path:?}: {e}"));
        let line =
            format!("environment=\"PATH={}:/usr/bin:/bin\" {}\n", self.dir.path().join("bin").display(), public.trim());
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .unwrap_or_else(|e| panic!("cannot open authorized_keys: {e}"));
        file.write_all(line.as_bytes()).unwrap_or_else(|e| panic!("cannot write authorized_keys: {e}"));
    }

    /// The host public key line (`type base64 comment`).
    pub fn host_public_key(&self) -> String {
        fs::read_to_string(self.dir.path().join("host_key.pub"))
            .unwrap_or_else(|e| panic!("cannot read host_key.pub: {e}"))
            .trim()
            .to_owned()
    }

    /// The host key's `SHA256:` fingerprint as computed by `ssh-keygen -l` (an independent reference).
    pub fn host_fingerprint(&self) -> String {
        let out = run(Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.dir.path().join("host_key.pub")));
        out.split_whitespace().nth(1).unwrap_or_else(|| panic!("unexpected ssh-keygen -l output {out:?}")).to_owned()
    }

    /// Writes a known_hosts file with this server's key under `[127.0.0.1]:port`.
    pub fn write_known_hosts(&self, path: &Path) {
        let line = format!("[127.0.0.1]:{} {}\n", self.port, self.host_public_key());
        fs::write(path, line).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
    }

    /// Same, then hashes the host names with `ssh-keygen -H` (as `HashKnownHosts yes` would).
    pub fn write_hashed_known_hosts(&self, path: &Path) {
        self.write_known_hosts(path);
        run(Command::new("ssh-keygen").arg("-H").arg("-f").arg(path));
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"));
        assert!(text.starts_with("|1|"), "ssh-keygen -H did not hash: {text}");
    }

    /// Installs an executable `name` (a `/bin/sh` script body) on the sessions' PATH.
    pub fn install_tool(&self, name: &str, script: &str) {
        let path = self.dir.path().join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {path:?}: {e}"));
    }

    /// Copies `source` into the harness directory and returns the copy's path (for tools to `cat`).
    pub fn install_data(&self, name: &str, source: &Path) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::copy(source, &path).unwrap_or_else(|e| panic!("cannot copy {source:?}: {e}"));
        path
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Successful logins sshd has logged (counts real connections, independent of the client).
    pub fn accepted_logins(&self) -> usize {
        self.log().matches("Accepted publickey for").count()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Command lines of every process sshd spawned (connection handlers and the commands they run).
    pub fn descendant_cmdlines(&self) -> Vec<String> {
        let Some(pid) = self.pid() else {
            return Vec::new();
        };
        descendants(pid)
            .into_iter()
            .filter_map(|p| fs::read(format!("/proc/{p}/cmdline")).ok())
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_owned())
            .collect()
    }

    /// Kills the per-connection sshd processes and their commands; the listener stays up.
    pub fn kill_connections(&self) {
        if let Some(pid) = self.pid() {
            kill_pids(&descendants(pid));
        }
    }

    /// Kills the listener and every process it spawned (a host going away).
    pub fn kill_all(&mut self) {
        if let Some(pid) = self.pid() {
            let mut pids = descendants(pid);
            pids.push(pid);
            kill_pids(&pids);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops sshd, generates a NEW host key, and starts again on the same port (a reinstalled host,
    /// or an impostor on its address).
    pub fn restart_with_new_host_key(&mut self) {
        self.kill_all();
        for f in ["host_key", "host_key.pub"] {
            let _ = fs::remove_file(self.dir.path().join(f));
        }
        keygen(&self.dir.path().join("host_key"), self.host_key_type.keygen_args());
        // The port was just released; retry briefly in case the kernel has not freed it yet.
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(log) => last = log,
            }
            sleep(Duration::from_millis(200));
        }
        panic!("sshd did not restart on port {}:\n{last}", self.port);
    }
}

fn banner_ok(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-"
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}
