//! levy: an x402 paywall that runs as an edge reverse proxy on Pingora.
//!
//! The pure core (`x402`, `pricing`, `routing`, `meter`) never imports pingora; `config` turns the
//! YAML file into the route table; `proxy`, `admin` and `server` are the Pingora glue.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod alerts;
pub mod channel;
pub mod client;
pub mod clock;
pub mod config;
pub mod logging;
pub mod meter;
pub mod metrics;
pub mod nonce;
pub mod pay;
pub mod pool;
pub mod pricing;
pub mod proxy;
pub mod record;
pub mod reload;
pub mod routing;
pub mod scheme;
pub mod server;
pub mod services;
pub mod session;
pub mod settle;
pub mod state;
pub mod tls;
pub mod verify;
pub mod x402;

pub use config::{Config, ConfigError};
pub use server::{build_server, StartError};
