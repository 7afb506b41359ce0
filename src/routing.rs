//! Request matching: host patterns, method sets and path patterns, and the ordered route
//! table where the first match wins. Pure; the table is generic over what a route carries.
//!
//! Paths are matched in a normalised form (percent-decoded, `.`/`..` resolved, repeated
//! slashes collapsed) so that `/free/../paid/x` or `/%70aid/x` cannot slip past a priced
//! route. Priced routes also match loosely ([`Looseness`]): spellings that common origin
//! frameworks serve as the same resource (a trailing slash, `;` path parameters, another
//! letter case) still pay, and an encoded separator under a priced prefix is refused
//! ([`Lookup::EncodedSeparator`]). The request itself is forwarded unchanged.

use std::borrow::Cow;

use percent_encoding::percent_decode;

mod when;

pub use when::{body_value, query_value, Condition, Field, Fields, Found, Test, Unread, Verdict};

/// Why a host or path pattern cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a path must start with `/`")]
    PathNotAbsolute,
    #[error("`*` may only be the whole last segment, as in `/prefix/*`")]
    MisplacedWildcard,
    #[error("a `:param` segment needs a name")]
    EmptyParam,
    #[error("a host pattern must be a host name or `*.domain`, without scheme, port or path")]
    BadHost,
}

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Every host.
    Any,
    /// Exactly this host (lowercase, no port).
    Exact(String),
    /// Any subdomain of this suffix; stored as `.example.com`. The apex does not match.
    Suffix(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let text = text.trim().to_ascii_lowercase();
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, text),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && !name.ends_with('.');
        if !valid {
            return Err(PatternError::BadHost);
        }
        Ok(if wild {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    /// `host` must already be lowercase and without port (see [`normalize_host`]).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => host == name,
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// Which spellings of a path a pattern treats as the same resource. Priced routes are loose
/// (an origin such as Express or Spring serves `/a/b/`, `/A/b` and `/a;x=1/b` as `/a/b`, so a
/// strict price would be dodged by them); free routes stay strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Looseness {
    /// `/a/b/` matches `/a/b` and the other way round.
    pub trailing_slash: bool,
    /// `;params` at the end of a segment are ignored (`/a;x=1/b` matches `/a/b`).
    pub path_params: bool,
    /// Literal segments and methods compare without regard to ASCII case.
    pub case: bool,
}

impl Looseness {
    /// Exact matching: what free routes use.
    pub const STRICT: Looseness = Looseness {
        trailing_slash: false,
        path_params: false,
        case: false,
    };
    /// Every loosening: the default for priced routes.
    pub const LOOSE: Looseness = Looseness {
        trailing_slash: true,
        path_params: true,
        case: true,
    };

    fn segment<'p>(&self, part: &'p str) -> &'p str {
        if self.path_params {
            part.split(';').next().unwrap_or(part)
        } else {
            part
        }
    }

    fn same(&self, literal: &str, part: &str) -> bool {
        let part = self.segment(part);
        if self.case {
            literal.eq_ignore_ascii_case(part)
        } else {
            literal == part
        }
    }
}

/// One segment of a compiled path pattern. Two parameters are the same segment whatever
/// their names: they match the same paths.
#[derive(Debug, Clone, Eq)]
enum Segment {
    Literal(String),
    /// `:name`, matches one non-empty segment.
    Param(String),
}

impl PartialEq for Segment {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::Param(_), Segment::Param(_)) => true,
            _ => false,
        }
    }
}

/// A compiled path pattern: exact (`/a/b`), with parameters (`/users/:id`), or a prefix
/// (`/api/*`, which matches `/api`, `/api/` and everything below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    prefix: bool,
    trailing_slash: bool,
}

