//! The gateway's own metrics, in the Prometheus text format:
//! - `peage_gateway_request_duration_seconds`: calls per API, version and status, from arrival
//!   to the end of the response body, as the call event records it;
//! - `peage_gateway_refusals_total{reason}`: answers the gateway gave itself, by problem type;
//! - connection counters (accepted, open, closed by the header-read and idle timeouts).
//!
//! Each serving thread writes its own shard (no lock or cache line is shared between threads
//! on a call); `/metrics` adds the shards up. Label values are resolved when the catalog is
//! loaded: a call records into a slot by its version's index, never by building strings.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::call::refusal::RefusalKind;
use crate::server::ConnectionStats;

/// Upper bounds in microseconds: 0.5 ms to 10 s, then +Inf.
const BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Non-cumulative counts per bound; the last slot is +Inf.
    buckets: [u64; BOUNDS_US.len() + 1],
    sum_us: u64,
    count: u64,
}

impl Histogram {
    fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }
}

/// One serving thread's counters.
#[derive(Default)]
pub(crate) struct Shard {
    /// By (version index, status).
    latency: Mutex<foldhash::HashMap<(usize, u16), Histogram>>,
    refusals: [AtomicU64; RefusalKind::ALL.len()],
    /// Calls over a rate limit in shadow mode (served).
    rate_limit_shadow: AtomicU64,
    /// CORS preflights answered, and refused (no policy, or not allowed by it).
    preflights: AtomicU64,
    preflights_refused: AtomicU64,
}

impl Shard {
    pub fn observe(&self, version: usize, status: u16, latency_us: u64) {
        let slot = BOUNDS_US
            .iter()
            .position(|b| latency_us <= *b)
            .unwrap_or(BOUNDS_US.len());
        let mut map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry((version, status)).or_default();
        h.buckets[slot] += 1;
        h.sum_us += latency_us;
        h.count += 1;
    }

