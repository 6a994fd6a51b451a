//! Counters, gauges and histograms in Prometheus' text exposition format (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A histogram with fixed bucket bounds.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TOKENS_PER_SECOND: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Everything `/metrics` reports.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub queue_depth: AtomicUsize,
    pub running: AtomicUsize,
    /// Requests stopped because their client went away or timed out.
    pub cancelled: AtomicU64,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    batch: Mutex<Histogram>,
    ttft: Mutex<Histogram>,
    rate: Mutex<Histogram>,
    latency: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            errors: Mutex::default(),
            queue_depth: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            cancelled: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            batch: Mutex::new(Histogram::new(BATCH)),
            ttft: Mutex::new(Histogram::new(SECONDS)),
            rate: Mutex::new(Histogram::new(TOKENS_PER_SECOND)),
            latency: Mutex::new(Histogram::new(SECONDS)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a metrics lock leaves plain numbers behind: keep using them.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// A request to `endpoint` was answered with `status` after `seconds`.
    pub fn answered(&self, endpoint: &'static str, status: u16, seconds: f64) {
        *lock(&self.requests).entry((endpoint, status)).or_default() += 1;
        lock(&self.latency).observe(seconds);
    }

    /// A request to `endpoint` failed with error `code`.
    pub fn error(&self, endpoint: &'static str, code: &'static str) {
        *lock(&self.errors).entry((endpoint, code)).or_default() += 1;
    }

    /// A decode step ran `batch` requests.
    pub fn step(&self, batch: usize) {
        lock(&self.batch).observe(batch as f64);
    }

    /// A generation finished: its prompt and output sizes, time to first token and
    /// decode rate.
    pub fn generation(&self, prompt: usize, generated: usize, ttft_s: f64, decode_s: f64) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        lock(&self.ttft).observe(ttft_s);
        if generated > 1 && decode_s > 0.0 {
            lock(&self.rate).observe((generated - 1) as f64 / decode_s);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP paligemma_requests_total Requests answered, by endpoint and HTTP status.\n\
             # TYPE paligemma_requests_total counter\n",
        );
        for ((endpoint, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "paligemma_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP paligemma_errors_total Failed requests, by endpoint and error code.\n\
             # TYPE paligemma_errors_total counter\n",
        );
        for ((endpoint, code), n) in lock(&self.errors).iter() {
            let _ = writeln!(
                out,
                "paligemma_errors_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
            );
        }
        let gauges = [
            (
                "paligemma_queue_depth",
                "Requests waiting for a place in the batch.",
                self.queue_depth.load(Ordering::Relaxed) as u64,
                "gauge",
            ),
            (
                "paligemma_running_requests",
                "Requests admitted and not yet answered.",
                self.running.load(Ordering::Relaxed) as u64,
                "gauge",
            ),
            (
                "paligemma_cancelled_total",
                "Requests stopped because their client went away or their time ran out.",
                self.cancelled.load(Ordering::Relaxed),
                "counter",
            ),
            (
                "paligemma_prompt_tokens_total",
                "Prompt tokens processed (image tokens included).",
                self.prompt_tokens.load(Ordering::Relaxed),
                "counter",
            ),
            (
                "paligemma_generated_tokens_total",
                "Tokens generated.",
                self.generated_tokens.load(Ordering::Relaxed),
                "counter",
            ),
        ];
        for (name, help, v, kind) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        lock(&self.batch).write(
            &mut out,
            "paligemma_batch_size",
            "Requests per decode step.",
        );
        lock(&self.ttft).write(
            &mut out,
            "paligemma_time_to_first_token_seconds",
            "From admission to the first token.",
        );
        lock(&self.rate).write(
            &mut out,
            "paligemma_decode_tokens_per_second",
            "Per request, tokens after the first over the time they took.",
        );
        lock(&self.latency).write(
            &mut out,
            "paligemma_request_duration_seconds",
            "From request to answer (to the end of the stream for streams).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_and_buckets() {
        let m = Metrics::default();
        m.answered("/v1/detect", 200, 0.3);
        m.answered("/v1/detect", 200, 0.02);
        m.answered("/v1/detect", 400, 0.001);
        m.error("/v1/detect", "invalid_image");
        m.step(3);
        m.generation(10, 5, 0.2, 0.4);
        let text = m.render();
        assert!(
            text.contains("paligemma_requests_total{endpoint=\"/v1/detect\",status=\"200\"} 2")
        );
        assert!(
            text.contains(
                "paligemma_errors_total{endpoint=\"/v1/detect\",code=\"invalid_image\"} 1"
            )
        );
        assert!(text.contains("paligemma_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("paligemma_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("paligemma_request_duration_seconds_bucket{le=\"0.025\"} 2"));
        assert!(text.contains("paligemma_request_duration_seconds_count 3"));
        assert!(text.contains("paligemma_decode_tokens_per_second_bucket{le=\"10\"} 1"));
        assert!(text.contains("paligemma_generated_tokens_total 5"));
    }
}
