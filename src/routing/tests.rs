use super::*;

fn path(p: &str) -> PathPattern {
    PathPattern::parse(p).unwrap()
}

#[test]
fn exact_paths_match_only_themselves() {
    assert!(path("/a/b").matches("/a/b"));
    assert!(!path("/a/b").matches("/a/b/c"));
    assert!(!path("/a/b").matches("/a"));
    assert!(!path("/a/b").matches("/a/b/"));
    assert!(path("/a/b/").matches("/a/b/"));
    assert!(path("/").matches("/"));
    assert!(!path("/").matches("/x"));
}

#[test]
fn prefix_paths_match_the_prefix_and_everything_below() {
    let p = path("/api/*");
    for yes in ["/api", "/api/", "/api/x", "/api/x/y/z"] {
        assert!(p.matches(yes), "{yes}");
    }
    for no in ["/apix", "/ap", "/other/api"] {
        assert!(!p.matches(no), "{no}");
    }
    assert!(path("/*").matches("/anything/at/all"));
}

#[test]
fn params_match_exactly_one_segment() {
    let p = path("/users/:id/posts");
    assert!(p.matches("/users/42/posts"));
    assert!(!p.matches("/users/posts"));
    assert!(!p.matches("/users/4/2/posts"));
}

#[test]
fn bad_path_patterns_are_refused() {
    assert_eq!(
        PathPattern::parse("api"),
        Err(PatternError::PathNotAbsolute)
    );
    assert_eq!(
        PathPattern::parse("/a/*/b"),
        Err(PatternError::MisplacedWildcard)
    );
    assert_eq!(
        PathPattern::parse("/a*"),
        Err(PatternError::MisplacedWildcard)
    );
    assert_eq!(PathPattern::parse("/a/:"), Err(PatternError::EmptyParam));
}

#[test]
fn hosts_match_exactly_or_by_subdomain() {
    let exact = HostPattern::parse("API.example.com").unwrap();
    assert!(exact.matches("api.example.com"));
    assert!(!exact.matches("x.api.example.com"));
    let wild = HostPattern::parse("*.example.com").unwrap();
    assert!(wild.matches("a.example.com"));
    assert!(wild.matches("a.b.example.com"));
    assert!(!wild.matches("example.com"));
    assert!(!wild.matches("badexample.com"));
    assert_eq!(HostPattern::parse("http://x"), Err(PatternError::BadHost));
    assert_eq!(HostPattern::parse("x:80"), Err(PatternError::BadHost));
}

#[test]
fn hosts_are_normalised_before_matching() {
    assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
    assert_eq!(normalize_host("example.com."), "example.com");
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
    assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
}

#[test]
fn paths_are_normalised_so_priced_routes_cannot_be_dodged() {
    for (raw, want) in [
        ("/paid/x?q=1", "/paid/x"),
        ("/free/../paid/x", "/paid/x"),
        ("//paid//x", "/paid/x"),
        ("/%70aid/x", "/paid/x"),
        ("/paid%2fx", "/paid/x"),
        ("/free/%2e%2e/paid", "/paid"),
        ("/./paid/./x/", "/paid/x/"),
        ("/../../etc", "/etc"),
        ("", "/"),
        ("/a\\..\\paid", "/paid"),
    ] {
        assert_eq!(normalize_path(raw.as_bytes()), want, "{raw}");
    }
}

#[test]
fn the_first_matching_route_wins() {
    let mut table = RouteTable::default();
    let any = |p: &str| Matcher {
        host: HostPattern::Any,
        methods: MethodSet::any(),
        path: path(p),
        guard: None,
        when: Vec::new(),
    };
    table.push(any("/a/special"), "first");
    table.push(any("/a/*"), "second");
    table.push(
        Matcher {
            host: HostPattern::parse("*.example.com").unwrap(),
            methods: MethodSet::only(["post".to_owned()]),
            path: path("/*"),
            guard: None,
            when: Vec::new(),
        },
        "third",
    );
    let find = |host, method, p: &'static str| match table
        .lookup(&RequestKey::new(host, method, p.as_bytes()), &Nothing)
    {
        Lookup::Found(route) => Some(*route),
        _ => None,
    };
    assert_eq!(find("h", "GET", "/a/special"), Some("first"));
    assert_eq!(find("h", "GET", "/a/other"), Some("second"));
    assert_eq!(find("x.example.com", "POST", "/z"), Some("third"));
    assert_eq!(find("x.example.com", "GET", "/z"), None);
    assert_eq!(find("example.com", "POST", "/z"), None);
}

