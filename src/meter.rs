//! Metering for `upto` routes: what a response delivered (bytes, records, what the origin
//! reports, or the tokens an LLM response reports in `usage`) and what that costs. Pure: the proxy feeds it the body as it streams and asks
//! for the charge when the response ends.

use alloy_primitives::U256;

use crate::pricing::{parse_atomic, Price};

mod usage;

pub use usage::{TokenPrices, UsageScanner};

/// What a metered route counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    /// Response body bytes, priced per `per` bytes (a started block counts whole).
    Bytes { per: u64 },
    /// Records: NDJSON lines, or server-sent events on a `text/event-stream` response.
    Records,
    /// The origin reports its usage in a response header (or trailer) that levy strips:
    /// x402's `Settlement-Overrides` (`{"amount": "…"}`: atomic, `$` dollars or `%` of the
    /// ceiling), or any other header carrying a count of units.
    Origin { header: http::HeaderName },
    /// The tokens an OpenAI-compatible response reports in its `usage` object, priced per
    /// model for input and output ([`Rates::tokens`]).
    OpenAiUsage,
    /// One MCP call: its price when the origin's JSON-RPC answer served it (not an error,
    /// not a tool error) and reached the client, else nothing. Set by levy for the calls
    /// of an `mcp` route, never written in a config.
    ToolResult,
}

impl Unit {
    pub fn name(&self) -> &'static str {
        match self {
            Unit::Bytes { .. } => "bytes",
            Unit::Records => "records",
            Unit::Origin { .. } => "origin",
            Unit::OpenAiUsage => "openai_usage",
            Unit::ToolResult => "tool_result",
        }
    }
}

/// x402's header for a server-decided charge.
pub const SETTLEMENT_OVERRIDES: &str = "settlement-overrides";

/// One metered requirement's prices, in the asset's atomic units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub unit_price: U256,
    /// The most that may be charged (the `upto` amount the payer signs).
    pub ceiling: U256,
    /// Charged for any delivery above zero units.
    pub minimum: U256,
    /// When the origin fails mid-response, charges below this are dropped.
    pub failure_floor: U256,
    /// The asset's decimals (for `$` amounts from the origin).
    pub decimals: u8,
    /// `origin` units: what a client that left after receiving body bytes, before the origin
    /// reported its usage, is charged (the route's `unreported` share of the ceiling).
    pub unreported: U256,
    /// `openai_usage`: the model's input and output prices per million tokens.
    pub tokens: Option<TokenPrices>,
}

/// How a metered response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The whole response reached the client.
    Complete,
    /// The client went away; it is charged for what was flushed to it.
    ClientGone,
    /// The origin failed mid-response; what was delivered is charged, unless under the floor.
    OriginFailed,
}

impl Rates {
    /// The most units the ceiling pays for in whole (at least one: a ceiling below the unit
    /// price still buys the first unit, at the ceiling); `None` when units are free.
    pub fn units_at_ceiling(&self) -> Option<u64> {
        if self.unit_price.is_zero() {
            return None;
        }
        let units = self.ceiling / self.unit_price;
        Some(u64::try_from(units).unwrap_or(u64::MAX).max(1))
    }

    /// The charge for `units` delivered: nothing for nothing, else the unit price times the
    /// units, at least the minimum and at most the ceiling.
    pub fn charge(&self, units: u64, ending: Ending) -> U256 {
        if units == 0 {
            return U256::ZERO;
        }
        let raw = self.unit_price.saturating_mul(U256::from(units));
        let amount = raw.max(self.minimum).min(self.ceiling);
        if ending == Ending::OriginFailed && amount < self.failure_floor {
            return U256::ZERO;
        }
        amount
    }

    /// What an origin's `Settlement-Overrides` amount comes to, capped at the ceiling:
    /// `"1000"` atomic, `"$0.05"` dollars (USD assets), `"50%"` of the ceiling.
    pub fn override_amount(&self, text: &str) -> Option<U256> {
        let text = text.trim();
        let number = text.trim_start_matches('$').trim_end_matches('%').trim();
        if !number.is_empty() && number.bytes().all(|b| b == b'0' || b == b'.') {
            return Some(U256::ZERO);
        }
        let amount = if let Some(percent) = text.strip_suffix('%') {
            let hundredths = Price::parse_dollars(&format!("${}", percent.trim()))
                .ok()
                .and_then(|p| p.to_atomic(2, true, "").ok())?;
            self.ceiling.saturating_mul(hundredths) / U256::from(10_000u64)
        } else if text.starts_with('$') {
            Price::parse_dollars(text)
                .ok()?
                .to_atomic(self.decimals, true, "")
                .ok()?
        } else {
            parse_atomic(text).ok()?
        };
        Some(amount.min(self.ceiling))
    }
}

/// The number of priced units in `bytes` bytes at `per` bytes per unit.
pub fn byte_units(bytes: u64, per: u64) -> u64 {
    bytes.div_ceil(per.max(1))
}

/// Counts records as a body streams past, chunk by chunk, without keeping it.
#[derive(Debug, Clone, Default)]
pub struct RecordCounter {
    /// Server-sent events (a blank line ends one) instead of lines.
    events: bool,
    complete: u64,
    /// The current line has something besides whitespace.
    line_has_content: bool,
    /// The current event has at least one non-blank line.
    event_has_content: bool,
}

impl RecordCounter {
    /// A counter of NDJSON lines, or of events when `event_stream`.
    pub fn new(event_stream: bool) -> Self {
        Self {
            events: event_stream,
            ..Self::default()
        }
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.feed_until(chunk, u64::MAX);
    }

