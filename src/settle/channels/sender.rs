//! The escrow on chain as the channels see it: reads of a channel's state, and the
//! authorizer's transactions, sent one at a time (one replica at a time when replicas share
//! state) and waited for.

use super::*;

impl Channels {
    /// The authorizer's signature of `digest`.
    pub(super) fn sign(&self, digest: B256) -> Result<Bytes, ChannelsError> {
        self.inner
            .signer
            .sign_hash_sync(&digest)
            .map(|s| Bytes::from(s.as_bytes().to_vec()))
            .map_err(|e| ChainError::Signing(e.to_string()).into())
    }

    /// Reads a channel levy has no ledger for from the escrow.
    pub(super) async fn read_ledger(
        &self,
        network: &str,
        id: B256,
        config: crate::channel::ChannelConfig,
    ) -> Result<Ledger, ChannelsError> {
        let chain = self.chain(network)?;
        let escrowed = self.read_state(chain, id).await?;
        Ok(Ledger::new(
            id,
            config,
            network.to_owned(),
            chain.chain_id,
            &escrowed,
        ))
    }

    pub(super) fn chain(&self, network: &str) -> Result<&ChainSender, ChannelsError> {
        self.inner
            .chains
            .get(network)
            .ok_or_else(|| ChannelsError::NoChain(network.to_owned()))
    }

    /// What the escrow says about channel `id` now.
    pub(super) async fn read_state(
        &self,
        chain: &ChainSender,
        id: B256,
    ) -> Result<Escrowed, ChannelsError> {
        let channels = self
            .view(chain, IBatchSettlement::channelsCall { channelId: id })
            .await?;
        let pending = self
            .view(
                chain,
                IBatchSettlement::pendingWithdrawalsCall { channelId: id },
            )
            .await?;
        let nonce = self
            .view(chain, IBatchSettlement::refundNonceCall { channelId: id })
            .await?;
        Ok(Escrowed {
            balance: channels.balance,
            total_claimed: channels.totalClaimed,
            withdraw_requested_at: pending.initiatedAt.to::<u64>(),
            refund_nonce: nonce.saturating_to::<u64>(),
            read_at: crate::clock::unix_now(),
        })
    }

    /// One view call on the escrow, decoded.
    pub(super) async fn view<C: SolCall>(
        &self,
        chain: &ChainSender,
        call: C,
    ) -> Result<C::Return, ChannelsError> {
        let request = TransactionRequest::default()
            .to(BATCH_SETTLEMENT_ADDRESS)
            .input(Bytes::from(call.abi_encode()).into());
        crate::metrics::metrics()
            .rpc_calls
            .with_label_values(&["eth_call"])
            .inc();
        let output =
            match tokio::time::timeout(self.inner.spec.rpc_timeout, chain.provider.call(request))
                .await
            {
                Err(_) => return Err(ChainError::Timeout(C::SIGNATURE).into()),
                Ok(result) => result.map_err(|e| ChainError::classify(C::SIGNATURE, &e))?,
            };
        C::abi_decode_returns(&output)
            .map_err(|e| ChainError::Decode(format!("{}: {e}", C::SIGNATURE)).into())
    }

    /// Sends one escrow transaction and waits for its receipt; `Ok` only when it succeeded.
    pub(super) async fn send(
        &self,
        chain: &ChainSender,
        data: Vec<u8>,
    ) -> Result<B256, ChannelsError> {
        let _turn = self.inner.sending.lock().await;
        let Some(shared) = self.shared() else {
            return self.send_now(chain, data).await;
        };
        // The authorizer's turn over every replica, held past the longest send.
        let token = self.token(shared.as_ref());
        let hold = self.inner.spec.rpc_timeout * 8;
        let deadline = Instant::now() + self.inner.spec.rpc_timeout * 6;
        while !shared.lock(SENDER_LOCK, &token, hold).await? {
            if Instant::now() > deadline {
                return Err(ChannelsError::NoTurn);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sent = self.send_now(chain, data).await;
        if let Err(e) = shared.unlock(SENDER_LOCK, &token).await {
            ::log::warn!("cannot let the authorizer's turn to send go (it lapses): {e}");
        }
        sent
    }

    /// [`Channels::send`], this replica's turn taken.
    pub(super) async fn send_now(
        &self,
        chain: &ChainSender,
        mut data: Vec<u8>,
    ) -> Result<B256, ChannelsError> {
        if let Some(suffix) = &self.inner.spec.builder_code {
            data.extend_from_slice(suffix);
        }
        let request = TransactionRequest::default()
            .from(self.inner.signer.address())
            .to(BATCH_SETTLEMENT_ADDRESS)
            .input(Bytes::from(data).into());
        let timeout = self.inner.spec.rpc_timeout * 6;
        let sent = tokio::time::timeout(timeout, async {
            let pending = chain
                .provider
                .send_transaction(request)
                .await
                .map_err(|e| ChainError::classify("eth_sendTransaction", &e))?;
            pending
                .with_timeout(Some(timeout))
                .get_receipt()
                .await
                .map_err(|e| ChainError::Transient {
                    call: "eth_getTransactionReceipt",
                    message: e.to_string(),
                })
        })
        .await
        .map_err(|_| ChainError::Timeout("eth_getTransactionReceipt"))??;
        if sent.status() {
            Ok(sent.transaction_hash)
        } else {
            Err(ChannelsError::Reverted(sent.transaction_hash))
        }
    }
}
