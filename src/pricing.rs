//! Prices: turns what an operator writes (`"$0.001"` or an atomic `amount`) into an exact
//! amount of a token's atomic units, and describes what one route asks to be paid.
//! Pure; never goes through a float. What a route asks is rendered as an x402 challenge in
//! [`challenge`] and as a browser's wallet page in [`paywall`]; what a route tells agents
//! about itself in [`discovery`], and the documents listing such routes in [`catalogue`].

pub mod catalogue;
pub mod challenge;
pub mod discovery;
pub(crate) mod paywall;

use std::fmt;

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::Eip712Domain;

/// A price as written in the config, before it is tied to an asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Price {
    /// US dollars as a decimal string without the `$`, e.g. `0.001`. Valid only for USD
    /// stablecoins.
    Usd(String),
    /// Atomic units of the asset.
    Atomic(U256),
}

/// Why a price cannot be turned into atomic units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("`{0}` is not a dollar price; write it like \"$0.001\"")]
    NotDollars(String),
    #[error("`{0}` is not a decimal number")]
    NotDecimal(String),
    #[error("price `{price}` needs {needed} decimals but the asset has {decimals}")]
    TooPrecise {
        price: String,
        needed: usize,
        decimals: u8,
    },
    #[error("price `{0}` is too large")]
    TooLarge(String),
    #[error("price must be greater than zero (use `free: true` for a free route)")]
    Zero,
    #[error("{0} is not a whole number of atomic units")]
    NotWhole(String),
    #[error("a dollar price needs a USD stablecoin, and `{0}` is not one; give `amount` in atomic units instead")]
    NotUsdAsset(String),
}

impl Price {
    /// Parses `"$0.001"` (dollars). Atomic amounts are parsed with [`parse_atomic`].
    pub fn parse_dollars(text: &str) -> Result<Self, PriceError> {
        let digits = text
            .trim()
            .strip_prefix('$')
            .ok_or_else(|| PriceError::NotDollars(text.to_owned()))?;
        split_decimal(digits).ok_or_else(|| PriceError::NotDecimal(text.to_owned()))?;
        Ok(Price::Usd(digits.to_owned()))
    }

    /// The amount in atomic units of an asset with `decimals` decimals. `usd_asset` says whether
    /// the asset is a USD stablecoin; `asset_name` is only used in the error.
    pub fn to_atomic(
        &self,
        decimals: u8,
        usd_asset: bool,
        asset_name: &str,
    ) -> Result<U256, PriceError> {
        let amount = match self {
            Price::Atomic(amount) => *amount,
            Price::Usd(_) if !usd_asset => {
                return Err(PriceError::NotUsdAsset(asset_name.to_owned()))
            }
            Price::Usd(text) => dollars_to_atomic(text, decimals)?,
        };
        if amount.is_zero() {
            return Err(PriceError::Zero);
        }
        Ok(amount)
    }
}

impl Price {
    /// This price times `factor` (a decimal, `"2"` or `"0.5"`), exactly: dollars stay
    /// dollars (checked against an asset's decimals later); atomic units must come out
    /// whole.
    pub fn times(&self, factor: &str) -> Result<Price, PriceError> {
        let not_decimal = || PriceError::NotDecimal(factor.to_owned());
        let (whole, frac) = split_decimal(factor.trim()).ok_or_else(not_decimal)?;
        let mantissa = |whole: &str, frac: &str| {
            let digits = format!("{whole}{frac}");
            U256::from_str_radix(if digits.is_empty() { "0" } else { &digits }, 10)
                .map_err(|_| PriceError::TooLarge(factor.to_owned()))
        };
        let by = mantissa(whole, frac)?;
        let ten = U256::from(10u64);
        match self {
            Price::Atomic(amount) => {
                let scale = ten.pow(U256::from(frac.len()));
                let product = amount.saturating_mul(by);
                if product % scale != U256::ZERO {
                    return Err(PriceError::NotWhole(format!("{amount} × {factor}")));
                }
                Ok(Price::Atomic(product / scale))
            }
            Price::Usd(text) => {
                let (w, f) = split_decimal(text).ok_or_else(not_decimal)?;
                let digits = mantissa(w, f)?.saturating_mul(by).to_string();
                let scale = f.len() + frac.len();
                let padded = format!("{digits:0>width$}", width = scale + 1);
                let (int, dec) = padded.split_at(padded.len() - scale);
                Ok(Price::Usd(if dec.is_empty() {
                    int.to_owned()
                } else {
                    format!("{int}.{dec}")
                }))
            }
        }
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Price::Usd(text) => write!(f, "${text}"),
            Price::Atomic(amount) => write!(f, "{amount} atomic units"),
        }
    }
}