impl PathPattern {
    /// Compiles a pattern as written in the config.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let body = text
            .strip_prefix('/')
            .ok_or(PatternError::PathNotAbsolute)?;
        let mut parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        let prefix = parts.last() == Some(&"*");
        if prefix {
            parts.pop();
        }
        let trailing_slash = !prefix && parts.last() == Some(&"");
        if trailing_slash {
            parts.pop();
        }
        let segments = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|part| {
                if part.contains('*') {
                    Err(PatternError::MisplacedWildcard)
                } else if let Some(name) = part.strip_prefix(':') {
                    if name.is_empty() {
                        Err(PatternError::EmptyParam)
                    } else {
                        Ok(Segment::Param(name.to_owned()))
                    }
                } else {
                    Ok(Segment::Literal(part.to_owned()))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            segments,
            prefix,
            trailing_slash,
        })
    }

    /// Exact matching; `path` must be normalised (see [`normalize_path`]).
    pub fn matches(&self, path: &str) -> bool {
        self.matches_loosely(path, Looseness::STRICT)
    }

    /// Matching that treats the spellings `loose` names as the same path.
    pub fn matches_loosely(&self, path: &str, loose: Looseness) -> bool {
        let body = path.strip_prefix('/').unwrap_or(path);
        let has_trailing_slash = body.ends_with('/') && !body.is_empty();
        let mut parts = body.split('/').filter(|p| !p.is_empty());
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(lit), Some(part)) if loose.same(lit, part) => {}
                (Segment::Param(_), Some(_)) => {}
                _ => return false,
            }
        }
        self.prefix
            || (parts.next().is_none()
                && (loose.trailing_slash || has_trailing_slash == self.trailing_slash))
    }

    /// The value of each `:name` parameter in `path` (a path the pattern matches), in order,
    /// as written in the request (still percent-encoded).
    pub fn captures<'p>(&self, path: &'p str) -> Vec<(&str, &'p str)> {
        let body = path.strip_prefix('/').unwrap_or(path);
        self.segments
            .iter()
            .zip(body.split('/').filter(|p| !p.is_empty()))
            .filter_map(|(segment, part)| match segment {
                Segment::Param(name) => Some((name.as_str(), part)),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// The names of its `:name` parameters, in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether it matches everything below its segments (`/api/*`).
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Whether `path` lies under the pattern's literal head (its segments before the first
    /// `:param`): where an encoded `/` could turn one segment into two and dodge it.
    pub fn head_covers(&self, path: &str, loose: Looseness) -> bool {
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        for segment in &self.segments {
            match segment {
                Segment::Param(_) => return true,
                Segment::Literal(lit) => match parts.next() {
                    Some(part) if loose.same(lit, part) => {}
                    _ => return false,
                },
            }
        }
        true
    }

    /// Whether this pattern is a prefix (`/x/*`) whose literal segments lead to every path
    /// `other` can match: a route with it, later in the table, catches what `other` misses.
    pub fn covers(&self, other: &PathPattern) -> bool {
        self.prefix
            && self.segments.len() <= other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(mine, theirs)| match (mine, theirs) {
                    (Segment::Literal(a), Segment::Literal(b)) => a.eq_ignore_ascii_case(b),
                    _ => false,
                })
    }
}

/// Methods a route answers for; `None` inside means every method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodSet(Option<Vec<String>>);

impl MethodSet {
    /// Every method.
    pub fn any() -> Self {
        Self(None)
    }

    /// Only these methods (compared case-sensitively after uppercasing the config).
    pub fn only<I: IntoIterator<Item = String>>(methods: I) -> Self {
        Self(Some(
            methods
                .into_iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
        ))
    }

    pub fn matches(&self, method: &str) -> bool {
        self.matches_loosely(method, Looseness::STRICT)
    }

    /// With `loose.case`, `get` matches `GET` (some origins serve any method spelling).
    pub fn matches_loosely(&self, method: &str, loose: Looseness) -> bool {
        self.0.as_ref().is_none_or(|set| {
            set.iter().any(|m| {
                if loose.case {
                    m.eq_ignore_ascii_case(method)
                } else {
                    m == method
                }
            })
        })
    }

    /// Whether some method matches both sets.
    pub fn overlaps(&self, other: &MethodSet) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => true,
        }
    }

    /// Whether every method of `other` is one of these.
    pub fn covers(&self, other: &MethodSet) -> bool {
        match (&self.0, &other.0) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|m| mine.contains(m)),
        }
    }

    /// The listed methods, or `None` for any.
    pub fn listed(&self) -> Option<&[String]> {
        self.0.as_deref()
    }
}

