//! net-conf.json fixtures: one file per case under tests/fixtures/net-conf/, each with
//! its input and either the expected config (flannel's field names) or the exact error.

use serde_json::Value;
use std::path::Path;
use weft_subnet::NetworkConfig;

#[test]
fn every_fixture_gives_its_expected_result() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/net-conf");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let (mut valid, mut invalid) = (0, 0);
    let mut failures = Vec::new();
    for path in &entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let input = match (&fixture.get("input"), &fixture.get("input_text")) {
            (Some(v), _) => v.to_string(),
            (None, Some(Value::String(text))) => text.clone(),
            _ => panic!("{name}: no input"),
        };
        let result = NetworkConfig::parse(&input);
        let outcome = match (
            &result,
            fixture.get("expect"),
            fixture.get("error"),
            fixture.get("error_prefix"),
        ) {
            (Ok(cfg), Some(expect), None, None) => {
                valid += 1;
                (cfg.summary() == *expect)
                    .then_some(())
                    .ok_or_else(|| format!("got {}", cfg.summary()))
            }
            (Err(e), None, Some(Value::String(error)), None) => {
                invalid += 1;
                (e.to_string() == *error)
                    .then_some(())
                    .ok_or_else(|| format!("got error {e:?}"))
            }
            (Err(e), None, None, Some(Value::String(prefix))) => {
                invalid += 1;
                e.to_string()
                    .starts_with(prefix.as_str())
                    .then_some(())
                    .ok_or_else(|| format!("got error {e}"))
            }
            (other, ..) => Err(format!("unexpected outcome {other:?}")),
        };
        if let Err(message) = outcome {
            failures.push(format!("{name}: {message}"));
        }
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n{}",
        failures.join("\n")
    );
    // Guard against an empty or half-read fixture directory.
    assert!(
        valid >= 15 && invalid >= 25,
        "only {valid} valid and {invalid} invalid fixtures found"
    );
}
