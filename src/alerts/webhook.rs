//! Webhooks: an [`Alert`] is POSTed as JSON to every endpoint that subscribes to its kind,
//! signed the Standard Webhooks way — `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the
//! endpoint's secret — and retried with exponential backoff until it answers 2xx or the
//! attempts run out. Each delivery is a task of its own, written to a spool directory
//! (next to the journal) before its first attempt and removed once it is answered or given
//! up: a levy that stops with deliveries pending resumes them at its next start, with
//! their ids.

use std::sync::Mutex;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::clock::unix_now;
use crate::metrics::metrics;
use crate::sync::lock;

/// The kinds an endpoint can subscribe to, by their `type` in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    NeedsReview,
    SettlerGasLow,
    LossBudgetTripped,
}

impl AlertKind {
    pub const ALL: [AlertKind; 3] = [
        AlertKind::NeedsReview,
        AlertKind::SettlerGasLow,
        AlertKind::LossBudgetTripped,
    ];

    /// The `type` field of the body, and the name `events:` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NeedsReview => "payment.needs_review",
            AlertKind::SettlerGasLow => "settler.gas_low",
            AlertKind::LossBudgetTripped => "settlement.loss_budget_tripped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// Something an operator must act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum Alert {
    /// A payment's retries ran out or its outcome is ambiguous.
    NeedsReview {
        payment_id: String,
        route: String,
        network: String,
        payer: Address,
        #[serde(serialize_with = "super::decimal")]
        amount: U256,
        /// levy's reason code (`rpc_unavailable`, `facilitator_refused_retry`, …).
        error: &'static str,
        /// The last transaction the payment was sent in, if any.
        #[serde(rename = "transaction")]
        tx_hash: Option<B256>,
        attempts: u32,
    },
    /// The settler's gas balance on a network fell below `levy.webhooks.settler_gas_below_gwei`.
    SettlerGasLow {
        network: String,
        settler: Address,
        balance_gwei: u64,
        threshold_gwei: u64,
    },
    /// Value served and then lost within the loss window passed the loss budget: every
    /// payment now settles before its response until the losses age out.
    LossBudgetTripped {
        #[serde(serialize_with = "super::decimal")]
        lost: U256,
        #[serde(serialize_with = "super::decimal")]
        budget: U256,
        window_seconds: u64,
    },
}

impl Alert {
    pub fn kind(&self) -> AlertKind {
        match self {
            Alert::NeedsReview { .. } => AlertKind::NeedsReview,
            Alert::SettlerGasLow { .. } => AlertKind::SettlerGasLow,
            Alert::LossBudgetTripped { .. } => AlertKind::LossBudgetTripped,
        }
    }
}

/// One receiver.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub url: String,
    pub secret: Vec<u8>,
    pub events: Vec<AlertKind>,
}

impl std::fmt::Debug for EndpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSpec")
            .field("url", &self.url)
            .field("secret", &"…")
            .field("events", &self.events)
            .finish()
    }
}

/// `levy.webhooks`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksSpec {
    pub endpoints: Vec<EndpointSpec>,
    pub timeout: Duration,
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to a minute.
    pub retry_backoff: Duration,
    /// Alert when a settler's gas balance falls below this (`None`: never).
    pub settler_gas_below_gwei: Option<u64>,
}

/// Sends alerts. Cheap to share behind the [`super::Alerts`] that owns it.
pub struct Webhooks {
    spec: WebhooksSpec,
    http: reqwest::Client,
    /// Networks whose settler is below the gas threshold now (alerted once per crossing).
    gas_low: Mutex<std::collections::HashSet<String>>,
    /// Where pending deliveries are kept until answered (`None`: in memory only).
    spool: Option<std::path::PathBuf>,
}

/// A delivery as the spool keeps it: the endpoint by its URL (its secret stays in the
/// config), the message id, its type and body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Spooled {
    url: String,
    id: String,
    kind: String,
    body: String,
}

/// The signature header's value for `body` sent as message `id` at `timestamp`.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Why the webhooks cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot build the webhook client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot create the webhook spool {dir}: {source}")]
    Spool { dir: String, source: std::io::Error },
}

impl Webhooks {
    /// The webhooks `spec` names, with no spool yet.
    pub fn new(spec: WebhooksSpec) -> Result<Self, WebhookError> {
        let http = reqwest::Client::builder().timeout(spec.timeout).build()?;
        Ok(Self {
            spec,
            http,
            gas_low: Mutex::new(std::collections::HashSet::new()),
            spool: None,
        })
    }

    /// Keeps pending deliveries in directory `dir` (created if missing) until answered.
    pub fn spooled_in(mut self, dir: std::path::PathBuf) -> Result<Self, WebhookError> {
        std::fs::create_dir_all(&dir).map_err(|source| WebhookError::Spool {
            dir: dir.display().to_string(),
            source,
        })?;
        self.spool = Some(dir);
        Ok(self)
    }

    /// Resumes the deliveries a previous run left in the spool, with their ids; one whose
    /// endpoint is no longer configured is dropped. Call once, inside the runtime.
    pub fn resume(&self) {
        let Some(dir) = &self.spool else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let spooled: Option<Spooled> = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let found = spooled.as_ref().and_then(|s| {
                let endpoint = self.spec.endpoints.iter().find(|e| e.url == s.url)?;
                Some((s, endpoint, AlertKind::parse(&s.kind)?))
            });
            let Some((spooled, endpoint, kind)) = found else {
                log::warn!(
                    "webhook spool: dropping {} (unreadable, or its endpoint is gone)",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                continue;
            };
            log::info!(
                "webhook {} to {}: resumed after a restart",
                spooled.id,
                spooled.url
            );
            self.deliver(
                endpoint,
                &spooled.id,
                kind,
                spooled.body.clone().into_bytes(),
                Some(path),
            );
        }
    }

