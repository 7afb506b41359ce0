//! What the proxy asks settlement before it forwards a paid request: whether the payer is
//! denied, whether its funds cover the payment (read and cached), whether its exposure fits
//! the caps (and whether it must settle first), and what the chain says of a contract
//! wallet's signature.

use super::*;

impl Settlement {
    /// Why the journal's store failed for good, once it has: levy must restart to settle
    /// again (nothing accepted is lost; the accept log holds it).
    pub fn journal_failed(&self) -> Option<String> {
        self.inner.journal.failed()
    }

    /// Shares this engine's exposure with other replicas: `mirror` is told every change from
    /// now on. Returns the unsettled value per payer now (the journal's), for the caller to
    /// publish first.
    pub fn share_exposure(&self, mirror: Arc<dyn exposure::Mirror>) -> Vec<(Address, U256)> {
        let now = self.inner.ledger.per_payer();
        self.inner.ledger.share(mirror);
        now
    }
}

/// The admission port: what the proxy asks settlement before it forwards a paid request.
/// [`Settlement`] is the one levy runs; the proxy's decision tests run against a fake.
pub trait AdmissionPort: Send + Sync {
    /// Whether paid requests must also pass the facilitator's `/verify`.
    fn verifies_remotely(&self) -> bool;
    /// The facilitator's `/verify` of a payment.
    fn verify_remotely(
        &self,
        record: &PaymentRecord,
    ) -> impl std::future::Future<Output = facilitator::Verdict> + Send;
    /// Checks a payer against the deny list.
    fn denied(&self, payer: Address) -> Option<&'static str>;
    /// Asks the chain whether a contract wallet's signature is valid (EIP-1271, or ERC-6492
    /// for a wallet not deployed yet), within the funds read deadline. A verdict already
    /// known costs nothing; a new check takes one from `client`'s budget per minute
    /// ([`SignatureCheck::OverBudget`] without one) and one of the chain's admission reads
    /// ([`SignatureCheck::Busy`] when all are running).
    fn check_signature(
        &self,
        network: &str,
        client: Option<std::net::IpAddr>,
        signer: Address,
        digest: B256,
        signature: &[u8],
    ) -> impl std::future::Future<Output = SignatureCheck> + Send;
    /// Whether paid requests on batched routes wait for a funds check.
    fn checks_funds(&self) -> bool;
    /// What to do when a payer's balance cannot be read.
    fn on_rpc_error(&self) -> funds::OnRpcError;
    /// The payer's balance of `asset` on `network` (net of what levy settled since it was
    /// read), from the cache or read now with `nonce`'s authorization state.
    fn funds(
        &self,
        network: &str,
        chain_id: u64,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> impl std::future::Future<Output = FundsView> + Send;
    /// An `upto` payer's balance of `token` (net of what levy settled since it was read) and
    /// its allowance to Permit2, from the caches or read now.
    fn upto_funds(
        &self,
        network: &str,
        chain_id: u64,
        token: Address,
        payer: Address,
    ) -> impl std::future::Future<Output = funds::UptoFunds> + Send;
    /// Reserves a payment's share of exposure, atomically with the checks: the payer's
    /// `balance` (when known) must cover its unsettled payments plus this one, and the
    /// caps and the loss budget say whether it may be served before it settles.
    fn reserve(
        &self,
        payer: Address,
        amount: U256,
        balance: Option<U256>,
        shares: Option<exposure::Shares>,
    ) -> (Admission, Option<Hold>);
    /// Whether a batched payment valid until `valid_before` would wait past it.
    fn backlog(&self, valid_before: u64) -> Option<OnBacklog>;
    /// Journals a payment and settles it alone, now.
    fn settle_now(
        &self,
        record: PaymentRecord,
        hold: Option<Hold>,
    ) -> impl std::future::Future<Output = Result<B256, SettleError>> + Send;
}

impl AdmissionPort for Settlement {
    fn verifies_remotely(&self) -> bool {
        Settlement::verifies_remotely(self)
    }

    fn verify_remotely(
        &self,
        record: &PaymentRecord,
    ) -> impl std::future::Future<Output = facilitator::Verdict> + Send {
        Settlement::verify_remotely(self, record)
    }