/// Parses a non-negative integer of atomic units, e.g. `"1000"`.
pub fn parse_atomic(text: &str) -> Result<U256, PriceError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PriceError::NotDecimal(text.to_owned()));
    }
    U256::from_str_radix(text, 10).map_err(|_| PriceError::TooLarge(text.to_owned()))
}

/// `"0.001"` with 6 decimals is 1000. Digits past `decimals` must be zeros.
fn dollars_to_atomic(text: &str, decimals: u8) -> Result<U256, PriceError> {
    let (whole, frac) =
        split_decimal(text).ok_or_else(|| PriceError::NotDecimal(text.to_owned()))?;
    let significant = frac.trim_end_matches('0');
    if significant.len() > usize::from(decimals) {
        return Err(PriceError::TooPrecise {
            price: format!("${text}"),
            needed: significant.len(),
            decimals,
        });
    }
    let mut digits = String::with_capacity(whole.len() + usize::from(decimals));
    digits.push_str(whole);
    digits.push_str(significant);
    digits.extend(std::iter::repeat_n(
        '0',
        usize::from(decimals) - significant.len(),
    ));
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(U256::ZERO);
    }
    U256::from_str_radix(digits, 10).map_err(|_| PriceError::TooLarge(format!("${text}")))
}

/// Splits `"12.345"` into `("12", "345")`; `None` unless it is digits with at most one dot.
fn split_decimal(text: &str) -> Option<(&str, &str)> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (!(whole.is_empty() && frac.is_empty()) && digits(whole) && digits(frac))
        .then_some((whole, frac))
}

/// Formats atomic units as a decimal amount of the token, e.g. 1000 with 6 decimals is
/// `0.001`. Used for humans (the HTML page, logs), never for arithmetic.
pub fn format_units(amount: U256, decimals: u8) -> String {
    let digits = amount.to_string();
    let decimals = usize::from(decimals);
    if decimals == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = decimals + 1);
    let (whole, frac) = padded.split_at(padded.len() - decimals);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        whole.to_owned()
    } else {
        format!("{whole}.{frac}")
    }
}

/// What one (network, asset) pair of a route asks for: everything needed to issue one
/// `accepts` entry and, later, to check a payment against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// CAIP-2 id, e.g. `eip155:84532`.
    pub network: String,
    /// v1 network name, when v1 clients know the network.
    pub v1_network: Option<String>,
    pub chain_id: u64,
    /// The operator's name for the network, e.g. `base-sepolia`.
    pub network_name: String,
    /// The operator's name for the asset, e.g. `usdc`.
    pub asset_name: String,
    pub asset: Address,
    pub eip712_name: String,
    pub eip712_version: String,
    pub decimals: u8,
    pub amount: U256,
    pub pay_to: Address,
    pub max_timeout_seconds: u64,
    /// EIP-712 domain separator of the token on this chain, computed once.
    pub domain_separator: B256,
    /// The scheme it is issued under; `amount` is the price (`exact`) or the ceiling (`upto`).
    pub scheme: Scheme,
}

/// The x402 scheme of one requirement, with what verifying it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// An EIP-3009 authorization for exactly `amount`.
    Exact,
    /// A Permit2 authorization for at most `amount`, settled only by `facilitator`.
    Upto {
        /// The address named as `extra.facilitatorAddress` (levy's batcher).
        facilitator: Address,
        /// Permit2's EIP-712 domain separator on this chain, computed once.
        permit2_domain: B256,
    },
    /// A voucher on an escrow channel (`batch-settlement`) for exactly `amount` more than the
    /// channel's charged total.
    Batch {
        /// levy's key that signs claims and refunds (`extra.receiverAuthorizer`).
        receiver_authorizer: Address,
        /// Seconds a payer's withdrawal waits (`extra.withdrawDelay`).
        withdraw_delay: u64,
        /// The deposit levy asks for (`extra.minDeposit`), atomic units.
        min_deposit: U256,
        /// The escrow's EIP-712 domain separator on this chain, computed once.
        escrow_domain: B256,
    },
}

impl Scheme {
    /// The name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Exact => crate::x402::SCHEME_EXACT,
            Scheme::Upto { .. } => crate::x402::SCHEME_UPTO,
            Scheme::Batch { .. } => crate::x402::SCHEME_BATCH,
        }
    }

    /// The `upto` terms for `facilitator` on chain `chain_id`.
    pub fn upto(facilitator: Address, chain_id: u64) -> Scheme {
        Scheme::Upto {
            facilitator,
            permit2_domain: permit2_domain_separator(chain_id),
        }
    }
}

