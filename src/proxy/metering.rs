//! A metered (`upto`) response on its way to the client: what it has delivered so far,
//! counted as the body streams past (nothing is buffered), where it must end (at the
//! ceiling, or before its authorization's deadline), and the charge once it ends.

use std::collections::VecDeque;

use alloy_primitives::U256;
use pingora::http::ResponseHeader;

use crate::clock::unix_now;
use crate::config::AtCeiling;
use crate::meter::{
    byte_units, Ending, Rates, RecordCounter, Unit, UsageScanner, SETTLEMENT_OVERRIDES,
};
use crate::settle::StreamTicket;

/// Chunk boundaries remembered for a client that leaves: the records of the chunks it was
/// sent are charged, and pingora's socket buffer holds at most a few chunks more.
const CHECKPOINTS: usize = 16;

/// The usage of one metered response.
#[derive(Debug)]
pub struct Metering {
    unit: Unit,
    rates: Rates,
    /// Body bytes passed to the client connection so far.
    bytes: u64,
    records: RecordCounter,
    /// `(bytes, records)` after each recent chunk.
    checkpoints: VecDeque<(u64, u64)>,
    /// What the origin reported (`origin` unit), from a header or a trailer.
    reported: Option<String>,
    /// The tokens the body reports (`openai_usage`).
    usage: UsageScanner,
    /// The body ended normally.
    complete: bool,
    /// The most units the response may deliver (`at_ceiling: end`).
    limit: Option<u64>,
    /// Not a byte after this unix second: the charge must still settle before the
    /// authorization's deadline.
    cut_at: Option<u64>,
    /// levy ended the response (at the limit or the cut-off); what follows is dropped.
    ended: bool,
    /// When it did: an origin that has not ended its own response soon after is cut off.
    ended_at: Option<std::time::Instant>,
    /// Its place among the settlement's streams: checkpointed, and taken by levy if it
    /// outlives its cut-off.
    stream: Option<StreamTicket>,
    /// `tool_result`: the origin's answer served the call; the body bytes passed once it
    /// had, the answer among them.
    served: bool,
    served_at: Option<u64>,
}

/// How long an origin may go on after levy ended its response (its chunks dropped) before
/// the connection is closed: long enough for a finite response to end on its own, framed
/// whole.
const ORIGIN_END_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The error that closes a metered response levy ended (see [`Flow::Over`]): not a failure,
/// and not logged as one.
pub const METERED_END: &str = "metered response ended";

/// What becomes of a chunk of a metered body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// It goes to the client (perhaps cut at the last unit the ceiling pays for), or, the
    /// response having ended, it was dropped while the origin is given a moment to end its
    /// own (then the response ends as the origin's does, framed whole).
    Go,
    /// The response ended a while ago and the origin goes on: the chunk was dropped and the
    /// connection must close as soon as what was passed before it has been written.
    Over,
}

impl Metering {
    /// The metering of a response paid under the route's requirement at `index`; `None`
    /// when that requirement is not metered.
    pub fn for_requirement(paywall: &crate::config::Paywall, index: usize) -> Option<Self> {
        let metered = paywall.metered.as_ref()?;
        let rates = metered.rates.get(index).copied().flatten()?;
        Some(Self::new(metered.unit.clone(), rates, metered.at_ceiling))
    }

    pub fn new(unit: Unit, rates: Rates, at_ceiling: AtCeiling) -> Self {
        let limit = match (&unit, at_ceiling) {
            (Unit::Origin { .. } | Unit::OpenAiUsage | Unit::ToolResult, _)
            | (_, AtCeiling::Continue) => None,
            (_, AtCeiling::End) => rates.units_at_ceiling(),
        };
        Self {
            unit,
            rates,
            bytes: 0,
            records: RecordCounter::default(),
            checkpoints: VecDeque::with_capacity(CHECKPOINTS),
            reported: None,
            usage: UsageScanner::default(),
            complete: false,
            limit,
            cut_at: None,
            ended: false,
            ended_at: None,
            stream: None,
            served: false,
            served_at: None,
        }
    }

