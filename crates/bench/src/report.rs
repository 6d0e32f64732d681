//! A benchmark's result, printed as a table or as one JSON object.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`; `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1_000.0
        };
        Some(Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// What a scenario measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub store: String,
    /// Messages (or rows, or requests) the scenario handled.
    pub messages: u64,
    pub elapsed_seconds: f64,
    pub messages_per_second: f64,
    /// What the latency measures is named in `latency_of`.
    pub latency_ms: Option<Percentiles>,
    pub latency_of: Option<String>,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// Final status of every message, to show each one is accounted for.
    pub accounted: BTreeMap<String, u64>,
    /// Further rates and figures particular to the scenario.
    pub metrics: BTreeMap<String, f64>,
    pub parameters: BTreeMap<String, serde_json::Value>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("scenario".into(), self.scenario.clone()),
            ("store".into(), self.store.clone()),
            ("messages".into(), self.messages.to_string()),
            ("elapsed".into(), format!("{:.3} s", self.elapsed_seconds)),
            (
                "throughput".into(),
                format!("{:.0} msg/s", self.messages_per_second),
            ),
        ];
        if let Some(latency) = self.latency_ms {
            let of = self.latency_of.as_deref().unwrap_or("latency");
            rows.push((
                format!("latency ({of})"),
                format!(
                    "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                    latency.p50, latency.p90, latency.p99, latency.max
                ),
            ));
        }
        rows.push(("cpu".into(), format!("{:.2} s", self.cpu_seconds)));
        rows.push(("peak rss".into(), format!("{:.1} MB", self.peak_rss_mb)));
        if !self.accounted.is_empty() {
            let accounted: Vec<String> = self
                .accounted
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            rows.push(("accounted".into(), accounted.join(", ")));
        }
        for (name, value) in &self.metrics {
            rows.push((name.clone(), format!("{value:.2}")));
        }
        for (name, value) in &self.parameters {
            rows.push((
                format!("param {name}"),
                value.to_string().trim_matches('"').to_owned(),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(Vec::new()), None);
    }

    #[test]
    fn the_json_names_throughput_messages_per_second() {
        let report = Report {
            messages_per_second: 12.5,
            ..Report::default()
        };
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["messages_per_second"], 12.5);
    }
}
