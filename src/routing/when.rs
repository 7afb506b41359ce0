//! Conditions on what a request asks for beyond its host, method and path: a query
//! parameter, a header, or a field of its JSON body. A route with conditions matches only
//! when each holds; a value given twice with different values is ambiguous and the request
//! is refused rather than matched (levy and the origin could read different ones).

use std::borrow::Cow;

/// Where a condition reads its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// A query parameter, by its exact (decoded) name.
    Query(String),
    /// A header, by its name in lowercase.
    Header(String),
    /// A field of the JSON body, by JSON Pointer (`/model`, `/options/tier`).
    Body(String),
    /// The tier of the API key the request carries, when levy knows the key.
    ApiKey,
}

impl Field {
    /// Whether reading it needs the request body.
    pub fn in_body(&self) -> bool {
        matches!(self, Field::Body(_))
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Query(name) => write!(f, "query parameter `{name}`"),
            Field::Header(name) => write!(f, "header `{name}`"),
            Field::Body(pointer) => write!(f, "body field `{pointer}`"),
            Field::ApiKey => write!(f, "API key tier"),
        }
    }
}

/// What a request holds at a [`Field`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'r> {
    /// One value (a JSON string as its text, a number or a boolean as written in JSON).
    Value(Cow<'r, str>),
    /// The request does not have it.
    Absent,
    /// It is given more than once with different values.
    Ambiguous,
    /// The body could not be read for it: too large, streamed without a length, or not
    /// JSON.
    Unread,
}

/// A request's values, as conditions read them.
pub trait Fields {
    fn get(&self, field: &Field) -> Found<'_>;
}

/// A condition on one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub field: Field,
    pub test: Test,
    /// What a body that could not be read makes of it.
    pub unread: Unread,
}

impl Condition {
    /// A condition that refuses a request whose body it cannot read.
    pub fn new(field: Field, test: Test) -> Self {
        Condition {
            field,
            test,
            unread: Unread::Refuse,
        }
    }
}

/// What a condition on a body field does with a body levy could not read (too large,
/// without a length, not JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// The request is refused: its price cannot be known, and a cheaper route after this
    /// one must not take it.
    Refuse,
    /// The condition does not hold: the next route is tried (a route's own default price).
    Skip,
}

/// What a field's value must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// One of these values, compared exactly.
    OneOf(Vec<String>),
    /// Any value.
    Present,
}

/// Whether a request meets a route's conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    Fails,
    /// The request gives this field twice with different values.
    Ambiguous(Field),
    /// The body this field is in could not be read, and the condition refuses such a
    /// request.
    Unreadable(Field),
}

impl Condition {
    /// Whether `fields` meets it.
    pub fn check(&self, fields: &dyn Fields) -> Verdict {
        match (fields.get(&self.field), &self.test) {
            (Found::Ambiguous, _) => Verdict::Ambiguous(self.field.clone()),
            (Found::Unread, _) if self.unread == Unread::Refuse => {
                Verdict::Unreadable(self.field.clone())
            }
            (Found::Value(value), Test::OneOf(values)) if values.iter().any(|v| *v == value) => {
                Verdict::Holds
            }
            (Found::Value(_), Test::Present) => Verdict::Holds,
            _ => Verdict::Fails,
        }
    }
}

/// Whether `fields` meets every one of `conditions` (none: always).
pub fn check_all(conditions: &[Condition], fields: &dyn Fields) -> Verdict {
    for condition in conditions {
        match condition.check(fields) {
            Verdict::Holds => {}
            other => return other,
        }
    }
    Verdict::Holds
}

/// The one value of query parameter `name` in `query` (the part after `?`), decoded as a
/// form (`+` is a space); ambiguous when it is given twice with different values.
pub fn query_value<'q>(query: &'q [u8], name: &str) -> Found<'q> {
    let mut found: Option<Cow<'q, str>> = None;
    for (key, value) in form_urlencoded::parse(query) {
        if key != name {
            continue;
        }
        match &found {
            Some(earlier) if *earlier != value => return Found::Ambiguous,
            Some(_) => {}
            None => found = Some(value),
        }
    }
    found.map_or(Found::Absent, Found::Value)
}

/// The value at `pointer` in a JSON body: a string's text, a number or boolean as written;
/// absent for `null`, objects and arrays.
pub fn body_value<'b>(body: &'b serde_json::Value, pointer: &str) -> Found<'b> {
    match body.pointer(pointer) {
        Some(serde_json::Value::String(text)) => Found::Value(Cow::Borrowed(text)),
        Some(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Found::Value(Cow::Owned(value.to_string()))
        }
        _ => Found::Absent,
    }
}