/// What a route matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub host: HostPattern,
    pub methods: MethodSet,
    pub path: PathPattern,
    /// `Some` on a guarded (priced) route: matched loosely, and an encoded separator under
    /// its head is refused rather than re-segmented.
    pub guard: Option<Looseness>,
    /// What the request must also carry (query parameters, headers, body fields); none:
    /// host, method and path decide.
    pub when: Vec<Condition>,
}

impl Matcher {
    /// Whether this matcher, placed before `later`, takes every request `later` would match
    /// (so `later` never matches anything): any host or the same one, all of its methods, and
    /// a path that covers its path.
    pub fn takes_all_of(&self, later: &Matcher) -> bool {
        self.when.is_empty()
            && (self.host == HostPattern::Any || self.host == later.host)
            && self.methods.covers(&later.methods)
            && (self.path == later.path || self.path.covers(&later.path))
    }

    /// Whether this matcher, placed before `later`, takes some of the requests `later` would
    /// match.
    pub fn takes_some_of(&self, later: &Matcher) -> bool {
        (self.host == HostPattern::Any || self.host == later.host)
            && self.methods.overlaps(&later.methods)
            && (self.path == later.path || self.path.covers(&later.path))
    }

    /// Whether the host, method and path match (the conditions are not looked at).
    pub fn matches(&self, request: &RequestKey<'_>) -> bool {
        let loose = self.guard.unwrap_or(Looseness::STRICT);
        self.host.matches(&request.host)
            && self.methods.matches_loosely(request.method, loose)
            && self.path.matches_loosely(&request.path, loose)
    }

    /// A guarded route whose head the request's path lies under, when the path carried an
    /// encoded separator: levy and the origin would count its segments differently.
    fn splits_under_guard(&self, request: &RequestKey<'_>) -> bool {
        let Some(loose) = self.guard else {
            return false;
        };
        request.encoded_separator
            && self.host.matches(&request.host)
            && self.methods.matches_loosely(request.method, loose)
            && self.path.head_covers(&request.path, loose)
    }
}

/// The normalised parts of a request that routes match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey<'a> {
    pub host: Cow<'a, str>,
    pub method: &'a str,
    pub path: Cow<'a, str>,
    /// The raw path held `%2F` or `%5C`, which the normalised path split into segments.
    pub encoded_separator: bool,
}

impl<'a> RequestKey<'a> {
    /// Normalises host and path; `raw_path` is the origin-form path (see [`split_target`])
    /// and may carry a query string, which is ignored.
    pub fn new(host: &'a str, method: &'a str, raw_path: &'a [u8]) -> Self {
        let path_only = raw_path.split(|&b| b == b'?').next().unwrap_or_default();
        Self {
            host: normalize_host(host),
            method,
            path: normalize_path(raw_path),
            encoded_separator: path_only.windows(3).any(|w| {
                w[0] == b'%'
                    && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                        || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
            }),
        }
    }
}

/// The parts of an HTTP/1.1 request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/path?query`.
    Origin { path: &'a [u8] },
    /// `http://authority/path?query`: the origin routes on the path, so levy does too.
    Absolute { authority: &'a str, path: &'a [u8] },
    /// `*` (only meaningful for `OPTIONS`).
    Asterisk,
    /// Anything else (authority-form, garbage).
    Other,
}

/// Splits a raw request target into its form and the origin-form path that routes match.
pub fn split_target(raw: &[u8]) -> Target<'_> {
    if raw.first() == Some(&b'/') {
        return Target::Origin { path: raw };
    }
    if raw == b"*" {
        return Target::Asterisk;
    }
    let lower = |n: usize| raw.get(..n).map(<[u8]>::to_ascii_lowercase);
    let scheme_len = if lower(7).as_deref() == Some(b"http://") {
        7
    } else if lower(8).as_deref() == Some(b"https://") {
        8
    } else {
        return Target::Other;
    };
    let rest = &raw[scheme_len..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let Ok(authority) = std::str::from_utf8(&rest[..end]) else {
        return Target::Other;
    };
    if authority.is_empty() || authority.contains('@') {
        return Target::Other;
    }
    let path = &rest[end..];
    Target::Absolute {
        authority,
        path: if path.is_empty() { b"/" } else { path },
    }
}

