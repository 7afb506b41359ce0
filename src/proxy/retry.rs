//! Idempotent retries on the proxy's side: which requests may use a payment id and their
//! fingerprint, the hash of a paid request's body as it streams to the origin, and a
//! retry's body held back until it is whole and known to be the body that was paid for.

use alloy_primitives::B256;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::RequestHeader;
use sha2::{Digest as _, Sha256};

use super::headers::routable;
use crate::retry::{Body, Claim, Fingerprint, RetryBook, Served};
use crate::state::{IdClaim, Shared};

/// The largest body a payment id is honoured with: a retry's body is held in memory until
/// it is whole.
pub(super) const RETRY_BODY_LIMIT: u64 = 1 << 20;

/// The payment ids levy serves: this process's book, which answers its own retries with no
/// round trip, and, when state is shared, Redis, which answers among replicas (asked in
/// admission, before the payment's own claim). A served id is recorded in both; a released
/// one leaves both.
pub struct Retries {
    book: RetryBook,
    shared: Option<Shared>,
}

impl Retries {
    /// At most `capacity` live ids in this process.
    pub fn new(capacity: usize, shared: Option<Shared>) -> Self {
        Self {
            book: RetryBook::new(capacity),
            shared,
        }
    }

    /// Claims `id` in this process (see [`RetryBook::claim`]).
    pub(super) fn claim(
        &self,
        id: &str,
        payer: alloy_primitives::Address,
        fingerprint: Fingerprint,
        expires_at: u64,
        now: u64,
    ) -> Claim {
        self.book.claim(id, payer, fingerprint, expires_at, now)
    }

    /// Claims an id this process holds across replicas; without shared state it is this
    /// process's alone.
    pub(super) async fn claim_across_replicas(
        &self,
        id: &str,
        payer: alloy_primitives::Address,
        fingerprint: Fingerprint,
        expires_at: u64,
    ) -> IdClaim {
        match &self.shared {
            Some(shared) => {
                shared
                    .claim_payment_id(id, payer, fingerprint, expires_at)
                    .await
            }
            None => IdClaim::Claimed,
        }
    }

    /// The id was served and charged here: its retries get `served`, on every replica.
    pub(super) fn complete(&self, id: &str, served: Served) {
        if let Some(shared) = &self.shared {
            shared.payment_id_served(id, &served);
        }
        self.book.complete(id, served);
    }

    /// The id was served by another replica: this process answers its next retries itself.
    pub(super) fn served_elsewhere(&self, id: &str, served: Served) {
        self.book.complete(id, served);
    }

    /// The id was not charged: it may be used again.
    pub(super) fn release(&self, id: &str) {
        self.book.release(id);
        if let Some(shared) = &self.shared {
            shared.release_payment_id(id);
        }
    }
}

/// A request that may use a payment id: its fingerprint and the length of its body.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asked {
    pub fingerprint: Fingerprint,
    pub body_len: u64,
}

/// Whether `req` may use a payment id, and its fingerprint: a request without a body or
/// with a `Content-Length` of at most [`RETRY_BODY_LIMIT`] (a chunked body's length is
/// not known before it is forwarded).
pub(super) fn asked(req: &RequestHeader) -> Option<Asked> {
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let body_len = match req.headers.get(header::CONTENT_LENGTH) {
        None => 0,
        Some(len) => len.to_str().ok()?.trim().parse::<u64>().ok()?,
    };
    if body_len > RETRY_BODY_LIMIT {
        return None;
    }
    let (host, target) = routable(req).ok()?;
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .map_or(&b""[..], |v| v.as_bytes());
    let host = crate::routing::normalize_host(host);
    Some(Asked {
        fingerprint: Fingerprint::of(&[
            req.method.as_str().as_bytes(),
            host.as_bytes(),
            target,
            content_type,
            &body_len.to_be_bytes(),
        ]),
        body_len,
    })
}

