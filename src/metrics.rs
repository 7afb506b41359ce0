//! Prometheus metrics, registered once in the default registry (the one the admin listener
//! serves). Labels are low-cardinality: route names from the config and fixed outcome
//! strings, never paths, hosts or payer addresses.

use std::sync::LazyLock;

use pingora_prometheus::prometheus::{
    register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec,
};

/// Every metric levy exports.
pub struct Metrics {
    /// `levy_requests_total{route,outcome}`.
    pub requests: IntCounterVec,
    /// `levy_request_duration_seconds{route,outcome}`, from request head to log.
    pub request_duration: HistogramVec,
    /// `levy_challenges_total{route}`: 402 challenges issued.
    pub challenges: IntCounterVec,
    /// `levy_upstream_errors_total{route,kind}`: connect failures, timeouts, other errors.
    pub upstream_errors: IntCounterVec,
}

/// The process-wide metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    // The names and labels below are constants, so registration fails only if another part
    // of the process registered the same names: a programming error caught by any test.
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        requests: register_int_counter_vec!(
            "levy_requests_total",
            "Requests handled, by route and outcome",
            &["route", "outcome"]
        )
        .expect("levy_requests_total registers once"),
        request_duration: register_histogram_vec!(
            "levy_request_duration_seconds",
            "Time from request head to the end of the response, by route and outcome",
            &["route", "outcome"],
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0
            ]
        )
        .expect("levy_request_duration_seconds registers once"),
        challenges: register_int_counter_vec!(
            "levy_challenges_total",
            "402 challenges issued, by route",
            &["route"]
        )
        .expect("levy_challenges_total registers once"),
        upstream_errors: register_int_counter_vec!(
            "levy_upstream_errors_total",
            "Upstream connect failures, timeouts and other errors, by route and kind",
            &["route", "kind"]
        )
        .expect("levy_upstream_errors_total registers once"),
    });
    &METRICS
}
