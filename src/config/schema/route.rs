//! A route as written: what it matches, its price and accepts, and its bundle, channel and
//! meter terms.

use super::*;

/// One entry of the price table; routes are tried in order and the first that matches wins. A
/// route is either `free: true` or has exactly one of `price`, `amount`, `meter` and `bundle`
/// (`meter` may keep `price`/`amount` as its `exact` fallback).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique; used in metrics and logs. Required.
    pub name: String,
    /// `api.example.com` or `*.example.com` (any subdomain, not the apex); port ignored,
    /// case-insensitive. Default: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// E.g. `[GET, HEAD]`. Default: any method.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Exact `/a/b`, parameters `/users/:id` (one segment), prefix `/api/*` (matches
    /// `/api`, `/api/` and below). Required.
    pub path: String,
    /// Where the request goes. Default: the only upstream, if there is one.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Forward without payment; excludes the price keys. Default: `false`.
    #[serde(default)]
    pub free: bool,
    /// US dollars, converted exactly (never through a float) to each accepted asset's
    /// atomic units; only for `usd` assets; a price finer than the asset's decimals is an
    /// error.
    #[serde(default)]
    pub price: Option<String>,
    /// Price in atomic units, for any asset.
    #[serde(default)]
    pub amount: Option<Amount>,
    /// Recipient. Default: `levy.pay_to`.
    #[serde(default)]
    pub pay_to: Option<String>,
    /// One `accepts` entry each: `{network, asset (default usdc), pay_to (optional
    /// override)}`. Required.
    #[serde(default)]
    pub accepts: Vec<Accept>,
    /// Shown in challenges and the HTML page. Default: `""`.
    #[serde(default)]
    pub description: String,
    /// The resource's MIME type, in challenges. Default: `""`.
    #[serde(default)]
    pub mime_type: String,
    /// `maxTimeoutSeconds` of each requirement. Default: `300`.
    #[serde(default = "default_max_timeout_seconds")]
    pub max_timeout_seconds: u64,
    /// Fixes the `resource` URL in challenges. Default: request URL.
    #[serde(default)]
    pub resource: Option<String>,
    /// When the route's payments move on chain. Default: `batched`.
    #[serde(default)]
    pub settle: SettleMode,
    /// `sync` (default) or `async`: how durable a charged payment is when its response
    /// leaves.
    #[serde(default)]
    pub durability: Option<crate::settle::journal::Durability>,
    /// Charge for what the response delivers (`upto`) instead of a fixed price.
    #[serde(default)]
    pub meter: Option<Meter>,
    /// Also sell the fixed price through escrow channels (`batch-settlement`), offered first.
    #[serde(default)]
    pub channel: Option<ChannelTerms>,
    /// Sell a prepaid bundle: one payment of `price`, then calls drawn with
    /// `sign-in-with-x` proofs until the bundle is spent.
    #[serde(default)]
    pub bundle: Option<BundleTerms>,
    /// `enforce` or `shadow`; `levy.mode` when absent.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// This route's paywall page, over `levy.paywall` key by key (`false`: the plain page).
    #[serde(default)]
    pub paywall: Option<PaywallSetting>,
    /// List the route for agents: its 402s carry the `bazaar` extension and it appears in
    /// `/.well-known/x402` and `/openapi.json`. `true`, or what it takes and returns.
    /// Default: not listed.
    #[serde(default)]
    pub discovery: Option<DiscoverySetting>,
    /// What the request must also carry for the route to match, each condition holding:
    /// `query` and `headers` (name → value), `body` (JSON Pointer into a JSON body, e.g.
    /// `/model` → value). A value is one value, a list of them, or `"*"` (any value). A
    /// request that gives one of them twice with different values is refused (400). A body
    /// field is read only from a JSON body with a `Content-Length` up to
    /// `levy.body_peek_bytes`; otherwise the condition does not hold. Default: none.
    #[serde(default, rename = "match")]
    pub when: Option<RouteMatch>,
    /// Prices the route by one value of the request: `{query: name}`, `{header: name}` or
    /// `{body: /json/pointer}`, with `prices: {value: price}` (`"$0.05"`, or atomic units).
    /// The route's `price` or `amount` is the price of every other value (and of a body
    /// that cannot be read); without one, such a request gets a 402 that names the value
    /// and the priced ones. Default: one price.
    #[serde(default)]
    pub price_by: Option<PriceBy>,
    /// Multiplies the route's fixed prices (its own, each `price_by` value's, each API key
    /// tier's) by a header's value: `{header: x-client-tier, factors: {bot: "2", partner:
    /// "0.5"}}`. A request whose header has one of the values pays its price times the
    /// factor, and its 402 says so. Not with `meter` or `bundle`. Default: none.
    #[serde(default)]
    pub price_multiplier: Option<PriceMultiplier>,
    /// The route is an MCP server (Streamable HTTP transport), priced per call:
    /// `{tools: {name: price}, resources: {uri: price}, prompts: {name: price}}`. A priced
    /// call pays with x402's MCP transport (the payment in `params._meta["x402/payment"]`,
    /// the receipt in `result._meta["x402/payment-response"]`); an unpaid one gets a
    /// JSON-RPC payment-required answer, never an HTTP 402; a call the origin answers with
    /// an error or a tool error (`isError`) is not charged. A value may be `free`, or, on a
    /// `bundle` route, `bundle` (drawn on the bundle). The route's `price`, `amount` or
    /// `bundle` is what every other `tools/call` pays; everything else (initialize,
    /// listings, notifications, the session's event stream) is forwarded free. A JSON-RPC
    /// batch holding a priced call is refused. Not with `price_by`, `meter`,
    /// `price_multiplier`, `on_unauthorized` or `free_tier`. Default: not MCP.
    #[serde(default)]
    pub mcp: Option<Mcp>,
    /// `challenge`: a request without a payment is forwarded as it is, so the origin's own
    /// customers (API keys, sessions) pass untouched; when the origin answers one of
    /// `unauthorized_statuses`, levy answers the route's 402 instead. A paid request is
    /// forwarded with the payer headers, which the origin should accept in place of a key.
    /// Default: every request without a payment gets the 402.
    #[serde(default)]
    pub on_unauthorized: Option<OnUnauthorized>,
    /// The origin's answers that mean "no credentials" under `on_unauthorized: challenge`.
    /// Default: `[401]`.
    #[serde(default)]
    pub unauthorized_statuses: Option<Vec<u16>>,
    /// What holders of the API keys in `levy.api_keys` pay here: `free` (every key), or
    /// tier → `free` or a price (`{partner: free, trial: "$0.0005"}`; a key without a tier
    /// is in tier `default`). A keyed request is forwarded with the key's id
    /// (`X-Levy-Key-Id`) and without the key; a key levy does not know pays the route's
    /// price. Default: keys change nothing.
    #[serde(default)]
    pub api_keys: Option<KeyAccess>,
    /// Calls one client address may make here without paying, `{calls, per_seconds}`;
    /// past them it gets the 402, and a paid request is never counted. With
    /// `levy.state.redis`, replicas share each address's count. Default: none.
    #[serde(default)]
    pub free_tier: Option<AllowanceSpec>,
    /// Paid calls one payer may make here, `{calls, per_seconds}`, and calls one API key
    /// may make (`api_keys`); past them `429` with `Retry-After`, a payment left unused (it
    /// may be sent again). A retry of a payment levy already served (`payment-identifier`)
    /// is never counted. Shared through Redis like `free_tier`. Default: none.
    #[serde(default)]
    pub rate_limit: Option<AllowanceSpec>,
}