    pub fn refused(&self, kind: RefusalKind) {
        let i = RefusalKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limit_shadow_exceeded(&self) {
        self.rate_limit_shadow.fetch_add(1, Ordering::Relaxed);
    }

    pub fn preflight(&self, allowed: bool) {
        let counter = if allowed {
            &self.preflights
        } else {
            &self.preflights_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every shard, and the labels of each version index.
pub struct GatewayMetrics {
    shards: Mutex<Vec<Arc<Shard>>>,
    /// (api, version) by version index, label-escaped. Append-only: a catalog reload adds the
    /// versions it brings and keeps the others' indices, so their series carry on.
    versions: Mutex<Vec<(String, String)>>,
    /// The catalog version in force, for `peage_catalog_info`.
    catalog_version: Mutex<String>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl GatewayMetrics {
    pub(crate) fn new(versions: impl IntoIterator<Item = (String, String)>) -> GatewayMetrics {
        GatewayMetrics {
            shards: Mutex::default(),
            versions: Mutex::new(
                versions
                    .into_iter()
                    .map(|(a, v)| (escape(&a), escape(&v)))
                    .collect(),
            ),
            catalog_version: Mutex::default(),
        }
    }

    /// The metrics slot of an API version, added if it is new.
    pub(crate) fn index_of(&self, api: &str, version: &str) -> usize {
        let key = (escape(api), escape(version));
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        match versions.iter().position(|v| *v == key) {
            Some(i) => i,
            None => {
                versions.push(key);
                versions.len() - 1
            }
        }
    }

    /// Records the catalog version in force.
    pub(crate) fn set_catalog_version(&self, version: &str) {
        *self
            .catalog_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = escape(version);
    }

    /// A new shard for a serving thread.
    pub(crate) fn shard(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::default());
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&shard));
        shard
    }

    /// Every family in the text exposition format.
    pub(crate) fn render(&self, connections: &ConnectionStats) -> String {
        let shards: Vec<Arc<Shard>> = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut latency: std::collections::BTreeMap<(usize, u16), Histogram> = Default::default();
        let mut refusals = [0u64; RefusalKind::ALL.len()];
        let (mut shadow, mut preflights, mut preflights_refused) = (0, 0, 0);
        for s in &shards {
            shadow += s.rate_limit_shadow.load(Ordering::Relaxed);
            preflights += s.preflights.load(Ordering::Relaxed);
            preflights_refused += s.preflights_refused.load(Ordering::Relaxed);
            for (k, h) in s.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                latency.entry(*k).or_default().add(h);
            }
            for (total, n) in refusals.iter_mut().zip(s.refusals.iter()) {
                *total += n.load(Ordering::Relaxed);
            }
        }
        let name = "peage_gateway_request_duration_seconds";
        let mut out = format!(
            "# HELP {name} Calls through the gateway, from arrival to the end of the response body.\n# TYPE {name} histogram\n"
        );
        let versions = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ((version, status), h) in &latency {
            let Some((api, v)) = versions.get(*version) else {
                continue;
            };
            let labels = format!("api=\"{api}\",version=\"{v}\",status=\"{status}\"");
            let mut cumulative = 0;
            for (i, bound) in BOUNDS_US.iter().enumerate() {
                cumulative += h.buckets[i];
                let le = *bound as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_us as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
        let name = "peage_gateway_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Calls the gateway answered itself, by problem type.\n# TYPE {name} counter"
        );
        for (kind, n) in RefusalKind::ALL.iter().zip(refusals) {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", kind.slug());
        }
        for (name, help, n) in [
            ("peage_gateway_rate_limit_shadow_exceeded_total", "Calls over a plan's rate limit in shadow mode: served, flagged.", shadow),
            ("peage_gateway_cors_preflights_total", "CORS preflights answered from an API version's policy.", preflights),
            ("peage_gateway_cors_preflights_refused_total", "CORS preflights refused: no policy, or an origin, method or header it does not allow.", preflights_refused),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}");
        }
        let name = "peage_catalog_info";
        let version = self
            .catalog_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP {name} The catalog version this gateway serves (1 for the version in force).\n# TYPE {name} gauge\n{name}{{version=\"{version}\"}} 1"
        );
        let c = connections;
        for (name, kind, help, v) in [
            ("peage_gateway_connections_accepted_total", "counter", "Client connections accepted.", &c.accepted),
            ("peage_gateway_connections_open", "gauge", "Client connections open.", &c.open),
            ("peage_gateway_header_timeouts_total", "counter", "Connections closed because a request head did not arrive within gateway.header_read_timeout_ms.", &c.header_timeouts),
            ("peage_gateway_idle_closed_total", "counter", "Keep-alive connections closed after gateway.idle_timeout_ms without a request.", &c.idle_closed),
            ("peage_gateway_connection_limit_waits_total", "counter", "Times accepting waited because gateway.max_connections were open.", &c.at_limit),
            ("peage_gateway_tls_handshake_failures_total", "counter", "TLS handshakes that failed (untrusted certificate, plain HTTP on the TLS port, client gone).", &c.tls_handshake_failures),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_buckets_are_cumulative_and_labelled() {
        let m = GatewayMetrics::new([
            ("demo".to_string(), "v1".to_string()),
            ("demo".to_string(), "v0".to_string()),
        ]);
        let (a, b) = (m.shard(), m.shard());
        a.observe(0, 200, 300);
        b.observe(0, 200, 2_000);
        a.observe(0, 200, 20_000_000);
        b.observe(1, 404, 700);
        a.refused(RefusalKind::RateLimited);
        b.refused(RefusalKind::RateLimited);
        let text = m.render(&ConnectionStats::default());
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let p = "peage_gateway_request_duration_seconds";
        let v1 = "api=\"demo\",version=\"v1\",status=\"200\"";
        assert_eq!(line(&format!("{p}_bucket{{{v1},le=\"0.0005\"}}")), "1");
        assert_eq!(line(&format!("{p}_bucket{{{v1},le=\"0.0025\"}}")), "2");
        assert_eq!(line(&format!("{p}_bucket{{{v1},le=\"10\"}}")), "2");
        assert_eq!(line(&format!("{p}_bucket{{{v1},le=\"+Inf\"}}")), "3");
        assert_eq!(line(&format!("{p}_count{{{v1}}}")), "3");
        assert_eq!(line(&format!("{p}_sum{{{v1}}}")), "20.0023");
        assert!(text.contains("version=\"v0\",status=\"404\""));
        assert_eq!(
            line("peage_gateway_refusals_total{reason=\"rate-limited\"}"),
            "2"
        );
        assert_eq!(line("peage_gateway_connections_open"), "0");
    }
}