fn priced(p: &str) -> Matcher {
    Matcher {
        host: HostPattern::Any,
        methods: MethodSet::only(["GET".to_owned()]),
        path: path(p),
        guard: Some(Looseness::LOOSE),
        when: Vec::new(),
    }
}

#[test]
fn priced_paths_match_the_spellings_origins_serve_as_the_same_resource() {
    let m = priced("/weather/:city");
    for raw in [
        "/weather/paris",
        "/weather/paris/",
        "/Weather/paris",
        "/WEATHER/paris;jsessionid=1",
        "/weather;x=1/paris",
    ] {
        assert!(
            m.matches(&RequestKey::new("h", "GET", raw.as_bytes())),
            "{raw}"
        );
    }
    assert!(m.matches(&RequestKey::new("h", "get", b"/weather/paris")));
    assert!(!m.matches(&RequestKey::new("h", "POST", b"/weather/paris")));
    assert!(!m.matches(&RequestKey::new("h", "GET", b"/weather")));
    let exact = priced("/report");
    assert!(exact.matches(&RequestKey::new("h", "GET", b"/report/")));
}

#[test]
fn free_paths_stay_strict() {
    let mut m = priced("/docs");
    m.guard = None;
    assert!(m.matches(&RequestKey::new("h", "GET", b"/docs")));
    assert!(!m.matches(&RequestKey::new("h", "GET", b"/docs/")));
    assert!(!m.matches(&RequestKey::new("h", "GET", b"/Docs")));
    assert!(!m.matches(&RequestKey::new("h", "get", b"/docs")));
}

#[test]
fn an_encoded_separator_under_a_priced_head_is_refused() {
    let mut table = RouteTable::default();
    table.push(priced("/files/:name"), "files");
    let mut free = priced("/*");
    free.guard = None;
    table.push(free, "free");
    let look = |raw: &str| table.lookup(&RequestKey::new("h", "GET", raw.as_bytes()), &Nothing);
    assert_eq!(look("/files/a%2Fb"), Lookup::EncodedSeparator);
    assert_eq!(look("/files/a%5cb"), Lookup::EncodedSeparator);
    assert_eq!(look("/FILES/a%2fb"), Lookup::EncodedSeparator);
    assert_eq!(look("/files/ab"), Lookup::Found(&"files"));
    assert_eq!(look("/other/a%2Fb"), Lookup::Found(&"free"));
    assert_eq!(look("/other/x?q=a%2Fb"), Lookup::Found(&"free"));
}

#[test]
fn request_targets_split_into_their_form_and_origin_path() {
    assert_eq!(split_target(b"/a?b"), Target::Origin { path: b"/a?b" });
    assert_eq!(
        split_target(b"http://h:8080/weather/paris?x=1"),
        Target::Absolute {
            authority: "h:8080",
            path: b"/weather/paris?x=1"
        }
    );
    assert_eq!(
        split_target(b"HTTPS://h"),
        Target::Absolute {
            authority: "h",
            path: b"/"
        }
    );
    assert_eq!(split_target(b"*"), Target::Asterisk);
    assert_eq!(split_target(b"h:443"), Target::Other);
    assert_eq!(split_target(b"http://u@h/x"), Target::Other);
}

#[test]
fn a_free_prefix_covers_the_priced_paths_beneath_it() {
    assert!(path("/*").covers(&path("/weather/:city")));
    assert!(path("/weather/*").covers(&path("/weather/:city")));
    assert!(!path("/other/*").covers(&path("/weather/:city")));
    assert!(!path("/weather").covers(&path("/weather")));
    assert!(!path("/:x/*").covers(&path("/weather/:city")));
}

#[test]
fn params_are_captured_by_name_and_their_names_do_not_change_what_matches() {
    let p = path("/users/:id/posts/:post");
    assert_eq!(
        p.captures("/users/42/posts/hello%20world"),
        vec![("id", "42"), ("post", "hello%20world")]
    );
    assert_eq!(p.param_names().collect::<Vec<_>>(), vec!["id", "post"]);
    assert!(!p.is_prefix());
    assert_eq!(p, path("/users/:user/posts/:slug"));
    assert!(path("/api/*").is_prefix());
}

/// A request with no query, headers or body that conditions read.
struct Nothing;

impl Fields for Nothing {
    fn get(&self, _: &Field) -> Found<'_> {
        Found::Absent
    }
}

