//! Request spellings that an origin serves as a priced resource but a naive route table
//! would not price: every one gets a 402 or a 400, and the origin never sees it unpaid,
//! even with `unmatched: pass` and a free catch-all behind the priced routes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::pay::{decode, paid_get, v2_payment};
use crate::support::{send, upstream_yaml, Levy, Origin, Reply, PAY_TO};

/// Priced `/weather/:city` and `/files/:name`, then a free catch-all for `/open/*`, and
/// every other request passed to the origin.
fn levy_with_fallthrough(origin: &Origin) -> Levy {
    Levy::start(&format!(
        "{}  pay_to: \"{PAY_TO}\"\n  routes:\n    \
         - {{name: weather, path: /weather/:city, methods: [GET], amount: 5, accepts: [{{network: base}}]}}\n    \
         - {{name: files, path: /files/:name, amount: 5, accepts: [{{network: base}}]}}\n    \
         - {{name: open, path: /open/*, free: true}}\n  \
         unmatched: {{action: pass, upstream: origin}}\n",
        upstream_yaml(origin.addr)
    ))
}

fn status(levy: &Levy, raw: &str) -> u16 {
    send(levy.addr, raw.as_bytes())
        .unwrap_or_else(|| panic!("no answer to {raw:?}"))
        .status
}

