//! What levy tells people outside the request path: the append-only audit log of payments
//! ([`audit`], JSON lines) and signed webhooks for what an operator must act on
//! ([`webhook`]: a payment in `needs_review`, a settler low on gas, the loss budget
//! tripped). Both are fed through queues that never block: a slow disk or a receiver that
//! is down holds up neither a request nor the settlement engine.

pub mod audit;
pub mod webhook;

pub use audit::{AuditError, AuditLog, Entry, Event};
pub use webhook::{Alert, AlertKind, EndpointSpec, WebhookError, Webhooks, WebhooksSpec};

/// Serialises an amount in atomic units as a decimal string (alloy's own serde writes hex),
/// for the audit log and the webhooks alike.
fn decimal<S: serde::Serializer>(amount: &alloy_primitives::U256, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(amount)
}

/// The configured sinks (`levy.audit_log`, `levy.webhooks`), opened once at start.
#[derive(Default)]
pub struct Alerts {
    pub audit: Option<std::sync::Arc<AuditLog>>,
    pub webhooks: Option<Webhooks>,
}

impl Alerts {
    /// Writes `entry` to the audit log, if there is one.
    pub fn audit(&self, entry: impl FnOnce() -> Entry) {
        if let Some(audit) = &self.audit {
            audit.write(entry());
        }
    }

    /// Sends `alert` to the webhooks that subscribe to it, if any.
    pub fn alert(&self, alert: Alert) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.send(alert);
        }
    }
}
