//! The operator dashboard end to end: a ledger seeded through `hwledger submit` with known devices, GPUs,
//! telemetry, jobs and a priced rental job, served by the real `hwledger serve`, rendered by Debian's headless
//! Chromium (`--dump-dom` and `--screenshot`). The page must be HTML without JavaScript that refreshes itself
//! and shows the figures the seed implies (device and GPU counts by status, active jobs against capacity,
//! per-backend load, last-24 h usage and cost); `/snapshot.json` must carry the same numbers.
//!
//! Expected values are worked out here from the seed, independently of the projections: usage from the
//! telemetry intervals, the job's cost from its recorded start and end times (read back with `hwledger log`)
//! and its quoted rate. Set `HWLEDGER_DASHBOARD_PNG=path` to keep the screenshot.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{Server, curl, curl_post_json, hw_ok, now_ms, run_with_deadline, submit_offline, tool};

/// The quoted hourly rate of the rental job, micro-USD ($10.00/h).
const RATE: u64 = 10_000_000;

fn sub(id: &str, command: Value) -> Value {
    json!({"command_id": id, "command": command})
}

fn gpu(index: u32, name: &str, vram: u64) -> Value {
    json!({"index": index, "name": name, "uuid": null, "vram_total_mib": vram})
}

fn reading(index: u32, util: f32, used: u64, total: u64) -> Value {
    json!({"index": index, "vram_used_mib": used, "vram_total_mib": total, "utilization_pct": util,
           "temperature_c": 60.0, "power_w": 250.0})
}

fn telemetry(id: &str, device: &str, at: i64, gpus: Vec<Value>) -> Value {
    sub(id, json!({"type": "record_telemetry", "device_id": device, "sampled_at": at, "gpus": gpus}))
}

/// Five devices on three backends, one decommissioned and one never seen; telemetry 3 minutes apart; a running
/// job, a queued one, one failed before it started, and a priced rental job that is started (it is completed
/// separately, after a pause, so that it lasts long enough to cost something visible).
fn seed(t1: i64, t2: i64) -> Vec<Value> {
    let h100 = H100_MIB;
    let mut commands = vec![
        sub("e1", json!({"type": "enroll_device", "device_id": "box-a", "kind": "local", "hostname": "box-a.lan"})),
        sub("e2", json!({"type": "enroll_device", "device_id": "box-b", "kind": {"ssh": {"target": "gpu@10.0.0.2"}}})),
        sub(
            "e3",
            json!({"type": "enroll_device", "device_id": "rent-1",
            "kind": {"rental": {"provider": "vast", "instance_id": "4242"}}}),
        ),
        sub("e4", json!({"type": "enroll_device", "device_id": "new-1", "kind": "local"})),
        sub("e5", json!({"type": "enroll_device", "device_id": "old-1", "kind": "local"})),
        sub(
            "r1",
            json!({"type": "register_device", "device_id": "box-a",
            "gpus": [gpu(0, "NVIDIA GeForce RTX 4090", 24_564), gpu(1, "NVIDIA GeForce RTX 4090", 24_564)]}),
        ),
        sub(
            "r2",
            json!({"type": "register_device", "device_id": "box-b", "gpus": [gpu(0, "NVIDIA GeForce RTX 3090", 24_576)]}),
        ),
        sub(
            "r3",
            json!({"type": "register_device", "device_id": "rent-1",
            "gpus": (0..4).map(|i| gpu(i, "NVIDIA H100 80GB HBM3", h100)).collect::<Vec<_>>()}),
        ),
        sub(
            "r5",
            json!({"type": "register_device", "device_id": "old-1", "gpus": [gpu(0, "NVIDIA GeForce GTX 1080", 8_192)]}),
        ),
        sub("d5", json!({"type": "decommission_device", "device_id": "old-1", "reason": "sold"})),
        telemetry("ta1", "box-a", t1, vec![reading(0, 50.0, 8_192, 24_564), reading(1, 50.0, 8_192, 24_564)]),
        telemetry("tb1", "box-b", t1, vec![reading(0, 100.0, 12_288, 24_576)]),
        telemetry("tr1", "rent-1", t1, (0..4).map(|i| reading(i, 25.0, 20_480, h100)).collect()),
    ];
    commands.extend(latest_samples("2", t2));
    commands.extend([
        sub(
            "j1",
            json!({"type": "dispatch_job", "job_id": "j-run", "device_id": "box-a", "model": "llama-3-8b", "vram_mib": 8_000}),
        ),
        sub("j2", json!({"type": "start_job", "job_id": "j-run"})),
        sub(
            "j3",
            json!({"type": "dispatch_job", "job_id": "j-queue", "device_id": "box-b", "model": "whisper-large", "vram_mib": 4_000}),
        ),
        sub(
            "j4",
            json!({"type": "dispatch_job", "job_id": "j-fail", "device_id": "box-b", "model": "sdxl", "vram_mib": 6_000}),
        ),
        sub("j5", json!({"type": "fail_job", "job_id": "j-fail", "exit_status": 137, "reason": "out of memory"})),
        sub(
            "j6",
            json!({"type": "dispatch_job", "job_id": "j-done", "device_id": "rent-1", "model": "llama-3-70b",
            "vram_mib": 70_000, "price": {"source": "vast", "micro_usd_per_hour": RATE, "offer_id": "offer-77",
            "quoted_at": t2}}),
        ),
        sub("j7", json!({"type": "start_job", "job_id": "j-done"})),
    ]);
    commands
}