    /// The metering of one MCP call paid `amount` (or leased at it): all of it when the
    /// origin's answer serves the call and reaches the client, nothing otherwise.
    pub fn tool_call(amount: U256) -> Self {
        let rates = Rates {
            unit_price: amount,
            ceiling: amount,
            minimum: U256::ZERO,
            failure_floor: U256::ZERO,
            // Only an origin's `$` report reads it; a tool call reads none.
            decimals: 0,
            unreported: U256::ZERO,
            tokens: None,
        };
        Self::new(Unit::ToolResult, rates, AtCeiling::Continue)
    }

    /// Whether this meters one MCP call ([`Metering::tool_call`]).
    pub fn is_tool_call(&self) -> bool {
        self.unit == Unit::ToolResult
    }

    /// An MCP call's answer was judged: served or not. The chunk that carries it is the
    /// next one counted.
    pub fn judge(&mut self, served: bool) {
        self.served = served;
    }

    /// What a response that started costs at least: the route's minimum.
    pub fn floor(&self) -> U256 {
        self.rates.minimum
    }

    /// Follows the response as the settlement's stream `ticket`.
    pub fn follow(&mut self, ticket: StreamTicket) {
        self.stream = Some(ticket);
    }

    /// The settlement's ticket of this response, once it ended.
    pub fn take_stream(&mut self) -> Option<StreamTicket> {
        self.stream.take()
    }

    /// Ends the response at unix second `at` at the latest: what it delivered by then is
    /// what it is charged.
    pub fn end_by(&mut self, at: u64) {
        self.cut_at = Some(at);
    }

    /// levy ends the response here: what follows is dropped.
    fn end(&mut self) {
        self.ended = true;
        self.ended_at.get_or_insert_with(std::time::Instant::now);
    }

    /// Body bytes passed on to the client connection so far.
    pub fn passed(&self) -> u64 {
        self.bytes
    }

    /// What the response delivered so far would cost if it ended now.
    pub fn charge_so_far(&self) -> U256 {
        let units = match &self.unit {
            Unit::Bytes { per } => byte_units(self.bytes, *per),
            Unit::Records => self.records.complete(),
            Unit::Origin { .. } | Unit::OpenAiUsage => u64::from(self.bytes > 0),
            Unit::ToolResult => u64::from(self.served_at.is_some()),
        };
        self.rates.charge(units, Ending::ClientGone)
    }

