//! Idempotent retries (the x402 `payment-identifier` extension): a client that lost the
//! response to a paid request retries with the same payment id and is served again without
//! a second charge, with the original `PAYMENT-RESPONSE`. An id is bound to its payer, to
//! the request's fingerprint (method, host, path and query, body type and length) and to
//! the hash of its body, so it cannot be spent on another request or by someone else. The
//! book is in memory and bounded.

use std::collections::HashMap;
use std::sync::Mutex;

use alloy_primitives::{Address, B256};
use sha2::{Digest as _, Sha256};

use crate::sync::lock;

/// The extension's key in `extensions`.
pub const PAYMENT_IDENTIFIER: &str = "payment-identifier";

/// The extension's declaration in a 402: ids are accepted, not required. Only `info`: the
/// schema the reference server adds says what the id looks like, which every client
/// already knows, and would cost every 402 a third more header bytes.
pub fn declaration() -> serde_json::Value {
    serde_json::json!({ "info": {"required": false} })
}

/// The id a payment's `extensions` carry, if it is one the extension allows (16 to 128 of
/// `A-Z a-z 0-9 _ -`).
pub fn payment_id(
    extensions: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Option<String> {
    let id = extensions?
        .get(PAYMENT_IDENTIFIER)?
        .get("info")?
        .get("id")?
        .as_str()?;
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    ((16..=128).contains(&id.len()) && id.bytes().all(allowed)).then(|| id.to_owned())
}

/// What a request asked for, hashed: its method, host and target (path and query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(B256);

impl Fingerprint {
    /// The fingerprint of a request's parts (method, host, target, and whatever else must
    /// match), each length-prefixed so no two lists of parts collide.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hash = Sha256::new();
        for part in parts {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Fingerprint(B256::from(<[u8; 32]>::from(hash.finalize())))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a served payment was, kept to serve its retries the same way: the response header
/// it answered with, and who paid how much under which of levy's payment ids (for the
/// origin's headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub header: &'static str,
    pub value: String,
    pub payer: Address,
    pub amount: alloy_primitives::U256,
    pub payment_id: String,
    /// The body the paid request sent.
    pub body: Body,
}

impl Served {
    /// As shared state keeps it: a JSON object.
    pub fn to_json(&self) -> String {
        let body = match &self.body {
            Body::Empty => "empty".to_owned(),
            Body::Unread => "unread".to_owned(),
            Body::Hash(hash) => hash.to_string(),
        };
        serde_json::json!({
            "header": self.header,
            "value": self.value,
            "payer": self.payer,
            "amount": self.amount.to_string(),
            "paymentId": self.payment_id,
            "body": body,
        })
        .to_string()
    }

    /// Reads what [`Served::to_json`] wrote; `None` for anything else.
    pub fn from_json(text: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let header = match v.get("header")?.as_str()? {
            h if h == crate::x402::PAYMENT_RESPONSE => crate::x402::PAYMENT_RESPONSE,
            h if h == crate::x402::X_PAYMENT_RESPONSE => crate::x402::X_PAYMENT_RESPONSE,
            _ => return None,
        };
        let body = match v.get("body")?.as_str()? {
            "empty" => Body::Empty,
            "unread" => Body::Unread,
            hash => Body::Hash(hash.parse().ok()?),
        };
        Some(Served {
            header,
            value: v.get("value")?.as_str()?.to_owned(),
            payer: v.get("payer")?.as_str()?.parse().ok()?,
            amount: v.get("amount")?.as_str()?.parse().ok()?,
            payment_id: v.get("paymentId")?.as_str()?.to_owned(),
            body,
        })
    }
}

/// A paid request's body, as its retries must repeat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// It had none.
    Empty,
    /// Its SHA-256.
    Hash(B256),
    /// It had one, not read to its end before the response: no retry can be matched to it.
    Unread,
}

/// The answer to [`RetryBook::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A new id: this request holds it and must complete or release it.
    Claimed,
    /// The id's first request is still being served: retry when it has answered.
    InFlight,
    /// The id was served for this payer and this request: serve it again, uncharged.
    Served(Served),
    /// The id was used by another payer or for another request.
    Conflict,
    /// The book is full of live ids: this payment is handled without one.
    Full,
}

#[derive(Debug, Clone)]
struct Entry {
    payer: Address,
    fingerprint: Fingerprint,
    expires_at: u64,
    served: Option<Served>,
}

