//! What a replica puts into Redis at start: its journal's unsettled exposure and used
//! authorizations, and, once per Redis epoch, its own logs of channels and bundles into a
//! Redis that lost them.

use super::*;

impl Shared {
    /// What this replica's journal says, told to Redis before it serves, in one pipeline:
    /// its share of exposure becomes `per_payer` (what the journal holds unsettled; what a
    /// previous run left counted is forgotten), and the authorizations it charged that are
    /// still valid (`used`, with their deadlines) are marked used for every replica, so a
    /// Redis that lost them cannot let another replica take them.
    pub fn publish_journal(
        &self,
        per_payer: &[(Address, U256)],
        used: &[(NonceKey, u64)],
    ) -> Result<(), StateError> {
        let spec = &self.inner.spec;
        let (prefix, field) = (&spec.key_prefix, &spec.replica);
        let index = exposure_index_key(prefix, field);
        let total = exposure_total_key(prefix);
        let sum: U256 = per_payer.iter().map(|(_, v)| *v).sum();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("EVAL")
            .arg(FORGET)
            .arg(2)
            .arg(&index)
            .arg(&total)
            .arg(field)
            .ignore();
        for (payer, value) in per_payer {
            let key = exposure_payer_key(prefix, *payer);
            pipe.cmd("HSET")
                .arg(&key)
                .arg(field)
                .arg(value.to_string())
                .ignore();
            pipe.cmd("SADD").arg(&index).arg(&key).ignore();
        }
        if !sum.is_zero() {
            pipe.cmd("HSET")
                .arg(&total)
                .arg(field)
                .arg(sum.to_string())
                .ignore();
        }
        let mark = self.used();
        for (key, valid_before) in used {
            pipe.cmd("SET")
                .arg(nonce_key(prefix, key))
                .arg(&mark)
                .arg("PXAT")
                .arg(expiry_ms(*valid_before))
                .ignore();
        }
        at_start(&self.inner.client, spec, None, |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await
        })
    }

    /// What this replica's channel and bundle logs say, put back into Redis before it serves
    /// when Redis lost it: once per Redis epoch and replica (a marker says it was done), so
    /// a plain restart changes nothing, and after a data loss every replica's restart folds
    /// its logs in (charged amounts and bundle use only grow). Returns how many channels and
    /// bundles were republished, `None` when this replica had done it for this epoch.
    pub fn republish_logs(
        &self,
        ledgers: Vec<crate::channel::Ledger>,
        bundles: Vec<crate::session::Bundle>,
    ) -> Result<Option<(usize, usize)>, StateError> {
        let spec = &self.inner.spec;
        let marker = format!("{}republished:{}", spec.key_prefix, spec.replica);
        let epoch = self.inner.epoch.clone();
        let this = self.clone();
        let limit = spec.timeout.max(Duration::from_secs(2)) * 10;
        at_start(
            &self.inner.client,
            spec,
            Some(limit),
            move |mut conn| async move {
                let done: Option<String> = redis::cmd("GET")
                    .arg(&marker)
                    .query_async(&mut conn)
                    .await?;
                if done.as_deref() == Some(epoch.as_str()) {
                    return Ok(None);
                }
                for ledger in &ledgers {
                    this.restore_channel(&mut conn, ledger).await?;
                }
                for bundle in &bundles {
                    this.restore_bundle(&mut conn, bundle).await?;
                }
                redis::cmd("SET")
                    .arg(&marker)
                    .arg(&epoch)
                    .query_async::<()>(&mut conn)
                    .await?;
                Ok(Some((ledgers.len(), bundles.len())))
            },
        )
    }
}
