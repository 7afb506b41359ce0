use std::time::{Duration, Instant};

use crate::support::{upstream_yaml, Levy, Origin, Reply};

#[test]
fn an_unreachable_upstream_gets_502_with_a_reason() {
    let closed = crate::support::CLOSED_PORT;
    // A route name of this test's own: the metrics registry is shared by every in-process
    // levy, so the count below is this test's alone.
    let levy = Levy::start(&format!(
        "{}  routes:\n    - {{name: unreachable-502, path: /*, free: true}}\n",
        upstream_yaml(closed)
    ));
    let response = levy.get("/x");
    assert_eq!(response.status, 502);
    assert_eq!(response.text(), "upstream unreachable\n");
    let metrics = levy.admin_get("/metrics").text();
    assert!(
        metrics.contains(
            r#"levy_upstream_errors_total{kind="upstream_unreachable",route="unreachable-502"} 1"#
        ),
        "{metrics}"
    );
}

#[test]
fn an_upstream_that_does_not_answer_in_time_gets_504_with_a_reason() {
    let origin = Origin::start(|_| Reply::Stall(Duration::from_secs(5)));
    let levy = Levy::start(&format!(
        "{}  routes:\n    - {{name: slow, path: /*, free: true}}\n",
        upstream_yaml(origin.addr)
    ));
    let started = Instant::now();
    let response = levy.get("/slow");
    assert_eq!(response.status, 504);
    assert_eq!(response.text(), "upstream timed out\n");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(origin.seen().len(), 1, "levy retried a timed-out request");
}

#[test]
fn levy_keeps_serving_after_upstream_failures() {
    let origin = Origin::start(|seen| {
        if seen.target == "/stall" {
            Reply::Stall(Duration::from_secs(3))
        } else {
            Reply::ok("fine")
        }
    });
    let levy = Levy::start(&format!(
        "{}  routes:\n    - {{name: open, path: /*, free: true}}\n",
        upstream_yaml(origin.addr)
    ));
    assert_eq!(levy.get("/stall").status, 504);
    assert_eq!(levy.get("/ok").text(), "fine");
}
