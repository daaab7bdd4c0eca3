//! The operator dashboard on the loopback listener (plain HTTP; operators reach it through an SSH tunnel):
//! `GET /dashboard` is HTML without JavaScript that refreshes itself every 5 s, `GET /snapshot.json` the
//! same data as JSON. The data comes from [`super::ReadModels::dashboard`] when projections are wired in,
//! else a summary of the engine's decision state.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use hwledger_engine::state::{DeviceStatus, JobStatus};
use warp::Filter;
use warp::http::{Method, StatusCode};

use super::App;
use super::errors::ApiError;
use super::routes::json_response;

/// How deep nested JSON is rendered as nested tables; deeper values are shown as JSON text.
const MAX_RENDER_DEPTH: usize = 6;

/// The dashboard's warp filter.
pub(crate) fn filter(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static {
    warp::method().and(warp::path::full()).then(move |method: Method, path: warp::path::FullPath| {
        let app = app.clone();
        async move {
            let start = Instant::now();
            let (label, result) = match path.as_str() {
                "/dashboard" => ("/dashboard", get_only(&method).and_then(|()| html(&app))),
                "/snapshot.json" => (
                    "/snapshot.json",
                    get_only(&method).and_then(|()| snapshot(&app).map(|v| json_response(StatusCode::OK, &v))),
                ),
                other => (
                    "unmatched",
                    Err(ApiError::not_found(format!("no route {method} {other} on the dashboard listener"))),
                ),
            };
            let response = result.unwrap_or_else(ApiError::into_response);
            app.metrics.observe_request(label, method.as_str(), response.status().as_u16(), start.elapsed());
            response
        }
    })
}

fn get_only(method: &Method) -> Result<(), ApiError> {
    if method == Method::GET { Ok(()) } else { Err(ApiError::method_not_allowed(format!("use GET, not {method}"))) }
}

/// The dashboard data: from the read models when present, else [`fallback_summary`].
fn snapshot(app: &App) -> Result<serde_json::Value, ApiError> {
    match &app.read_models {
        Some(rm) => rm.dashboard().map_err(|e| ApiError::unavailable("read_model_unavailable", e.to_string())),
        None => Ok(fallback_summary(app)),
    }
}

/// Counts from the decision state and the log head, for servers without projections.
pub(crate) fn fallback_summary(app: &App) -> serde_json::Value {
    let head = app.ledger.head();
    let checkpoint = app.ledger.latest_checkpoint().map(|(size, _)| size);
    app.ledger.with_state(|s| {
        let mut devices: BTreeMap<&str, usize> = BTreeMap::new();
        let mut gpus = 0usize;
        for d in s.devices.values() {
            let status = match d.status {
                DeviceStatus::Enrolled => "enrolled",
                DeviceStatus::Active => "active",
                DeviceStatus::Decommissioned => "decommissioned",
            };
            *devices.entry(status).or_default() += 1;
            if d.status != DeviceStatus::Decommissioned {
                gpus += d.gpus.len();
            }
        }
        let mut jobs: BTreeMap<&str, usize> = BTreeMap::new();
        for j in s.jobs.values() {
            *jobs.entry(j.status.as_str()).or_default() += 1;
        }
        let active_jobs =
            s.jobs.values().filter(|j| matches!(j.status, JobStatus::Dispatched | JobStatus::Started)).count();
        serde_json::json!({
            "source": "ledger_state",
            "head_seq": head.seq,
            "head_hash": hex::encode(head.hash),
            "checkpoint_size": checkpoint,
            "devices": devices,
            "gpus": gpus,
            "jobs": jobs,
            "active_jobs": active_jobs,
            "certificates_pinned": s.certs.values().filter(|c| !c.revoked).count(),
            "last_recorded_at": s.last_recorded_at,
        })
    })
}

/// How often the page reloads itself (`<meta http-equiv="refresh">`), seconds.
const REFRESH_SECONDS: u32 = 5;

/// Newest events shown on the page; the whole ring buffer is in `snapshot.json`.
const RECENT_SHOWN: usize = 20;

/// Plain CSS (no JavaScript anywhere): readable at a glance, numbers right-aligned in tabular figures.
const STYLE: &str = "body{font-family:'DejaVu Sans',Verdana,sans-serif;margin:1.5em 2em;color:#1d232a;\
background:#fff;max-width:1200px}h1{font-size:1.6em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.4em 0 .4em;\
border-bottom:2px solid #d8dee4;padding-bottom:.2em}.status{font-size:1.1em;padding:.6em .9em;border-radius:6px;\
margin:.4em 0 1em}.ok{background:#e6f4ea;border:1px solid #7fbf8e}.warn{background:#fff4d6;border:1px solid #e0b341}\
.bad{background:#fde2e1;border:1px solid #d1242f}\
table{border-collapse:collapse;margin:.2em 0}th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left}\
th{background:#f3f5f7;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.tiles{display:flex;gap:1em;flex-wrap:wrap}.tile{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;\
min-width:11em}.tile .v{font-size:1.7em;font-weight:600}.tile .l{color:#57606a;font-size:.9em}\
.muted{color:#57606a;font-size:.9em}";

fn html(app: &App) -> Result<warp::reply::Response, ApiError> {
    let data = snapshot(app)?;
    let generated = format_time_ms(super::unix_ms(app.clock.now()));
    let page = page_html(&data, app.ledger.broken(), &generated);
    Ok(warp::reply::Reply::into_response(warp::reply::html(page)))
}

/// The whole page for `data`, with a red banner first if the ledger refuses writes (`broken`).
fn page_html(data: &serde_json::Value, broken: Option<&str>, generated: &str) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>hwledger fleet dashboard</title><style>{STYLE}</style></head><body>\n\
         <h1>hwledger fleet dashboard</h1>\n"
    );
    if let Some(why) = broken {
        let _ = writeln!(
            page,
            "<p class=\"status bad\" id=\"broken\"><strong>The ledger refuses writes:</strong> {} \
             (see <code>hwledger verify</code>)</p>",
            escape(why)
        );
    }
    if is_fleet_view(data) {
        render_fleet(&mut page, data);
    } else {
        page.push_str("<h2>Ledger state</h2>\n");
        render(&mut page, data, 0);
    }
    let _ = write!(
        page,
        "\n<p class=\"muted\">Generated {} &middot; refreshes every {REFRESH_SECONDS} s &middot; \
         the same data as JSON: <a href=\"/snapshot.json\">snapshot.json</a></p></body></html>\n",
        escape(generated)
    );
    page
}

