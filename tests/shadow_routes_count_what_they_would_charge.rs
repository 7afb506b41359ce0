use crate::support::pay::{challenge, paid_get, sign_for};
use crate::support::{request, upstream_yaml, Levy, Origin, PAY_TO};

/// A shadow route never answers 402 and never charges: the origin serves every request, and
/// the metrics say what enforcing would have done.
#[test]
fn a_shadow_route_forwards_everything_and_counts_what_it_would_have_charged() {
    let origin = Origin::echo();
    // `levy.mode: shadow` for every priced route, but `enforced` overrides it. Both sell the
    // same terms, so the challenge of one pays on the other.
    let levy = Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  mode: shadow\n  routes:\n    \
         - {{name: shadow-feed, path: /shadow/*, amount: 1000, accepts: [{{network: base-sepolia}}]}}\n    \
         - {{name: enforced-feed, path: /enforced/*, amount: 1000, mode: enforce, accepts: [{{network: base-sepolia}}]}}\n",
        upstream_yaml(origin.addr)
    ));
    let metric = |verdict: &str| {
        levy.metric(&format!(
            "levy_shadow_requests_total{{route=\"shadow-feed\",verdict=\"{verdict}\"}}"
        ))
    };

    let unpaid = levy.get("/shadow/x");
    assert_eq!(unpaid.status, 200, "{}", unpaid.text());
    assert!(unpaid.header("payment-required").is_none());
    levy.metric_reaches(
        "levy_shadow_requests_total{route=\"shadow-feed\",verdict=\"would_challenge\"}",
        1,
    );

    let terms = challenge(&levy, "/enforced/x");
    let (_, header) = sign_for(&terms, crate::support::chain::KEYS[0]);
    let paid = request(
        levy.addr,
        &paid_get("/shadow/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(paid.status, 200, "{}", paid.text());
    assert!(
        paid.header("payment-response").is_none(),
        "a shadow route settles nothing"
    );
    assert_eq!(metric("would_charge"), 1);
    assert_eq!(
        levy.metric("levy_shadow_value_total{route=\"shadow-feed\"}"),
        1000
    );
    // The origin saw neither the proof nor payer headers.
    let seen = origin.seen();
    assert!(seen
        .iter()
        .all(|s| s.header("payment-signature").is_none() && s.header("x-levy-payer").is_none()));
    assert_eq!(seen.len(), 2);

    // Nothing was charged: the same authorization still buys the enforced route.
    let bought = request(
        levy.addr,
        &paid_get("/enforced/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(bought.status, 200, "{}", bought.text());
    assert!(bought.header("payment-response").is_some());
    // Now it is used: shadow counts the replay as a refusal, and still forwards.
    let replayed = request(
        levy.addr,
        &paid_get("/shadow/x", "PAYMENT-SIGNATURE", &header),
    );
    assert_eq!(replayed.status, 200);
    assert_eq!(metric("would_reject"), 1);
    let garbage = request(
        levy.addr,
        &paid_get("/shadow/x", "PAYMENT-SIGNATURE", "bm90IGpzb24="),
    );
    assert_eq!(garbage.status, 200);
    assert_eq!(metric("would_reject"), 2);
    assert_eq!(metric("would_charge"), 1);

    // The enforced route still asks for payment.
    assert_eq!(levy.get("/enforced/y").status, 402);
    levy.metric_reaches(
        "levy_requests_total{outcome=\"shadowed\",route=\"shadow-feed\"}",
        4,
    );
}
