//! Every validation error a user can hit, with the message they see.

use super::*;
use crate::settle::journal::Durability;

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// A valid config with one priced route; `extra` is appended under `levy:`.
fn yaml(routes: &str, extra: &str) -> String {
    format!(
        "levy:\n  listeners:\n    data: 127.0.0.1:8080\n    admin: 127.0.0.1:9180\n  upstreams:\n    api:\n      address: 127.0.0.1:9000\n\
         {extra}  routes:\n{routes}"
    )
}

fn route(body: &str) -> String {
    format!("    - name: r\n      path: /r\n{body}")
}

fn priced(extra_keys: &str) -> String {
    route(&format!(
        "      price: \"$0.001\"\n      pay_to: \"{PAY_TO}\"\n      accepts:\n        - network: base-sepolia\n{extra_keys}"
    ))
}

fn error(text: &str) -> String {
    match Config::from_yaml(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_error(text: &str, expected: &str) {
    let message = error(text);
    assert!(
        message.contains(expected),
        "expected `{expected}` in `{message}`"
    );
}

#[test]
fn a_valid_config_builds_the_route_table() {
    let config = Config::from_yaml(&yaml(&priced(""), "")).expect("valid");
    assert_eq!(config.routes.len(), 1);
    let (_, route) = config.routes.iter().next().expect("one route");
    let Access::Priced(paywall) = &route.access else {
        panic!("route should be priced")
    };
    assert_eq!(
        paywall.requirements[0].amount,
        alloy_primitives::U256::from(1000)
    );
    assert_eq!(paywall.requirements[0].network, "eip155:84532");
    assert_eq!(paywall.requirements[0].eip712_name, "USDC");
}

#[test]
fn the_feed_example_config_is_valid_and_metered() {
    let config =
        Config::from_yaml(include_str!("../../conf/feed.example.yaml")).expect("feed example");
    let (_, route) = config.routes.iter().next().expect("a route");
    let Access::Priced(paywall) = &route.access else {
        panic!("the ticks route should be priced")
    };
    assert!(paywall.metered.is_some());
    assert_eq!(paywall.challenge.accepts_v2()[0].scheme, "upto");
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../conf/levy.example.yaml");
    let config = Config::from_yaml(text).expect("example config");
    assert!(config.describe().contains("weather"));
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let message = error(&yaml(&priced("      prize: 3\n"), ""));
    assert!(
        message.contains("levy.routes[0]: unknown field `prize`"),
        "{message}"
    );
    assert!(message.contains("at line 15 column 7"), "{message}");
}

#[test]
fn a_bad_listener_address_is_refused() {
    let text = yaml(&priced(""), "").replace("data: 127.0.0.1:8080", "data: localhost");
    assert_error(
        &text,
        "levy.listeners.data: `localhost` is not an IP:port address",
    );
}

#[test]
fn a_malformed_address_is_refused() {
    assert_error(
        &yaml(&priced("").replace(PAY_TO, "0x1234"), ""),
        "levy.routes[0].pay_to: `0x1234` is not an address (0x and 40 hex digits)",
    );
}

#[test]
fn an_address_with_a_bad_checksum_is_refused() {
    let bad = PAY_TO.replace("Bc6", "bC6");
    assert_error(
        &yaml(&priced("").replace(PAY_TO, &bad), ""),
        &format!("levy.routes[0].pay_to: `{bad}` has a bad EIP-55 checksum (expected {PAY_TO})"),
    );
}

#[test]
fn an_all_lowercase_address_is_accepted() {
    Config::from_yaml(&yaml(
        &priced("").replace(PAY_TO, &PAY_TO.to_lowercase()),
        "",
    ))
    .expect("lowercase address");
}

#[test]
fn an_unknown_network_is_refused() {
    assert_error(
        &yaml(&priced("").replace("base-sepolia", "base-goerli"), ""),
        "levy.routes[0].accepts[0].network: unknown network `base-goerli`",
    );
}

#[test]
fn an_unknown_asset_is_refused() {
    assert_error(
        &yaml(&priced("          asset: dai\n"), ""),
        "levy.routes[0].accepts[0].asset: unknown asset `dai` on network `base-sepolia`",
    );
}

#[test]
fn a_price_finer_than_the_asset_decimals_is_refused() {
    assert_error(
        &yaml(&priced("").replace("$0.001", "$0.0000001"), ""),
        "levy.routes[0].price: price `$0.0000001` needs 7 decimals but the asset has 6 (asset `usdc` on `base-sepolia`)",
    );
}

#[test]
fn a_malformed_price_is_refused() {
    assert_error(
        &yaml(&priced("").replace("\"$0.001\"", "\"0.001\""), ""),
        "levy.routes[0].price: `0.001` is not a dollar price",
    );
    assert_error(
        &yaml(&priced("").replace("\"$0.001\"", "\"$1,50\""), ""),
        "levy.routes[0].price: `$1,50` is not a decimal number",
    );
}

#[test]
fn a_dollar_price_on_a_non_usd_asset_is_refused() {
    let assets = "  networks:\n    local: {chain_id: 31337, rpc_url: \"http://127.0.0.1:8545\"}\n  assets:\n    \
                  - {name: tok, network: local, address: \"0x5FbDB2315678afecb367f032d93F642f64180aa3\", eip712_name: Tok, eip712_version: \"1\", decimals: 18}\n";
    let text = yaml(
        &priced("").replace("- network: base-sepolia", "- {network: local, asset: tok}"),
        assets,
    );
    assert_error(
        &text,
        "levy.routes[0].price: a dollar price needs a USD stablecoin, and `tok` is not one",
    );
    let atomic = text.replace("price: \"$0.001\"", "amount: \"1000000000000000\"");
    Config::from_yaml(&atomic).expect("an atomic amount works on any asset");
}

#[test]
fn price_and_amount_together_are_refused() {
    assert_error(
        &yaml(&priced("      amount: 5\n"), ""),
        "levy.routes[0].amount: give either `price` or `amount`, not both",
    );
}

const BATCHER: &str = "  networks:\n    base-sepolia:\n      batcher: \"0x4242424242424242424242424242424242424242\"\n";

fn metered(meter: &str, extra_keys: &str) -> String {
    route(&format!(
        "      meter: {meter}\n      pay_to: \"{PAY_TO}\"\n      accepts:\n        - network: base-sepolia\n{extra_keys}"
    ))
}

/// The paywall of a config's only route.
fn only_paywall(config: &Config) -> &Paywall {
    let (_, route) = config.routes.iter().next().expect("one route");
    let Access::Priced(paywall) = &route.access else {
        panic!("route should be priced")
    };
    paywall
}

/// The v2 challenge's entries as (scheme, amount), in order.
fn offered(paywall: &Paywall) -> Vec<(&str, String)> {
    paywall
        .challenge
        .accepts_v2()
        .iter()
        .map(|r| (r.scheme.as_str(), r.amount.clone()))
        .collect()
}

#[test]
fn a_metered_route_offers_upto_first_and_its_fixed_price_after() {
    let config = Config::from_yaml(&yaml(
        &metered(
            "{unit: records, price: \"$0.0001\", ceiling: \"$0.05\", minimum: \"$0.001\"}",
            "      price: \"$0.01\"\n",
        ),
        BATCHER,
    ))
    .expect("valid");
    let paywall = only_paywall(&config);
    let offered = offered(paywall);
    assert_eq!(
        offered,
        [("upto", "50000".to_owned()), ("exact", "10000".to_owned())]
    );
    let upto = &paywall.challenge.accepts_v2()[0];
    assert_eq!(
        upto.extra["facilitatorAddress"],
        "0x4242424242424242424242424242424242424242"
    );
    assert_eq!(upto.extra["assetTransferMethod"], "permit2");
    let rates = paywall.metered.as_ref().expect("metered").rates[0].expect("rates");
    assert_eq!(rates.unit_price, alloy_primitives::U256::from(100));
    assert_eq!(rates.minimum, alloy_primitives::U256::from(1000));
    assert_eq!(
        paywall.challenge.accepts_v1().len(),
        1,
        "v1 sees exact only"
    );
}

#[test]
fn a_metered_route_needs_the_networks_batcher() {
    assert_error(
        &yaml(
            &metered("{unit: bytes, price: \"1\", ceiling: \"1000\"}", ""),
            "",
        ),
        "levy.networks.base-sepolia.batcher: missing",
    );
}

#[test]
fn meter_keys_that_do_not_fit_the_unit_are_refused() {
    assert_error(
        &yaml(
            &metered(
                "{unit: records, price: \"1\", ceiling: \"1000\", per: 10}",
                "",
            ),
            BATCHER,
        ),
        "levy.routes[0].meter.per: only for `unit: bytes`",
    );
    assert_error(
        &yaml(
            &metered(
                "{unit: bytes, price: \"1\", ceiling: \"10\", minimum: \"11\"}",
                "",
            ),
            BATCHER,
        ),
        "levy.routes[0].meter.minimum: is above the ceiling",
    );
    assert_error(
        &yaml(
            &metered("{unit: bytes, price: \"$x\", ceiling: \"10\"}", ""),
            BATCHER,
        ),
        "levy.routes[0].meter.price",
    );
    assert_error(
        &yaml(
            &metered(
                "{unit: origin, price: \"1\", ceiling: \"10\", at_ceiling: end}",
                "",
            ),
            BATCHER,
        ),
        "levy.routes[0].meter.at_ceiling: `end` needs a unit levy counts",
    );
}

#[test]
fn a_metered_response_ends_at_its_ceiling_unless_the_route_says_continue_or_counts_origin_units() {
    let at_ceiling = |meter: &str| {
        let config = Config::from_yaml(&yaml(&metered(meter, ""), BATCHER)).expect("valid");
        only_paywall(&config)
            .metered
            .as_ref()
            .expect("metered")
            .at_ceiling
    };
    use crate::config::AtCeiling;
    assert_eq!(
        at_ceiling("{unit: records, price: \"1\", ceiling: \"10\"}"),
        AtCeiling::End
    );
    assert_eq!(
        at_ceiling("{unit: bytes, price: \"1\", ceiling: \"10\", at_ceiling: continue}"),
        AtCeiling::Continue
    );
    assert_eq!(
        at_ceiling("{unit: origin, price: \"1\", ceiling: \"10\"}"),
        AtCeiling::Continue
    );
}

#[test]
fn a_route_without_price_or_free_is_refused() {
    assert_error(
        &yaml(&route(""), ""),
        "levy.routes[0]: a route needs `price` (e.g. \"$0.001\"), `amount` (atomic units), `meter` or `free: true`",
    );
}

#[test]
fn a_free_route_with_a_price_is_refused() {
    assert_error(
        &yaml(&priced("      free: true\n"), ""),
        "levy.routes[0].price: not allowed on a free route",
    );
}

#[test]
fn a_priced_route_without_pay_to_is_refused() {
    assert_error(
        &yaml(
            &priced("").replace(&format!("      pay_to: \"{PAY_TO}\"\n"), ""),
            "",
        ),
        "levy.routes[0].pay_to: missing; give `pay_to` on the route or `levy.pay_to`",
    );
}

#[test]
fn a_priced_route_without_accepts_is_refused() {
    let text = yaml(
        &route(&format!("      amount: 1\n      pay_to: \"{PAY_TO}\"\n")),
        "",
    );
    assert_error(
        &text,
        "levy.routes[0].accepts: a priced route needs at least one accepted (network, asset) pair",
    );
}

#[test]
fn duplicate_route_names_are_refused() {
    let two = format!(
        "{}{}",
        route("      free: true\n"),
        route("      free: true\n")
    );
    assert_error(
        &yaml(&two, ""),
        "levy.routes[1].name: duplicate route name `r`",
    );
}

#[test]
fn an_unknown_upstream_is_refused() {
    assert_error(
        &yaml(&route("      free: true\n      upstream: nope\n"), ""),
        "levy.routes[0].upstream: unknown upstream `nope` (known: api)",
    );
}

#[test]
fn an_unknown_default_upstream_is_refused() {
    assert_error(
        &yaml(
            &priced(""),
            "  unmatched:\n    action: pass\n    upstream: ghost\n",
        ),
        "levy.unmatched.upstream: unknown upstream `ghost` (known: api)",
    );
    assert_error(
        &yaml(&priced(""), "  unmatched:\n    action: pass\n"),
        "levy.unmatched.upstream: `action: pass` needs an upstream",
    );
}

#[test]
fn a_default_that_no_request_can_reach_is_refused() {
    let catch_all = "    - {name: all, path: /*, free: true}\n";
    assert_error(
        &yaml(catch_all, "  unmatched:\n    action: not_found\n"),
        "levy.unmatched: is never used: route `all` matches every request",
    );
}

#[test]
fn a_route_after_a_catch_all_is_refused() {
    let routes = format!(
        "    - {{name: all, path: /*, free: true}}\n{}",
        route("      free: true\n")
    );
    assert_error(
        &yaml(&routes, ""),
        "levy.routes[1]: route `r` can never match: route `all` before it matches every request",
    );
}

#[test]
fn bad_path_and_host_patterns_are_refused() {
    assert_error(
        &yaml(
            &route("      free: true\n").replace("path: /r", "path: /a/*/b"),
            "",
        ),
        "levy.routes[0].path: `*` may only be the whole last segment",
    );
    assert_error(
        &yaml(
            &route("      free: true\n      host: \"https://x.com\"\n"),
            "",
        ),
        "levy.routes[0].host: a host pattern must be a host name or `*.domain`",
    );
}

#[test]
fn a_bad_upstream_address_is_refused() {
    let text = yaml(&priced(""), "").replace("address: 127.0.0.1:9000", "address: 127.0.0.1");
    assert_error(
        &text,
        "levy.upstreams.api.address: `127.0.0.1` is not host:port",
    );
}

#[test]
fn a_custom_network_needs_a_chain_id_and_a_consistent_caip2() {
    assert_error(
        &yaml(
            &priced(""),
            "  networks:\n    mine: {rpc_url: \"http://127.0.0.1:8545\"}\n",
        ),
        "levy.networks.mine.chain_id: missing (required for a network levy does not know)",
    );
    assert_error(
        &yaml(
            &priced(""),
            "  networks:\n    mine: {chain_id: 5, caip2: \"eip155:6\"}\n",
        ),
        "levy.networks.mine.caip2: `eip155:6` does not match chain_id 5",
    );
}

#[test]
fn a_built_in_network_can_be_pointed_at_another_rpc() {
    let config = Config::from_yaml(&yaml(
        &priced(""),
        "  networks:\n    base-sepolia: {rpc_url: \"http://127.0.0.1:8545\"}\n",
    ))
    .expect("override");
    let network = &config.networks["base-sepolia"];
    assert_eq!(network.chain_id, 84532);
    assert_eq!(network.rpc_url.as_deref(), Some("http://127.0.0.1:8545"));
    assert_eq!(network.v1_name.as_deref(), Some("base-sepolia"));
}

#[test]
fn an_asset_declared_twice_is_refused() {
    let asset = "    - {name: tok, network: base, address: \"0x5FbDB2315678afecb367f032d93F642f64180aa3\", eip712_name: T, eip712_version: \"1\", decimals: 6}\n";
    assert_error(
        &yaml(&priced(""), &format!("  assets:\n{asset}{asset}")),
        "levy.assets[1].name: asset `tok` is declared twice on network `base`",
    );
}

#[test]
fn the_same_network_and_asset_twice_in_accepts_is_refused() {
    assert_error(
        &yaml(&priced("        - network: base-sepolia\n"), ""),
        "levy.routes[0].accepts[1]: the same (network, asset) pair is listed twice",
    );
}

#[test]
fn payment_settings_default_and_can_be_changed() {
    let config = Config::from_yaml(&yaml(&priced(""), "")).expect("defaults");
    assert_eq!(config.policy.valid_before_margin_seconds, 30);
    assert_eq!(config.payer_headers.payer.as_str(), "x-levy-payer");
    let custom = Config::from_yaml(&yaml(
        &priced(""),
        "  payments:\n    valid_before_margin_seconds: 90\n    headers: {payer: X-Paid-By}\n",
    ))
    .expect("custom");
    assert_eq!(custom.policy.valid_before_margin_seconds, 90);
    assert_eq!(custom.payer_headers.payer.as_str(), "x-paid-by");
    assert_eq!(custom.payer_headers.amount.as_str(), "x-levy-amount");
}

#[test]
fn a_settlement_margin_longer_than_a_route_timeout_is_refused() {
    assert_error(
        &yaml(&priced("      max_timeout_seconds: 20\n"), ""),
        "levy.routes[0].max_timeout_seconds: must exceed levy.payments.valid_before_margin_seconds (30)",
    );
}

#[test]
fn bad_payer_header_names_are_refused() {
    assert_error(
        &yaml(
            &priced(""),
            "  payments:\n    headers: {payer: \"Bad Header\"}\n",
        ),
        "levy.payments.headers.payer: `Bad Header` is not a header name",
    );
    assert_error(
        &yaml(
            &priced(""),
            "  payments:\n    headers: {payer: X-A, amount: x-a}\n",
        ),
        "levy.payments.headers: the header names must differ",
    );
    assert_error(
        &yaml(&priced(""), "  payments:\n    headers: {payer: Host}\n"),
        "levy.payments.headers: `host` cannot carry payer information",
    );
}

#[test]
fn a_zero_admission_read_limit_names_the_key() {
    let text = yaml(
        &priced(""),
        "  settlement:\n    journal_path: /tmp/j.redb\n    funds: {max_concurrent_reads: 0}\n",
    );
    let error = Config::from_yaml(&text).expect_err("refused").to_string();
    assert!(
        error.contains("settlement.funds.max_concurrent_reads")
            && error.contains("greater than zero"),
        "{error}"
    );
}

#[test]
fn levy_check_shows_the_default_exposure_caps_and_loss_budget() {
    let text = yaml(
        &priced(""),
        "  settlement:\n    journal_path: /tmp/j.redb\n",
    );
    let described = Config::from_yaml(&text).expect("valid").describe();
    assert!(
        described.contains(
            "exposure: per payer 1000000 atomic units, in total 100000000 atomic units; \
             loss budget 10000000 atomic units per 3600 s; funds check on"
        ),
        "{described}"
    );
    assert!(
        described.contains(
            "chain reads for admission: at most 64 at once per network; 60 signature checks \
             on chain per client address per minute"
        ),
        "{described}"
    );
    let unlimited = yaml(
        &priced(""),
        "  settlement:\n    journal_path: /tmp/j.redb\n    max_unsettled_per_payer: unlimited\n",
    );
    assert!(Config::from_yaml(&unlimited)
        .expect("valid")
        .describe()
        .contains("per payer unlimited"));
    assert_error(
        &yaml(
            &priced(""),
            "  settlement:\n    journal_path: /tmp/j.redb\n    retention_days: 0\n    loss_budget: lots\n",
        ),
        "levy.settlement.loss_budget",
    );
}

#[test]
fn channel_settings_out_of_range_are_named() {
    let settlement = |channel_keys: &str| {
        format!(
            "  settlement:\n    journal_path: /tmp/j.redb\n    channels:\n      authorizer: \"{PAY_TO}\"\n{channel_keys}"
        )
    };
    assert_error(
        &yaml(
            &priced(""),
            &settlement("      refund_idle_after_seconds: 0\n"),
        ),
        "levy.settlement.channels.refund_idle_after_seconds: must be at least 1",
    );
    assert_error(
        &yaml(&priced(""), &settlement("      watch_every_seconds: 0\n")),
        "levy.settlement.channels.watch_every_seconds: must be between 1 and 300",
    );
}

#[test]
fn a_metered_route_with_a_channel_sells_vouchers_at_its_ceiling_ahead_of_upto() {
    let channels = format!(
        "{BATCHER}  settlement:\n    journal_path: /tmp/j.redb\n    channels:\n      authorizer: \"{PAY_TO}\"\n"
    );
    let config = Config::from_yaml(&yaml(
        &metered(
            "{unit: bytes, price: \"$0.0001\", ceiling: \"$0.05\"}",
            "      channel: {}\n",
        ),
        &channels,
    ))
    .expect("valid");
    let paywall = only_paywall(&config);
    let offered = offered(paywall);
    assert_eq!(
        offered,
        [
            ("batch-settlement", "50000".to_owned()),
            ("upto", "50000".to_owned())
        ]
    );
    let rates = &paywall.metered.as_ref().expect("metered").rates;
    assert!(rates[0].is_some(), "the channel entry is metered too");
}

#[test]
fn shared_state_is_embedded_by_default_and_a_bad_redis_section_is_named() {
    let config = Config::from_yaml(&yaml(&priced(""), "")).expect("valid");
    assert_eq!(config.state, None);
    let embedded = Config::from_yaml(&yaml(&priced(""), "  state: embedded\n")).expect("valid");
    assert_eq!(embedded.state, None);
    let redis = Config::from_yaml(&yaml(
        &priced(""),
        "  state:\n    redis: {url: \"redis://10.0.0.5:6379/2\"}\n",
    ))
    .expect("valid");
    let spec = redis.state.expect("redis");
    assert_eq!(
        (spec.key_prefix.as_str(), spec.timeout.as_millis()),
        ("levy:v1:", 250)
    );
    assert_error(
        &yaml(&priced(""), "  state:\n    redis: {url: \"http://x\"}\n"),
        "levy.state.redis.url: must start with redis://",
    );
    assert_error(
        &yaml(
            &priced(""),
            "  state:\n    redis: {url: \"redis://x\", key_prefix: \"\"}\n",
        ),
        "levy.state.redis.key_prefix: must not be empty",
    );
    assert_error(
        &yaml(
            &priced(""),
            "  state:\n    redis: {url: \"redis://x\", pool: 3}\n",
        ),
        "unknown field `pool`",
    );
    assert_error(
        &yaml(&priced(""), "  state: shared\n"),
        "expected `embedded` or `redis: {url: …}`",
    );
}

#[test]
fn a_config_without_a_data_or_tls_listener_is_refused() {
    let text = yaml(&priced(""), "").replace("    data: 127.0.0.1:8080\n", "");
    assert_error(&text, "levy.listeners: needs a data listener");
}

#[test]
fn a_tls_listener_names_the_certificate_it_cannot_read() {
    let text = yaml(
        &priced(""),
        "",
    )
    .replace(
        "    admin: 127.0.0.1:9180\n",
        "    admin: 127.0.0.1:9180\n    tls:\n      address: 127.0.0.1:8443\n      certificates:\n        - {cert: /nonexistent/a.pem, key: /nonexistent/a.key}\n",
    );
    assert_error(
        &text,
        "levy.listeners.tls.certificates[0]: cannot read `/nonexistent/a.pem`",
    );
}

#[test]
fn an_upstream_needs_one_of_address_or_addresses() {
    let both = yaml(&priced(""), "").replace(
        "      address: 127.0.0.1:9000\n",
        "      address: 127.0.0.1:9000\n      addresses: [\"127.0.0.1:9001\"]\n",
    );
    assert_error(
        &both,
        "levy.upstreams.api: set `address` or `addresses`, not both",
    );
    let pool = yaml(&priced(""), "").replace(
        "      address: 127.0.0.1:9000\n",
        "      addresses: [\"127.0.0.1:9001\", \"nonsense\"]\n",
    );
    assert_error(
        &pool,
        "levy.upstreams.api.addresses[1]: `nonsense` is not host:port",
    );
    let check = yaml(&priced(""), "").replace(
        "      address: 127.0.0.1:9000\n",
        "      address: 127.0.0.1:9000\n      health_check: {path: health}\n",
    );
    assert_error(
        &check,
        "levy.upstreams.api.health_check.path: `health` is not an absolute path",
    );
}

#[test]
fn an_admin_token_must_be_long_enough_and_come_from_one_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "short\n").expect("write");
    let short = yaml(
        &priced(""),
        &format!("  admin: {{token_file: {}}}\n", file.display()),
    );
    assert_error(
        &short,
        "levy.admin.token_file: the token must be at least 16 characters",
    );
    std::fs::write(&file, "a-token-long-enough-to-use\n").expect("write");
    let config = Config::from_yaml(&yaml(
        &priced(""),
        &format!("  admin: {{token_file: {}}}\n", file.display()),
    ))
    .expect("valid");
    let token = config.admin_token.expect("token");
    assert!(token.admits(Some(b"Bearer a-token-long-enough-to-use")));
    assert!(!token.admits(Some(b"Bearer a-token-long-enough-to-usE")));
    assert!(!token.admits(Some(b"a-token-long-enough-to-use")));
    assert!(!token.admits(None));
    assert!(
        !format!("{token:?}").contains("long-enough"),
        "Debug shows the token"
    );
    let both = yaml(
        &priced(""),
        &format!(
            "  admin: {{token_env: X, token_file: {}}}\n",
            file.display()
        ),
    );
    assert_error(
        &both,
        "levy.admin: set `token_env` or `token_file`, not both",
    );
}