/// Whether `data` is the projections' dashboard view (else it is the ledger-state fallback).
fn is_fleet_view(data: &serde_json::Value) -> bool {
    data.pointer("/devices/total").is_some() && data.pointer("/jobs/capacity_gpus").is_some()
}

fn u64_at(data: &serde_json::Value, pointer: &str) -> Option<u64> {
    data.pointer(pointer).and_then(serde_json::Value::as_u64)
}

fn f64_at(data: &serde_json::Value, pointer: &str) -> Option<f64> {
    data.pointer(pointer).and_then(serde_json::Value::as_f64)
}

/// A count, or a dash when the view lacks it.
fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "&mdash;".to_owned(), |n| n.to_string())
}

/// Renders the projections' dashboard view as an operator reads it: a status line,
/// headline tiles, devices and GPUs by status, jobs against capacity, backends, the last 24 hours and the
/// recent events. Every value is looked up defensively: a missing field shows as a dash, never a panic.
fn render_fleet(out: &mut String, d: &serde_json::Value) {
    let devices = |s: &str| u64_at(d, &format!("/devices/{s}"));
    let gpus = |s: &str| u64_at(d, &format!("/gpus/{s}"));
    let jobs = |s: &str| u64_at(d, &format!("/jobs/{s}"));
    let stale = devices("stale").unwrap_or(0);
    let live = devices("total").unwrap_or(0).saturating_sub(devices("decommissioned").unwrap_or(0));
    let (class, verdict) = if stale > 0 {
        ("warn", format!("Attention: {stale} of {live} devices stale (missed heartbeats)"))
    } else {
        let active = devices("active").map_or_else(|| "?".to_owned(), |n| n.to_string());
        ("ok", format!("OK: no device stale; {active} of {live} devices active"))
    };
    let _ = writeln!(
        out,
        "<p class=\"status {class}\" id=\"status\"><strong>{}</strong> &middot; {} active jobs on {} GPUs \
         &middot; ledger at seq {} ({} events) &middot; as of {}</p>",
        escape(&verdict),
        count(jobs("active")),
        count(jobs("capacity_gpus")),
        count(u64_at(d, "/seq")),
        count(u64_at(d, "/events_total")),
        escape(&u64_at(d, "/now").and_then(|n| i64::try_from(n).ok()).map_or("?".to_owned(), format_time_ms)),
    );

    let cost = u64_at(d, "/last_24h/estimated_cost_micro_usd");
    out.push_str("<div class=\"tiles\">");
    for (id, value, label) in [
        (
            "tile-devices",
            format!("{} / {}", count(devices("active")), count(devices("total"))),
            "devices active / total",
        ),
        ("tile-gpus", format!("{} / {}", count(gpus("active")), count(gpus("total"))), "GPUs active / total"),
        (
            "tile-jobs",
            format!("{} / {}", count(jobs("active")), count(jobs("capacity_gpus"))),
            "active jobs / GPU capacity",
        ),
        (
            "tile-cost",
            cost.map_or_else(|| "&mdash;".to_owned(), |c| escape(&format_usd(c))),
            "estimated cost, last 24 h",
        ),
    ] {
        let _ = write!(
            out,
            "<div class=\"tile\" id=\"{id}\"><div class=\"v\">{value}</div><div class=\"l\">{label}</div></div>"
        );
    }
    out.push_str("</div>\n");

    out.push_str("<h2>Devices and GPUs by status</h2>\n<table id=\"by-status\"><tr><th>status</th><th>devices</th><th>GPUs</th></tr>");
    for (status, meaning) in [
        ("active", "heartbeats arriving"),
        ("stale", "missed its recent heartbeats"),
        ("enrolled", "never reported"),
        ("decommissioned", "left the fleet"),
        ("total", ""),
    ] {
        let label = if meaning.is_empty() {
            status.to_owned()
        } else {
            format!("{status} <span class=\"muted\">({meaning})</span>")
        };
        let _ = write!(
            out,
            "<tr id=\"status-{status}\"><td>{label}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            count(devices(status)),
            count(gpus(status))
        );
    }
    out.push_str("</table>\n");

    let _ = write!(
        out,
        "<h2>Jobs against capacity</h2>\n<table id=\"jobs\"><tr><th>active jobs</th><th>running</th><th>queued</th>\
         <th>GPU capacity (active devices)</th><th>dispatched ever</th><th>completed</th><th>failed</th></tr>\
         <tr>{}</tr></table>\n",
        [
            "active",
            "running",
            "queued",
            "capacity_gpus",
            "lifetime_dispatched",
            "lifetime_completed",
            "lifetime_failed"
        ]
        .iter()
        .map(|k| format!("<td class=\"n\">{}</td>", count(jobs(k))))
        .collect::<String>()
    );

    out.push_str(
        "<h2>Backends</h2>\n<table id=\"backends\"><tr><th>backend</th><th>devices</th><th>active</th>\
         <th>GPUs (active devices)</th><th>active jobs</th><th>utilisation (latest samples)</th></tr>",
    );
    match d.get("backends").and_then(serde_json::Value::as_array) {
        Some(rows) if !rows.is_empty() => {
            for b in rows {
                let name = b.get("backend").and_then(serde_json::Value::as_str).unwrap_or("?");
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    escape(name),
                    count(u64_at(b, "/devices")),
                    count(u64_at(b, "/active_devices")),
                    count(u64_at(b, "/capacity_gpus")),
                    count(u64_at(b, "/active_jobs")),
                    f64_at(b, "/utilization_pct").map_or_else(|| "&mdash;".to_owned(), |u| escape(&format_pct(u))),
                );
            }
        }
        _ => out.push_str("<tr><td colspan=\"6\"><em>no devices yet</em></td></tr>"),
    }
    out.push_str("</table>\n");

    let usage = |k: &str| f64_at(d, &format!("/last_24h/usage/{k}"));
    let busy = usage("gpu_hours");
    let observed = usage("observed_gpu_hours");
    let mean = match (busy, observed) {
        (Some(b), Some(o)) if o > 0.0 => format_pct(100.0 * b / o),
        _ => "&mdash;".to_owned(),
    };
    let hours = |v: Option<f64>, unit: &str| v.map_or_else(|| "&mdash;".to_owned(), |h| format!("{h:.2} {unit}"));
    let usd = |v: Option<u64>| v.map_or_else(|| "&mdash;".to_owned(), |c| escape(&format_usd(c)));
    let _ = write!(
        out,
        "<h2>Last 24 hours</h2>\n<table id=\"last-24h\">\
         <tr><th>GPU time busy (utilisation-weighted)</th><td class=\"n\">{}</td></tr>\
         <tr><th>GPU time observed by telemetry</th><td class=\"n\">{}</td></tr>\
         <tr><th>mean utilisation</th><td class=\"n\">{mean}</td></tr>\
         <tr><th>VRAM in use &times; time</th><td class=\"n\">{}</td></tr>\
         <tr><th>estimated cost (ended jobs + running accrual)</th><td class=\"n\" id=\"cost-24h\">{}</td></tr>\
         <tr><th>rental spend (ended jobs)</th><td class=\"n\">{}</td></tr>\
         <tr><th>jobs ended</th><td class=\"n\">{}</td></tr></table>\n",
        hours(busy, "GPU-h"),
        hours(observed, "GPU-h"),
        hours(usage("vram_gib_hours"), "GiB-h"),
        usd(cost),
        usd(u64_at(d, "/last_24h/rental_spend_micro_usd")),
        count(u64_at(d, "/last_24h/jobs_ended")),
    );

    let events = d.get("recent_events").and_then(serde_json::Value::as_array).map_or(&[][..], Vec::as_slice);
    let _ = write!(
        out,
        "<h2>Recent events</h2>\n<p class=\"muted\">The {} newest of the last {} (newest first).</p>\n\
         <table id=\"recent\"><tr><th>seq</th><th>recorded (UTC)</th><th>event</th><th>device</th></tr>",
        events.len().min(RECENT_SHOWN),
        events.len()
    );
    if events.is_empty() {
        out.push_str("<tr><td colspan=\"4\"><em>none</em></td></tr>");
    }
    for e in events.iter().take(RECENT_SHOWN) {
        let when = e.get("recorded_at").and_then(serde_json::Value::as_i64).map_or("?".to_owned(), format_time_ms);
        let kind = e.get("type").and_then(serde_json::Value::as_str).unwrap_or("?").replace('_', " ");
        let device = e.get("device_id").and_then(serde_json::Value::as_str).unwrap_or("\u{2014}");
        let _ = write!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            count(u64_at(e, "/seq")),
            escape(&when),
            escape(&kind),
            escape(device)
        );
    }
    out.push_str("</table>\n");
}

