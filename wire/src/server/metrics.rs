//! Prometheus metrics of the server, exported by `GET /metrics` in the OpenMetrics text format
//! (prometheus-client): requests and their latency by route and status, command outcomes, commit
//! latency as seen by a submitter (queue + group commit + fsync), live SSE clients, and — read at
//! scrape time — the ledger head, events appended since start and the transport's connection counters.

use std::sync::Arc;
use std::time::Duration;

use hwledger_engine::Ledger;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::transport::{TransportStats, TransportStatsSnapshot};

/// Labels of a request: which route answered (a template, never the raw path, so cardinality stays
/// bounded), the method and the status code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template, e.g. `/v1/devices/{id}`; `unmatched` for 404s.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// HTTP status code.
    pub status: String,
}

/// Labels of a command outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `duplicate`, or the rejection / error code.
    pub outcome: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    commands: Family<OutcomeLabels, Counter>,
    commit_latency: Histogram,
    sse_clients: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Picks one counter out of a transport snapshot.
type StatReader = fn(&TransportStatsSnapshot) -> u64;

/// Reads ledger and transport state at scrape time.
#[derive(Debug)]
struct LiveCollector {
    ledger: Arc<Ledger>,
    /// Head when the server started: events appended since = head - this (the head only grows).
    start_seq: u64,
    listeners: Vec<(&'static str, Arc<TransportStats>)>,
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let head = self.ledger.head().seq;
        let gauge = ConstGauge::new(i64::try_from(head).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "hwledger_ledger_head_seq",
            "Sequence number of the last durable event",
            None,
            gauge.metric_type(),
        )?)?;
        let appended = ConstCounter::new(head.saturating_sub(self.start_seq));
        appended.encode(encoder.encode_descriptor(
            "hwledger_events_appended",
            "Events appended to the log since the server started",
            None,
            appended.metric_type(),
        )?)?;
        let checkpoint = self.ledger.latest_checkpoint().map_or(0, |(size, _)| size);
        let gauge = ConstGauge::new(i64::try_from(checkpoint).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "hwledger_checkpoint_size",
            "Tree size of the latest signed checkpoint",
            None,
            gauge.metric_type(),
        )?)?;

        let snapshots: Vec<_> = self.listeners.iter().map(|(name, s)| (*name, s.snapshot())).collect();
        let counters: [(&str, &str, StatReader); 6] = [
            ("hwledger_connections_accepted", "TCP connections accepted under the cap", |s| s.accepted),
            ("hwledger_tls_handshake_failures", "TLS handshakes that failed (timeouts included)", |s| {
                s.handshake_failures
            }),
            ("hwledger_tls_handshake_timeouts", "TLS handshakes that timed out", |s| s.handshake_timeouts),
            (
                "hwledger_first_request_timeouts",
                "Connections closed because no request head arrived in time after the handshake",
                |s| s.first_request_timeouts,
            ),
            ("hwledger_connections_rejected_over_cap", "Connections closed because the cap was reached", |s| {
                s.rejected_over_cap
            }),
            ("hwledger_accept_errors", "Failed accept calls", |s| s.accept_errors),
        ];
        for (name, help, get) in counters {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
            for (listener, snap) in &snapshots {
                let labels = [("listener", *listener)];
                ConstCounter::new(get(snap)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "hwledger_connections_open",
            "Connections open now (handshaking or serving)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (listener, snap) in &snapshots {
            let labels = [("listener", *listener)];
            ConstGauge::new(i64::try_from(snap.open_connections).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Metrics for a server over `ledger` whose TLS listeners count into `listeners` (name, stats).
    pub fn new(ledger: Arc<Ledger>, listeners: Vec<(&'static str, Arc<TransportStats>)>) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "hwledger_http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        // 0.5 ms .. ~16 s: covers a cached read and an fsync-bound commit under load.
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "hwledger_http_request_duration_seconds",
            "Time to produce a response (headers), by route, method and status",
            latency.clone(),
        );
        let commands = Family::<OutcomeLabels, Counter>::default();
        registry.register("hwledger_commands", "Commands submitted over HTTP, by outcome", commands.clone());
        let commit_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "hwledger_commit_duration_seconds",
            "Time from submitting to the ledger until the outcome is durable (queue, group commit, fsync)",
            commit_latency.clone(),
        );
        let sse_clients = Gauge::default();
        registry.register("hwledger_sse_clients", "Clients following the live event stream", sse_clients.clone());
        let start_seq = ledger.head().seq;
        registry.register_collector(Box::new(LiveCollector { ledger, start_seq, listeners }));
        Metrics { registry, requests, latency, commands, commit_latency, sse_clients }
    }

    /// Counts one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels { route: route.to_owned(), method: method.to_owned(), status: status.to_string() };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Counts one command outcome.
    pub fn observe_command(&self, outcome: &str) {
        self.commands.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    /// Records how long a submission took to become durable (or refused).
    pub fn observe_commit(&self, elapsed: Duration) {
        self.commit_latency.observe(elapsed.as_secs_f64());
    }

    /// One more live SSE client; the guard counts it down when dropped.
    pub fn sse_client(&self) -> SseClientGuard {
        self.sse_clients.inc();
        SseClientGuard(self.sse_clients.clone())
    }

    /// The exposition in the OpenMetrics 1.0 text format.
    pub fn render_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The exposition in the Prometheus 0.0.4 text format (what `promtool check metrics` and scrapers
    /// that do not ask for OpenMetrics read).
    pub fn render_prometheus(&self) -> Result<String, std::fmt::Error> {
        Ok(openmetrics_to_prometheus(&self.render_openmetrics()?))
    }
}

/// Converts OpenMetrics text to the Prometheus text format: a counter family `x` is described as `x_total`
/// (OpenMetrics names the family without the suffix its samples carry; the Prometheus parser would see
/// samples of an undescribed metric), and the `# EOF` terminator goes.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match described {
            Some(rewritten) => out.push_str(rewritten.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_by_their_sample_name() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}

/// Keeps [`Metrics::sse_client`]'s gauge honest however the stream ends.
#[derive(Debug)]
pub struct SseClientGuard(Gauge);

impl Drop for SseClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