    /// Feeds the next chunk of the body up to the end of record `limit`: returns how many
    /// of the chunk's bytes that took when it ended there, `None` when the whole chunk was
    /// fed without reaching it.
    pub fn feed_until(&mut self, chunk: &[u8], limit: u64) -> Option<usize> {
        for (at, &b) in chunk.iter().enumerate() {
            match b {
                b'\n' => {
                    if self.events {
                        if self.line_has_content {
                            self.event_has_content = true;
                        } else if self.event_has_content {
                            self.complete += 1;
                            self.event_has_content = false;
                        }
                    } else if self.line_has_content {
                        self.complete += 1;
                    }
                    self.line_has_content = false;
                    if self.complete >= limit {
                        return Some(at + 1);
                    }
                }
                b' ' | b'\t' | b'\r' => {}
                _ => self.line_has_content = true,
            }
        }
        None
    }

    /// Records completed so far.
    pub fn complete(&self) -> u64 {
        self.complete
    }

    /// Records in the whole body once it ended: a last NDJSON line without its newline
    /// counts; an event without its closing blank line does not (clients do not dispatch it).
    pub fn finished(&self) -> u64 {
        self.complete + u64::from(!self.events && self.line_has_content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> Rates {
        Rates {
            unit_price: U256::from(100),
            ceiling: U256::from(10_000),
            minimum: U256::from(250),
            failure_floor: U256::from(1_000),
            decimals: 6,
            unreported: U256::from(10_000),
            tokens: None,
        }
    }

    #[test]
    fn the_charge_is_units_times_price_between_the_minimum_and_the_ceiling() {
        let r = rates();
        assert_eq!(r.charge(0, Ending::Complete), U256::ZERO);
        assert_eq!(r.charge(1, Ending::Complete), U256::from(250));
        assert_eq!(r.charge(7, Ending::Complete), U256::from(700));
        assert_eq!(r.charge(1_000, Ending::Complete), U256::from(10_000));
        assert_eq!(r.charge(u64::MAX, Ending::ClientGone), U256::from(10_000));
    }

    #[test]
    fn an_origin_failure_drops_charges_under_the_floor() {
        let r = rates();
        assert_eq!(r.charge(9, Ending::OriginFailed), U256::ZERO);
        assert_eq!(r.charge(10, Ending::OriginFailed), U256::from(1_000));
        assert_eq!(r.charge(9, Ending::ClientGone), U256::from(900));
    }

    #[test]
    fn origin_overrides_read_atomic_dollar_and_percent_amounts_capped_at_the_ceiling() {
        let r = rates();
        assert_eq!(r.override_amount("1234"), Some(U256::from(1234)));
        assert_eq!(r.override_amount("0"), Some(U256::ZERO));
        assert_eq!(r.override_amount("$0.00"), Some(U256::ZERO));
        assert_eq!(r.override_amount("0%"), Some(U256::ZERO));
        assert_eq!(r.override_amount("$0.005"), Some(U256::from(5_000)));
        assert_eq!(r.override_amount("50%"), Some(U256::from(5_000)));
        assert_eq!(r.override_amount("12.5%"), Some(U256::from(1_250)));
        assert_eq!(r.override_amount("99999999"), Some(U256::from(10_000)));
        assert_eq!(r.override_amount("lots"), None);
        assert_eq!(r.override_amount("-5"), None);
    }

    #[test]
    fn bytes_are_priced_per_started_block() {
        assert_eq!(byte_units(0, 1024), 0);
        assert_eq!(byte_units(1, 1024), 1);
        assert_eq!(byte_units(1024, 1024), 1);
        assert_eq!(byte_units(1025, 1024), 2);
    }

    #[test]
    fn ndjson_lines_are_counted_across_chunk_boundaries() {
        let mut c = RecordCounter::new(false);
        c.feed(b"{\"a\":1}\n{\"a\"");
        assert_eq!(c.complete(), 1);
        c.feed(b":2}\n\n  \n{\"a\":3}");
        assert_eq!(c.complete(), 2);
        assert_eq!(c.finished(), 3);
    }

    #[test]
    fn a_record_limit_ends_the_feed_right_after_the_last_record() {
        let mut lines = RecordCounter::new(false);
        assert_eq!(lines.feed_until(b"a\nb\n", 3), None);
        assert_eq!(lines.feed_until(b"\nc\nd\n", 3), Some(3));
        assert_eq!(lines.complete(), 3);
        let mut events = RecordCounter::new(true);
        assert_eq!(events.feed_until(b"data: 1\n\ndata: 2\n", 2), None);
        assert_eq!(events.feed_until(b"\ndata: 3\n\n", 2), Some(1));
        assert_eq!(events.finished(), 2);
    }

    #[test]
    fn the_ceiling_pays_for_whole_units_and_at_least_one() {
        let mut r = rates();
        assert_eq!(r.units_at_ceiling(), Some(100));
        r.ceiling = U256::from(10_050);
        assert_eq!(r.units_at_ceiling(), Some(100));
        r.ceiling = U256::from(50);
        assert_eq!(r.units_at_ceiling(), Some(1));
        r.unit_price = U256::ZERO;
        assert_eq!(r.units_at_ceiling(), None);
    }

    #[test]
    fn server_sent_events_end_at_a_blank_line() {
        let mut c = RecordCounter::new(true);
        c.feed(b"data: one\n\nevent: x\ndata: two\r\n\r");
        assert_eq!(c.complete(), 1);
        c.feed(b"\ndata: three\n");
        assert_eq!(c.complete(), 2);
        assert_eq!(c.finished(), 2);
    }
}