#[test]
fn a_reload_names_the_keys_a_running_levy_cannot_change() {
    let old = Config::from_yaml(&yaml(&priced(""), "")).expect("valid");
    let repriced =
        Config::from_yaml(&yaml(&priced(""), "").replace("$0.001", "$0.002")).expect("valid");
    assert!(old.fixed_changes(&repriced).is_empty());
    let moved = Config::from_yaml(&yaml(&priced(""), "").replace("8080", "8081")).expect("valid");
    assert_eq!(old.fixed_changes(&moved), vec!["levy.listeners.data"]);
    let threads = Config::from_yaml(&format!(
        "pingora:\n  threads: 4\n{}",
        yaml(&priced(""), "")
    ))
    .expect("valid");
    assert_eq!(old.fixed_changes(&threads), vec!["pingora"]);
}

#[test]
fn webhooks_need_a_secret_known_events_and_an_http_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-long-enough-to-sign\n").expect("write");
    let hooks = |endpoint: &str| {
        yaml(
            &priced(""),
            &format!("  webhooks:\n    settler_gas_below_gwei: 5000000\n    endpoints:\n      - {endpoint}\n"),
        )
    };
    let with_secret = |rest: &str| {
        hooks(&format!(
            "{{url: \"http://127.0.0.1:9300/hooks\", secret_file: {}{rest}}}",
            secret.display()
        ))
    };
    let config = Config::from_yaml(&with_secret("")).expect("valid");
    let spec = config.webhooks.expect("webhooks");
    assert_eq!(
        spec.endpoints[0].events,
        crate::alerts::AlertKind::ALL.to_vec()
    );
    assert_eq!(spec.endpoints[0].secret, b"a-secret-long-enough-to-sign");
    assert_eq!(spec.settler_gas_below_gwei, Some(5_000_000));
    assert!(
        !format!("{spec:?}").contains("long-enough"),
        "Debug shows the secret"
    );
    let only = Config::from_yaml(&with_secret(", events: [payment.needs_review]")).expect("valid");
    assert_eq!(
        only.webhooks.expect("webhooks").endpoints[0].events,
        vec![crate::alerts::AlertKind::NeedsReview]
    );
    assert_error(
        &with_secret(", events: [needs_review]"),
        "levy.webhooks.endpoints[0].events: unknown event `needs_review` (known: payment.needs_review, settler.gas_low, settlement.loss_budget_tripped)",
    );
    assert_error(
        &hooks("{url: \"http://127.0.0.1:9300/hooks\"}"),
        "levy.webhooks.endpoints[0]: set `secret_env` or `secret_file`: receivers verify each delivery's signature with it",
    );
    assert_error(
        &hooks(&format!(
            "{{url: \"ftp://x\", secret_file: {}}}",
            secret.display()
        )),
        "levy.webhooks.endpoints[0].url: `ftp://x` is not an http(s) URL",
    );
    assert_error(
        &yaml(&priced(""), "  audit_log: /nonexistent/dir/audit.jsonl\n"),
        "levy.audit_log: `/nonexistent/dir/audit.jsonl` is not a file in an existing directory",
    );
    let audited = yaml(
        &priced(""),
        &format!(
            "  audit_log: {}\n",
            dir.path().join("audit.jsonl").display()
        ),
    );
    let old = Config::from_yaml(&yaml(&priced(""), "")).expect("valid");
    let new = Config::from_yaml(&audited).expect("valid");
    assert_eq!(old.fixed_changes(&new), vec!["levy.audit_log"]);
}

