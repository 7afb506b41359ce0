//! The origin's reply to one paid MCP call on its way to the client. The JSON-RPC response
//! to the call is held until it is whole (a JSON body, or the one event of an event stream
//! that answers the call's id; other events pass at once), judged, given its receipt when
//! it served the call, and sent on.

use bytes::Bytes;
use serde_json::Value;

use super::put_receipt;

/// What the origin's reply says of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A result that is not a tool error: the call was served.
    Served,
    /// A JSON-RPC error, or a result with `isError: true`: not served.
    Failed,
    /// The reply ended without answering the call (or was not JSON-RPC): not served.
    Unanswered,
    /// The answer was larger than levy holds: passed on as it is, unread; the origin
    /// answered, so it counts as served.
    Unread,
}

impl Verdict {
    /// Whether a call with this verdict is charged.
    pub fn is_served(self) -> bool {
        matches!(self, Verdict::Served | Verdict::Unread)
    }
}

/// One paid call's reply, watched.
#[derive(Debug)]
pub struct ReplyWatch {
    /// The id the answer must carry.
    id: Value,
    /// The reply is an event stream (`text/event-stream`), else one JSON body.
    event_stream: bool,
    /// Bytes held back: the JSON body, or the stream's unfinished event.
    held: Vec<u8>,
    /// The most bytes held before levy gives up reading and passes them on.
    limit: usize,
    /// The `SettlementResponse` a served answer carries.
    receipt: Option<Value>,
    /// A failed answer carries it too (a channel's: its state moved either way, and the
    /// client's next voucher must follow it).
    receipt_always: bool,
    verdict: Option<Verdict>,
}

impl ReplyWatch {
    /// Watches the reply to the call with `id`.
    pub fn new(id: Value, event_stream: bool, limit: usize) -> Self {
        Self {
            id,
            event_stream,
            held: Vec::new(),
            limit,
            receipt: None,
            receipt_always: false,
            verdict: None,
        }
    }

    /// The receipt a served answer carries in `result._meta["x402/payment-response"]`
    /// (`always`: a failed answer too).
    pub fn set_receipt(&mut self, receipt: Value, always: bool) {
        self.receipt = Some(receipt);
        self.receipt_always = always;
    }

