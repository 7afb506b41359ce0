//! Payment ids across replicas (`payment-identifier`): an id is claimed in Redis for its
//! payer and request before its payment is, so a retry that reaches another replica than
//! the one that served it is answered with the first response instead of being refused as
//! a replay. One hash per id (`<prefix>pid:<id>`): who claimed it for what request, the
//! replica holding it, and, once served, the response to give again; it expires with the
//! payment's authorization.

use super::*;
use crate::retry::{Fingerprint, Served};

/// What Redis says of a payment id.
#[derive(Debug)]
pub enum IdClaim {
    /// This replica holds it now: its payment goes on to be claimed.
    Claimed,
    /// Its first request is being served (here or elsewhere).
    InFlight,
    /// It was served for this payer and request: the first response, to give again.
    Served(Served),
    /// Another payer or another request used it.
    Conflict,
    /// Redis could not be asked: nothing may be charged.
    Unavailable(Unavailable),
}

/// Returns `{'conflict'}`, `{'served', <response>}` or `{'inflight'}` when the id is known
/// (bound to `ARGV[1]`); otherwise binds it, marks it held by `ARGV[2]` until `ARGV[3]`
/// (unix milliseconds) and returns `{'claimed'}`.
const CLAIM_ID: &str = r"
local bound = redis.call('HGET', KEYS[1], 'bound')
if bound then
  if bound ~= ARGV[1] then return {'conflict'} end
  local served = redis.call('HGET', KEYS[1], 'served')
  if served then return {'served', served} end
  return {'inflight'}
end
redis.call('HSET', KEYS[1], 'bound', ARGV[1], 'holder', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return {'claimed'}
";

/// Records the response `ARGV[2]` if replica `ARGV[1]` still holds the id.
const SERVED_ID: &str = r"
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'served', ARGV[2])
  return 1
end
return 0
";

/// Forgets the id if replica `ARGV[1]` holds it and it was not served.
const RELEASE_ID: &str = r"
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1]
   and redis.call('HEXISTS', KEYS[1], 'served') == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
";

struct Scripts {
    claim: Script,
    served: Script,
    release: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        claim: Script::new(CLAIM_ID),
        served: Script::new(SERVED_ID),
        release: Script::new(RELEASE_ID),
    })
}

impl Shared {
    fn id_key(&self, id: &str) -> String {
        format!("{}pid:{id}", self.inner.spec.key_prefix)
    }

    /// Claims payment id `id` for `payer`'s request `fingerprint` across replicas, until the
    /// authorization's deadline `valid_before` (unix seconds). One round trip.
    pub async fn claim_payment_id(
        &self,
        id: &str,
        payer: Address,
        fingerprint: Fingerprint,
        valid_before: u64,
    ) -> IdClaim {
        let args = vec![
            format!("{payer:#x}:{fingerprint}"),
            self.inner.spec.replica.clone(),
            expiry_ms(valid_before).to_string(),
        ];
        let answer: Result<Vec<String>, Unavailable> = self
            .script(&scripts().claim, vec![self.id_key(id)], args)
            .await;
        match answer.as_deref() {
            Ok([claimed]) if claimed == "claimed" => IdClaim::Claimed,
            Ok([served, response]) if served == "served" => match Served::from_json(response) {
                Some(served) => IdClaim::Served(served),
                // Not levy's writing: the id is spent, and nothing can be given again.
                None => IdClaim::Conflict,
            },
            Ok([flight]) if flight == "inflight" => IdClaim::InFlight,
            Ok(_) => IdClaim::Conflict,
            Err(e) => IdClaim::Unavailable(e.clone()),
        }
    }

    /// Records the first response of the id this replica holds, off the request path.
    pub fn payment_id_served(&self, id: &str, served: &Served) {
        self.in_background(
            |_| &scripts().served,
            vec![self.id_key(id)],
            vec![self.inner.spec.replica.clone(), served.to_json()],
            "record a payment id's response",
        );
    }

    /// Gives back an id this replica holds and did not serve, off the request path.
    pub fn release_payment_id(&self, id: &str) {
        // On failure the id stays held until it expires: its retries are refused as in
        // flight, and nothing is charged twice.
        self.in_background(
            |_| &scripts().release,
            vec![self.id_key(id)],
            vec![self.inner.spec.replica.clone()],
            "release a payment id",
        );
    }
}
