//! Byte-for-byte reproduction of Go's `encoding/json` output, for the delegate config.
//!
//! flannel's plugin builds the delegate config as Go maps (`map[string]interface{}`) and
//! serialises it with `json.Marshal`. The bytes it produces are what the delegate reads on
//! stdin and what is saved under `dataDir`, so to be a drop-in replacement weft writes the
//! same bytes. What that takes:
//!
//! - map keys are sorted bytewise (Go sorts them; struct fields keep declaration order,
//!   which matters for CNI routes);
//! - every JSON number decoded into `interface{}` became a `float64`, and is written in
//!   Go's float format (`1450`, `1.5`, `1e+21`, `1e-7`);
//! - strings escape `<`, `>`, `&`, U+2028 and U+2029 (Go's HTML-safe default) and write
//!   `\b`, `\f`, `\n`, `\r`, `\t` in short form, other control characters as `\u00XX`;
//! - no whitespace.
//!
//! `serde_json` does none of this by itself (and its `Map` order depends on a feature
//! another workspace crate turns on), hence this small encoder.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A value as Go holds it just before `json.Marshal`.
#[derive(Debug, Clone, PartialEq)]
pub enum GoValue {
    Null,
    Bool(bool),
    /// A JSON number that went through `interface{}`: always a `float64` in Go.
    Float(f64),
    /// A Go `int` field (route `mtu`, `table`, ...).
    Int(i64),
    /// A Go `uint` (flannel's MTU from subnet.env).
    Uint(u64),
    String(String),
    Array(Vec<GoValue>),
    /// A Go map: written with its keys sorted bytewise, as Go does (`BTreeMap<String, _>`
    /// orders `String`s by their UTF-8 bytes, which is Go's order).
    Map(BTreeMap<String, GoValue>),
    /// A Go struct: fields in declaration order, `omitempty` fields already left out.
    Struct(Vec<(&'static str, GoValue)>),
}

impl GoValue {
    /// What Go's decoder makes of a JSON value when the target is `interface{}`.
    pub fn from_json(value: &serde_json::Value) -> GoValue {
        match value {
            serde_json::Value::Null => GoValue::Null,
            serde_json::Value::Bool(b) => GoValue::Bool(*b),
            serde_json::Value::Number(n) => GoValue::Float(number_as_f64(n)),
            serde_json::Value::String(s) => GoValue::String(s.clone()),
            serde_json::Value::Array(items) => {
                GoValue::Array(items.iter().map(GoValue::from_json).collect())
            }
            serde_json::Value::Object(map) => GoValue::Map(map_from_json(map)),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GoValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A JSON object decoded into Go's `map[string]interface{}`.
pub fn map_from_json(
    map: &serde_json::Map<String, serde_json::Value>,
) -> BTreeMap<String, GoValue> {
    map.iter()
        .map(|(k, v)| (k.clone(), GoValue::from_json(v)))
        .collect()
}

/// Go parses every number into a `float64`: integers past 2^53 lose precision there too.
fn number_as_f64(n: &serde_json::Number) -> f64 {
    if let Some(u) = n.as_u64() {
        u as f64
    } else if let Some(i) = n.as_i64() {
        i as f64
    } else {
        // serde_json only fails this for arbitrary-precision numbers, which we don't enable.
        n.as_f64().unwrap_or(0.0)
    }
}

/// Serialises `value` exactly as Go's `json.Marshal` would.
pub fn marshal(value: &GoValue) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &GoValue) {
    match value {
        GoValue::Null => out.push_str("null"),
        GoValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        GoValue::Float(f) => write_float(out, *f),
        GoValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
        GoValue::Uint(u) => {
            let _ = write!(out, "{u}");
        }
        GoValue::String(s) => write_string(out, s),
        GoValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        GoValue::Map(map) => {
            write_object(out, map.iter().map(|(k, v)| (k.as_str(), v)));
        }
        GoValue::Struct(fields) => write_object(out, fields.iter().map(|(k, v)| (*k, v))),
    }
}

fn write_object<'a>(out: &mut String, entries: impl Iterator<Item = (&'a str, &'a GoValue)>) {
    out.push('{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

/// Go's `float64` encoding: shortest round-trip digits, plain notation for magnitudes in
/// [1e-6, 1e21), otherwise exponent notation with an explicit sign and no zero padding.
/// Rust's `{}`/`{:e}` also print the shortest round-trip digits, so only the exponent's
/// spelling needs adjusting.
fn write_float(out: &mut String, f: f64) {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let formatted = format!("{f:e}");
        match formatted.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => {
                let _ = write!(out, "{mantissa}e+{exp}");
            }
            _ => out.push_str(&formatted),
        }
    } else {
        let _ = write!(out, "{f}");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn go(json: &str) -> String {
        marshal(&GoValue::from_json(&serde_json::from_str(json).unwrap()))
    }

    #[test]
    fn maps_are_written_with_sorted_keys_and_no_whitespace() {
        assert_eq!(
            go(r#"{ "type": "bridge", "ipam": {"z": 1, "a": [true, null]}, "ipMasq": false }"#),
            r#"{"ipMasq":false,"ipam":{"a":[true,null],"z":1},"type":"bridge"}"#
        );
    }

    #[test]
    fn structs_keep_declaration_order() {
        let v = GoValue::Struct(vec![
            ("dst", GoValue::String("10.0.0.0/8".into())),
            ("gw", GoValue::String("10.0.0.1".into())),
            ("mtu", GoValue::Int(1400)),
        ]);
        assert_eq!(
            marshal(&v),
            r#"{"dst":"10.0.0.0/8","gw":"10.0.0.1","mtu":1400}"#
        );
    }

    #[test]
    fn numbers_are_float64_in_go_format() {
        // Each case is what Go's json.Marshal(float64(x)) prints.
        for (input, expected) in [
            ("1450", "1450"),
            ("1450.0", "1450"),
            ("1e3", "1000"),
            ("1.5", "1.5"),
            ("-2", "-2"),
            ("0", "0"),
            ("-0.0", "-0"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("1.5e-10", "1.5e-10"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e+21"),
            ("1.25e300", "1.25e+300"),
            ("9007199254740993", "9007199254740992"),
        ] {
            assert_eq!(
                go(&format!("[{input}]")),
                format!("[{expected}]"),
                "{input}"
            );
        }
    }

    #[test]
    fn strings_are_escaped_like_go() {
        let v = GoValue::String("a\"b\\c\n\r\t\u{8}\u{c}\u{1}<>&\u{2028}\u{2029}\u{7f}é".into());
        assert_eq!(
            marshal(&v),
            r#""a\"b\\c\n\r\t\b\f\u0001\u003c\u003e\u0026\u2028\u2029"#.to_owned() + "\u{7f}é\""
        );
    }

    #[test]
    fn keys_are_escaped_too() {
        assert_eq!(go(r#"{"a<b": 1}"#), r#"{"a\u003cb":1}"#);
    }
}