    pub fn unit_name(&self) -> &'static str {
        self.unit.name()
    }

    /// Reads (and strips) the origin's usage header, and picks the record format from the
    /// content type.
    pub fn on_headers(&mut self, response: &mut ResponseHeader) {
        let event_stream = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        self.records = RecordCounter::new(event_stream);
        if let Unit::Origin { header } = &self.unit {
            let value = response.remove_header(header);
            self.take_report(value);
        }
        // x402's override header is for levy alone, whatever the unit.
        if response.headers.contains_key(SETTLEMENT_OVERRIDES) {
            response.remove_header(SETTLEMENT_OVERRIDES);
        }
    }

    /// Reads (and strips) the origin's usage from response trailers. Trailers close a
    /// response: the body before them is complete (over HTTP/2 no empty end-of-stream
    /// chunk need follow them).
    pub fn on_trailers(&mut self, trailers: &mut http::HeaderMap) {
        self.complete = true;
        if let Unit::Origin { header } = &self.unit {
            let value = trailers.remove(header);
            self.take_report(value);
        }
        trailers.remove(SETTLEMENT_OVERRIDES);
    }

    /// Keeps the origin's usage report, from a header or a trailer removed for it.
    fn take_report(&mut self, value: Option<http::HeaderValue>) {
        if let Some(value) = value {
            self.reported = value.to_str().ok().map(str::to_owned);
        }
    }

    /// Counts one chunk of the body on its way to the client, cutting it after the last
    /// unit the ceiling pays for. After that, or past the cut-off, a chunk is dropped: the
    /// response has ended.
    pub fn on_body(&mut self, body: &mut Option<bytes::Bytes>, end_of_stream: bool) -> Flow {
        if !self.ended && self.cut_at.is_some_and(|at| unix_now() >= at) {
            self.end();
        }
        if !self.ended && body.is_some() && self.stream.as_ref().is_some_and(StreamTicket::is_taken)
        {
            // levy took the charge already (the response outlived its cut-off).
            self.end();
        }
        if self.ended {
            *body = None;
            if end_of_stream {
                // The origin ended too: the response closes as it normally would.
                self.complete = true;
                return Flow::Go;
            }
            let waited = self.ended_at.map_or(ORIGIN_END_GRACE, |at| at.elapsed());
            return if waited >= ORIGIN_END_GRACE {
                Flow::Over
            } else {
                Flow::Go
            };
        }
        let Some(chunk) = body.as_mut() else {
            self.complete |= end_of_stream;
            return Flow::Go;
        };
        let kept = match (&self.unit, self.limit) {
            (Unit::Bytes { per }, Some(limit)) => {
                let room = limit.saturating_mul(*per).saturating_sub(self.bytes);
                (chunk.len() as u64 >= room).then_some(room as usize)
            }
            (Unit::Records, Some(limit)) => self.records.feed_until(chunk, limit),
            (Unit::Records, None) => {
                self.records.feed(chunk);
                None
            }
            (Unit::OpenAiUsage, _) => {
                self.usage.feed(chunk);
                None
            }
            _ => None,
        };
        if let Some(kept) = kept {
            chunk.truncate(kept);
            self.end();
        }
        self.bytes += chunk.len() as u64;
        if self.served && self.served_at.is_none() {
            self.served_at = Some(self.bytes);
        }
        if let Some(ticket) = &self.stream {
            // Counted before it is sent: a checkpoint covers everything that may have left.
            ticket.progress(self.charge_so_far());
        }
        if self.unit == Unit::Records {
            if self.checkpoints.len() == CHECKPOINTS {
                self.checkpoints.pop_front();
            }
            self.checkpoints
                .push_back((self.bytes, self.records.complete()));
        }
        if end_of_stream || self.ended {
            // What levy ended at the ceiling is a whole response: it was all sent.
            self.complete = true;
        }
        Flow::Go
    }

    /// How the response ended: completely (or ended by levy), or cut short by the origin
    /// (`origin_failed`) or by the client.
    pub fn ending(&self, origin_failed: bool) -> Ending {
        match (self.complete, origin_failed) {
            (true, _) => Ending::Complete,
            (false, true) => Ending::OriginFailed,
            (false, false) => Ending::ClientGone,
        }
    }

    /// The units delivered: everything on completion; otherwise what was flushed to the
    /// client (`sent` body bytes, as the connection counted them).
    pub fn units(&self, ending: Ending, sent: u64) -> u64 {
        let delivered = if ending == Ending::Complete {
            self.bytes
        } else {
            sent.min(self.bytes)
        };
        match &self.unit {
            Unit::Bytes { per } => byte_units(delivered, *per),
            Unit::Records if ending == Ending::Complete => self.records.finished(),
            Unit::Records => self
                .checkpoints
                .iter()
                .rev()
                .find(|(bytes, _)| *bytes <= delivered)
                .map_or(0, |(_, records)| *records),
            Unit::Origin { .. } => u64::from(delivered > 0),
            Unit::ToolResult => u64::from(self.served_at.is_some_and(|at| delivered >= at)),
            Unit::OpenAiUsage => match self.usage.usage() {
                Some(usage) => usage.total(),
                None => u64::from(delivered > 0),
            },
        }
    }

    /// The charge for this response.
    pub fn charge(&self, ending: Ending, sent: u64) -> (u64, U256) {
        let units = self.units(ending, sent);
        if self.unit == Unit::OpenAiUsage {
            // Without a report, `units` is 1 when anything was delivered, else 0.
            let delivered = units > 0;
            let amount = match (self.usage.usage(), ending) {
                // The tokens the response reported, at the model's prices.
                (Some(usage), _) => self.rates.token_charge(usage),
                // A response that never reported its usage (a stream without
                // `stream_options.include_usage`), or a client that left before the report
                // after receiving some of the body, pays the route's `unreported` share.
                (None, Ending::Complete | Ending::ClientGone) if delivered => self.rates.unreported,
                // An origin failing mid-response costs a delivery's minimum.
                (None, _) => self.rates.charge(units, ending),
            };
            return (units, amount);
        }
        if let Unit::Origin { .. } = self.unit {
            let reported = self
                .reported
                .as_deref()
                .and_then(|text| self.reported_amount(text));
            let amount = match (ending, reported) {
                // The origin's own figure for a complete response.
                (Ending::Complete, Some(amount)) => amount,
                // A client that left after receiving some of the body cannot dodge the
                // report: it pays the origin's last figure (a header sent before the body),
                // or else the route's `unreported` share of the ceiling.
                (Ending::ClientGone, reported) if units > 0 => {
                    reported.unwrap_or(self.rates.unreported)
                }
                // An origin failing mid-response (or a response without a report) costs a
                // delivery's minimum.
                _ => self.rates.charge(units, ending),
            };
            return (units, amount);
        }
        (units, self.rates.charge(units, ending))
    }

    fn reported_amount(&self, text: &str) -> Option<U256> {
        let Unit::Origin { header } = &self.unit else {
            return None;
        };
        if header.as_str() == SETTLEMENT_OVERRIDES {
            let json: serde_json::Value = serde_json::from_str(text).ok()?;
            return self.rates.override_amount(json.get("amount")?.as_str()?);
        }
        let units: u64 = text.trim().parse().ok()?;
        Some(self.rates.charge(units, Ending::Complete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::TokenPrices;

    fn llm() -> Metering {
        let rates = Rates {
            unit_price: U256::ZERO,
            ceiling: U256::from(10_000),
            minimum: U256::from(5),
            failure_floor: U256::ZERO,
            decimals: 6,
            unreported: U256::from(10_000),
            tokens: Some(TokenPrices {
                input: U256::from(10_000_000),
                output: U256::from(30_000_000),
            }),
        };
        Metering::new(Unit::OpenAiUsage, rates, AtCeiling::Continue)
    }

    fn stream(metering: &mut Metering, chunks: &[&str]) {
        for chunk in chunks {
            let mut body = Some(bytes::Bytes::copy_from_slice(chunk.as_bytes()));
            assert_eq!(metering.on_body(&mut body, false), Flow::Go);
            assert_eq!(
                body.as_deref(),
                Some(chunk.as_bytes()),
                "passed on unchanged"
            );
        }
        metering.on_body(&mut None, true);
    }

    #[test]
    fn an_llm_response_is_charged_its_reported_tokens_and_one_without_a_report_the_unreported_share(
    ) {
        let mut reported = llm();
        stream(
            &mut reported,
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":13}}\n\n",
                "data: [DONE]\n\n",
            ],
        );
        let sent = reported.passed();
        // 14 × 10 + 13 × 30.
        assert_eq!(
            reported.charge(Ending::Complete, sent),
            (27, U256::from(530))
        );

        let mut silent = llm();
        stream(
            &mut silent,
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                "data: [DONE]\n\n",
            ],
        );
        let sent = silent.passed();
        assert_eq!(
            silent.charge(Ending::Complete, sent).1,
            U256::from(10_000),
            "a stream that did not ask for its usage cannot dodge the price"
        );
        assert_eq!(
            silent.charge(Ending::ClientGone, 0).1,
            U256::ZERO,
            "nothing reached it"
        );
    }
}
