//! Assembles a pingora `Server` from a validated [`Config`]: the proxy service on the data
//! listener and the admin service on the admin listener. Used by the binary and the tests.

use std::sync::Arc;

use pingora::proxy::http_proxy_service;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::nonce::{MemoryNonceStore, NonceStore};
use crate::proxy::LevyProxy;
use crate::services::NonceSweeper;

/// Builds the server. `opt` carries pingora's command-line flags (daemon, upgrade, test);
/// its `conf` path is ignored because levy loads the file itself.
pub fn build_server(mut config: Config, opt: Option<Opt>) -> Server {
    let pingora_conf = std::mem::take(&mut config.pingora);
    let config = Arc::new(config);
    let mut server = Server::new_with_opt_and_conf(opt, pingora_conf);
    server.bootstrap();

    let nonces: Arc<dyn NonceStore> = Arc::new(MemoryNonceStore::default());
    server.add_service(background_service(
        "nonce sweeper",
        NonceSweeper::new(Arc::clone(&nonces)),
    ));

    let mut proxy = http_proxy_service(
        &server.configuration,
        LevyProxy::new(Arc::clone(&config), Arc::clone(&nonces)),
    );
    proxy.add_tcp(&config.data_listener.to_string());
    server.add_service(proxy);

    if let Some(admin) = config.admin_listener {
        let mut service = Service::new("levy admin".to_owned(), AdminApp);
        service.add_tcp(&admin.to_string());
        server.add_service(service);
    }
    server
}
