//! `levy config schema` and the configuration reference are built from the config types:
//! every key has its text, the book's reference page is what `levy config reference`
//! prints, and an independent validator holding the schema accepts every config levy ships
//! (and, through the test harness, every config the tests run) and refuses a key levy does
//! not know.

use std::path::{Path, PathBuf};

use crate::support::schema::validate;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_key_has_its_text_and_the_reference_page_is_the_one_the_types_print() {
    let missing = levy::config::undocumented();
    assert!(
        missing.is_empty(),
        "config keys without a `///` comment in src/config/schema*: {missing:#?}"
    );
    let page = std::fs::read_to_string(root().join("docs/src/configuration.md")).expect("page");
    assert!(
        page == levy::config::reference_markdown(),
        "docs/src/configuration.md is not what the config types print: run \
         `cargo run -- config reference > docs/src/configuration.md`"
    );
    // The page covers what an operator looks for.
    for key in [
        "`journal_path` (required)",
        "## `levy.routes[].meter`",
        "`max_unsettled_per_payer`",
    ] {
        assert!(page.contains(key), "the reference lacks {key}");
    }
}

/// Every YAML file under `dir` whose top level has a `levy:` section.
fn levy_configs(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            levy_configs(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).expect("read config");
            if text.lines().any(|l| l.starts_with("levy:")) {
                found.push(path);
            }
        }
    }
}

#[test]
fn the_schema_accepts_every_shipped_config_and_refuses_what_levy_refuses() {
    let mut shipped = Vec::new();
    levy_configs(&root().join("conf"), &mut shipped);
    levy_configs(&root().join("deploy"), &mut shipped);
    assert!(shipped.len() >= 4, "shipped configs: {shipped:?}");
    for path in &shipped {
        let text = std::fs::read_to_string(path).expect("read config");
        if let Err(problem) = validate(&text) {
            panic!("{}: the schema refuses it: {problem}", path.display());
        }
    }

    let good = "levy:\n  listeners: {data: 127.0.0.1:8080}\n  upstreams: {origin: {address: 127.0.0.1:9000}}\n  \
                routes:\n    - {name: paid, path: /paid/*, price: \"$0.001\", pay_to: \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\", accepts: [{network: base-sepolia}]}\n";
    assert!(levy::Config::from_yaml(good).is_ok());
    assert_eq!(validate(good), Ok(()));
    for (broken, key) in [
        (good.replace("price:", "prise:"), "'prise'"),
        (good.replace("listeners:", "listners:"), "listners"),
        (
            format!("{good}  settlement: {{journal_path: j, max_batch: lots}}\n"),
            "settlement.max_batch",
        ),
        (good.replace("pay_to:", "pay_to: 1, x:"), "routes.0"),
    ] {
        assert!(
            levy::Config::from_yaml(&broken).is_err(),
            "levy accepted:\n{broken}"
        );
        let problem = validate(&broken).expect_err("the schema accepted a config levy refuses");
        assert!(
            problem.contains(key),
            "the schema's answer `{problem}` does not point at {key}"
        );
    }
}