/// VRAM of the rental's H100s, MiB.
const H100_MIB: u64 = 81_559;

/// The latest samples (at `t2`) of the three reporting devices; command ids end in `tag`. Sent again with
/// the same `sampled_at` just before each render, they change no figure (a sample not newer than a device's
/// last one adds no usage) but keep the devices active however slowly the machine runs the browser.
fn latest_samples(tag: &str, t2: i64) -> Vec<Value> {
    vec![
        telemetry(
            &format!("ta{tag}"),
            "box-a",
            t2,
            vec![reading(0, 70.0, 9_000, 24_564), reading(1, 90.0, 9_000, 24_564)],
        ),
        telemetry(&format!("tb{tag}"), "box-b", t2, vec![reading(0, 60.0, 4_000, 24_576)]),
        telemetry(
            &format!("tr{tag}"),
            "rent-1",
            t2,
            [10.0, 20.0, 30.0, 40.0].iter().zip(0..).map(|(u, i)| reading(i, *u, 1_000, H100_MIB)).collect(),
        ),
    ]
}

/// Posts [`latest_samples`] through the server as the operator, with curl.
fn refresh_heartbeats(server: &Server, tag: &str, t2: i64) {
    for hb in latest_samples(tag, t2) {
        let a = curl_post_json(Some(&server.operator), &server.operator.ca, &server.url("/v1/commands"), &hb);
        assert_eq!((a.exit, a.status), (Some(0), 200), "operator heartbeat: {a:?}");
    }
}

/// `recorded_at` of the `event_type` event that mentions `job`, read back with `hwledger --json log`.
fn recorded_at(data: &Path, event_type: &str, job: &str) -> i64 {
    let out = hw_ok(data, &["--json", "log", "--type", event_type], b"");
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e.to_string().contains(&format!("\"{job}\"")))
        .and_then(|e| e["record"]["recorded_at"].as_i64())
        .unwrap_or_else(|| panic!("no {event_type} for {job} in:\n{out}"))
}

/// The documented rounding: `duration_ms × rate / 3 600 000`, half up.
fn job_cost(duration_ms: u64, rate: u64) -> u64 {
    let n = u128::from(duration_ms) * u128::from(rate);
    u64::try_from((n + 1_800_000) / 3_600_000).expect("cost fits")
}

/// Dollars as the dashboard shows them: cents from one cent up, else four decimals; half up.
fn usd(micro: u64) -> String {
    match micro {
        0 => "$0.00".to_owned(),
        m if m >= 10_000 => {
            let cents = (m + 5_000) / 10_000;
            format!("${}.{:02}", cents / 100, cents % 100)
        }
        m => format!("$0.{:04}", (m + 50) / 100),
    }
}

/// The text of every cell (`<td>`/`<th>`) inside the element with `id`, tags stripped and entities decoded.
fn cells(dom: &str, id: &str) -> Vec<String> {
    let marker = format!("id=\"{id}\"");
    let start = dom.find(&marker).unwrap_or_else(|| panic!("no element {id} in the DOM"));
    let tag_start = dom[..start].rfind('<').expect("element start");
    let tag: String = dom[tag_start + 1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    let end = dom[start..].find(&format!("</{tag}>")).map_or(dom.len(), |e| start + e);
    let inner = &dom[start..end];
    let mut out = Vec::new();
    let mut rest = inner;
    // A cell opens with `<td>`, `<td …>`, `<th>` or `<th …>` (not `<thead>`/`<tbody>`, which Chromium adds).
    let opens_cell =
        |r: &str| (r.starts_with("<td") || r.starts_with("<th")) && matches!(r.as_bytes().get(3), Some(b'>' | b' '));
    while let Some(open) = rest.char_indices().map(|(i, _)| i).find(|&i| opens_cell(&rest[i..])) {
        let body_start = rest[open..].find('>').map_or(rest.len(), |i| open + i + 1);
        let close = rest[body_start..].find("</t").map_or(rest.len(), |i| body_start + i);
        out.push(text(&rest[body_start..close]));
        rest = &rest[close..];
    }
    out
}

/// The text content of an HTML fragment.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", " ").trim().to_owned()
}