    /// What the reply said, once it said it.
    #[cfg(test)]
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Takes one chunk of the reply: held, or passed on with what it completes (rewritten
    /// where it answers the call). Returns the verdict when this chunk decided it.
    pub fn on_body(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> Option<Verdict> {
        if self.verdict.is_some() {
            return None;
        }
        if let Some(chunk) = body.take() {
            self.held.extend_from_slice(&chunk);
        }
        let mut out = Vec::new();
        if self.event_stream {
            self.events(&mut out);
        } else if end_of_stream {
            let held = std::mem::take(&mut self.held);
            match serde_json::from_slice::<Value>(&held) {
                Ok(mut answer) if self.answers(&answer) => {
                    self.decide(&mut answer, &held, &mut out);
                }
                _ => out = held,
            }
        }
        if self.verdict.is_none() && self.held.len() > self.limit {
            self.verdict = Some(Verdict::Unread);
        }
        if self.verdict.is_some() || end_of_stream {
            // Decided, or over: whatever is still held goes as it is.
            out.append(&mut self.held);
            self.verdict.get_or_insert(Verdict::Unanswered);
        }
        if !out.is_empty() {
            *body = Some(Bytes::from(out));
        }
        self.verdict
    }

    /// Passes on each whole event held; the one answering the call is judged and
    /// rewritten, and ends the watch.
    fn events(&mut self, out: &mut Vec<u8>) {
        while self.verdict.is_none() {
            let Some(end) = event_end(&self.held) else {
                return;
            };
            let event: Vec<u8> = self.held.drain(..end).collect();
            let data = event_data(&event);
            match serde_json::from_str::<Value>(&data) {
                Ok(mut answer) if self.answers(&answer) => {
                    let mut rewritten = Vec::new();
                    self.decide(&mut answer, &[], &mut rewritten);
                    if rewritten.is_empty() {
                        out.extend_from_slice(&event);
                    } else {
                        out.extend(with_data(&event, &rewritten));
                    }
                }
                _ => out.extend_from_slice(&event),
            }
        }
    }

    /// Whether `message` is the JSON-RPC response to the call.
    fn answers(&self, message: &Value) -> bool {
        (message.get("result").is_some() || message.get("error").is_some())
            && message.get("id") == Some(&self.id)
    }

    /// Judges the answer; a served one gets the receipt and is written to `out` (else
    /// `original` is).
    fn decide(&mut self, answer: &mut Value, original: &[u8], out: &mut Vec<u8>) {
        let failed = answer.get("error").is_some()
            || answer
                .pointer("/result/isError")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            || answer.pointer("/result/resultType").and_then(Value::as_str)
                == Some("payment_required");
        self.verdict = Some(if failed {
            Verdict::Failed
        } else {
            Verdict::Served
        });
        match &self.receipt {
            Some(receipt) if (!failed || self.receipt_always) && put_receipt(answer, receipt) => {
                out.extend(answer.to_string().into_bytes());
            }
            _ => out.extend_from_slice(original),
        }
    }
}

/// Where the first whole event in `held` ends (after its blank line).
fn event_end(held: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < held.len() {
        match held[i..] {
            [b'\n', b'\n', ..] => return Some(i + 2),
            [b'\r', b'\n', b'\r', b'\n', ..] => return Some(i + 4),
            [b'\r', b'\r', ..] => return Some(i + 2),
            _ => i += 1,
        }
    }
    None
}

/// An event's data: its `data:` lines joined by newlines.
fn event_data(event: &[u8]) -> String {
    let text = String::from_utf8_lossy(event);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    data.join("\n")
}

/// `event` with its data replaced by `data` (one line), its other fields kept.
fn with_data(event: &[u8], data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(event);
    let mut out = Vec::with_capacity(event.len() + data.len());
    let mut written = false;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with("data:") {
            if !written {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(data);
                out.push(b'\n');
                written = true;
            }
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Feeds `text` in chunks of `size` bytes; what came out, and the verdict.
    fn feed(watch: &mut ReplyWatch, text: &str, size: usize) -> (String, Option<Verdict>) {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = bytes.chunks(size.max(1)).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            watch.on_body(&mut body, i + 1 == chunks.len());
            if let Some(b) = body {
                out.extend_from_slice(&b);
            }
        }
        (String::from_utf8(out).unwrap(), watch.verdict())
    }

    fn receipt() -> Value {
        json!({"success": true, "payer": "0xabc"})
    }

    #[test]
    fn a_served_json_answer_carries_the_receipt_at_every_cut_point() {
        let body = r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"hi"}]}}"#;
        for size in 1..body.len() {
            let mut watch = ReplyWatch::new(json!(3), false, 1 << 20);
            watch.set_receipt(receipt(), false);
            let (out, verdict) = feed(&mut watch, body, size);
            assert_eq!(verdict, Some(Verdict::Served));
            let out: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(out["result"]["_meta"]["x402/payment-response"], receipt());
            assert_eq!(out["result"]["content"][0]["text"], "hi");
        }
    }

    #[test]
    fn a_tool_error_or_a_json_rpc_error_is_not_served_and_passes_unchanged() {
        for body in [
            r#"{"jsonrpc":"2.0","id":3,"result":{"isError":true,"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"no such tool"}}"#,
        ] {
            let mut watch = ReplyWatch::new(json!(3), false, 1 << 20);
            watch.set_receipt(receipt(), false);
            let (out, verdict) = feed(&mut watch, body, 7);
            assert_eq!(verdict, Some(Verdict::Failed));
            assert_eq!(out, body);
        }
    }

    #[test]
    fn a_channel_s_receipt_rides_on_a_tool_error_too() {
        let body = r#"{"jsonrpc":"2.0","id":3,"result":{"isError":true,"content":[]}}"#;
        let mut watch = ReplyWatch::new(json!(3), false, 1 << 20);
        watch.set_receipt(receipt(), true);
        let (out, verdict) = feed(&mut watch, body, 10);
        assert_eq!(verdict, Some(Verdict::Failed));
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["result"]["_meta"]["x402/payment-response"], receipt());
    }

    #[test]
    fn a_reply_that_is_not_json_rpc_is_unanswered() {
        let mut watch = ReplyWatch::new(json!(3), false, 1 << 20);
        let (out, verdict) = feed(&mut watch, "<html>oops</html>", 4);
        assert_eq!(verdict, Some(Verdict::Unanswered));
        assert_eq!(out, "<html>oops</html>");
        let mut other = ReplyWatch::new(json!(3), false, 1 << 20);
        let (_, verdict) = feed(&mut other, r#"{"jsonrpc":"2.0","id":4,"result":{}}"#, 9);
        assert_eq!(verdict, Some(Verdict::Unanswered));
    }

    #[test]
    fn an_answer_over_the_limit_passes_unread_and_counts_as_served() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":3,"result":{{"content":"{}"}}}}"#,
            "x".repeat(100)
        );
        let mut watch = ReplyWatch::new(json!(3), false, 40);
        watch.set_receipt(receipt(), false);
        let (out, verdict) = feed(&mut watch, &body, 16);
        assert_eq!(verdict, Some(Verdict::Unread));
        assert!(verdict.unwrap().is_served());
        assert_eq!(out, body);
    }

    #[test]
    fn in_an_event_stream_notifications_pass_and_the_answer_is_rewritten() {
        let stream = concat!(
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n",
            "event: message\nid: 9\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"c1\",\"result\":{\"content\":[]}}\n\n",
        );
        for size in 1..stream.len() {
            let mut watch = ReplyWatch::new(json!("c1"), true, 1 << 20);
            watch.set_receipt(receipt(), false);
            let (out, verdict) = feed(&mut watch, stream, size);
            assert_eq!(verdict, Some(Verdict::Served), "cut every {size}");
            let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(events.len(), 2);
            assert!(events[0].contains("notifications/progress"));
            assert!(events[1].starts_with("event: message\nid: 9\ndata: "));
            let data: Value =
                serde_json::from_str(events[1].split("data: ").nth(1).unwrap()).unwrap();
            assert_eq!(data["result"]["_meta"]["x402/payment-response"], receipt());
        }
    }

    #[test]
    fn an_event_stream_that_ends_without_the_answer_is_unanswered() {
        let stream = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\n";
        let mut watch = ReplyWatch::new(json!(1), true, 1 << 20);
        let (out, verdict) = feed(&mut watch, stream, 5);
        assert_eq!(verdict, Some(Verdict::Unanswered));
        assert_eq!(out, stream);
    }
}
