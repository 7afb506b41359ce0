//! Prometheus metrics, registered once in the default registry (the one the admin listener
//! serves). Labels are low-cardinality: route names from the config and fixed outcome
//! strings, never paths, hosts or payer addresses.

use std::sync::{LazyLock, OnceLock};

use pingora_prometheus::prometheus::{
    register_gauge, register_gauge_vec, register_histogram, register_histogram_vec,
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
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
    /// `levy_payments_verified_total{route}`: payments that passed verification and were
    /// reserved.
    pub payments_verified: IntCounterVec,
    /// `levy_payments_rejected_total{route,reason}`: payments refused, by x402 reason.
    pub payments_rejected: IntCounterVec,
    /// `levy_payments_served_again_total{route}`: retries of a served payment (its payment
    /// id) forwarded again without a charge.
    pub payments_served_again: IntCounterVec,
    /// `levy_allowance_total{route,kind,outcome}`: calls counted against an allowance:
    /// `kind` `free_tier`, `payer` or `api_key`; `outcome` `taken`, `used_up` or
    /// `uncounted` (Redis could not be asked).
    pub allowance: IntCounterVec,
    /// `levy_mcp_calls_total{route,call,outcome}`: priced MCP calls (`call` is `tools/call
    /// <name>`, as the route prices it) by outcome: `payment_required`, `served` (charged)
    /// or `not_served` (an error or a tool error: not charged).
    pub mcp_calls: IntCounterVec,
    /// `levy_payments_charged_total{route}`: payments that bought a response.
    pub payments_charged: IntCounterVec,
    /// `levy_payments_released_total{route}`: reserved payments not charged because the
    /// upstream failed or answered an error.
    pub payments_released: IntCounterVec,
    /// `levy_verify_duration_seconds`: decode, match, hash and signature recovery.
    pub verify_duration: Histogram,
    /// `levy_live_nonces`: authorizations held in the replay set.
    pub live_nonces: IntGauge,
    /// `levy_settlements_total{state,reason}`: payments reaching settled, failed or
    /// needs_review, by reason (`ok` for settled).
    pub settlements: IntCounterVec,
    /// `levy_channel_vouchers_total{network}`: channel vouchers that bought a response.
    pub channel_vouchers: IntCounterVec,
    /// `levy_channel_claims_total{network}`: channels claimed on chain (one per channel per
    /// claim transaction).
    pub channel_claims: IntCounterVec,
    /// `levy_channel_claim_failures_total{network}`: claim transactions that failed.
    pub channel_claim_failures: IntCounterVec,
    /// `levy_channel_shortfalls_total`: claims cut to what was left in escrow.
    pub channel_shortfalls: IntCounter,
    /// `levy_channel_refunds_total{network}`: cooperative refunds sent on chain.
    pub channel_refunds: IntCounterVec,
    /// `levy_channel_resyncs_total{network}`: escrow reads at admission for a channel whose
    /// state levy had too long, or whose payer is withdrawing.
    pub channel_resyncs: IntCounterVec,
    /// `levy_settlement_queue_depth`: payments waiting for a batch.
    pub queue_depth: IntGauge,
    /// `levy_unsettled_value`: atomic units charged but not yet settled or failed.
    pub unsettled_value: Gauge,
    /// `levy_oldest_unsettled_age_seconds`: age of the oldest payment waiting for a batch.
    pub oldest_unsettled_age: IntGauge,
    /// `levy_settlement_batch_size`: payments per batch transaction.
    pub batch_size: Histogram,
    /// `levy_settlement_gas_per_payment`: gas used per settled payment, per batch.
    pub gas_per_payment: Histogram,
    /// `levy_settler_balance_gwei{network}`: the settler's gas balance.
    pub settler_balance: GaugeVec,
    /// `levy_funds_read_failures_total`: payer balance reads that failed or ran past their
    /// deadline.
    pub funds_unknown: IntCounter,
    /// `levy_state_round_trips_total`: exchanges with Redis (`levy.state.redis`): one per
    /// command or pipeline sent and answered (or timed out).
    pub state_round_trips: IntCounter,
    /// `levy_rpc_calls_total{method}`: JSON-RPC calls levy's settlement made to a chain, by
    /// method (answered, failed or timed out).
    pub rpc_calls: IntCounterVec,
    /// `levy_admission_reads_refused_total{why}`: chain reads for admitting a payment that
    /// were not started: `busy` (the chain's concurrent reads were all running) or
    /// `client_budget` (the client used its signature checks for the minute).
    pub admission_reads_refused: IntCounterVec,
    /// `levy_settlement_isolation_simulations_total`: simulations run beyond a batch's first
    /// to find which payments break it.
    pub isolation_simulations: IntCounter,
    /// `levy_settlement_reverted_transactions_total`: settlement transactions mined with a
    /// payment in them that did not transfer.
    pub reverted_transactions: IntCounter,
    /// `levy_lost_value_total`: atomic units served before settlement that then failed to
    /// settle.
    pub lost_value: IntCounter,
    /// `levy_settlement_backlogged`: 1 while the queue cannot drain before its earliest
    /// payment expires (new batched payments settle first or get 503).
    pub backlogged: IntGauge,
    /// `levy_settlement_replacements_total`: stuck batches re-signed at higher fees.
    pub batch_replacements: IntCounter,
    /// `levy_settle_first_total{pressure}`: batched payments settled before their response
    /// because of `payer_cap`, `total_cap` or `loss_budget`.
    pub settle_first: IntCounterVec,
    /// `levy_metered_units_total{route,unit}`: units metered routes delivered.
    pub metered_units: IntCounterVec,
    /// `levy_metered_amount_total{route}`: atomic units metered routes charged.
    pub metered_amount: IntCounterVec,
    /// `levy_config_reloads_total{outcome}`: reloads `applied` or `refused`.
    pub config_reloads: IntCounterVec,
    /// `levy_config_loaded_timestamp_seconds`: when the table now served was loaded.
    pub config_loaded: IntGauge,
    /// `levy_upstream_backend_healthy{upstream,backend}`: 1 while the health check passes.
    pub upstream_healthy: IntGaugeVec,
    /// `levy_payments_charged_value_total{route}`: atomic units charged (what paid
    /// requests bought, before settlement).
    pub charged_value: IntCounterVec,
    /// `levy_shadow_requests_total{route,verdict}`: requests on `shadow` routes, by what
    /// enforcing would have done: `would_charge`, `would_challenge` or `would_reject`.
    pub shadow_requests: IntCounterVec,
    /// `levy_shadow_value_total{route}`: atomic units `shadow` routes would have charged.
    pub shadow_value: IntCounterVec,
    /// `levy_audit_dropped_total`: audit lines dropped because the writer fell behind.
    pub audit_dropped: IntCounter,
    /// `levy_journal_accept_seconds`: from handing charged payments to the accept log until
    /// they are durable (waiting for the group, the write and the `fdatasync`).
    pub journal_accept: Histogram,
    /// `levy_journal_group_payments`: payments made durable by one accept-log sync.
    pub journal_group: Histogram,
    /// `levy_webhooks_total{type,outcome}`: webhook attempts `delivered`, `retried` or
    /// `gave_up`.
    pub webhooks: IntCounterVec,
}