/// A number of calls, refilled over a period.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowanceSpec {
    /// How many calls. Required, at least 1.
    pub calls: u32,
    /// Over how many seconds they come back. Required, at least 1.
    pub per_seconds: u64,
}

/// `api_keys:` of a route: one price for every key, or one per tier.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum KeyAccess {
    /// `free`, or a price for every key.
    Every(String),
    /// Tier → `free` or a price.
    Tiers(BTreeMap<String, String>),
}

/// What levy does with a request without a payment on a route with `on_unauthorized`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnauthorized {
    /// Forward it; replace the origin's "unauthorized" answer with the 402.
    Challenge,
}

/// `match:` of a route.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Query parameter name → value(s), compared after decoding.
    #[serde(default)]
    pub query: BTreeMap<String, MatchValue>,
    /// Header name (any case) → value(s).
    #[serde(default)]
    pub headers: BTreeMap<String, MatchValue>,
    /// JSON Pointer → value(s): a string's text, a number or boolean as written.
    #[serde(default)]
    pub body: BTreeMap<String, MatchValue>,
}

/// One value, a list of values, or `"*"` for any.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MatchValue {
    One(Scalar),
    Many(Vec<Scalar>),
}

/// A value a condition compares with.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Flag(bool),
    Integer(i64),
    Text(String),
}

