//! End-to-end tests: levy in-process in front of a real loopback origin, spoken to over
//! real sockets.

mod support;

mod a_free_route_forwards_requests_unchanged;
mod a_paid_request_is_verified_inline_and_charged_once;
mod a_priced_route_answers_with_a_402_challenge;
mod charged_payments_settle_on_a_real_chain;
mod hostile_requests_get_a_4xx_and_levy_keeps_serving;
mod official_clients_pay_through_levy;
mod operators_can_check_a_config_and_watch_levy;
mod request_forms_cannot_dodge_a_price;
mod routes_match_on_host_method_and_path_in_order;
mod settlement_keeps_up_or_levy_holds_back;
mod settlement_never_stalls;
mod settlement_survives_crashes_and_outages;
mod settlement_through_a_facilitator;
mod unfunded_and_cheating_payers_get_nothing;
mod upstream_failures_get_502_and_504;