/// A request's query string and JSON body.
struct Asked {
    query: &'static str,
    body: serde_json::Value,
}

impl Fields for Asked {
    fn get(&self, field: &Field) -> Found<'_> {
        match field {
            Field::Query(name) => query_value(self.query.as_bytes(), name),
            Field::Body(pointer) => body_value(&self.body, pointer),
            Field::Header(_) | Field::ApiKey => Found::Absent,
        }
    }
}

#[test]
fn conditions_pick_among_routes_on_one_path_and_a_value_given_twice_is_ambiguous() {
    let mut table = RouteTable::default();
    let when = |field: Field, values: &[&str]| {
        let mut m = priced("/v1/*");
        m.when = vec![Condition::new(
            field,
            Test::OneOf(values.iter().map(|v| (*v).to_owned()).collect()),
        )];
        m
    };
    table.push(when(Field::Body("/model".into()), &["large"]), "large");
    table.push(
        when(Field::Query("tier".into()), &["gold", "platinum"]),
        "gold",
    );
    table.push(priced("/v1/*"), "default");
    let look = |query: &'static str, body: serde_json::Value| {
        let key = RequestKey::new("h", "GET", b"/v1/chat");
        match table.lookup(&key, &Asked { query, body }) {
            Lookup::Found(route) => Ok(*route),
            Lookup::Ambiguous(field) => Err(field.to_string()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(look("", serde_json::json!({"model": "large"})), Ok("large"));
    assert_eq!(
        look("", serde_json::json!({"model": "small"})),
        Ok("default")
    );
    assert_eq!(look("tier=platinum", serde_json::json!({})), Ok("gold"));
    assert_eq!(look("tier=pl%61tinum", serde_json::json!({})), Ok("gold"));
    assert_eq!(
        look("tier=gold&tier=gold", serde_json::json!({})),
        Ok("gold")
    );
    assert_eq!(
        look("tier=free&tier=gold", serde_json::json!({})),
        Err("query parameter `tier`".to_owned())
    );
    assert!(table.reads_body(&RequestKey::new("h", "GET", b"/v1/chat")));
    assert!(!table.reads_body(&RequestKey::new("h", "GET", b"/v2/chat")));
}

#[test]
fn a_body_field_reads_strings_numbers_and_booleans_as_json_writes_them() {
    let body = serde_json::json!({"model": "m", "n": 3, "stream": true, "o": {"k": null}});
    assert_eq!(body_value(&body, "/model"), Found::Value("m".into()));
    assert_eq!(body_value(&body, "/n"), Found::Value("3".into()));
    assert_eq!(body_value(&body, "/stream"), Found::Value("true".into()));
    assert_eq!(body_value(&body, "/o/k"), Found::Absent);
    assert_eq!(body_value(&body, "/o"), Found::Absent);
    assert_eq!(body_value(&body, "/missing"), Found::Absent);
}

#[test]
fn a_conditioned_route_never_hides_the_routes_after_it() {
    let mut conditioned = priced("/*");
    conditioned.when = vec![Condition::new(
        Field::Header("x-plan".into()),
        Test::Present,
    )];
    assert!(!conditioned.takes_all_of(&priced("/a")));
    assert!(priced("/*").takes_all_of(&priced("/a")));
}

/// A request whose body could not be read.
struct Unreadable;

impl Fields for Unreadable {
    fn get(&self, field: &Field) -> Found<'_> {
        match field {
            Field::Body(_) => Found::Unread,
            _ => Found::Absent,
        }
    }
}

#[test]
fn a_body_condition_refuses_an_unread_body_unless_it_lets_the_next_route_take_it() {
    let on_model = |unread: Unread| {
        let mut m = priced("/v1/*");
        m.when = vec![Condition {
            unread,
            ..Condition::new(
                Field::Body("/model".into()),
                Test::OneOf(vec!["large".into()]),
            )
        }];
        m
    };
    let key = RequestKey::new("h", "GET", b"/v1/chat");
    let mut refusing = RouteTable::default();
    refusing.push(on_model(Unread::Refuse), "large");
    refusing.push(priced("/v1/*"), "default");
    assert_eq!(
        refusing.lookup(&key, &Unreadable),
        Lookup::Unreadable(Field::Body("/model".into()))
    );
    let mut skipping = RouteTable::default();
    skipping.push(on_model(Unread::Skip), "large");
    skipping.push(priced("/v1/*"), "default");
    assert_eq!(
        skipping.lookup(&key, &Unreadable),
        Lookup::Found(&"default")
    );
}
