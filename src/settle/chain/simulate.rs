//! A batch simulated as the settler would send it: one `eth_simulateV1` (or `eth_call`
//! where the node has none) at the gas price the batch will pay, split until the payments
//! that break it run alone, so one poison payment never takes an honest batch down with it;
//! and the batches that need none, because the pre-check has decided them.

use super::*;

impl Chain {
    /// The outcome of a batch the pre-check has decided, without simulating it: an `exact`
    /// batch whose every payment was read unused and funded by the pre-check (the caller
    /// passes only those), is on its first try and not one sent alone after a batch it was in
    /// failed, carries a 65-byte signature (recovered inline, as the token will) and is valid
    /// by the chain's clock with a minute to spare; a batch of this scheme has been simulated
    /// whole on this chain before, so its gas per payment is known; and no payer's account
    /// has code (read now: a contract wallet or an EIP-7702 delegation judges signatures its
    /// own way on chain). `None`, or the code could not be read: simulate it
    /// ([`Chain::simulate_transfers`]).
    ///
    /// A transfer of such a batch that fails on chain anyway (a payer who spent the balance
    /// or delegated the account since the pre-check: the same window a simulation leaves)
    /// fails alone in the batch, costs its own call's gas, and is sent alone, simulated,
    /// next.
    pub async fn decided_without_simulation(
        &self,
        payments: &[PaymentRecord],
        now: u64,
    ) -> Option<Simulated> {
        // `exact` only: an `upto` payment may carry an EIP-2612 permit, whose gas a batch of
        // plain ones never showed.
        if !is_exact(payments) {
            return None;
        }
        let fresh = payments.iter().all(|p| {
            p.attempts == 0 && !p.isolate && signed_by_key(p) && p.valid_after + 60 <= now
        });
        if !fresh {
            return None;
        }
        let per_payment = match self.exact_gas_per_payment.load(Ordering::Relaxed) {
            0 => return None,
            known => known,
        };
        let mut payers: Vec<Address> = payments.iter().map(|p| p.payer).collect();
        payers.sort_unstable();
        payers.dedup();
        match self.accounts(&payers).await {
            Ok(accounts) if accounts.iter().all(|a| *a == Account::Key) => Some(Simulated {
                transfers: vec![Transfer::Succeeds; payments.len()],
                gas: Some(per_payment.saturating_mul(payments.len() as u64)),
                runs: 0,
            }),
            Ok(_) => None,
            Err(e) => {
                log::debug!(
                    "chain {}: payers' code unread ({e}); simulating",
                    self.chain_id
                );
                None
            }
        }
    }