/// What levy does with a request body that a payment id is bound to.
pub(super) enum BodyWatch {
    /// A payment claimed with an id: its body is hashed on its way to the origin.
    Hashing(Sha256),
    /// The same, once the whole body went.
    Hashed(B256),
    /// A retry of a served payment: its body is held until whole and sent only if it is
    /// the one paid for.
    Holding { expected: Body, buffer: BytesMut },
}

/// A retry's body is not the body its payment was made with.
#[derive(Debug)]
pub(super) struct OtherBody;

impl BodyWatch {
    /// Watches one chunk on its way upstream (`end`: the last one); a held body goes out
    /// whole with its last chunk, or not at all.
    pub(super) fn chunk(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), OtherBody> {
        match self {
            BodyWatch::Hashing(hash) => {
                if let Some(chunk) = body.as_ref() {
                    hash.update(chunk);
                }
                if end {
                    let digest = std::mem::take(hash).finalize();
                    *self = BodyWatch::Hashed(B256::from(<[u8; 32]>::from(digest)));
                }
                Ok(())
            }
            BodyWatch::Hashed(_) => Ok(()),
            BodyWatch::Holding { expected, buffer } => {
                if let Some(chunk) = body.take() {
                    buffer.extend_from_slice(&chunk);
                }
                if !end {
                    // An empty chunk is not written upstream (nor taken as the end).
                    *body = Some(Bytes::new());
                    return Ok(());
                }
                let digest = B256::from(<[u8; 32]>::from(Sha256::digest(&buffer[..])));
                if *expected != Body::Hash(digest) {
                    return Err(OtherBody);
                }
                *body = Some(std::mem::take(buffer).freeze());
                Ok(())
            }
        }
    }

    /// The paid request's body, as its retries must repeat it.
    pub(super) fn paid_body(watch: Option<&BodyWatch>) -> Body {
        match watch {
            None => Body::Empty,
            Some(BodyWatch::Hashed(hash)) => Body::Hash(*hash),
            Some(_) => Body::Unread,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(bytes: &[u8]) -> B256 {
        B256::from(<[u8; 32]>::from(Sha256::digest(bytes)))
    }

    #[test]
    fn a_paid_body_is_hashed_as_it_goes() {
        let mut watch = BodyWatch::Hashing(Sha256::new());
        let mut first = Some(Bytes::from_static(b"{\"q\":"));
        watch.chunk(&mut first, false).expect("ok");
        assert_eq!(
            first.as_deref(),
            Some(&b"{\"q\":"[..]),
            "passed on unchanged"
        );
        watch
            .chunk(&mut Some(Bytes::from_static(b"1}")), true)
            .expect("ok");
        assert_eq!(
            BodyWatch::paid_body(Some(&watch)),
            Body::Hash(hash(b"{\"q\":1}"))
        );
    }

    #[test]
    fn a_retried_body_goes_out_whole_only_when_it_is_the_one_paid_for() {
        let mut same = BodyWatch::Holding {
            expected: Body::Hash(hash(b"{\"q\":1}")),
            buffer: BytesMut::new(),
        };
        let mut first = Some(Bytes::from_static(b"{\"q\":"));
        same.chunk(&mut first, false).expect("held");
        assert_eq!(first.as_deref(), Some(&b""[..]), "nothing goes out yet");
        let mut last = Some(Bytes::from_static(b"1}"));
        same.chunk(&mut last, true).expect("the same body");
        assert_eq!(last.as_deref(), Some(&b"{\"q\":1}"[..]));

        let mut other = BodyWatch::Holding {
            expected: Body::Hash(hash(b"{\"q\":1}")),
            buffer: BytesMut::new(),
        };
        assert!(other
            .chunk(&mut Some(Bytes::from_static(b"{\"q\":2}")), true)
            .is_err());
        let mut unread = BodyWatch::Holding {
            expected: Body::Unread,
            buffer: BytesMut::new(),
        };
        assert!(unread
            .chunk(&mut Some(Bytes::from_static(b"{\"q\":1}")), true)
            .is_err());
    }
}
