//! Call latency histograms per API, version and status, in the Prometheus text format
//! (`peage_gateway_request_duration_seconds`). Latency is from the request's arrival to the end
//! of the response body, as the call event records it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

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

#[derive(Default)]
pub struct LatencyHistograms {
    by_label: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl LatencyHistograms {
    pub fn observe(&self, api: &str, version: &str, status: u16, latency_us: u64) {
        let slot = BOUNDS_US
            .iter()
            .position(|b| latency_us <= *b)
            .unwrap_or(BOUNDS_US.len());
        let mut map = self.by_label.lock().unwrap_or_else(|p| p.into_inner());
        let key = (api.to_string(), version.to_string(), status);
        let h = map.entry(key).or_default();
        h.buckets[slot] += 1;
        h.sum_us += latency_us;
        h.count += 1;
    }

    /// The histogram family in the text exposition format.
    pub fn render(&self) -> String {
        let map = self
            .by_label
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let name = "peage_gateway_request_duration_seconds";
        let mut out = format!(
            "# HELP {name} Calls through the gateway, from arrival to the end of the response body.\n# TYPE {name} histogram\n"
        );
        for ((api, version, status), h) in &map {
            let labels = format!(
                "api=\"{}\",version=\"{}\",status=\"{status}\"",
                escape(api),
                escape(version)
            );
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_labelled() {
        let h = LatencyHistograms::default();
        h.observe("demo", "v1", 200, 300);
        h.observe("demo", "v1", 200, 2_000);
        h.observe("demo", "v1", 200, 20_000_000);
        h.observe("demo", "v0", 404, 700);
        let text = h.render();
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
        assert!(text.contains("status=\"404\""));
    }
}