    /// Simulates the batch that would settle `payments` (all of one scheme), as the settler
    /// would send it at today's gas price, at the latest block, and finds out what each
    /// transfer does.
    ///
    /// A batch that reverts as a whole is bisected until the payments that break it are run
    /// alone; a transfer that fails inside a batch is run alone too. Only a payment whose
    /// transfer fails in a simulation of itself alone is [`Transfer::Refused`]; one whose
    /// simulation could not be run (RPC trouble) stays [`Transfer::Unknown`]. `Err` when not
    /// even the first simulation could be run.
    pub async fn simulate_transfers(
        &self,
        payments: &[PaymentRecord],
    ) -> Result<Simulated, ChainError> {
        let mut transfers = vec![Transfer::Unknown; payments.len()];
        let Some(scheme) = payments.first().map(PaymentRecord::scheme) else {
            return Ok(Simulated {
                transfers,
                gas: None,
                runs: 0,
            });
        };
        let gas_price = self.simulation_gas_price().await?;
        let whole = self.simulate(payments, gas_price).await?;
        let mut runs = 1;
        let mut todo = vec![(0..payments.len(), Some(whole.output))];
        while let Some((range, known)) = todo.pop() {
            let part = &payments[range.clone()];
            let output = match known {
                Some(output) => output,
                None => {
                    runs += 1;
                    match self.simulate(part, gas_price).await {
                        Ok(run) => run.output,
                        Err(e) => {
                            log::warn!(
                                "chain {}: simulating {} payment(s) alone failed ({e}); they wait",
                                self.chain_id,
                                part.len()
                            );
                            continue;
                        }
                    }
                }
            };
            let alone = range.len() == 1;
            let Some(output) = output else {
                if alone {
                    transfers[range.start] = Transfer::Refused;
                } else {
                    let middle = range.start + range.len() / 2;
                    todo.push((middle..range.end, None));
                    todo.push((range.start..middle, None));
                }
                continue;
            };
            let outcomes = match scheme.batch_outcomes(part, &output) {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    log::warn!("chain {}: unreadable simulation ({e})", self.chain_id);
                    continue;
                }
            };
            for (i, transfers_ok) in range.clone().zip(outcomes) {
                if transfers_ok {
                    transfers[i] = Transfer::Succeeds;
                } else if alone {
                    transfers[i] = Transfer::Refused;
                } else {
                    todo.push((i..i + 1, None));
                }
            }
        }
        let all = transfers.iter().all(|t| *t == Transfer::Succeeds);
        let gas = whole.gas.filter(|_| all && runs == 1);
        if let Some(gas) = gas.filter(|_| is_exact(payments) && payments.iter().all(signed_by_key))
        {
            // Less the transaction's own 21 000: a batch of one would count it whole.
            let per_payment = gas.saturating_sub(21_000).div_ceil(payments.len() as u64);
            self.exact_gas_per_payment
                .fetch_max(per_payment, Ordering::Relaxed);
        }
        Ok(Simulated {
            transfers,
            gas,
            runs,
        })
    }

    /// The gas price a batch is simulated at: what the settler would offer now. A transfer
    /// whose signature check behaves differently at a zero gas price (a contract account
    /// can read it) is then seen as the chain will see it.
    pub(super) async fn simulation_gas_price(&self) -> Result<u128, ChainError> {
        let fees = self.fee_estimate().await?;
        Ok(fees.max_fee_per_gas.max(1))
    }

    /// Runs the batch call of `payments` once at the latest block, from the settler at
    /// `gas_price` (with a balance that covers any gas, so only the calls decide): its output
    /// (`None` when it reverted as a whole) and, where the node offers `eth_simulateV1`, the
    /// gas it used. A node that says it has no `eth_simulateV1` is asked with `eth_call` from
    /// then on, one that refuses the request as made with `eth_call` this once, and one that
    /// refuses the state override with a plain `eth_call`; any other error is levy not
    /// knowing, and is returned.
    pub(super) async fn simulate(
        &self,
        payments: &[PaymentRecord],
        gas_price: u128,
    ) -> Result<SimulationRun, ChainError> {
        let (target, data) = self.batch_call(payments)?;
        let request = TransactionRequest::default()
            .from(self.settler())
            .to(target)
            .input(data.into())
            .gas_price(gas_price);
        let mut overrides = StateOverride::default();
        overrides.insert(
            self.settler(),
            AccountOverride {
                balance: Some(U256::MAX >> 8),
                ..AccountOverride::default()
            },
        );
        if !self.no_simulate.load(Ordering::Relaxed) {
            let payload = SimulatePayload {
                block_state_calls: vec![SimBlock {
                    block_overrides: None,
                    state_overrides: Some(overrides.clone()),
                    calls: vec![request.clone()],
                }],
                trace_transfers: false,
                validation: false,
                return_full_transactions: false,
            };
            match self
                .rpc(
                    "eth_simulateV1",
                    self.provider.simulate(&payload).block_id(BlockId::latest()),
                )
                .await
            {
                Ok(blocks) => {
                    let call = blocks
                        .first()
                        .and_then(|block| block.calls.first())
                        .ok_or_else(|| ChainError::Decode("eth_simulateV1: no result".into()))?;
                    return Ok(SimulationRun {
                        output: call.status.then(|| call.return_data.clone()),
                        gas: Some(call.gas_used),
                    });
                }
                Err(ChainError::Unsupported { message, .. }) => {
                    log::info!(
                        "chain {}: no eth_simulateV1 ({message}); batches are simulated with \
                         eth_call and their gas estimated with eth_estimateGas",
                        self.chain_id
                    );
                    self.no_simulate.store(true, Ordering::Relaxed);
                }
                // The node would not run this request as asked (its gas price, its state
                // override): this once, `eth_call` asks it instead.
                Err(e @ ChainError::Node { .. }) => {
                    log::warn!("chain {}: {e}; simulating with eth_call", self.chain_id);
                }
                Err(e) => return Err(e),
            }
        }
        let with_fees = self
            .provider
            .call(request.clone())
            .block(BlockId::latest())
            .overrides(overrides);
        let ran = match self.rpc("eth_call", with_fees).await {
            Err(e @ ChainError::Node { .. }) => {
                // An endpoint that refuses state overrides: run the batch plainly (at a zero
                // gas price; what only fails at a real one is caught on chain and isolated).
                log::warn!(
                    "chain {}: {e}; simulating without the settler's gas price",
                    self.chain_id
                );
                let mut plain = request;
                plain.gas_price = None;
                self.call_latest(plain).await
            }
            ran => ran,
        };
        match ran {
            Ok(output) => Ok(SimulationRun {
                output: Some(output),
                gas: None,
            }),
            Err(ChainError::Reverted { .. }) => Ok(SimulationRun {
                output: None,
                gas: None,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Whether `payments` (all of one scheme) are `exact` ones.
fn is_exact(payments: &[PaymentRecord]) -> bool {
    payments
        .first()
        .is_some_and(|p| p.scheme().name() == crate::x402::SCHEME_EXACT)
}

/// Whether a payment carries a 65-byte signature, which the token recovers as levy did (a
/// contract wallet's is longer, or wrapped for ERC-6492).
fn signed_by_key(p: &PaymentRecord) -> bool {
    p.signature.len() == 65
}
