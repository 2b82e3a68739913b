//! JSON inputs: any value, near-valid documents, and bytes.

use crate::text::{self, Bits};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Number, Value};

/// Integers at the edges parsers check: 0, ±1, the byte, port, VNI (24-bit), `u32`,
/// `i64` and `u64` limits and one past them.
const EDGE_INTEGERS: &[i128] = &[
    0,
    1,
    -1,
    2,
    24,
    32,
    64,
    128,
    255,
    256,
    1450,
    65_535,
    65_536,
    0xff_ffff,
    0x100_0000,
    u32::MAX as i128,
    u32::MAX as i128 + 1,
    i64::MIN as i128,
    i64::MAX as i128,
    u64::MAX as i128,
];

/// Any JSON number: small and edge integers, any `i64` and `u64`, and finite floats
/// (integral ones like `24.0`, fractions, `-0.0`, huge and tiny magnitudes, any bits).
pub fn number_from(bits: &mut Bits) -> Number {
    const FLOATS: &[f64] = &[0.5, -0.0, 1.5, 24.0, 1e21, 1e300, -1e300, 5e-324, 0.1];
    match bits.below(4) {
        0 => {
            let f = match bits.below(3) {
                0 => bits.pick(FLOATS),
                1 => bits.below(141) as f64,
                _ => f64::from_bits(bits.word()),
            };
            // NaN and infinities are not JSON; 0 stands in for them.
            Number::from_f64(f).unwrap_or_else(|| Number::from(0))
        }
        _ => integer_from(bits),
    }
}

/// Integer JSON numbers only (small, edge, any `i64`/`u64`). Unlike floats, they survive
/// a text round trip exactly whatever serde_json's features, so round-trip properties
/// use them.
pub fn integer_from(bits: &mut Bits) -> Number {
    match bits.below(4) {
        0 => Number::from(bits.below(301) as u64),
        1 => match bits.pick(EDGE_INTEGERS) {
            n if n >= 0 => Number::from(u64::try_from(n).unwrap_or(u64::MAX)),
            n => Number::from(i64::try_from(n).unwrap_or(i64::MIN)),
        },
        2 => Number::from(bits.word() as i64),
        _ => Number::from(bits.word()),
    }
}

/// Whether `value` holds a non-integer number anywhere. Such numbers may come back one
/// unit in the last place off from a text round trip unless serde_json's
/// `float_roundtrip` is on, so exact round-trip assertions skip them.
pub fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// Any JSON value: scalars of every kind ([`number_from`], [`text::string_from`]), and
/// arrays and objects nested up to four deep, of up to 24 values in all. Object keys are
/// often one of `fields` in any letter case, so that parsers which look keys up
/// case-insensitively meet their own fields holding values of every type.
///
/// Built from a seed (see [`text`] for why); the size shrinks towards a single scalar.
pub fn value(fields: &'static [&'static str]) -> BoxedStrategy<Value> {
    tree(fields, Numbers::Any, Top::Any)
}

/// Like [`value`], with integer numbers only (see [`integer_from`]).
pub fn exact_value(fields: &'static [&'static str]) -> BoxedStrategy<Value> {
    tree(fields, Numbers::Integers, Top::Any)
}

/// Like [`value`], but always an object (what every parser here expects at the top).
pub fn object(fields: &'static [&'static str]) -> BoxedStrategy<Value> {
    tree(fields, Numbers::Any, Top::Object)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbers {
    Any,
    Integers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Any,
    Object,
}

fn tree(fields: &'static [&'static str], numbers: Numbers, top: Top) -> BoxedStrategy<Value> {
    (any::<u64>(), 0..=24usize)
        .prop_map(move |(seed, size)| {
            let mut builder = Builder {
                bits: Bits::new(seed),
                budget: size,
                fields,
                numbers,
            };
            match top {
                Top::Any => builder.value(4),
                Top::Object => builder.object(4),
            }
        })
        .boxed()
}

/// Builds one JSON value from a seed, spending one unit of `budget` per value.
struct Builder {
    bits: Bits,
    budget: usize,
    fields: &'static [&'static str],
    numbers: Numbers,
}

impl Builder {
    fn value(&mut self, depth: usize) -> Value {
        let nest = depth > 0 && self.budget > 1 && self.bits.below(3) == 0;
        if !nest {
            self.budget = self.budget.saturating_sub(1);
            return self.scalar();
        }
        if self.bits.below(2) == 0 {
            self.budget -= 1;
            let len = self.bits.below(6);
            Value::Array((0..len).map(|_| self.value(depth - 1)).collect())
        } else {
            self.object(depth)
        }
    }

    fn object(&mut self, depth: usize) -> Value {
        self.budget = self.budget.saturating_sub(1);
        let len = self.bits.below(6);
        let mut map = Map::new();
        for _ in 0..len {
            let key = self.key();
            let value = self.value(depth.saturating_sub(1));
            map.insert(key, value);
        }
        Value::Object(map)
    }

    fn scalar(&mut self) -> Value {
        match self.bits.below(6) {
            0 => Value::Null,
            1 => Value::Bool(self.bits.word() & 1 == 0),
            2 | 3 => Value::Number(match self.numbers {
                Numbers::Any => number_from(&mut self.bits),
                Numbers::Integers => integer_from(&mut self.bits),
            }),
            _ => Value::String(text::string_from(&mut self.bits)),
        }
    }