    /// Starts delivering `body` (message `id`) to `endpoint` in the background, from its
    /// spool file `spooled` if it has one (removed once answered or given up).
    fn deliver(
        &self,
        endpoint: &EndpointSpec,
        id: &str,
        kind: AlertKind,
        body: Vec<u8>,
        spooled: Option<std::path::PathBuf>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            log::error!("no runtime to deliver webhook {id}");
            return;
        };
        let delivery = Delivery {
            http: self.http.clone(),
            url: endpoint.url.clone(),
            secret: endpoint.secret.clone(),
            id: id.to_owned(),
            kind,
            body,
            max_attempts: self.spec.max_attempts.max(1),
            backoff: self.spec.retry_backoff,
            spooled,
        };
        runtime.spawn(delivery.run());
    }

    /// Writes a delivery to the spool before its first attempt; its file.
    fn spool(
        &self,
        endpoint: usize,
        url: &str,
        id: &str,
        kind: AlertKind,
        body: &[u8],
    ) -> Option<std::path::PathBuf> {
        let dir = self.spool.as_ref()?;
        let path = dir.join(format!("{id}.{endpoint}.json"));
        let spooled = Spooled {
            url: url.to_owned(),
            id: id.to_owned(),
            kind: kind.as_str().to_owned(),
            body: String::from_utf8_lossy(body).into_owned(),
        };
        let written = serde_json::to_vec(&spooled)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
                std::io::Write::write_all(&mut file, &bytes)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => Some(path),
            Err(e) => {
                log::error!("webhook {id}: cannot spool it ({e}); it is lost if levy stops first");
                None
            }
        }
    }

    /// Delivers `alert` to each endpoint that subscribes to it, in the background.
    pub fn send(&self, alert: Alert) {
        let kind = alert.kind();
        let id = format!(
            "evt_{}",
            alloy_primitives::hex::encode(&B256::random()[..12])
        );
        let body = serde_json::json!({
            "type": kind.as_str(),
            "timestamp": unix_now(),
            "data": alert,
        });
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(e) => {
                log::error!("cannot encode a {} webhook: {e}", kind.as_str());
                return;
            }
        };
        log::warn!(
            "alert {} {id}: {}",
            kind.as_str(),
            String::from_utf8_lossy(&body)
        );
        for (i, endpoint) in self
            .spec
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.events.contains(&kind))
        {
            let spooled = self.spool(i, &endpoint.url, &id, kind, &body);
            self.deliver(endpoint, &id, kind, body.clone(), spooled);
        }
    }

    /// Notes a settler's gas balance: alerts when it falls below the threshold, once, until
    /// it is topped up above it again.
    pub fn settler_balance(&self, network: &str, settler: Address, balance_gwei: u64) {
        let Some(threshold_gwei) = self.spec.settler_gas_below_gwei else {
            return;
        };
        let low = balance_gwei < threshold_gwei;
        let crossed = {
            let mut gas_low = lock(&self.gas_low);
            if low {
                gas_low.insert(network.to_owned())
            } else {
                gas_low.remove(network);
                false
            }
        };
        if crossed {
            self.send(Alert::SettlerGasLow {
                network: network.to_owned(),
                settler,
                balance_gwei,
                threshold_gwei,
            });
        }
    }
}

struct Delivery {
    http: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    id: String,
    kind: AlertKind,
    body: Vec<u8>,
    max_attempts: u32,
    backoff: Duration,
    /// Its spool file, removed once it is answered or given up.
    spooled: Option<std::path::PathBuf>,
}

impl Delivery {
    async fn run(self) {
        self.attempt().await;
        if let Some(path) = &self.spooled {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("webhook {}: cannot remove its spool file: {e}", self.id);
            }
        }
    }

    async fn attempt(&self) {
        let mut delay = self.backoff;
        for attempt in 1..=self.max_attempts {
            let timestamp = unix_now();
            let sent = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("webhook-id", &self.id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    sign(&self.secret, &self.id, timestamp, &self.body),
                )
                .body(self.body.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(response) if response.status().is_success() => {
                    count(self.kind, "delivered");
                    return;
                }
                Ok(response) => format!("answered {}", response.status()),
                Err(e) => e.to_string(),
            };
            if attempt == self.max_attempts {
                log::error!(
                    "webhook {} ({}) to {} not delivered after {attempt} attempts: {failure}",
                    self.id,
                    self.kind.as_str(),
                    self.url
                );
                count(self.kind, "gave_up");
                return;
            }
            log::warn!(
                "webhook {} to {}: {failure}; retrying in {} ms",
                self.id,
                self.url,
                delay.as_millis()
            );
            count(self.kind, "retried");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
}

fn count(kind: AlertKind, outcome: &str) {
    metrics()
        .webhooks
        .with_label_values(&[kind.as_str(), outcome])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_an_hmac_of_id_timestamp_and_body() {
        // Computed independently: printf 'msg_1.1700000000.{"a":1}' | openssl dgst -sha256
        // -hmac secret -binary | base64
        let signature = sign(b"secret", "msg_1", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(signature, "v1,Q5nZ7DiOGwijBBqvBVAK6c0zDr2JLkXI7TaV4f+Q2vY=");
        assert_ne!(
            signature,
            sign(b"secret", "msg_1", 1_700_000_001, br#"{"a":1}"#)
        );
    }

    #[test]
    fn kinds_parse_from_their_type_names() {
        for kind in AlertKind::ALL {
            assert_eq!(AlertKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AlertKind::parse("needs_review"), None);
    }
}