/// Micro-USD as dollars: cents for a cent or more (`$1,234.57`), four decimals below (`$0.0042`) so a
/// short job's cost is not shown as zero; rounded half up.
pub(crate) fn format_usd(micro: u64) -> String {
    if micro == 0 {
        "$0.00".to_owned()
    } else if micro >= 10_000 {
        let cents = micro / 10_000 + u64::from(micro % 10_000 >= 5_000);
        format!("${}.{:02}", group_thousands(cents / 100), cents % 100)
    } else {
        let tenths_of_mills = micro / 100 + u64::from(micro % 100 >= 50);
        format!("$0.{tenths_of_mills:04}")
    }
}

/// `1234567` as `1,234,567`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A percentage with one decimal.
fn format_pct(p: f64) -> String {
    format!("{p:.1} %")
}

/// Unix milliseconds as `2026-05-01 12:00:00 UTC` (seconds are enough for an operator).
pub(crate) fn format_time_ms(ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Renders a JSON value as nested HTML tables, every string escaped.
fn render(out: &mut String, value: &serde_json::Value, depth: usize) {
    use serde_json::Value;
    if depth >= MAX_RENDER_DEPTH {
        let _ = write!(out, "<code>{}</code>", escape(&value.to_string()));
        return;
    }
    match value {
        Value::Object(map) => {
            out.push_str("<table>");
            for (k, v) in map {
                let _ = write!(out, "<tr><th>{}</th><td>", escape(k));
                render(out, v, depth + 1);
                out.push_str("</td></tr>");
            }
            out.push_str("</table>");
        }
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("<em>none</em>");
                return;
            }
            out.push_str("<ol>");
            for v in items {
                out.push_str("<li>");
                render(out, v, depth + 1);
                out.push_str("</li>");
            }
            out.push_str("</ol>");
        }
        Value::String(s) => out.push_str(&escape(s)),
        Value::Null => out.push_str("&mdash;"),
        other => out.push_str(&escape(&other.to_string())),
    }
}

