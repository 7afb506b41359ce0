use crate::support::{request, Levy, Origin, Reply, PAY_TO};

/// Two origins so a test can tell which upstream a request reached.
fn two_upstreams(routes: &str, unmatched: &str) -> (Levy, Origin, Origin) {
    let a = Origin::start(|_| Reply::ok("from a"));
    let b = Origin::start(|_| Reply::ok("from b"));
    let levy = Levy::start(&format!(
        "  pay_to: \"{PAY_TO}\"\n  upstreams:\n    a:\n      address: {}\n    b:\n      address: {}\n  routes:\n{routes}{unmatched}",
        a.addr, b.addr
    ));
    (levy, a, b)
}

fn get(levy: &Levy, host: &str, method: &str, path: &str) -> (u16, String) {
    let r = request(
        levy.addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"),
    );
    (r.status, r.text())
}

#[test]
fn hosts_match_exactly_or_by_wildcard_subdomain() {
    let (levy, _a, _b) = two_upstreams(
        "    - {name: exact, host: api.example.com, path: /*, upstream: a, free: true}\n\
         \x20   - {name: wild, host: \"*.example.com\", path: /*, upstream: b, free: true}\n",
        "",
    );
    assert_eq!(
        get(&levy, "api.example.com", "GET", "/x"),
        (200, "from a".into())
    );
    assert_eq!(
        get(&levy, "API.Example.com:8080", "GET", "/x"),
        (200, "from a".into())
    );
    assert_eq!(
        get(&levy, "eu.example.com", "GET", "/x"),
        (200, "from b".into())
    );
    assert_eq!(get(&levy, "example.com", "GET", "/x").0, 404);
    assert_eq!(get(&levy, "other.test", "GET", "/x").0, 404);
}

#[test]
fn methods_restrict_a_route() {
    let (levy, _a, _b) = two_upstreams(
        "    - {name: reads, methods: [GET, HEAD], path: /items/:id, upstream: a, free: true}\n\
         \x20   - {name: writes, methods: [post], path: /items/:id, upstream: b, free: true}\n",
        "",
    );
    assert_eq!(get(&levy, "h", "GET", "/items/1"), (200, "from a".into()));
    assert_eq!(get(&levy, "h", "POST", "/items/1"), (200, "from b".into()));
    assert_eq!(get(&levy, "h", "DELETE", "/items/1").0, 404);
}

#[test]
fn the_first_matching_route_wins() {
    let (levy, _a, _b) = two_upstreams(
        "    - {name: special, path: /docs/pricing, upstream: a, free: true}\n\
         \x20   - {name: paid-docs, path: /docs/*, upstream: b, price: \"$0.01\", accepts: [{network: base}]}\n",
        "",
    );
    assert_eq!(
        get(&levy, "h", "GET", "/docs/pricing"),
        (200, "from a".into())
    );
    assert_eq!(get(&levy, "h", "GET", "/docs/guide").0, 402);
    assert_eq!(get(&levy, "h", "GET", "/docs").0, 402);
}

#[test]
fn path_tricks_do_not_dodge_a_priced_route() {
    let (levy, a, _b) = two_upstreams(
        "    - {name: paid, path: /paid/*, upstream: a, price: \"$0.01\", accepts: [{network: base}]}\n\
         \x20   - {name: rest, path: /*, upstream: a, free: true}\n",
        "",
    );
    for path in [
        "/paid/x",
        "/free/../paid/x",
        "//paid/x",
        "/%70aid/x",
        "/./paid",
    ] {
        assert_eq!(get(&levy, "h", "GET", path).0, 402, "{path}");
    }
    // An encoded separator under a priced prefix is refused, not re-segmented.
    assert_eq!(get(&levy, "h", "GET", "/paid%2Fx").0, 400);
    assert!(a.seen().is_empty());
    assert_eq!(get(&levy, "h", "GET", "/paidx").0, 200);
}

#[test]
fn unmatched_requests_get_404_by_default() {
    let (levy, a, b) = two_upstreams(
        "    - {name: one, path: /one, upstream: a, free: true}\n",
        "",
    );
    let (status, body) = get(&levy, "h", "GET", "/two");
    assert_eq!(status, 404);
    assert!(body.contains("no route"), "{body}");
    assert!(a.seen().is_empty() && b.seen().is_empty());
}

#[test]
fn unmatched_requests_pass_to_the_default_upstream_when_configured() {
    let (levy, _a, b) = two_upstreams(
        "    - {name: one, path: /one, upstream: a, free: true}\n",
        "  unmatched:\n    action: pass\n    upstream: b\n",
    );
    assert_eq!(get(&levy, "h", "GET", "/two?q=1"), (200, "from b".into()));
    assert_eq!(b.only().target, "/two?q=1");
    assert_eq!(get(&levy, "h", "GET", "/one"), (200, "from a".into()));
}