/// Headless Chromium with everything that would reach beyond loopback switched off (and a proxy on a dead
/// loopback port for anything that tried anyway); `extra` selects `--dump-dom` or `--screenshot=`.
fn chromium(profile: &Path, url: &str, extra: &str) -> support::Finished {
    let chromium = tool("chromium", "chromium");
    let profile = format!("--user-data-dir={}", profile.display());
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-dev-shm-usage",
        "--no-pings",
        "--proxy-server=http://127.0.0.1:9",
        "--hide-scrollbars",
        "--window-size=1280,1600",
        &profile,
        extra,
        url,
    ];
    let f = run_with_deadline(&chromium, args, b"", std::time::Duration::from_secs(180));
    assert!(f.success(), "chromium {extra} failed ({:?}):\n{}", f.status, f.stderr);
    f
}

/// Width and height from a PNG's IHDR, after checking the signature.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let signature = b"\x89PNG\r\n\x1a\n";
    if bytes.get(..8)? != signature || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |r: std::ops::Range<usize>| bytes.get(r).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes);
    Some((be(16..20)?, be(20..24)?))
}

#[test]
fn dashboard_renders_in_headless_chromium() {
    let _ = (tool("chromium", "chromium"), tool("curl", "curl"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let t2 = now_ms() - 60_000;
    let t1 = t2 - 180_000;
    submit_offline(&data, &seed(t1, t2));
    // The rental job runs for a while before it completes (bounded pause, not a timing assertion).
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    submit_offline(&data, &[sub("j8", json!({"type": "complete_job", "job_id": "j-done", "exit_status": 0}))]);
    let started = recorded_at(&data, "job_started", "j-done");
    let ended = recorded_at(&data, "job_completed", "j-done");
    let cost = job_cost(u64::try_from(ended - started).expect("ends after it starts"), RATE);
    assert!(cost > 0, "the job lasted {} ms", ended - started);

    let server = Server::start(&data, false);
    let page_url = server.dashboard_url("/dashboard");

    // The same data as JSON.
    refresh_heartbeats(&server, "-json", t2);
    let snap = curl(&[server.dashboard_url("/snapshot.json")]);
    assert_eq!((snap.exit, snap.status), (Some(0), 200), "{snap:?}");
    let s = snap.json().expect("snapshot is JSON");
    let expect =
        |pointer: &str, want: Value| assert_eq!(s.pointer(pointer), Some(&want), "snapshot.json {pointer}: {s}");
    expect("/devices", json!({"enrolled": 1, "active": 3, "stale": 0, "decommissioned": 1, "total": 5}));
    expect("/gpus", json!({"enrolled": 0, "active": 7, "stale": 0, "decommissioned": 1, "total": 8}));
    expect(
        "/jobs",
        json!({"active": 2, "running": 1, "queued": 1, "capacity_gpus": 7,
        "lifetime_dispatched": 4, "lifetime_completed": 1, "lifetime_failed": 1}),
    );
    expect("/last_24h/estimated_cost_micro_usd", json!(cost));
    expect("/last_24h/rental_spend_micro_usd", json!(cost));
    expect("/last_24h/jobs_ended", json!(2));
    let usage = |k: &str| s.pointer(&format!("/last_24h/usage/{k}")).and_then(Value::as_f64).expect("usage");
    // box-a: 2 GPUs at 50 % with 8 GiB each; box-b: 1 at 100 % with 12 GiB; rent-1: 4 at 25 % with 20 GiB
    // each; all held for the 3 minutes (0.05 h) until the next sample.
    for (k, want) in [("gpu_hours", 0.15), ("observed_gpu_hours", 0.35), ("vram_gib_hours", 5.4)] {
        assert!((usage(k) - want).abs() < 1e-9, "{k} = {} (want {want})", usage(k));
    }

    // The page as Chromium renders it.
    refresh_heartbeats(&server, "-dom", t2);
    let dom = chromium(&tmp.path().join("profile-dom"), &page_url, "--dump-dom").stdout;
    assert!(dom.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "no meta refresh in:\n{dom}");
    assert!(!dom.to_ascii_lowercase().contains("<script"), "the dashboard must not use JavaScript:\n{dom}");
    let tiles = |id: &str| cells_or_text(&dom, id);
    assert_eq!(tiles("tile-devices"), "3 / 5devices active / total");
    assert_eq!(tiles("tile-gpus"), "7 / 8GPUs active / total");
    assert_eq!(tiles("tile-jobs"), "2 / 7active jobs / GPU capacity");
    assert_eq!(tiles("tile-cost"), format!("{}estimated cost, last 24 h", usd(cost)));
    let rows = cells(&dom, "by-status");
    let row = |status: &str| -> Vec<String> {
        let i = rows.iter().position(|c| c.starts_with(status)).unwrap_or_else(|| panic!("no {status} row: {rows:?}"));
        rows[i + 1..i + 3].to_vec()
    };
    assert_eq!(row("active"), ["3", "7"]);
    assert_eq!(row("stale"), ["0", "0"]);
    assert_eq!(row("enrolled"), ["1", "0"]);
    assert_eq!(row("decommissioned"), ["1", "1"]);
    assert_eq!(row("total"), ["5", "8"]);
    assert_eq!(cells(&dom, "jobs")[7..], ["2", "1", "1", "7", "4", "1", "1"]);
    assert_eq!(
        cells(&dom, "backends")[6..],
        [
            "local", "2", "1", "2", "1", "80.0 %", // box-a (and new-1, never seen): latest 70 % and 90 %
            "ssh", "1", "1", "1", "1", "60.0 %", //
            "vast", "1", "1", "4", "0", "25.0 %",
        ]
    );
    let last = cells(&dom, "last-24h");
    let value = |label: &str| {
        let i = last.iter().position(|c| c.starts_with(label)).unwrap_or_else(|| panic!("no {label:?}: {last:?}"));
        last[i + 1].clone()
    };
    assert_eq!(value("GPU time busy"), "0.15 GPU-h");
    assert_eq!(value("GPU time observed"), "0.35 GPU-h");
    assert_eq!(value("mean utilisation"), "42.9 %");
    assert_eq!(value("VRAM in use"), "5.40 GiB-h");
    assert_eq!(value("estimated cost"), usd(cost));
    assert_eq!(value("rental spend"), usd(cost));
    assert_eq!(value("jobs ended"), "2");
    let recent = cells(&dom, "recent");
    assert!(recent.windows(2).any(|w| w == ["job completed", "rent-1"]), "recent events: {recent:?}");
    let status = cells_or_text(&dom, "status");
    assert!(status.starts_with("OK: no device stale; 3 of 4 devices active"), "status line: {status}");
    assert!(status.contains("2 active jobs on 7 GPUs"), "status line: {status}");

    // The screenshot: a real PNG of the requested size with a page's worth of content in it.
    let png: PathBuf =
        std::env::var_os("HWLEDGER_DASHBOARD_PNG").map_or_else(|| tmp.path().join("dashboard.png"), PathBuf::from);
    refresh_heartbeats(&server, "-png", t2);
    chromium(&tmp.path().join("profile-png"), &page_url, &format!("--screenshot={}", png.display()));
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert_eq!(png_size(&bytes), Some((1280, 1600)), "not a 1280×1600 PNG");
    // A blank page of this size compresses to a few KiB; text and tables take far more.
    assert!(bytes.len() > 30_000, "screenshot is only {} bytes: blank?", bytes.len());
    println!("dashboard screenshot: {} ({} bytes)", png.display(), bytes.len());
    server.stop();
}

/// The text of the element with `id` (for elements without table cells).
fn cells_or_text(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let start = dom.find(&marker).unwrap_or_else(|| panic!("no element {id} in the DOM"));
    let tag_start = dom[..start].rfind('<').expect("element start");
    let tag: String = dom[tag_start + 1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    // Elements of the same tag nest in the tiles (div in div): count depth to find the matching close.
    let mut depth = 0usize;
    let mut i = tag_start;
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    while i < dom.len() {
        if dom[i..].starts_with(&close) {
            depth -= 1;
            if depth == 0 {
                return text(&dom[tag_start..i]);
            }
            i += close.len();
        } else if dom[i..].starts_with(&open) {
            depth += 1;
            i += open.len();
        } else {
            i += dom[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    panic!("element {id} is not closed");
}
