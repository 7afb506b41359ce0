//! levy: an x402 paywall that runs as an edge reverse proxy on Pingora.
//!
//! The crate's rooms, by layer (`docs/src/layers.md`; a test keeps imports downward):
//! - ground: `clock`, `sync`, `metrics`, `logging`, `x402` (the wire format), `tls`, `pool`,
//!   `alerts`;
//! - pure core, no I/O: `pricing`, `routing`, `meter`, `nonce`, `verify`, `session`,
//!   `channel`, `record`, `scheme`, `offers`, `retry`, `limits`, `mcp`;
//! - payer: `client`;
//! - settlement: `settle` (it defines the shared-state ports);
//! - shared-state adapters: `state` (Redis);
//! - config: `config`;
//! - glue (Pingora and the binary): `proxy`, `reload`, `admin`, `services`, `server`, `pay`.
//!
//! Public are the modules the binary, the tests, the benchmarks and the fuzz targets use;
//! the rest is private so that the compiler reports what nothing uses.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod admin;
mod alerts;
pub mod channel;
pub mod client;
mod clock;
pub mod config;
mod limits;
mod logging;
mod mcp;
mod meter;
mod metrics;
pub mod nonce;
mod offers;
mod pay;
mod pool;
pub mod pricing;
mod proxy;
mod record;
mod reload;
mod retry;
mod routing;
pub mod scheme;
mod server;
mod services;
pub mod session;
pub mod settle;
mod state;
mod sync;
mod tls;
pub mod verify;
pub mod x402;

pub use config::{Config, ConfigError};
pub use logging::init as init_logging;
pub use metrics::{metrics, Metrics};
pub use pay::pay;
pub use server::{build_server, StartError};