impl Scalar {
    /// As the request's value is compared: text, or the number or boolean as JSON writes
    /// it.
    pub fn text(&self) -> String {
        match self {
            Scalar::Flag(b) => b.to_string(),
            Scalar::Integer(n) => n.to_string(),
            Scalar::Text(t) => t.clone(),
        }
    }
}

/// `mcp:` of a route: the price of each call, by what it calls.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mcp {
    /// Tool name → price of its `tools/call` (`"$0.01"`, atomic units, `free` or `bundle`).
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    /// Resource URI → price of its `resources/read`. Unlisted resources are free.
    #[serde(default)]
    pub resources: BTreeMap<String, String>,
    /// Prompt name → price of its `prompts/get`. Unlisted prompts are free.
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
}

/// `price_multiplier:` of a route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceMultiplier {
    /// The header whose value picks the factor. Required.
    pub header: String,
    /// Value → factor, a decimal (`"2"`, `"0.5"`). Required, not empty.
    pub factors: BTreeMap<String, String>,
}

/// `price_by:` of a route: where the value is read, and its prices.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceBy {
    /// A query parameter's name.
    #[serde(default)]
    pub query: Option<String>,
    /// A header's name.
    #[serde(default)]
    pub header: Option<String>,
    /// A JSON Pointer into a JSON body, e.g. `/model`.
    #[serde(default)]
    pub body: Option<String>,
    /// Value → price (`"$0.05"`, or atomic units as a string). Required, not empty.
    pub prices: BTreeMap<String, String>,
    /// `body` only: what a body levy cannot read (over `levy.body_peek_bytes`, without a
    /// length, not JSON) pays. `refuse` (the default): the request gets a 400 naming the
    /// field, since its price cannot be known; `default`: the route's own price.
    #[serde(default)]
    pub unread_body: Option<UnreadBody>,
}

/// What a body levy cannot read pays on a `price_by.body` route.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnreadBody {
    /// Refused with a 400 that names the field.
    Refuse,
    /// The route's own price.
    Default,
}

/// `discovery: true`, or the route's input, output and service metadata.
#[derive(Debug)]
pub enum DiscoverySetting {
    Off,
    On(Box<RouteDiscovery>),
}

impl<'de> Deserialize<'de> for DiscoverySetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Bool(false) => Ok(DiscoverySetting::Off),
            serde_yaml::Value::Bool(true) => Ok(DiscoverySetting::On(Box::default())),
            map @ serde_yaml::Value::Mapping(_) => serde_yaml::from_value(map)
                .map(DiscoverySetting::On)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "expected `true`, `false` or {method, query, query_schema, body, body_schema, body_type, output, output_schema, service_name, tags, icon_url}",
            )),
        }
    }
}

impl JsonSchema for DiscoverySetting {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DiscoverySetting".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let terms = generator.subschema_for::<RouteDiscovery>();
        json_schema!({
            "description": "List the route for agents: `true` (defaults), `false`, or its terms.",
            "oneOf": [{ "type": "boolean" }, terms]
        })
    }
}