#[test]
fn priced_paths_spelled_another_way_still_ask_for_payment() {
    let origin = Origin::echo();
    let levy = levy_with_fallthrough(&origin);
    let authority = levy.addr.to_string();
    for target in [
        "/weather/paris/",
        "/Weather/paris",
        "/WEATHER/PARIS",
        "/weather;x=1/paris",
        "/weather/paris;jsessionid=0",
        "/weather//paris",
        "/open/../weather/paris",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        assert_eq!(status(&levy, &raw), 402, "{target}");
    }
    let lower_method = format!("get /weather/paris HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let answer = status(&levy, &lower_method);
    assert!(answer == 402 || answer == 400, "get: {answer}");
    assert!(
        origin.seen().is_empty(),
        "the origin saw {:?}",
        origin.seen().iter().map(|s| &s.target).collect::<Vec<_>>()
    );
}

#[test]
fn an_absolute_form_target_is_routed_on_its_path() {
    let origin = Origin::echo();
    let levy = levy_with_fallthrough(&origin);
    let authority = levy.addr.to_string();
    let with_host =
        format!("GET http://{authority}/weather/paris HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert_eq!(status(&levy, &with_host), 402);
    let upper_scheme =
        format!("GET HTTP://{authority}/Weather/paris?x=1 HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert_eq!(status(&levy, &upper_scheme), 402);
    let without_host = format!("GET http://{authority}/weather/paris HTTP/1.1\r\n\r\n");
    let answer = status(&levy, &without_host);
    assert!(answer == 402 || answer == 400, "no Host: {answer}");
    let other_host =
        format!("GET http://elsewhere.test/weather/paris HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert_eq!(status(&levy, &other_host), 400);
    assert!(origin.seen().is_empty());
    let free = format!("GET http://{authority}/open/x HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    assert_eq!(status(&levy, &free), 200);
}

#[test]
fn a_request_without_host_is_refused() {
    let origin = Origin::echo();
    let levy = levy_with_fallthrough(&origin);
    for raw in [
        "GET /weather/paris HTTP/1.1\r\n\r\n",
        "GET /open/x HTTP/1.1\r\n\r\n",
        "GET /weather/paris HTTP/1.0\r\n\r\n",
    ] {
        assert_eq!(status(&levy, raw), 400, "{raw:?}");
    }
    assert!(origin.seen().is_empty());
}

#[test]
fn an_encoded_slash_under_a_priced_prefix_is_refused() {
    let origin = Origin::echo();
    let levy = levy_with_fallthrough(&origin);
    for target in ["/files/a%2Fb", "/files/a%2fb", "/FILES/a%5Cb", "/files/%2F"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: levy.test\r\n\r\n");
        assert_eq!(status(&levy, &raw), 400, "{target}");
    }
    let elsewhere = "GET /open/a%2Fb HTTP/1.1\r\nHost: levy.test\r\n\r\n";
    assert_eq!(status(&levy, elsewhere), 200);
    assert_eq!(origin.only().target, "/open/a%2Fb");
}

#[test]
fn payer_headers_in_any_spelling_never_reach_the_origin() {
    let origin = Origin::echo();
    let levy = levy_with_fallthrough(&origin);
    let raw = "GET /open/x HTTP/1.1\r\nHost: levy.test\r\nX_Levy_Payer: 0xvictim\r\n\
               x_levy_amount: 1\r\nX-LEVY-PAYMENT-ID: forged\r\nX_LEVY-Payment_Id: forged\r\n\
               Payment_Signature: forged\r\nSign_In_With_X: forged\r\nX-Kept_Header: yes\r\n\r\n";
    assert_eq!(status(&levy, raw), 200);
    let seen = origin.only();
    for (name, _) in &seen.headers {
        let dashed = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !dashed.starts_with("x-levy-")
                && dashed != "payment-signature"
                && dashed != "sign-in-with-x",
            "the origin got {name}"
        );
    }
    assert_eq!(seen.header("x-kept_header"), Some("yes"));
}

/// The response heads to one request (sent with `Connection: close`): the interim 1xx
/// ones, then the final one, as `(status, lowercase headers)`.
fn heads(levy: &Levy, raw: &str) -> Vec<(u16, Vec<(String, String)>)> {
    let raw = raw.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    let mut stream = TcpStream::connect(levy.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(raw.as_bytes()).expect("send");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        out.push((status, headers));
        if status >= 200 {
            break;
        }
        rest = after;
    }
    out
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn an_early_hint_does_not_charge_and_the_final_answer_decides() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let origin = Origin::start(move |_| {
        let head = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Raw(format!("{head}HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops").into())
        } else {
            Reply::Raw(
                format!(
                    "{head}HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 5\r\n\r\nsunny"
                )
                .into(),
            )
        }
    });
    let levy = levy_with_fallthrough(&origin);
    let payment = v2_payment(&levy, "/weather/paris");
    let raw = paid_get("/weather/paris", "PAYMENT-SIGNATURE", &payment);

    let failed = heads(&levy, &raw);
    assert_eq!(failed.first().map(|h| h.0), Some(103));
    let (status, headers) = failed.last().expect("a final response");
    assert_eq!(*status, 500);
    assert!(header(headers, "payment-response").is_none());

    // The 500 released the payment: the same one buys the next answer.
    let paid = heads(&levy, &raw);
    let (status, headers) = paid.last().expect("a final response");
    assert_eq!(*status, 200, "{paid:?}");
    assert_eq!(
        header(headers, "cache-control"),
        Some("private, max-age=60")
    );
    let receipt = decode(header(headers, "payment-response").expect("PAYMENT-RESPONSE"));
    assert_eq!(receipt["success"], true);
}

#[test]
fn levy_check_warns_when_a_fallthrough_covers_a_priced_path() {
    let origin = Origin::echo();
    let yaml = format!(
        "levy:\n  listeners: {{data: 127.0.0.1:1}}\n{}  pay_to: \"{PAY_TO}\"\n  routes:\n    \
         - {{name: weather, path: /weather/:city, amount: 5, accepts: [{{network: base}}]}}\n    \
         - {{name: rest, path: /*, free: true}}\n",
        upstream_yaml(origin.addr)
    );
    let config = levy::Config::from_yaml(&yaml).expect("config");
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("`rest`") && warnings[0].contains("`weather`"));
    assert!(config.describe().contains("warning: free route `rest`"));

    let passing = format!(
        "levy:\n  listeners: {{data: 127.0.0.1:1}}\n{}  pay_to: \"{PAY_TO}\"\n  routes:\n    \
         - {{name: weather, path: /weather/:city, amount: 5, accepts: [{{network: base}}]}}\n  \
         unmatched: {{action: pass, upstream: origin}}\n",
        upstream_yaml(origin.addr)
    );
    let config = levy::Config::from_yaml(&passing).expect("config");
    assert!(config.warnings()[0].starts_with("unmatched: pass"));
}

#[test]
fn a_free_route_above_a_priced_route_it_covers_stops_the_config_naming_both() {
    let origin = Origin::echo();
    let routes = |free: &str| {
        format!(
            "levy:\n  listeners: {{data: 127.0.0.1:1}}\n{}  pay_to: \"{PAY_TO}\"\n  routes:\n    \
             - {{name: api, path: /api/*, free: true{free}}}\n    \
             - {{name: premium, path: /api/premium/*, amount: 5, accepts: [{{network: base}}]}}\n",
            upstream_yaml(origin.addr)
        )
    };
    // Every premium request would be served free.
    let error = levy::Config::from_yaml(&routes(""))
        .expect_err("the config loads")
        .to_string();
    assert!(
        error.contains("levy.routes[1]") && error.contains("`premium`") && error.contains("`api`"),
        "{error}"
    );
    // Free for GET only: the other methods still reach the priced route, GETs do not.
    let config = levy::Config::from_yaml(&routes(", methods: [GET]")).expect("config");
    let warnings = config.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("`api`") && w.contains("`premium`") && w.contains("comes before")),
        "{warnings:?}"
    );
}