    fn denied(&self, payer: Address) -> Option<&'static str> {
        self.inner
            .funds
            .denied(payer, unix_now())
            .map(|denial| denial.reason)
    }

    async fn check_signature(
        &self,
        network: &str,
        client: Option<std::net::IpAddr>,
        signer: Address,
        digest: B256,
        signature: &[u8],
    ) -> SignatureCheck {
        let Some(chain) = self.inner.chains.get(network) else {
            return SignatureCheck::Unknown;
        };
        // The verdict is on this signature over this digest: both are in the key.
        let signed = alloy::primitives::keccak256([digest.as_slice(), signature].concat());
        let key = (chain.chain_id(), signer, signed);
        let verdict = |valid| {
            if valid {
                SignatureCheck::Valid
            } else {
                SignatureCheck::Invalid
            }
        };
        if let Some(valid) = self.inner.funds.signature_verdict(&key) {
            return verdict(valid);
        }
        if client.is_some_and(|client| !self.inner.funds.take_signature_check(client)) {
            metrics()
                .admission_reads_refused
                .with_label_values(&["client_budget"])
                .inc();
            return SignatureCheck::OverBudget;
        }
        let Ok(_permit) = self.inner.funds.read_permit(chain.chain_id()) else {
            return SignatureCheck::Busy;
        };
        let read = chain.signature_valid(signer, digest, signature);
        match tokio::time::timeout(self.inner.config.funds.read_timeout, read).await {
            Ok(Ok(valid)) => {
                self.inner.funds.remember_signature(key, valid);
                verdict(valid)
            }
            Ok(Err(e)) => {
                log::warn!("cannot check a contract wallet signature on {network}: {e}");
                SignatureCheck::Unknown
            }
            Err(_) => SignatureCheck::Unknown,
        }
    }

    fn checks_funds(&self) -> bool {
        self.inner.config.funds.check && !self.inner.chains.is_empty()
    }

    fn on_rpc_error(&self) -> funds::OnRpcError {
        self.inner.config.funds.on_rpc_error
    }

    async fn funds(
        &self,
        network: &str,
        chain_id: u64,
        asset: Address,
        payer: Address,
        nonce: B256,
    ) -> FundsView {
        let Some(chain) = self.inner.chains.get(network) else {
            return FundsView::Unknown;
        };
        let cache = &self.inner.funds;
        let read = async move {
            let _permit = cache.read_permit(chain.chain_id())?;
            chain
                .payer_state(asset, payer, nonce)
                .await
                .map_err(|_| ReadError::Failed)
        };
        let view = cache.view((chain_id, asset, payer), nonce, read).await;
        if view == FundsView::Unknown {
            metrics().funds_unknown.inc();
        }
        view
    }

    async fn upto_funds(
        &self,
        network: &str,
        chain_id: u64,
        token: Address,
        payer: Address,
    ) -> funds::UptoFunds {
        let Some(chain) = self.inner.chains.get(network) else {
            return funds::UptoFunds::Unknown;
        };
        let cache = &self.inner.funds;
        let read = async move {
            let _permit = cache.read_permit(chain.chain_id())?;
            chain
                .upto_payer_state(token, payer)
                .await
                .map_err(|_| ReadError::Failed)
        };
        let view = cache.upto_view((chain_id, token, payer), read).await;
        if view == funds::UptoFunds::Unknown {
            metrics().funds_unknown.inc();
        }
        view
    }

    fn reserve(
        &self,
        payer: Address,
        amount: U256,
        balance: Option<U256>,
        shares: Option<exposure::Shares>,
    ) -> (Admission, Option<Hold>) {
        self.inner
            .ledger
            .reserve(payer, amount, balance, unix_now(), shares)
    }

    fn backlog(&self, valid_before: u64) -> Option<OnBacklog> {
        Settlement::backlog(self, valid_before)
    }

    fn settle_now(
        &self,
        record: PaymentRecord,
        hold: Option<Hold>,
    ) -> impl std::future::Future<Output = Result<B256, SettleError>> + Send {
        Settlement::settle_now(self, record, hold)
    }
}