/// What a discoverable route takes and returns, as agents are told.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteDiscovery {
    /// The method agents call with. Default: the route's only method, `POST` when a body is
    /// described, else `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// Example query parameters (`GET`, `HEAD`, `DELETE`), e.g. `{units: metric}`.
    #[serde(default)]
    pub query: Option<serde_json::Map<String, serde_json::Value>>,
    /// JSON Schema of the query parameters object (its `properties` and `required`).
    #[serde(default)]
    pub query_schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// An example request body (`POST`, `PUT`, `PATCH`).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// JSON Schema of the request body.
    #[serde(default)]
    pub body_schema: Option<serde_json::Value>,
    /// `json`, `form-data` or `text`. Default: `json`.
    #[serde(default)]
    pub body_type: Option<String>,
    /// An example of a paid response's body.
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    /// JSON Schema of a paid response's body.
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    /// Shown by catalogues (1-32 printable ASCII). Default: `levy.discovery.service_name`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Up to 5 tags (1-32 printable ASCII each). Default: `levy.discovery.tags`.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// An `https` icon for catalogues. Default: `levy.discovery.icon_url`.
    #[serde(default)]
    pub icon_url: Option<String>,
}

/// `paywall: false`, `true`, or the page's look.
#[derive(Debug)]
pub enum PaywallSetting {
    Off,
    On(PaywallLook),
}

impl<'de> Deserialize<'de> for PaywallSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Bool(false) => Ok(PaywallSetting::Off),
            serde_yaml::Value::Bool(true) => Ok(PaywallSetting::On(PaywallLook::default())),
            map @ serde_yaml::Value::Mapping(_) => serde_yaml::from_value(map)
                .map(PaywallSetting::On)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "expected `false`, `true` or {title, logo_url, accent_color, background_color, template}",
            )),
        }
    }
}

impl JsonSchema for PaywallSetting {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PaywallSetting".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let look = generator.subschema_for::<PaywallLook>();
        json_schema!({
            "description": "The page browsers get with a 402: `true` (the built-in look), `false` (the plain page) or the look's keys.",
            "oneOf": [{ "type": "boolean" }, look]
        })
    }
}

/// The paywall page's look; each key unset falls back to `levy.paywall`, then the built-in.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaywallLook {
    /// The page's title and heading. Default: `Payment required`.
    #[serde(default)]
    pub title: Option<String>,
    /// A logo shown above the title (its origin is allowed by the page's CSP).
    #[serde(default)]
    pub logo_url: Option<String>,
    /// Buttons and focus rings (a CSS colour); keep white text readable on it.
    #[serde(default)]
    pub accent_color: Option<String>,
    /// The page's background (a CSS colour).
    #[serde(default)]
    pub background_color: Option<String>,
    /// Your own page: an HTML file with `{{app}}` and `{{script}}` placeholders (required),
    /// and optionally `{{title}}`, `{{logo}}`, `{{description}}` and `{{style}}`.
    #[serde(default)]
    pub template: Option<String>,
}

/// A route's bundle: its price and exactly one of what it buys.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleTerms {
    /// `"$0.01"` or atomic units.
    pub price: String,
    /// What it buys: calls after the paying one, seconds from the payment, or response-body
    /// bytes. Default: exactly one.
    #[serde(default)]
    pub calls: Option<u64>,
    /// What it buys: calls after the paying one, seconds from the payment, or response-body
    /// bytes. Default: exactly one.
    #[serde(default)]
    pub seconds: Option<u64>,
    /// What it buys: calls after the paying one, seconds from the payment, or response-body
    /// bytes. Default: exactly one.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// A route's channel terms.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelTerms {
    /// Seconds a payer's withdrawal waits (900 to 2592000).
    #[serde(default = "default_withdraw_delay_seconds")]
    pub withdraw_delay_seconds: u64,
    /// The deposit asked for: `"$0.20"` or atomic units; default 10 × the price.
    #[serde(default)]
    pub min_deposit: Option<String>,
}

