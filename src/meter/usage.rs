//! LLM usage metering (`openai_usage`): the token counts an OpenAI-compatible response
//! reports in its `usage` object (the whole JSON body, or the last chunk of a streamed
//! one), found as the body streams past without keeping it, and what they cost at a
//! model's input and output prices.

use alloy_primitives::U256;

use super::Rates;

/// The most bytes kept while a `usage` object is cut across chunks.
const PENDING_LIMIT: usize = 64 * 1024;

/// Tokens a response reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    /// Reads `{prompt_tokens, completion_tokens}` (chat completions, completions) or
    /// `{input_tokens, output_tokens}` (responses); `None` for anything else (a `null`).
    fn read(value: &serde_json::Value) -> Option<Self> {
        let count = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| value.get(*n).and_then(serde_json::Value::as_u64))
        };
        let input = count(["prompt_tokens", "input_tokens"]);
        let output = count(["completion_tokens", "output_tokens"]);
        match (input, output) {
            (None, None) => None,
            (input, output) => Some(Usage {
                input: input.unwrap_or(0),
                output: output.unwrap_or(0),
            }),
        }
    }
}

/// A model's prices per million tokens, in an asset's atomic units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrices {
    pub input: U256,
    pub output: U256,
}

impl Rates {
    /// What `usage` costs at the token prices: rounded up to a whole atomic unit, at
    /// least the minimum for any tokens, at most the ceiling.
    pub fn token_charge(&self, usage: Usage) -> U256 {
        let Some(prices) = self.tokens else {
            return self.minimum.min(self.ceiling);
        };
        if usage.total() == 0 {
            return U256::ZERO;
        }
        let million = U256::from(1_000_000u64);
        let raw = prices
            .input
            .saturating_mul(U256::from(usage.input))
            .saturating_add(prices.output.saturating_mul(U256::from(usage.output)));
        let amount = raw.div_ceil(million);
        amount.max(self.minimum).min(self.ceiling)
    }
}

/// Finds the last `usage` object in a body as it streams past: every `"usage":` key is
/// read where it stands (a JSON body, or the `data:` lines of an event stream); what
/// follows the last complete one is dropped, and only a key cut across chunks keeps its
/// bytes until its value is whole (at most [`PENDING_LIMIT`]).
#[derive(Debug, Clone, Default)]
pub struct UsageScanner {
    pending: Vec<u8>,
    last: Option<Usage>,
}

const KEY: &[u8] = b"\"usage\"";

impl UsageScanner {
    /// The last usage found so far.
    pub fn usage(&self) -> Option<Usage> {
        self.last
    }

    /// Reads one chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        let mut from = 0;
        loop {
            let Some(at) = find(&self.pending[from..], KEY).map(|i| from + i) else {
                // Keep what could be the start of a key cut by the chunk's end.
                let keep = self.pending.len().saturating_sub(KEY.len() - 1).max(from);
                self.pending.drain(..keep);
                return;
            };
            if at > 0 && self.pending[at - 1] == b'\\' {
                // `\"usage\"` inside a string: text, not a key.
                from = at + KEY.len();
                continue;
            }
            let mut i = at + KEY.len();
            while self.pending.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            match self.pending.get(i) {
                None => return self.keep_from(at),
                Some(b':') => {}
                Some(_) => {
                    from = at + KEY.len();
                    continue;
                }
            }
            let value = &self.pending[i + 1..];
            if value.iter().all(u8::is_ascii_whitespace) {
                // The value is in the next chunk.
                return self.keep_from(at);
            }
            let mut values =
                serde_json::Deserializer::from_slice(value).into_iter::<serde_json::Value>();
            match values.next() {
                Some(Ok(v)) => {
                    if let Some(usage) = Usage::read(&v) {
                        self.last = Some(usage);
                    }
                    from = i + 1 + values.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => return self.keep_from(at),
                _ => from = at + KEY.len(),
            }
        }
    }

    /// Keeps the bytes from `at` (a key whose value is not whole yet), within the limit.
    fn keep_from(&mut self, at: usize) {
        self.pending.drain(..at);
        if self.pending.len() > PENDING_LIMIT {
            self.pending.clear();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&str]) -> Option<Usage> {
        let mut scanner = UsageScanner::default();
        for chunk in chunks {
            scanner.feed(chunk.as_bytes());
        }
        scanner.usage()
    }

    const USAGE: Usage = Usage {
        input: 12,
        output: 34,
    };

    #[test]
    fn a_json_completion_s_usage_is_found_wherever_it_stands_and_however_it_is_cut() {
        let body = r#"{"id":"c","usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46},"choices":[{"message":{"content":"say \"usage\": 9"}}]}"#;
        assert_eq!(scan(&[body]), Some(USAGE));
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(scan(&[a, b]), Some(USAGE), "cut at {cut}");
        }
        let responses = r#"{"output":[],"usage":{"input_tokens":12,"output_tokens":34}}"#;
        assert_eq!(scan(&[responses]), Some(USAGE));
    }

    #[test]
    fn a_stream_s_last_chunk_reports_its_usage_and_null_usages_before_it_do_not() {
        let chunks = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,",
            "\"completion_tokens\":34}}\n\n",
            "data: [DONE]\n\n",
        ];
        assert_eq!(scan(&chunks), Some(USAGE));
        assert_eq!(scan(&chunks[..1]), None);
        assert_eq!(scan(&["{\"choices\":[]}"]), None);
    }

    #[test]
    fn tokens_are_charged_at_their_prices_per_million_rounded_up_within_minimum_and_ceiling() {
        let rates = Rates {
            unit_price: U256::ZERO,
            ceiling: U256::from(100_000),
            minimum: U256::from(10),
            failure_floor: U256::ZERO,
            decimals: 6,
            unreported: U256::from(100_000),
            tokens: Some(TokenPrices {
                input: U256::from(2_500_000),
                output: U256::from(10_000_000),
            }),
        };
        // 1000 × 2.5 + 500 × 10 = 7500 atomic.
        let usage = Usage {
            input: 1_000,
            output: 500,
        };
        assert_eq!(rates.token_charge(usage), U256::from(7_500));
        let tiny = Usage {
            input: 1,
            output: 1,
        };
        assert_eq!(rates.token_charge(tiny), U256::from(13), "12.5, rounded up");
        assert_eq!(
            rates.token_charge(Usage {
                input: 0,
                output: 2
            }),
            U256::from(20)
        );
        let huge = Usage {
            input: 0,
            output: 1_000_000,
        };
        assert_eq!(rates.token_charge(huge), U256::from(100_000), "the ceiling");
        assert_eq!(
            rates.token_charge(Usage {
                input: 0,
                output: 0
            }),
            U256::ZERO
        );
    }
}