/// Permit2's EIP-712 domain separator on a chain (name `Permit2`, no version).
pub fn permit2_domain_separator(chain_id: u64) -> B256 {
    Eip712Domain::new(
        Some("Permit2".into()),
        None,
        Some(U256::from(chain_id)),
        Some(crate::x402::PERMIT2_ADDRESS),
        None,
    )
    .separator()
}

/// The EIP-712 domain separator a token signs `TransferWithAuthorization` under.
pub fn domain_separator(name: &str, version: &str, chain_id: u64, asset: Address) -> B256 {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain_id)),
        Some(asset),
        None,
    )
    .separator()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_price_times_a_factor_is_exact() {
        let usd = |t: &str| Price::Usd(t.to_owned());
        assert_eq!(usd("0.001").times("2"), Ok(usd("0.002")));
        assert_eq!(usd("0.001").times("0.5"), Ok(usd("0.0005")));
        assert_eq!(usd("3").times("1.5"), Ok(usd("4.5")));
        let atomic = |n: u64| Price::Atomic(U256::from(n));
        assert_eq!(atomic(1000).times("0.25"), Ok(atomic(250)));
        assert_eq!(
            atomic(5).times("0.5"),
            Err(PriceError::NotWhole("5 × 0.5".into()))
        );
        assert_eq!(
            atomic(5).times("x"),
            Err(PriceError::NotDecimal("x".into()))
        );
    }

    use super::*;

    fn usd(text: &str, decimals: u8) -> Result<U256, PriceError> {
        Price::parse_dollars(text)?.to_atomic(decimals, true, "usdc")
    }

    #[test]
    fn dollar_prices_convert_exactly_to_atomic_units() {
        assert_eq!(usd("$0.001", 6).unwrap(), U256::from(1000));
        assert_eq!(usd("$1", 6).unwrap(), U256::from(1_000_000));
        assert_eq!(usd("$12.50", 6).unwrap(), U256::from(12_500_000));
        assert_eq!(usd("$0.000001", 6).unwrap(), U256::from(1));
        assert_eq!(usd("$0.0010000000", 6).unwrap(), U256::from(1000));
        assert_eq!(usd("$.5", 2).unwrap(), U256::from(50));
        assert_eq!(
            usd("$0.1", 18).unwrap(),
            U256::from(100_000_000_000_000_000u128)
        );
    }

    #[test]
    fn a_price_finer_than_the_asset_decimals_is_refused() {
        assert_eq!(
            usd("$0.0000001", 6),
            Err(PriceError::TooPrecise {
                price: "$0.0000001".into(),
                needed: 7,
                decimals: 6
            })
        );
    }

    #[test]
    fn malformed_and_zero_prices_are_refused() {
        assert!(matches!(
            Price::parse_dollars("0.01"),
            Err(PriceError::NotDollars(_))
        ));
        assert!(matches!(
            Price::parse_dollars("$1e-3"),
            Err(PriceError::NotDecimal(_))
        ));
        assert!(matches!(
            Price::parse_dollars("$-1"),
            Err(PriceError::NotDecimal(_))
        ));
        assert!(matches!(
            Price::parse_dollars("$."),
            Err(PriceError::NotDecimal(_))
        ));
        assert!(matches!(
            Price::parse_dollars("$1.2.3"),
            Err(PriceError::NotDecimal(_))
        ));
        assert_eq!(usd("$0.000", 6), Err(PriceError::Zero));
        assert!(matches!(
            parse_atomic("12a"),
            Err(PriceError::NotDecimal(_))
        ));
        assert!(matches!(
            parse_atomic(&"9".repeat(90)),
            Err(PriceError::TooLarge(_))
        ));
    }

    #[test]
    fn dollar_prices_need_a_usd_asset() {
        let price = Price::parse_dollars("$1").unwrap();
        assert_eq!(
            price.to_atomic(18, false, "weth"),
            Err(PriceError::NotUsdAsset("weth".into()))
        );
        assert_eq!(
            Price::Atomic(U256::from(7)).to_atomic(18, false, "weth"),
            Ok(U256::from(7))
        );
    }

    #[test]
    fn units_format_for_humans() {
        assert_eq!(format_units(U256::from(1000), 6), "0.001");
        assert_eq!(format_units(U256::from(12_500_000), 6), "12.5");
        assert_eq!(format_units(U256::from(3), 0), "3");
        assert_eq!(format_units(U256::from(1_000_000), 6), "1");
    }
}