/// HTML-escapes text for element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_times_and_percentages_read_well() {
        assert_eq!(format_usd(0), "$0.00");
        assert_eq!(format_usd(49), "$0.0000");
        assert_eq!(format_usd(50), "$0.0001");
        assert_eq!(format_usd(4_200), "$0.0042");
        assert_eq!(format_usd(9_999), "$0.0100");
        assert_eq!(format_usd(10_000), "$0.01");
        assert_eq!(format_usd(1_234_565_000), "$1,234.57");
        assert_eq!(format_usd(999_994_999), "$999.99");
        assert_eq!(format_usd(u64::MAX), "$18,446,744,073,709.55");
        assert_eq!(group_thousands(100), "100");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(format_time_ms(1_710_028_800_123), "2024-03-10 00:00:00 UTC");
        assert_eq!(format_time_ms(i64::MAX), format!("{} ms", i64::MAX));
        assert_eq!(format_pct(50.0), "50.0 %");
    }

    #[test]
    fn the_page_refreshes_has_no_script_and_flags_a_broken_ledger() {
        let view = serde_json::json!({"devices": {"total": 1, "active": 1, "stale": 0}, "jobs": {"capacity_gpus": 2}});
        let page = page_html(&view, None, "2024-03-10 00:00:00 UTC");
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(!page.to_ascii_lowercase().contains("<script"));
        assert!(page.contains("OK: no device stale; 1 of 1 devices active"));
        assert!(!page.contains("id=\"broken\""));
        let broken = page_html(&view, Some("chain broken at seq 7 <x>"), "t");
        assert!(broken.contains("The ledger refuses writes:</strong> chain broken at seq 7 &lt;x&gt;"));
        let stale =
            serde_json::json!({"devices": {"total": 3, "stale": 2, "decommissioned": 1}, "jobs": {"capacity_gpus": 0}});
        assert!(page_html(&stale, None, "t").contains("Attention: 2 of 2 devices stale"));
        // Without projections the ledger-state summary is shown as a table.
        let fallback = page_html(&serde_json::json!({"source": "ledger_state", "devices": {"enrolled": 1}}), None, "t");
        assert!(fallback.contains("<h2>Ledger state</h2>") && fallback.contains("enrolled"));
    }

    #[test]
    fn a_partial_view_renders_dashes_not_panics() {
        let mut out = String::new();
        render_fleet(
            &mut out,
            &serde_json::json!({"devices": {"total": 2}, "jobs": {"capacity_gpus": 1},
            "backends": [{"backend": "<x>"}], "recent_events": [{"type": 3}]}),
        );
        assert!(out.contains("&mdash;"));
        assert!(out.contains("&lt;x&gt;"));
        assert!(!out.contains("<x>"));
    }

    #[test]
    fn rendering_escapes_and_bounds_depth() {
        let mut out = String::new();
        render(&mut out, &serde_json::json!({"<b>": ["<script>", null, 1.5]}), 0);
        assert!(!out.contains("<script>"));
        assert!(out.contains("&lt;script&gt;"));
        assert!(out.contains("&lt;b&gt;"));
        let mut deep = serde_json::json!("x");
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let mut out = String::new();
        render(&mut out, &deep, 0);
        assert!(out.matches("<ol>").count() <= MAX_RENDER_DEPTH);
    }
}
