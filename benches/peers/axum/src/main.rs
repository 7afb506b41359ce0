//! The Rust x402 server as `x402-axum`'s docs set it up: axum with `X402Middleware` selling
//! `GET /paid/*` for 0.001 USDC on eip155:84532 (x402 v2, `exact`), verified and settled after
//! the handler by a facilitator over HTTP. The paid handler answers a small JSON body, as the
//! example origin does.
//!
//!     x402-axum-peer PORT FACILITATOR_URL PAY_TO

use axum::routing::get;
use axum::{Json, Router};
use x402_axum::X402Middleware;
use x402_chain_eip155::{KnownNetworkEip155, V2Eip155Exact};
use x402_types::networks::USDC;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(facilitator), Some(pay_to)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: x402-axum-peer PORT FACILITATOR_URL PAY_TO");
        std::process::exit(2);
    };
    let pay_to: x402_chain_eip155::chain::ChecksummedAddress =
        pay_to.parse().expect("PAY_TO is an address");
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}/")).expect("base URL");
    let x402 = X402Middleware::new(&facilitator).with_base_url(base);
    let paid = get(|uri: axum::http::Uri| async move {
        Json(serde_json::json!({ "origin": "x402-axum peer", "path": uri.path() }))
    })
    .layer(x402.with_price_tag(V2Eip155Exact::price_tag(
        pay_to,
        USDC::base_sepolia().amount(1000u64),
    )));
    let app = Router::new().route("/paid/{*rest}", paid);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("PORT")))
        .await
        .expect("bind");
    println!("x402-axum listening on {port}");
    axum::serve(listener, app).await.expect("serve");
}