/// Per-route handles to the hottest series, resolved once instead of hashing label values
/// on every request.
pub struct RouteMetrics {
    route: String,
    by_outcome: Vec<OnceLock<(IntCounter, Histogram)>>,
    pub challenges: IntCounter,
    pub payments_verified: IntCounter,
    pub payments_charged: IntCounter,
    pub charged_value: IntCounter,
}

impl RouteMetrics {
    /// Handles for `route` (a route name, or `-` for unmatched requests); `outcomes` is the
    /// number of distinct outcome labels.
    pub fn new(route: &str, outcomes: usize) -> Self {
        let m = metrics();
        Self {
            route: route.to_owned(),
            by_outcome: (0..outcomes).map(|_| OnceLock::new()).collect(),
            challenges: m.challenges.with_label_values(&[route]),
            payments_verified: m.payments_verified.with_label_values(&[route]),
            payments_charged: m.payments_charged.with_label_values(&[route]),
            charged_value: m.charged_value.with_label_values(&[route]),
        }
    }

    /// Counts one finished request with outcome number `index` labelled `outcome`.
    pub fn observe(&self, index: usize, outcome: &str, seconds: f64) {
        let Some(slot) = self.by_outcome.get(index) else {
            return;
        };
        let (count, duration) = slot.get_or_init(|| {
            let m = metrics();
            (
                m.requests
                    .with_label_values(&[self.route.as_str(), outcome]),
                m.request_duration
                    .with_label_values(&[self.route.as_str(), outcome]),
            )
        });
        count.inc();
        duration.observe(seconds);
    }
}

