//! levy's discovery documents on the data listener: the x402 manifest at
//! `/.well-known/x402` and the OpenAPI document, built from the live route table for the
//! host asked, so a reload changes them and they always offer what the 402s offer; and the
//! DID document at `/.well-known/did.json` that publishes the key signing offers and
//! receipts.

use http::header;
use pingora::proxy::Session;

use super::headers::{routable, scheme};
use super::respond::Reply;
use super::LevyProxy;
use crate::config::{Access, Config, Documents, Mode};
use crate::pricing::catalogue::{self, Listing as Listed};
use crate::routing::normalize_host;

/// Where the x402 manifest is served.
pub const WELL_KNOWN_X402: &str = "/.well-known/x402";

/// Where levy's DID document (`did:web`) is served.
pub const DID_DOCUMENT: &str = "/.well-known/did.json";

/// The response header carrying a listing's detached JWS, signed with the offer key.
const JWS_SIGNATURE: &str = "x-jws-signature";

/// Which document a request asks for.
#[derive(Clone, Copy)]
enum Document {
    /// levy's DID document.
    Did,
    /// A list of the discoverable routes.
    Listed(Listing),
}

/// Which list of the discoverable routes.
#[derive(Clone, Copy)]
enum Listing {
    Manifest,
    OpenApi,
}

impl LevyProxy {
    /// `GET /.well-known/x402` or the OpenAPI document, when the config has a discoverable
    /// route, and `/.well-known/did.json` when levy signs offers; `None` for every other
    /// request.
    pub(super) fn discovery_document(&self, session: &Session, config: &Config) -> Option<Reply> {
        let req = session.req_header();
        let path = req.uri.path();
        let listed = config.discovery.as_ref();
        let document = if path == DID_DOCUMENT && config.offers.is_some() {
            Document::Did
        } else if listed.is_some_and(|d| d.well_known) && path == WELL_KNOWN_X402 {
            Document::Listed(Listing::Manifest)
        } else if listed.and_then(|d| d.openapi_path.as_deref()) == Some(path) {
            Document::Listed(Listing::OpenApi)
        } else {
            return None;
        };
        if req.method != http::Method::GET {
            return Some(Reply::text(405, "use GET").header(header::ALLOW, "GET"));
        }
        let (content_type, max_age, body) = match (document, &config.offers, listed) {
            (Document::Did, Some(issuer), _) => {
                let did = self.did(session, config);
                let body = issuer.did_document(&did).to_string();
                ("application/did+json", "max-age=300", body)
            }
            (Document::Listed(listing), _, Some(documents)) => {
                let host = match routable(req) {
                    Ok((host, _)) => host,
                    Err(reply) => return Some(reply),
                };
                let base = match &config.public_url {
                    Some(base) => base.clone(),
                    None => format!("{}://{host}", scheme(session)),
                };
                let body = render(config, documents, &normalize_host(host), &base, listing);
                ("application/json", "max-age=60", body)
            }
            _ => return None,
        };
        // A listing is signed with the offer key, so an agent that fetched it through a
        // cache or a mirror can tell it is levy's own.
        let signature = match (document, &config.offers) {
            (Document::Listed(_), Some(issuer)) => {
                Some(issuer.sign_detached(&self.did(session, config), body.as_bytes()))
            }
            _ => None,
        };
        let mut reply = Reply::new(200, content_type, body)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
            .header(header::CACHE_CONTROL, max_age);
        if let Some(signature) = signature {
            reply = reply
                .header(http::HeaderName::from_static(JWS_SIGNATURE), signature)
                .header(header::ACCESS_CONTROL_EXPOSE_HEADERS, JWS_SIGNATURE);
        }
        Some(reply)
    }
}

/// The document for requests to `host`: every enforced, discoverable route that answers
/// on that host, in table order.
fn render(
    config: &Config,
    documents: &Documents,
    host: &str,
    base: &str,
    listing: Listing,
) -> String {
    // A route priced by a value of the request is several entries of one name: its own
    // (the default price) is listed, else its last priced value's.
    let mut named = std::collections::HashSet::new();
    let mut listings: Vec<Listed<'_>> = config
        .routes
        .iter()
        .rev()
        .filter(|(matcher, _)| matcher.host.matches(host))
        .filter_map(|(_, route)| {
            let Access::Priced(paywall) = &route.access else {
                return None;
            };
            if paywall.mode == Mode::Shadow {
                return None;
            }
            let challenge = &paywall.challenge;
            Some(Listed {
                name: &route.name,
                description: challenge.description(),
                mime_type: challenge.mime_type(),
                price: &paywall.price_text,
                accepts: challenge.accepts_v2(),
                discovery: challenge.discovery()?,
            })
        })
        .filter(|listed| named.insert(listed.name))
        .collect();
    listings.reverse();
    match listing {
        Listing::Manifest => catalogue::manifest(base, &listings),
        Listing::OpenApi => catalogue::openapi(base, &documents.title, &listings),
    }
    .to_string()
}
