//! MCP over its Streamable HTTP transport, as x402's MCP transport sees it: which JSON-RPC
//! call a request body makes, the payment it carries in `params._meta["x402/payment"]`,
//! the payment-required answer in the binding the client negotiated (a tool result with
//! `isError`, or the `org.x402/payment` extension's `payment_required` result), and the
//! origin's reply on its way back ([`ReplyWatch`]): found in a JSON body or an event
//! stream, judged (a tool error or a JSON-RPC error is not a served call) and given its
//! receipt in `result._meta["x402/payment-response"]`.

mod reply;

use serde_json::{json, Map, Value};

pub use reply::{ReplyWatch, Verdict};

/// Where a paid call carries its `PaymentPayload`: `params._meta[PAYMENT_META]`.
pub const PAYMENT_META: &str = "x402/payment";
/// Where a served call's result carries its `SettlementResponse`.
pub const RESPONSE_META: &str = "x402/payment-response";
/// The MCP extension a client advertises to get `payment_required` results.
pub const EXTENSION: &str = "org.x402/payment";
/// The JSON-RPC methods a price can be set on, and the field of `params` that names what
/// they ask for.
pub const PRICED_METHODS: [(&str, &str); 3] = [
    ("tools/call", "name"),
    ("resources/read", "uri"),
    ("prompts/get", "name"),
];
/// The JSON-RPC error code of a batch refused because it holds a priced call.
pub const BATCH_REFUSED: i64 = -32600;

/// How an unpaid call is told what to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// A tool result with `isError: true` and the `PaymentRequired` in `structuredContent`
    /// and in `content[0].text`: every MCP revision reads it.
    ToolResult,
    /// `resultType: "payment_required"`: the request advertised `org.x402/payment`.
    Extension,
}

/// One JSON-RPC request of an MCP client: its id (`None`: a notification) and method, and
/// the binding its payment-required answer takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: Option<Value>,
    pub method: String,
    pub binding: Binding,
}

impl Call {
    /// The request `message` makes, when it is a JSON-RPC request (an object with a
    /// `method`).
    pub fn of(message: &Value) -> Option<Call> {
        let method = message.get("method")?.as_str()?.to_owned();
        let advertised = message
            .pointer("/params/_meta/io.modelcontextprotocol~1clientCapabilities/extensions")
            .and_then(Value::as_object)
            .is_some_and(|extensions| extensions.contains_key(EXTENSION));
        Some(Call {
            id: message.get("id").cloned(),
            method,
            binding: if advertised {
                Binding::Extension
            } else {
                Binding::ToolResult
            },
        })
    }

    /// Whether a price can be set on its method.
    pub fn is_priceable(&self) -> bool {
        PRICED_METHODS.iter().any(|(m, _)| *m == self.method)
    }

    /// The JSON-RPC answer telling it to pay: `required` is the x402 v2 `PaymentRequired`.
    /// A call that is not a tool call and did not advertise the extension gets a JSON-RPC
    /// error carrying it (a tool result is not a resource or a prompt).
    pub fn payment_required(&self, required: Value) -> Value {
        let id = self.id.clone().unwrap_or(Value::Null);
        match self.binding {
            Binding::Extension => json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {"resultType": "payment_required", "paymentRequired": required},
            }),
            Binding::ToolResult if self.method == "tools/call" => json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {
                    "isError": true,
                    "content": [{"type": "text", "text": required.to_string()}],
                    "structuredContent": required,
                },
            }),
            Binding::ToolResult => {
                let message = required
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("payment required")
                    .to_owned();
                json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {"code": 402, "message": message, "data": required},
                })
            }
        }
    }
}

/// The `PaymentPayload` a request carries in `params._meta["x402/payment"]`, if any.
pub fn payment(message: &Value) -> Option<&Value> {
    message
        .get("params")?
        .get("_meta")?
        .get(PAYMENT_META)
        .filter(|p| p.is_object())
}

