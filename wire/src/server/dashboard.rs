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

fn html(app: &App) -> Result<warp::reply::Response, ApiError> {
    let data = snapshot(app)?;
    let mut page = String::with_capacity(4096);
    page.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <title>hwledger dashboard</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}</style>\
         </head><body><h1>hwledger</h1>\n",
    );
    let _ = writeln!(page, "<p>Generated at {} (refreshes every 5 s).</p>", escape(&app.clock.now().to_string()));
    render(&mut page, &data, 0);
    page.push_str("\n<p><a href=\"/snapshot.json\">snapshot.json</a></p></body></html>\n");
    Ok(warp::reply::Reply::into_response(warp::reply::html(page)))
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