/// The result of looking a request up in a [`RouteTable`].
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'t, T> {
    /// This route takes the request.
    Found(&'t T),
    /// No route matches.
    NotFound,
    /// An encoded `/` or `\` sits under a priced route's head: refused, never re-segmented.
    EncodedSeparator,
    /// The request gives a field a route reads twice, with different values.
    Ambiguous(Field),
    /// A route prices a body field the request's body does not let levy read.
    Unreadable(Field),
}

/// An ordered list of routes; [`RouteTable::lookup`] returns the first that takes a request.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    entries: Vec<(Matcher, T)>,
    /// Whether any route has a condition on a body field.
    reads_bodies: bool,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            reads_bodies: false,
        }
    }
}

impl<T> RouteTable<T> {
    pub fn push(&mut self, matcher: Matcher, route: T) {
        self.reads_bodies |= matcher.when.iter().any(|c| c.field.in_body());
        self.entries.push((matcher, route));
    }

    /// The first route that takes the request, its conditions read from `fields`. Refuses
    /// a path with an encoded separator that lies under a guarded route's head, and a
    /// request that gives a field a route reads twice with different values.
    pub fn lookup(&self, request: &RequestKey<'_>, fields: &dyn Fields) -> Lookup<'_, T> {
        if request.encoded_separator
            && self
                .entries
                .iter()
                .any(|(matcher, _)| matcher.splits_under_guard(request))
        {
            return Lookup::EncodedSeparator;
        }
        for (matcher, route) in &self.entries {
            if !matcher.matches(request) {
                continue;
            }
            match when::check_all(&matcher.when, fields) {
                Verdict::Holds => return Lookup::Found(route),
                Verdict::Fails => {}
                Verdict::Ambiguous(field) => return Lookup::Ambiguous(field),
                Verdict::Unreadable(field) => return Lookup::Unreadable(field),
            }
        }
        Lookup::NotFound
    }

    /// Whether any route has a condition on a body field.
    pub fn reads_bodies(&self) -> bool {
        self.reads_bodies
    }

    /// Whether looking the request up may read its body: a route that matches its host,
    /// method and path has a condition on a body field, before one that takes it whatever
    /// it carries.
    pub fn reads_body(&self, request: &RequestKey<'_>) -> bool {
        if !self.reads_bodies {
            return false;
        }
        for (matcher, _) in &self.entries {
            if !matcher.matches(request) {
                continue;
            }
            if matcher.when.iter().any(|c| c.field.in_body()) {
                return true;
            }
            if matcher.when.is_empty() {
                return false;
            }
        }
        false
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &(Matcher, T)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Lowercases a `Host` value and drops its port (IPv6 literals keep their brackets).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    if without_dot.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(without_dot.to_ascii_lowercase())
    } else {
        Cow::Borrowed(without_dot)
    }
}

/// The path of a request target as routes see it: the query dropped, percent-decoded,
/// repeated slashes collapsed, `.` and `..` resolved (never above the root).
pub fn normalize_path(raw: &[u8]) -> Cow<'_, str> {
    let raw = raw.split(|&b| b == b'?').next().unwrap_or_default();
    let simple = raw.first() == Some(&b'/')
        && !raw.windows(2).any(|w| w == b"//" || w == b"/.")
        && raw
            .iter()
            .all(|&b| b != b'%' && b != b'\\' && b.is_ascii() && !b.is_ascii_control());
    if simple {
        if let Ok(text) = std::str::from_utf8(raw) {
            return Cow::Borrowed(text);
        }
    }
    let decoded: Cow<'_, [u8]> = percent_decode(raw).into();
    let decoded = String::from_utf8_lossy(&decoded);
    let mut out: Vec<&str> = Vec::new();
    for part in decoded.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut path = String::with_capacity(decoded.len() + 1);
    for part in &out {
        path.push('/');
        path.push_str(part);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    Cow::Owned(path)
}

#[cfg(test)]
mod tests;