    fn key(&mut self) -> String {
        if self.fields.is_empty() || self.bits.below(4) == 0 {
            return text::string_from(&mut self.bits);
        }
        let field = self.bits.pick(self.fields);
        text::recase(field, self.bits.word())
    }
}

/// One of the `valid` documents (objects; at least one) with one change: the value at
/// any position (a top-level field, or anything nested in it) replaced by any value; a
/// top-level field removed; or a top-level field given again under its name in another
/// letter case with any value. Where serde_json keeps insertion order (`preserve_order`,
/// as weft-subnet builds it) the copy comes after the original, and Go's decoder, like
/// weft's parsers, lets the later one win.
pub fn near(valid: Vec<Value>, fields: &'static [&'static str]) -> BoxedStrategy<Value> {
    (
        select(valid),
        any::<Index>(),
        0..4u8,
        value(fields),
        any::<u64>(),
    )
        .prop_map(|(mut doc, at, change, replacement, case_bits)| {
            match (change, &mut doc) {
                (0 | 1, doc) => replace_at(doc, at, replacement),
                (2, Value::Object(map)) if !map.is_empty() => {
                    if let Some(key) = map.keys().nth(at.index(map.len())).cloned() {
                        map.remove(&key);
                    }
                }
                (_, Value::Object(map)) if !map.is_empty() => {
                    if let Some(key) = map.keys().nth(at.index(map.len())) {
                        let recased = text::recase(key, case_bits);
                        map.insert(recased, replacement);
                    }
                }
                _ => {}
            }
            doc
        })
        .boxed()
}

/// Replaces the value at position `at` of a pre-order walk of the values nested in
/// `doc`; replaces `doc` itself if nothing is nested in it.
fn replace_at(doc: &mut Value, at: Index, replacement: Value) {
    let count = positions(doc);
    if count == 0 {
        *doc = replacement;
        return;
    }
    replace_nth(doc, &mut at.index(count), &mut Some(replacement));
}

/// How many values are nested inside `value` (all depths).
fn positions(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(|v| 1 + positions(v)).sum(),
        Value::Object(map) => map.values().map(|v| 1 + positions(v)).sum(),
        _ => 0,
    }
}

/// Walks the values nested in `value` in pre-order, counting `n` down, and puts the
/// replacement at the one where `n` reaches 0.
fn replace_nth(value: &mut Value, n: &mut usize, replacement: &mut Option<Value>) {
    let slots: Vec<&mut Value> = match value {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Object(map) => map.values_mut().collect(),
        _ => Vec::new(),
    };
    for slot in slots {
        if replacement.is_none() {
            return;
        }
        if *n == 0 {
            if let Some(new) = replacement.take() {
                *slot = new;
            }
            return;
        }
        *n -= 1;
        replace_nth(slot, n, replacement);
    }
}

/// Bytes for a parser that reads JSON: any bytes, any value's text, a near-valid
/// document's text, and a document's text damaged (cut anywhere, one byte changed or one
/// inserted).
pub fn bytes(valid: Vec<Value>, fields: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    let documents = documents(valid, fields);
    prop_oneof![
        1 => text::bytes(),
        4 => documents.clone().prop_map(|doc| doc.to_string().into_bytes()),
        1 => damaged(documents),
    ]
    .boxed()
}

/// Documents for a parser of JSON objects: any value, any object, and near-valid ones.
pub fn documents(valid: Vec<Value>, fields: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![
        1 => value(fields),
        2 => object(fields),
        3 => near(valid, fields),
    ]
    .boxed()
}

/// A document's text cut at any byte, with one byte replaced, or with one inserted.
pub fn damaged(documents: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    (documents, any::<Index>(), any::<u8>(), 0..3u8)
        .prop_map(|(doc, at, byte, change)| {
            let mut bytes = doc.to_string().into_bytes();
            let i = at.index(bytes.len() + 1);
            match change {
                0 => bytes.truncate(i),
                1 => {
                    if let Some(b) = bytes.get_mut(i) {
                        *b = byte;
                    }
                }
                _ => bytes.insert(i, byte),
            }
            bytes
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replace_at_reaches_every_position() {
        let doc = json!({"a": 1, "b": {"c": [2, 3]}, "d": null});
        assert_eq!(positions(&doc), 6);
        let mut seen = Vec::new();
        for i in 0..6 {
            let mut changed = doc.clone();
            let mut replacement = Some(json!("X"));
            replace_nth(&mut changed, &mut { i }, &mut replacement);
            assert_eq!(replacement, None);
            seen.push(changed.to_string());
        }
        assert_eq!(
            seen,
            [
                r#"{"a":"X","b":{"c":[2,3]},"d":null}"#,
                r#"{"a":1,"b":"X","d":null}"#,
                r#"{"a":1,"b":{"c":"X"},"d":null}"#,
                r#"{"a":1,"b":{"c":["X",3]},"d":null}"#,
                r#"{"a":1,"b":{"c":[2,"X"]},"d":null}"#,
                r#"{"a":1,"b":{"c":[2,3]},"d":"X"}"#,
            ]
        );
    }
}