#[test]
fn shadow_mode_comes_from_the_route_or_else_from_levy_mode_and_only_on_priced_routes() {
    let global = Config::from_yaml(&yaml(&priced(""), "  mode: shadow\n")).expect("valid");
    assert_eq!(only_paywall(&global).mode, super::Mode::Shadow);
    let overridden = Config::from_yaml(&yaml(&priced("      mode: enforce\n"), "  mode: shadow\n"))
        .expect("valid");
    assert_eq!(only_paywall(&overridden).mode, super::Mode::Enforce);
    let default = Config::from_yaml(&yaml(&priced(""), "")).expect("valid");
    assert_eq!(only_paywall(&default).mode, super::Mode::Enforce);
    assert!(global.describe().contains("(shadow: never charged)"));
    assert_error(
        &yaml(&route("      free: true\n      mode: shadow\n"), ""),
        "levy.routes[0].mode: not allowed on a free route",
    );
    assert!(error(&yaml(&priced("      mode: audit\n"), "")).contains("unknown variant `audit`"));
}

#[test]
fn durability_is_sync_unless_a_priced_route_asks_for_async() {
    let default = Config::from_yaml(&yaml(&priced(""), "")).expect("valid");
    assert_eq!(only_paywall(&default).durability, Durability::Sync);
    let fast = Config::from_yaml(&yaml(&priced("      durability: async\n"), "")).expect("valid");
    assert_eq!(only_paywall(&fast).durability, Durability::Async);
    assert!(fast.describe().contains("(async durability)"));
    assert_error(
        &yaml(&route("      free: true\n      durability: async\n"), ""),
        "levy.routes[0].durability: not allowed on a free route",
    );
    assert!(error(&yaml(&priced("      durability: eventually\n"), ""))
        .contains("unknown variant `eventually`, expected `sync` or `async`"));
}

