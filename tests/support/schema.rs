//! levy's JSON Schema (`levy config schema`) held against configs by an independent
//! validator: the reference Python implementation of JSON Schema, in the interop venv
//! (`tests/interop/validate_config.py`), one process for the whole test run.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

struct Validator {
    _child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    _schema: tempfile::NamedTempFile,
}

fn validator() -> &'static Mutex<Validator> {
    static VALIDATOR: OnceLock<Mutex<Validator>> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let python = dir.join(".venv/bin/python");
        assert!(
            python.exists(),
            "the interop venv is missing: run tests/install.sh first"
        );
        let mut schema = tempfile::NamedTempFile::new().expect("schema file");
        serde_json::to_writer(&mut schema, &levy::config::json_schema()).expect("write schema");
        let mut child = Command::new(python)
            .arg(dir.join("validate_config.py"))
            .arg(schema.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the schema validator");
        let input = child.stdin.take().expect("validator stdin");
        let output = BufReader::new(child.stdout.take().expect("validator stdout"));
        Mutex::new(Validator {
            _child: child,
            input,
            output,
            _schema: schema,
        })
    })
}

/// What the independent validator says of the config file `yaml`: `Ok` when the schema
/// accepts it, else the first problem (`path: message`).
pub fn validate(yaml: &str) -> Result<(), String> {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("YAML");
    let json = serde_json::to_string(&value).expect("a config as JSON");
    let mut v = validator().lock().unwrap_or_else(|p| p.into_inner());
    writeln!(v.input, "{json}").expect("ask the validator");
    v.input.flush().expect("ask the validator");
    let mut answer = String::new();
    v.output
        .read_line(&mut answer)
        .expect("the validator's answer");
    match answer.trim() {
        "ok" => Ok(()),
        other => Err(other.trim_start_matches("invalid: ").to_owned()),
    }
}

/// Panics unless the schema accepts `yaml` whenever levy itself does: the schema must never
/// flag a config levy runs.
pub fn accepts_what_levy_accepts(yaml: &str) {
    if levy::Config::from_yaml(yaml).is_ok() {
        if let Err(problem) = validate(yaml) {
            panic!("levy accepts this config but its JSON Schema does not ({problem}):\n{yaml}");
        }
    }
}