/// Channel settlement: levy's receiver-authorizer key, which signs claims and refunds and
/// sends channel transactions, and how often claims go out.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    /// The authorizer's address, as offered in challenges (checked against the key).
    pub authorizer: String,
    /// Environment variable holding the authorizer's key; it must be `authorizer`'s.
    /// Default: `LEVY_CHANNEL_KEY`.
    #[serde(default = "default_channel_key_env")]
    pub key_env: String,
    /// Read the authorizer key from this file instead.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Charged vouchers are claimed at least this often.
    #[serde(default = "default_claim_every_seconds")]
    pub claim_every_seconds: u64,
    /// Open channels are checked for payer withdrawals this often (claimed at once if so).
    #[serde(default = "default_watch_every_seconds")]
    pub watch_every_seconds: u64,
    /// Channels per claim transaction.
    #[serde(default = "default_max_claims")]
    pub max_claims: usize,
    /// A channel with no paid call for this long gets what it has not spent sent back to
    /// its payer (claiming what was charged first); unset: never.
    #[serde(default)]
    pub refund_idle_after_seconds: Option<u64>,
}

/// A metered route's unit and prices.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    /// What is counted. Required.
    pub unit: MeterUnit,
    /// Per unit (per `per` bytes for `bytes`): `"$0.0001"` or atomic units. Required,
    /// except for `openai_usage` (priced by `models`).
    #[serde(default)]
    pub price: Option<String>,
    /// `openai_usage` only: model (the request body's `model`) → its prices per million
    /// input and output tokens, `{input: "$2.50", output: "$10"}`. A model not listed gets
    /// a 402 that names it. Required for `openai_usage`.
    #[serde(default)]
    pub models: Option<BTreeMap<String, ModelPrices>>,
    /// Bytes per priced unit (`bytes` only); default 1024.
    #[serde(default)]
    pub per: Option<u64>,
    /// The most one request may cost: the `upto` amount the payer signs.
    pub ceiling: String,
    /// Charged for any delivery above zero units.
    #[serde(default)]
    pub minimum: Option<String>,
    /// When the origin fails mid-response, charges below this are dropped.
    #[serde(default)]
    pub failure_floor: Option<String>,
    /// `origin` only: the response header the origin reports usage in; default
    /// `Settlement-Overrides`.
    #[serde(default)]
    pub header: Option<String>,
    /// `origin` only: what a client that leaves after receiving body bytes, before the
    /// origin's report, is charged: `"100%"` of the ceiling (the default), `"$…"` or atomic.
    #[serde(default)]
    pub unreported: Option<String>,
    /// What a response does once it has delivered what the ceiling pays for: `end` (the
    /// default for bytes and records) ends it at that record or byte; `continue` (the only
    /// choice for `origin`, whose units levy cannot see) streams on uncharged.
    #[serde(default)]
    pub at_ceiling: Option<AtCeiling>,
}

/// A model's token prices, per million tokens.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPrices {
    /// Per million input (prompt) tokens: `"$2.50"` or atomic units.
    pub input: String,
    /// Per million output (completion) tokens.
    pub output: String,
}

/// What a metered response does at its ceiling.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AtCeiling {
    /// The response ends after the last unit the ceiling pays for.
    End,
    /// The response streams on; nothing more is charged.
    Continue,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeterUnit {
    Bytes,
    Records,
    Origin,
    /// The tokens an OpenAI-compatible response reports in `usage` (JSON, or the last
    /// event of a stream), priced per model.
    OpenaiUsage,
}

/// An atomic amount may be written as a YAML number or a string.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Amount {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    /// The network the payment is made on (a name under `networks`). Required.
    pub network: String,
    /// The token (a name under `assets`). Default: `usdc`.
    #[serde(default = "default_asset")]
    pub asset: String,
    /// The recipient for this entry, over the route's and `levy.pay_to`.
    #[serde(default)]
    pub pay_to: Option<String>,
}

/// What happens to a request no route matches. An `unmatched` default that no request can reach
/// (because a route matches every request) is an error, as is a route after such a catch-all.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unmatched {
    /// What happens to a request no route matches. Default: `not_found`.
    pub action: UnmatchedAction,
    /// Required with `action: pass`.
    #[serde(default)]
    pub upstream: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedAction {
    Pass,
    NotFound,
}