#[test]
fn a_paywall_look_names_the_key_it_cannot_use() {
    assert_error(
        &yaml(&priced(""), "  paywall: {accent_color: blue}\n"),
        "levy.paywall.accent_color: `blue` is not a colour (#rgb or #rrggbb)",
    );
    assert_error(
        &yaml(&priced("      paywall: {logo_url: \"ftp://x\"}\n"), ""),
        "levy.routes[0].paywall.logo_url: `ftp://x` is not an http(s) URL",
    );
    assert_error(
        &yaml(&priced(""), "  paywall: {template: /nonexistent/page.html}\n"),
        "levy.paywall.template: cannot read `/nonexistent/page.html`: No such file or directory (os error 2)",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let template = dir.path().join("page.html");
    std::fs::write(&template, "<html>{{script}}</html>").expect("write");
    assert_error(
        &yaml(
            &priced(&format!(
                "      paywall: {{template: {}}}\n",
                template.display()
            )),
            "",
        ),
        "levy.routes[0].paywall.template: the template has no {{app}} placeholder",
    );
    assert!(error(&yaml(&priced(""), "  paywall: maybe\n")).contains("expected `false`, `true`"));
    // A route's own keys win over levy.paywall's, and `false` anywhere keeps the plain page.
    let config = Config::from_yaml(&yaml(
        &priced("      paywall: {title: Ours}\n"),
        "  paywall: {title: Theirs, accent_color: \"#123\"}\n",
    ))
    .expect("valid");
    let page = only_paywall(&config).challenge.page("dGVybXM=");
    let html = String::from_utf8(page.body.to_vec()).expect("utf-8");
    assert!(html.contains("<title>Ours</title>") && html.contains("--accent:#123"));
    let off = Config::from_yaml(&yaml(
        &priced("      paywall: false\n"),
        "  paywall: {title: T}\n",
    ))
    .expect("valid");
    assert!(only_paywall(&off).challenge.page("dGVybXM=").csp.is_none());
}

#[test]
fn settled_routes_accepting_assets_of_different_decimals_or_redis_with_an_18_decimal_asset_are_refused(
) {
    let assets = "  networks:\n    local: {chain_id: 31337, rpc_url: \"http://127.0.0.1:8545\"}\n  assets:\n    \
                  - {name: tok, network: local, address: \"0x5FbDB2315678afecb367f032d93F642f64180aa3\", eip712_name: Tok, eip712_version: \"1\", decimals: 18}\n";
    let settlement = "  settlement:\n    journal_path: /tmp/j.redb\n";
    let both = route(&format!(
        "      amount: \"1000\"\n      pay_to: \"{PAY_TO}\"\n      accepts:\n        - network: base-sepolia\n        - {{network: local, asset: tok}}\n"
    ));
    assert_error(
        &yaml(&both, &format!("{assets}{settlement}")),
        "asset `tok` has 18 decimals but `usdc` (route `r`) has 6",
    );
    // Without settlement nothing is capped: both may be accepted.
    Config::from_yaml(&yaml(&both, assets)).expect("no caps without settlement");
    let only_tok = route(&format!(
        "      amount: \"1000\"\n      pay_to: \"{PAY_TO}\"\n      accepts:\n        - {{network: local, asset: tok}}\n"
    ));
    Config::from_yaml(&yaml(&only_tok, &format!("{assets}{settlement}")))
        .expect("one asset of 18 decimals is fine on its own");
    assert_error(
        &yaml(
            &only_tok,
            &format!(
                "{assets}{settlement}  state:\n    redis: {{url: \"redis://127.0.0.1:6379\"}}\n"
            ),
        ),
        "asset `tok` has 18 decimals: levy.state.redis counts exposure in 64-bit integers",
    );
}

#[test]
fn discovery_terms_that_cannot_be_listed_are_refused_by_key() {
    for (keys, expected) in [
        (
            "      methods: [GET]\n      discovery: {body: {q: 1}}\n",
            "levy.routes[0].discovery.body: a GET request has no body to describe; use `query`",
        ),
        (
            "      discovery: {method: POST, query: {a: b}}\n",
            "levy.routes[0].discovery.query: a POST route describes its `body`, not its `query`",
        ),
        (
            "      methods: [GET]\n      discovery: {method: POST}\n",
            "levy.routes[0].discovery.method: `POST` is not one of the route's methods",
        ),
        (
            "      discovery: {method: OPTIONS}\n",
            "levy.routes[0].discovery.method: `OPTIONS` cannot be listed",
        ),
        (
            "      discovery: {body_type: xml}\n",
            "levy.routes[0].discovery.body_type: `xml` is not one of `json`, `form-data`, `text`",
        ),
        (
            "      discovery: {tags: [a, b, c, d, e, f]}\n",
            "levy.routes[0].discovery.tags: at most 5 tags",
        ),
        (
            "      discovery: {tags: [Weather, weather]}\n",
            "levy.routes[0].discovery.tags[1]: listed twice",
        ),
        (
            "      discovery: {service_name: \"a name far longer than thirty-two characters\"}\n",
            "levy.routes[0].discovery.service_name: must be 1 to 32 printable ASCII characters",
        ),
        (
            "      discovery: {icon_url: \"https://127.0.0.1/icon.png\"}\n",
            "levy.routes[0].discovery.icon_url: needs a public host name",
        ),
        (
            "      discovery: {output_schema: [1]}\n",
            "levy.routes[0].discovery.output_schema: must be a JSON Schema object",
        ),
    ] {
        assert_error(&yaml(&priced(keys), ""), expected);
    }
    assert_error(
        &yaml(&route("      free: true\n      discovery: true\n"), ""),
        "levy.routes[0].discovery: not allowed on a free route",
    );
    assert_error(
        &yaml(&priced(""), "  discovery: {openapi_path: openapi.json}\n"),
        "levy.discovery.openapi_path: `openapi.json` is not a path",
    );
}

#[test]
fn documents_are_served_only_when_a_route_is_discoverable() {
    let quiet = Config::from_yaml(&yaml(&priced(""), "")).expect("valid");
    assert_eq!(quiet.discovery, None);
    let listed = Config::from_yaml(&yaml(
        &priced("      discovery: true\n"),
        "  discovery: {openapi_path: \"\"}\n",
    ))
    .expect("valid");
    assert_eq!(
        listed.discovery,
        Some(Documents {
            title: "levy".into(),
            well_known: true,
            openapi_path: None,
        })
    );
    let paywall = only_paywall(&listed);
    let discovery = paywall.challenge.discovery().expect("discoverable");
    assert_eq!(discovery.terms().method, "GET");
}

#[test]
fn an_offer_key_that_cannot_be_loaded_is_refused_by_key() {
    let dir = std::env::temp_dir().join(format!("levy-offer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.key");
    std::fs::write(&bad, "0x1234").expect("write");
    for (offers, expected) in [
        (
            "  offers: {generate_key: true}\n".to_owned(),
            "levy.offers.generate_key: needs `key_file`".to_owned(),
        ),
        (
            "  offers: {key_env: LEVY_TEST_NO_SUCH_OFFER_KEY}\n".to_owned(),
            "levy.offers.key_env: the environment variable `LEVY_TEST_NO_SUCH_OFFER_KEY` is not set"
                .to_owned(),
        ),
        (
            format!("  offers: {{key_file: {}}}\n", bad.display()),
            "levy.offers.key_file: not a secp256k1 private key".to_owned(),
        ),
        (
            format!("  offers: {{key_file: {}}}\n", dir.join("missing.key").display()),
            "levy.offers.key_file: cannot read".to_owned(),
        ),
        (
            "  offers: {format: cose}\n".to_owned(),
            "unknown variant `cose`".to_owned(),
        ),
    ] {
        assert_error(&yaml(&priced(""), &offers), &expected);
    }
    let generated = dir.join("new.key");
    let _ = std::fs::remove_file(&generated);
    let config = Config::from_yaml(&yaml(
        &priced(""),
        &format!(
            "  offers: {{key_file: {}, generate_key: true, format: jws}}\n",
            generated.display()
        ),
    ))
    .expect("a generated key loads");
    let issuer = config.offers.expect("issuer");
    assert_eq!(issuer.format(), crate::offers::Format::Jws);
    let again = Config::from_yaml(&yaml(
        &priced(""),
        &format!("  offers: {{key_file: {}}}\n", generated.display()),
    ))
    .expect("the written key is kept");
    assert_eq!(
        again.offers.expect("issuer").address(),
        issuer.address(),
        "a second load reads the key the first one wrote"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_builder_code_outside_erc_8021_s_alphabet_is_refused_by_key() {
    let settlement = |code: &str| {
        format!(
            "  settlement:\n    journal_path: /tmp/levy-test-journal\n    builder_code: {code}\n"
        )
    };
    assert_error(
        &yaml(&priced(""), &settlement("{app: Acme}")),
        "levy.settlement.builder_code.app: `Acme` is not a builder code (1 to 32 of a-z, 0-9, _)",
    );
    assert_error(
        &yaml(
            &priced(""),
            &settlement("{app: acme, services: [ok, bad-code]}"),
        ),
        "levy.settlement.builder_code.services[1]: `bad-code` is not a builder code",
    );
    assert_error(
        &yaml(
            &priced(""),
            &settlement("{app: acme, services: [a, b, c, d, e, f]}"),
        ),
        "levy.settlement.builder_code.services: at most 5 service codes",
    );
}

#[test]
fn request_aware_prices_name_the_key_and_the_problem() {
    let by = |keys: &str| yaml(&priced(keys), "");
    assert_error(
        &by("      price_by: {query: a, body: /b, prices: {x: \"$0.01\"}}\n"),
        "levy.routes[0].price_by: give exactly one of `query`, `header` or `body`",
    );
    assert_error(
        &by("      price_by: {body: model, prices: {x: \"$0.01\"}}\n"),
        "levy.routes[0].price_by.body: `model` is not a JSON Pointer; write it like `/model`",
    );
    assert_error(
        &by("      price_by: {query: model, prices: {}}\n"),
        "levy.routes[0].price_by.prices: list at least one value's price",
    );
    assert_error(
        &by("      price_by: {query: model, prices: {x: \"$0.0000001\"}}\n"),
        "levy.routes[0].price_by.prices",
    );
    assert_error(
        &by("      match: {headers: {\"bad header\": x}}\n"),
        "levy.routes[0].match.headers.bad header: `bad header` is not a header name",
    );
    assert_error(
        &by("      match: {query: {tier: []}}\n"),
        "levy.routes[0].match.query.tier: list at least one value",
    );
    assert_error(
        &yaml(
            &route("      free: true\n      price_by: {query: m, prices: {x: \"$0.01\"}}\n"),
            "",
        ),
        "levy.routes[0].price_by: not allowed on a free route",
    );
    assert_error(
        &yaml(&priced(""), "  body_peek_bytes: 100000\n"),
        "levy.body_peek_bytes: at most 65536",
    );
}

#[test]
fn a_price_table_is_one_entry_per_value_before_the_route_s_own() {
    let config = Config::from_yaml(&yaml(
        &priced("      price_by: {header: X-Tier, prices: {gold: \"$0.01\", bronze: \"5\"}}\n"),
        "",
    ))
    .expect("valid");
    let amounts: Vec<(String, String)> = config
        .routes
        .iter()
        .map(|(_, route)| {
            let Access::Priced(paywall) = &route.access else {
                panic!("priced")
            };
            (
                route.when_text.clone(),
                paywall.requirements[0].amount.to_string(),
            )
        })
        .collect();
    assert_eq!(
        amounts,
        [
            ("header `x-tier` = bronze".to_owned(), "5".to_owned()),
            ("header `x-tier` = gold".to_owned(), "10000".to_owned()),
            ("header `x-tier` not listed".to_owned(), "1000".to_owned()),
        ]
    );
}

#[test]
fn on_unauthorized_names_the_key_and_the_problem() {
    assert_error(
        &yaml(&priced("      unauthorized_statuses: [401]\n"), ""),
        "levy.routes[0].unauthorized_statuses: only with `on_unauthorized: challenge`",
    );
    assert_error(
        &yaml(
            &priced("      on_unauthorized: challenge\n      unauthorized_statuses: [500]\n"),
            "",
        ),
        "levy.routes[0].unauthorized_statuses: 500 is not a 4xx status",
    );
    assert_error(
        &yaml(
            &route("      free: true\n      on_unauthorized: challenge\n"),
            "",
        ),
        "levy.routes[0].on_unauthorized: not allowed on a free route",
    );
    let config =
        Config::from_yaml(&yaml(&priced("      on_unauthorized: challenge\n"), "")).expect("valid");
    assert_eq!(only_paywall(&config).challenge_on, Some(vec![401]));
}

#[test]
fn api_keys_name_the_key_and_the_problem() {
    assert_error(
        &yaml(&priced("      api_keys: free\n"), ""),
        "levy.routes[0].api_keys: needs `levy.api_keys`, the keys to let in",
    );
    assert_error(
        &yaml(&priced(""), "  api_keys: {env: LEVY_TEST_KEYS_NOT_SET}\n"),
        "levy.api_keys.env: the environment variable `LEVY_TEST_KEYS_NOT_SET` is not set",
    );
    assert_error(
        &yaml(&priced(""), "  api_keys: {}\n"),
        "levy.api_keys: give `file` or `env`",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys");
    std::fs::write(&file, "alice nothex\n").expect("write");
    assert_error(
        &yaml(
            &priced(""),
            &format!("  api_keys: {{file: {}}}\n", file.display()),
        ),
        ", line 1: the key's hash must be 64 hex digits (its SHA-256)",
    );
}

#[test]
fn allowances_name_the_key_and_the_problem() {
    assert_error(
        &yaml(
            &priced("      free_tier: {calls: 0, per_seconds: 60}\n"),
            "",
        ),
        "levy.routes[0].free_tier.calls: must be at least 1",
    );
    assert_error(
        &yaml(
            &priced("      rate_limit: {calls: 5, per_seconds: 0}\n"),
            "",
        ),
        "levy.routes[0].rate_limit.per_seconds: must be at least 1",
    );
    assert_error(
        &yaml(
            &route("      free: true\n      free_tier: {calls: 1, per_seconds: 1}\n"),
            "",
        ),
        "levy.routes[0].free_tier: not allowed on a free route",
    );
}

#[test]
fn openai_usage_names_the_key_and_the_problem() {
    let metered = |meter: &str| {
        yaml(
            &route(&format!(
                "      pay_to: \"{PAY_TO}\"\n      accepts: [{{network: base-sepolia}}]\n      meter: {meter}\n"
            )),
            "",
        )
    };
    assert_error(
        &metered("{unit: openai_usage, price: \"$1\", ceiling: \"$0.01\", models: {m: {input: \"$1\", output: \"$2\"}}}"),
        "levy.routes[0].meter.price: `openai_usage` is priced per model, under `models`",
    );
    assert_error(
        &metered("{unit: openai_usage, ceiling: \"$0.01\"}"),
        "levy.routes[0].meter.models: `openai_usage` is priced by `models`, and only it",
    );
    assert_error(
        &metered("{unit: records, price: \"1\", ceiling: \"$0.01\", models: {m: {input: \"$1\", output: \"$2\"}}}"),
        "levy.routes[0].meter.models: `openai_usage` is priced by `models`, and only it",
    );
    assert_error(
        &metered("{unit: records, ceiling: \"$0.01\"}"),
        "levy.routes[0].meter.price: missing",
    );
    assert_error(
        &metered("{unit: openai_usage, ceiling: \"$0.01\", models: {}}"),
        "levy.routes[0].meter.models: list at least one model's prices",
    );
}

#[test]
fn a_free_route_on_what_the_client_sends_before_a_priced_one_is_warned_about_and_a_key_s_is_not() {
    let free_on_header = format!(
        "    - {{name: internal, path: /r, free: true, match: {{headers: {{x-internal: \"1\"}}}}}}\n{}",
        priced("").replace("name: r", "name: paid")
    );
    let config = Config::from_yaml(&yaml(&free_on_header, "")).expect("valid");
    let warnings = config.warnings();
    assert!(
        warnings.iter().any(|w| w.contains(
            "free route `internal` (/r if header `x-internal` = 1) comes before priced route `paid` (/r): any client that sends what it matches on reaches the origin unpaid"
        )),
        "{warnings:?}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "").expect("write");
    let keyed = Config::from_yaml(&yaml(
        &priced("      api_keys: free\n"),
        &format!("  api_keys: {{file: {}}}\n", keys.display()),
    ))
    .expect("valid");
    assert_eq!(keyed.warnings(), Vec::<String>::new());
}

#[test]
fn a_price_multiplier_names_the_key_and_the_problem() {
    assert_error(
        &yaml(
            &priced("      price_multiplier: {header: x-tier, factors: {bot: \"x\"}}\n"),
            "",
        ),
        "levy.routes[0].price_multiplier.factors.bot: `x` is not a decimal number",
    );
    assert_error(
        &yaml(
            &route(&format!(
                "      amount: 5\n      pay_to: \"{PAY_TO}\"\n      accepts: [{{network: base-sepolia}}]\n      \
                 price_multiplier: {{header: x-tier, factors: {{half: \"0.5\"}}}}\n"
            )),
            "",
        ),
        "levy.routes[0].price_multiplier.factors.half: 5 × 0.5 is not a whole number of atomic units",
    );
    assert_error(
        &yaml(
            &priced("      price_multiplier: {header: x-tier, factors: {}}\n"),
            "",
        ),
        "levy.routes[0].price_multiplier.factors: list at least one value's factor",
    );
}

#[test]
fn unread_body_is_only_for_a_body_field() {
    assert_error(
        &yaml(
            &priced("      price_by: {query: m, prices: {x: \"$0.01\"}, unread_body: default}\n"),
            "",
        ),
        "levy.routes[0].price_by.unread_body: only for a `body` field",
    );
}

#[test]
fn a_tier_s_price_an_asset_cannot_hold_is_named_under_the_key_it_was_written_at() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "").expect("write");
    assert_error(
        &yaml(
            &priced("      api_keys: {trial: \"$0.0000001\"}\n"),
            &format!("  api_keys: {{file: {}}}\n", keys.display()),
        ),
        "levy.routes[0].api_keys: price `$0.0000001` needs 7 decimals",
    );
    assert_error(
        &yaml(
            &priced("      price_multiplier: {header: x-tier, factors: {tiny: \"0.0001\"}}\n"),
            "",
        ),
        "levy.routes[0].price_multiplier.factors: price `$0.0000001` needs 7 decimals",
    );
}

/// An MCP route with `keys` (YAML lines, six spaces) and `mcp` (its table, inline).
fn mcp_route(keys: &str, mcp: &str) -> String {
    route(&format!(
        "      pay_to: \"{PAY_TO}\"\n      accepts: [{{network: base-sepolia}}]\n{keys}      mcp: {mcp}\n"
    ))
}

#[test]
fn an_mcp_route_is_one_entry_per_priced_call_before_a_free_one_for_the_rest() {
    let config = Config::from_yaml(&yaml(
        &mcp_route(
            "      price: \"$0.001\"\n",
            "{tools: {search: \"$0.01\", ping: free}, resources: {\"report://q3\": \"5\"}}",
        ),
        "",
    ))
    .expect("valid");
    let entries: Vec<(String, String)> = config
        .routes
        .iter()
        .map(|(_, r)| {
            let access = match &r.access {
                Access::Free => "free".to_owned(),
                Access::Priced(p) => p.requirements[0].amount.to_string(),
                Access::Unpriced(_) => "unpriced".to_owned(),
            };
            (r.when_text.clone(), access)
        })
        .collect();
    let expected = [
        ("tools/call ping", "free"),
        ("tools/call search", "10000"),
        ("resources/read report://q3", "5"),
        ("tools/call of any other tool", "1000"),
        ("every other MCP message", "free"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(w, a)| ((*w).to_owned(), (*a).to_owned()))
        .collect();
    assert_eq!(entries, expected);
    assert!(config.routes.iter().all(|(_, r)| r.mcp));
    // Its free entries are its own design: `levy check` does not warn about them.
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn an_mcp_route_names_the_key_and_the_problem() {
    assert_error(
        &yaml(&mcp_route("", "{tools: {ping: free}}"), ""),
        "levy.routes[0].mcp: prices nothing: give a tool, resource or prompt a price, or the route a `price`",
    );
    assert_error(
        &yaml(&mcp_route("", "{tools: {search: \"abc\"}}"), ""),
        "levy.routes[0].mcp.tools.search:",
    );
    assert_error(
        &yaml(&mcp_route("", "{tools: {search: bundle}}"), ""),
        "levy.routes[0].mcp.tools.search: `bundle` needs the route's `bundle`",
    );
    assert_error(
        &yaml(
            &mcp_route(
                "      bundle: {price: \"$0.01\", calls: 3}\n",
                "{tools: {search: \"$0.01\"}}",
            ),
            "",
        ),
        "levy.routes[0].mcp.tools.search: on a `bundle` route each call is `bundle` (drawn on it) or `free`",
    );
    assert_error(
        &yaml(
            &mcp_route(
                "      price_by: {header: x-tier, prices: {a: \"1\"}}\n",
                "{tools: {search: \"1\"}}",
            ),
            "",
        ),
        "levy.routes[0].price_by: not allowed on an `mcp` route",
    );
}