/// The ids levy served or is serving, each until its payment's authorization expires; at
/// most `capacity` at once.
#[derive(Debug)]
pub struct RetryBook {
    entries: Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

impl RetryBook {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Claims `id` for `payer`'s request `fingerprint`, until `expires_at` (unix seconds).
    pub fn claim(
        &self,
        id: &str,
        payer: Address,
        fingerprint: Fingerprint,
        expires_at: u64,
        now: u64,
    ) -> Claim {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(id) {
            if entry.expires_at >= now {
                if entry.payer != payer || entry.fingerprint != fingerprint {
                    return Claim::Conflict;
                }
                return match &entry.served {
                    Some(served) => Claim::Served(served.clone()),
                    None => Claim::InFlight,
                };
            }
        }
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires_at >= now);
            if entries.len() >= self.capacity {
                return Claim::Full;
            }
        }
        entries.insert(
            id.to_owned(),
            Entry {
                payer,
                fingerprint,
                expires_at,
                served: None,
            },
        );
        Claim::Claimed
    }

    /// The claimed id was served and charged: its retries get `served`.
    pub fn complete(&self, id: &str, served: Served) {
        if let Some(entry) = lock(&self.entries).get_mut(id) {
            entry.served = Some(served);
        }
    }

    /// The claimed id was not charged: it may be used again.
    pub fn release(&self, id: &str) {
        let mut entries = lock(&self.entries);
        if entries.get(id).is_some_and(|e| e.served.is_none()) {
            entries.remove(id);
        }
    }

    /// Live ids.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "pay_0123456789abcdef";

    fn served() -> Served {
        Served {
            header: "payment-response",
            value: "e30=".into(),
            payer: Address::repeat_byte(1),
            amount: alloy_primitives::U256::from(1000),
            payment_id: "pay_1".into(),
            body: Body::Empty,
        }
    }

    #[test]
    fn an_id_is_claimed_once_then_answers_its_retries_with_the_first_response() {
        let book = RetryBook::new(10);
        let payer = Address::repeat_byte(1);
        let print = Fingerprint::of(&[b"GET", b"h", b"/a?x=1"]);
        assert_eq!(book.claim(ID, payer, print, 100, 1), Claim::Claimed);
        assert_eq!(book.claim(ID, payer, print, 100, 2), Claim::InFlight);
        book.complete(ID, served());
        assert_eq!(
            book.claim(ID, payer, print, 100, 3),
            Claim::Served(served())
        );
    }

    #[test]
    fn an_id_on_another_request_or_payer_is_a_conflict_and_a_released_id_is_free() {
        let book = RetryBook::new(10);
        let payer = Address::repeat_byte(1);
        let print = Fingerprint::of(&[b"GET", b"h", b"/a"]);
        assert_eq!(book.claim(ID, payer, print, 100, 1), Claim::Claimed);
        book.complete(ID, served());
        let other = Fingerprint::of(&[b"GET", b"h", b"/b"]);
        assert_eq!(book.claim(ID, payer, other, 100, 2), Claim::Conflict);
        assert_eq!(
            book.claim(ID, Address::repeat_byte(2), print, 100, 2),
            Claim::Conflict
        );
        let id2 = "pay_fedcba9876543210";
        assert_eq!(book.claim(id2, payer, print, 100, 2), Claim::Claimed);
        book.release(id2);
        assert_eq!(book.claim(id2, payer, other, 100, 3), Claim::Claimed);
    }

    #[test]
    fn the_book_is_bounded_and_forgets_expired_ids() {
        let book = RetryBook::new(1);
        let payer = Address::repeat_byte(1);
        let print = Fingerprint::of(&[b"GET", b"h", b"/a"]);
        assert_eq!(book.claim(ID, payer, print, 10, 1), Claim::Claimed);
        assert_eq!(
            book.claim("pay_fedcba9876543210", payer, print, 10, 5),
            Claim::Full
        );
        assert_eq!(
            book.claim("pay_fedcba9876543210", payer, print, 100, 11),
            Claim::Claimed
        );
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn a_served_payment_reads_back_as_shared_state_keeps_it() {
        let mut hashed = served();
        hashed.body = Body::Hash(B256::repeat_byte(7));
        hashed.header = crate::x402::X_PAYMENT_RESPONSE;
        for one in [served(), hashed] {
            assert_eq!(Served::from_json(&one.to_json()), Some(one));
        }
        assert_eq!(Served::from_json(r#"{"header":"set-cookie"}"#), None);
    }

    #[test]
    fn only_ids_the_extension_allows_are_read() {
        let ext = |id: &str| {
            serde_json::json!({ PAYMENT_IDENTIFIER: {"info": {"required": false, "id": id}} })
                .as_object()
                .cloned()
        };
        assert_eq!(payment_id(ext(ID).as_ref()), Some(ID.to_owned()));
        assert_eq!(payment_id(ext("short").as_ref()), None);
        assert_eq!(payment_id(ext("has spaces in it here").as_ref()), None);
        assert_eq!(payment_id(None), None);
    }
}