/// The process-wide metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    // The names and labels below are constants, so registration fails only if another part
    // of the process registered the same names: a programming error caught by any test.
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        Metrics {
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
        payments_verified: register_int_counter_vec!(
            "levy_payments_verified_total",
            "Payments verified and reserved, by route",
            &["route"]
        )
        .expect("levy_payments_verified_total registers once"),
        payments_served_again: register_int_counter_vec!(
            "levy_payments_served_again_total",
            "Retries of a served payment (same payment id) forwarded again without a charge, by route",
            &["route"]
        )
        .expect("levy_payments_served_again_total registers once"),
        allowance: register_int_counter_vec!(
            "levy_allowance_total",
            "Calls counted against a free tier or a rate limit, by route, kind (free_tier, payer, api_key) and outcome (taken, used_up, uncounted)",
            &["route", "kind", "outcome"]
        )
        .expect("levy_allowance_total registers once"),
        mcp_calls: register_int_counter_vec!(
            "levy_mcp_calls_total",
            "Priced MCP calls by route, call (method and name) and outcome (payment_required, served, not_served)",
            &["route", "call", "outcome"]
        )
        .expect("levy_mcp_calls_total registers once"),
        payments_rejected: register_int_counter_vec!(
            "levy_payments_rejected_total",
            "Payments refused, by route and x402 reason",
            &["route", "reason"]
        )
        .expect("levy_payments_rejected_total registers once"),
        payments_charged: register_int_counter_vec!(
            "levy_payments_charged_total",
            "Payments that bought a response, by route",
            &["route"]
        )
        .expect("levy_payments_charged_total registers once"),
        payments_released: register_int_counter_vec!(
            "levy_payments_released_total",
            "Reserved payments released uncharged after an upstream failure or error status, by route",
            &["route"]
        )
        .expect("levy_payments_released_total registers once"),
        verify_duration: register_histogram!(
            "levy_verify_duration_seconds",
            "Time to verify one payment header",
            vec![0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01]
        )
        .expect("levy_verify_duration_seconds registers once"),
        journal_accept: register_histogram!(
            "levy_journal_accept_seconds",
            "Time from handing charged payments to the accept log until they are durable",
            vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1]
        )
        .expect("levy_journal_accept_seconds registers once"),
        journal_group: register_histogram!(
            "levy_journal_group_payments",
            "Payments made durable by one accept-log sync",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
        )
        .expect("levy_journal_group_payments registers once"),
        live_nonces: register_int_gauge!("levy_live_nonces", "Authorizations held in the replay set")
            .expect("levy_live_nonces registers once"),
        settlements: register_int_counter_vec!(
            "levy_settlements_total",
            "Payments reaching a settlement state, by state and reason",
            &["state", "reason"]
        )
        .expect("levy_settlements_total registers once"),
        channel_vouchers: register_int_counter_vec!(
            "levy_channel_vouchers_total",
            "Channel vouchers that bought a response",
            &["network"]
        )
        .expect("levy_channel_vouchers_total registers once"),
        channel_resyncs: register_int_counter_vec!(
            "levy_channel_resyncs_total",
            "Escrow reads at admission for a channel levy knew too long, or whose payer is withdrawing",
            &["network"]
        )
        .expect("levy_channel_resyncs_total registers once"),
        channel_claims: register_int_counter_vec!(
            "levy_channel_claims_total",
            "Channels claimed on chain",
            &["network"]
        )
        .expect("levy_channel_claims_total registers once"),
        channel_claim_failures: register_int_counter_vec!(
            "levy_channel_claim_failures_total",
            "Channel claim transactions that failed",
            &["network"]
        )
        .expect("levy_channel_claim_failures_total registers once"),
        channel_shortfalls: register_int_counter!(
            "levy_channel_shortfalls_total",
            "Channel claims cut to what was left in escrow"
        )
        .expect("levy_channel_shortfalls_total registers once"),
        channel_refunds: register_int_counter_vec!(
            "levy_channel_refunds_total",
            "Cooperative channel refunds sent on chain",
            &["network"]
        )
        .expect("levy_channel_refunds_total registers once"),
        queue_depth: register_int_gauge!("levy_settlement_queue_depth", "Payments waiting for a batch")
            .expect("levy_settlement_queue_depth registers once"),
        unsettled_value: register_gauge!(
            "levy_unsettled_value",
            "Atomic units charged but not yet settled or failed"
        )
        .expect("levy_unsettled_value registers once"),
        oldest_unsettled_age: register_int_gauge!(
            "levy_oldest_unsettled_age_seconds",
            "Age of the oldest payment waiting for a batch"
        )
        .expect("levy_oldest_unsettled_age_seconds registers once"),
        batch_size: register_histogram!(
            "levy_settlement_batch_size",
            "Payments per settlement transaction",
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        )
        .expect("levy_settlement_batch_size registers once"),
        gas_per_payment: register_histogram!(
            "levy_settlement_gas_per_payment",
            "Gas used per settled payment",
            vec![20_000.0, 30_000.0, 40_000.0, 50_000.0, 60_000.0, 80_000.0, 100_000.0, 150_000.0]
        )
        .expect("levy_settlement_gas_per_payment registers once"),
        settler_balance: register_gauge_vec!(
            "levy_settler_balance_gwei",
            "The settler account's gas balance, by network",
            &["network"]
        )
        .expect("levy_settler_balance_gwei registers once"),
        admission_reads_refused: register_int_counter_vec!(
            "levy_admission_reads_refused_total",
            "Chain reads for admitting a payment that were not started, by why",
            &["why"]
        )
        .expect("levy_admission_reads_refused_total registers once"),
        isolation_simulations: register_int_counter!(
            "levy_settlement_isolation_simulations_total",
            "Simulations run beyond a batch's first to find which payments break it"
        )
        .expect("levy_settlement_isolation_simulations_total registers once"),
        reverted_transactions: register_int_counter!(
            "levy_settlement_reverted_transactions_total",
            "Settlement transactions mined with a payment in them that did not transfer"
        )
        .expect("levy_settlement_reverted_transactions_total registers once"),
        rpc_calls: register_int_counter_vec!(
            "levy_rpc_calls_total",
            "JSON-RPC calls made to a chain by settlement, by method",
            &["method"]
        )
        .expect("levy_rpc_calls_total registers once"),
        state_round_trips: register_int_counter!(
            "levy_state_round_trips_total",
            "Exchanges with Redis: one per command or pipeline sent"
        )
        .expect("levy_state_round_trips_total registers once"),
        funds_unknown: register_int_counter!(
            "levy_funds_read_failures_total",
            "Payer balance reads that failed or ran past their deadline"
        )
        .expect("levy_funds_read_failures_total registers once"),
        lost_value: register_int_counter!(
            "levy_lost_value_total",
            "Atomic units served before settlement that then failed to settle"
        )
        .expect("levy_lost_value_total registers once"),
        backlogged: register_int_gauge!(
            "levy_settlement_backlogged",
            "1 while the settlement queue cannot drain before its earliest payment expires"
        )
        .expect("levy_settlement_backlogged registers once"),
        batch_replacements: register_int_counter!(
            "levy_settlement_replacements_total",
            "Stuck settlement transactions re-signed with the same nonce at higher fees"
        )
        .expect("levy_settlement_replacements_total registers once"),
        settle_first: register_int_counter_vec!(
            "levy_settle_first_total",
            "Batched payments settled before their response, by what forced it",
            &["pressure"]
        )
        .expect("levy_settle_first_total registers once"),
        metered_units: register_int_counter_vec!(
            "levy_metered_units_total",
            "Units delivered on metered routes (bytes, records or origin-reported)",
            &["route", "unit"]
        )
        .expect("levy_metered_units_total registers once"),
        metered_amount: register_int_counter_vec!(
            "levy_metered_amount_total",
            "Atomic units charged on metered routes",
            &["route"]
        )
        .expect("levy_metered_amount_total registers once"),
        config_reloads: register_int_counter_vec!(
            "levy_config_reloads_total",
            "Config reloads (SIGHUP or POST /reload), by outcome: applied or refused",
            &["outcome"]
        )
        .expect("levy_config_reloads_total registers once"),
        config_loaded: register_int_gauge!(
            "levy_config_loaded_timestamp_seconds",
            "Unix time the route table now served was loaded"
        )
        .expect("levy_config_loaded_timestamp_seconds registers once"),
        upstream_healthy: register_int_gauge_vec!(
            "levy_upstream_backend_healthy",
            "1 while an upstream backend passes its health check, 0 while it fails",
            &["upstream", "backend"]
        )
        .expect("levy_upstream_backend_healthy registers once"),
        charged_value: register_int_counter_vec!(
            "levy_payments_charged_value_total",
            "Atomic units charged for paid responses, by route",
            &["route"]
        )
        .expect("levy_payments_charged_value_total registers once"),
        shadow_requests: register_int_counter_vec!(
            "levy_shadow_requests_total",
            "Requests on shadow routes, by what enforcing would have done",
            &["route", "verdict"]
        )
        .expect("levy_shadow_requests_total registers once"),
        shadow_value: register_int_counter_vec!(
            "levy_shadow_value_total",
            "Atomic units shadow routes would have charged",
            &["route"]
        )
        .expect("levy_shadow_value_total registers once"),
        audit_dropped: register_int_counter!(
            "levy_audit_dropped_total",
            "Audit log lines dropped because the writer fell behind"
        )
        .expect("levy_audit_dropped_total registers once"),
        webhooks: register_int_counter_vec!(
            "levy_webhooks_total",
            "Webhook delivery attempts, by alert type and outcome (delivered, retried, gave_up)",
            &["type", "outcome"]
        )
        .expect("levy_webhooks_total registers once"),
        }
    });
    &METRICS
}