/// The JSON-RPC answer to a batch that holds a priced call, when batches are refused: one
/// error per request in it (notifications get none).
pub fn batch_refused(batch: &[Value]) -> Value {
    let answers: Vec<Value> = batch
        .iter()
        .filter_map(|message| message.get("id").cloned())
        .map(|id| {
            json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": BATCH_REFUSED,
                    "message": "a batch may not hold a priced call: send each priced call on its own",
                },
            })
        })
        .collect();
    Value::Array(answers)
}

/// `result._meta[RESPONSE_META] = receipt` on a JSON-RPC response; false when it has no
/// result object.
pub fn put_receipt(response: &mut Value, receipt: &Value) -> bool {
    let Some(result) = response.get_mut("result").and_then(Value::as_object_mut) else {
        return false;
    };
    let meta = result
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(RESPONSE_META.to_owned(), receipt.clone());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn required() -> Value {
        json!({"x402Version": 2, "error": "payment required", "accepts": [{"scheme": "exact"}]})
    }

    #[test]
    fn an_unpaid_tool_call_is_answered_with_a_tool_error_holding_the_requirements_twice() {
        let call = Call::of(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "search"}}))
        .unwrap();
        assert_eq!(call.binding, Binding::ToolResult);
        let answer = call.payment_required(required());
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["result"]["isError"], true);
        assert_eq!(answer["result"]["structuredContent"], required());
        let text = answer["result"]["content"][0]["text"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(text).unwrap(), required());
    }

    #[test]
    fn a_client_advertising_the_extension_gets_a_payment_required_result() {
        let call = Call::of(
            &json!({"jsonrpc": "2.0", "id": "a", "method": "prompts/get",
            "params": {"name": "p", "_meta": {"io.modelcontextprotocol/clientCapabilities":
                {"extensions": {"org.x402/payment": {}}}}}}),
        )
        .unwrap();
        assert_eq!(call.binding, Binding::Extension);
        let answer = call.payment_required(required());
        assert_eq!(answer["result"]["resultType"], "payment_required");
        assert_eq!(answer["result"]["paymentRequired"], required());
        assert_eq!(answer["id"], "a");
    }

    #[test]
    fn an_unpaid_resource_read_without_the_extension_gets_an_error_carrying_the_requirements() {
        let call = Call::of(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
            "params": {"uri": "file:///r"}}),
        )
        .unwrap();
        let answer = call.payment_required(required());
        assert_eq!(answer["error"]["code"], 402);
        assert_eq!(answer["error"]["data"], required());
    }

    #[test]
    fn the_payment_is_read_from_the_params_meta() {
        let paid = json!({"method": "tools/call", "params": {"name": "x",
            "_meta": {"x402/payment": {"x402Version": 2}}}});
        assert_eq!(payment(&paid), Some(&json!({"x402Version": 2})));
        assert_eq!(
            payment(&json!({"method": "tools/call", "params": {}})),
            None
        );
        let not_an_object = json!({"params": {"_meta": {"x402/payment": "abc"}}});
        assert_eq!(payment(&not_an_object), None);
    }

    #[test]
    fn a_refused_batch_answers_each_request_and_no_notification() {
        let batch = vec![
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        ];
        let answer = batch_refused(&batch);
        let ids: Vec<&Value> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["id"])
            .collect();
        assert_eq!(ids, [&json!(1), &json!(2)]);
        assert_eq!(answer[0]["error"]["code"], BATCH_REFUSED);
    }

    #[test]
    fn a_receipt_goes_into_the_result_meta_beside_what_is_there() {
        let mut response = json!({"jsonrpc": "2.0", "id": 1,
            "result": {"content": [], "_meta": {"other": 1}}});
        assert!(put_receipt(&mut response, &json!({"success": true})));
        assert_eq!(response["result"]["_meta"]["other"], 1);
        assert_eq!(
            response["result"]["_meta"]["x402/payment-response"]["success"],
            true
        );
        let mut error = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1}});
        assert!(!put_receipt(&mut error, &json!({})));
    }
}
