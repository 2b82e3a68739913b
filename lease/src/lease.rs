//! Leases: the subnet key format and the LeaseAttrs JSON, byte-compatible with flannel.

use crate::family::{Family, Net};
use crate::text::describe;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

/// A lease's subnets: the etcd key without its prefix, e.g. `10.5.34.0-24` or
/// `10.5.34.0-24&fc00:0:0:1::-64`.
///
/// flannel's key always has an IPv4 part. For IPv6-only networks weft writes a bare
/// `fc00:0:0:1::-64` key (a weft extension; flannel skips such keys as "not a subnet").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    pub ipv4: Option<Net>,
    pub ipv6: Option<Net>,
}

/// Why a key is not a subnet key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a subnet key (expected e.g. 10.244.1.0-24 or 10.244.1.0-24&fc00:0:0:1::-64)")]
pub struct NotASubnetKey(pub String);

impl SubnetKey {
    pub fn parse(key: &str) -> Result<SubnetKey, NotASubnetKey> {
        let err = || NotASubnetKey(key.to_string());
        let (first, second) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let first = parse_part(first).ok_or_else(err)?;
        let subnets = match (first.family, second) {
            (Family::V4, None) => SubnetKey {
                ipv4: Some(first),
                ipv6: None,
            },
            (Family::V6, None) => SubnetKey {
                ipv4: None,
                ipv6: Some(first),
            },
            (Family::V4, Some(v6)) => {
                let v6 = parse_part(v6)
                    .filter(|n| n.family == Family::V6)
                    .ok_or_else(err)?;
                SubnetKey {
                    ipv4: Some(first),
                    ipv6: Some(v6),
                }
            }
            (Family::V6, Some(_)) => return Err(err()),
        };
        Ok(subnets)
    }

    /// Whether two keys name the same lease in flannel's sense: both families present
    /// in `self` must match.
    pub fn same_subnet(&self, other: &SubnetKey) -> bool {
        match (self.ipv4, self.ipv6) {
            (Some(v4), Some(v6)) => other.ipv4 == Some(v4) && other.ipv6 == Some(v6),
            (None, Some(v6)) => other.ipv6 == Some(v6),
            (Some(v4), None) => other.ipv4 == Some(v4),
            (None, None) => false,
        }
    }
}

impl std::fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |f: &mut std::fmt::Formatter<'_>, n: &Net| write!(f, "{}-{}", n.ip(), n.prefix);
        match (&self.ipv4, &self.ipv6) {
            (Some(v4), Some(v6)) => {
                part(f, v4)?;
                f.write_str("&")?;
                part(f, v6)
            }
            (Some(v4), None) => part(f, v4),
            (None, Some(v6)) => part(f, v6),
            (None, None) => Ok(()),
        }
    }
}

/// Parses `ADDRESS-PREFIX` strictly: canonical text, host bits clear.
fn parse_part(text: &str) -> Option<Net> {
    let (addr, prefix) = text.rsplit_once('-')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ip: IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if prefix > Family::of(ip).width() {
        return None;
    }
    let net = Net::new_masked(ip, prefix);
    (net.ip() == ip).then_some(net)
}

/// The value stored under a subnet key, in flannel's JSON shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// Empty for backends that set none (alloc, udp).
    pub backend_type: String,
    /// Raw JSON; `None` means the field is absent.
    pub backend_data: Option<BackendData>,
    pub backend_v6_data: Option<BackendData>,
}

/// A lease's `BackendData` (or `BackendV6Data`): any JSON value, kept as its compact text.
///
/// The text is what serde_json writes for the parsed value (keys in document order, a
/// repeated key once with its last value, no whitespace), so every lease value,
/// annotation and etcd value written from it is byte for byte what writing the parsed
/// value gave. Kept as text rather than as a `serde_json::Value` because every peer's
/// lease is held in memory (a vxlan `{"VNI":1,"VtepMAC":"…"}` is one 64-byte allocation
/// instead of an `IndexMap` of ~600 bytes), and clones share it (the lease watcher, the
/// node's peer set and the datapath each hold every lease). Equality is of the text: the
/// same fields in another order are a different value (a changed lease), which at worst
/// costs a targeted pass that changes nothing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendData(Arc<str>);

impl BackendData {
    /// The data of a parsed value.
    pub fn new(value: &Value) -> BackendData {
        BackendData(value.to_string().into())
    }

    /// Parses JSON text (any value).
    pub fn parse(text: &str) -> Result<BackendData, serde_json::Error> {
        serde_json::from_str::<Value>(text).map(|v| BackendData::new(&v))
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed value.
    pub fn to_value(&self) -> Value {
        // The text was written by serde_json from a value, so it always parses.
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// Whether the value is JSON `null`.
    pub fn is_null(&self) -> bool {
        &*self.0 == "null"
    }

    /// `f` of the string value of the first field whose name is `name` ignoring ASCII
    /// case, if the data is an object with such a field and that field is a string;
    /// otherwise `None`. Reads the text without building a `Value`.
    pub fn str_field<R>(&self, name: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
        let mut de = serde_json::Deserializer::from_str(&self.0);
        let found = FieldSeed { name, f }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        found
    }
}

impl From<Value> for BackendData {
    fn from(value: Value) -> BackendData {
        BackendData::new(&value)
    }
}

impl From<&Value> for BackendData {
    fn from(value: &Value) -> BackendData {
        BackendData::new(value)
    }
}

impl PartialEq<Value> for BackendData {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl std::fmt::Debug for BackendData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for BackendData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads one string field of a JSON object (see [`BackendData::str_field`]).
struct FieldSeed<'n, F> {
    name: &'n str,
    f: F,
}

impl<'de, R, F: FnOnce(&str) -> R> DeserializeSeed<'de> for FieldSeed<'_, F> {
    type Value = Option<R>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<R>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, R, F: FnOnce(&str) -> R> Visitor<'de> for FieldSeed<'_, F> {
    type Value = Option<R>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<R>, A::Error> {
        let mut f = Some(self.f);
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(self.name))? {
            match (matches, f.take()) {
                (true, Some(f)) => found = map.next_value_seed(StrValue(f))?,
                (_, rest) => {
                    f = rest;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// Whether a key is the wanted name (ASCII case-insensitively).
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key.eq_ignore_ascii_case(self.0))
    }
}

/// `f` of a string value; `None` for a value of another type (skipped).
struct StrValue<F>(F);

impl<'de, R, F: FnOnce(&str) -> R> DeserializeSeed<'de> for StrValue<F> {
    type Value = Option<R>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<R>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, R, F: FnOnce(&str) -> R> Visitor<'de> for StrValue<F> {
    type Value = Option<R>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<R>, E> {
        Ok(Some((self.0)(v)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<R>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<R>, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<R>, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<R>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<R>, E> {
        Ok(None)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<R>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<R>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Default for LeaseAttrs {
    fn default() -> Self {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }
}

/// Why a lease value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrsError {
    #[error("lease value is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("lease value field {field}: {detail}")]
    Field { field: &'static str, detail: String },
}

impl LeaseAttrs {
    /// Reads flannel's LeaseAttrs JSON; keys match case-insensitively, unknown keys are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<LeaseAttrs, AttrsError> {
        let object = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => map,
            Ok(other) => return Err(AttrsError::NotAnObject(describe(&other))),
            Err(e) => return Err(AttrsError::NotAnObject(e.to_string())),
        };
        let mut attrs = LeaseAttrs::default();
        // Document order (serde_json's preserve_order): a later key wins, as in Go.
        for (key, value) in object {
            match key.to_ascii_lowercase().as_str() {
                "publicip" => {
                    attrs.public_ip = match &value {
                        Value::Null => Ipv4Addr::UNSPECIFIED,
                        Value::String(s) => s.parse().map_err(|_| AttrsError::Field {
                            field: "PublicIP",
                            detail: format!("{s:?} is not an IPv4 address"),
                        })?,
                        other => {
                            return Err(AttrsError::Field {
                                field: "PublicIP",
                                detail: format!("expected a string, got {}", describe(other)),
                            });
                        }
                    }
                }
                "publicipv6" => {
                    attrs.public_ipv6 = match &value {
                        Value::Null => None,
                        Value::String(s) => Some(s.parse().map_err(|_| AttrsError::Field {
                            field: "PublicIPv6",
                            detail: format!("{s:?} is not an IPv6 address"),
                        })?),
                        other => {
                            return Err(AttrsError::Field {
                                field: "PublicIPv6",
                                detail: format!(
                                    "expected a string or null, got {}",
                                    describe(other)
                                ),
                            });
                        }
                    }
                }
                "backendtype" => {
                    attrs.backend_type = match &value {
                        Value::Null => String::new(),
                        Value::String(s) => s.clone(),
                        other => {
                            return Err(AttrsError::Field {
                                field: "BackendType",
                                detail: format!("expected a string, got {}", describe(other)),
                            });
                        }
                    }
                }
                "backenddata" => attrs.backend_data = Some(BackendData::new(&value)),
                "backendv6data" => attrs.backend_v6_data = Some(BackendData::new(&value)),
                _ => {}
            }
        }
        Ok(attrs)
    }

    /// Writes the JSON exactly as flannel's Go encoder does: fixed field order,
    /// `PublicIPv6` always present (`null` when unset), empty fields omitted, compact.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"PublicIP\":");
        out.push_str(&Value::String(self.public_ip.to_string()).to_string());
        out.push_str(",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => out.push_str(&Value::String(ip.to_string()).to_string()),
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&Value::String(self.backend_type.clone()).to_string());
        }
        for (name, data) in [
            ("BackendData", &self.backend_data),
            ("BackendV6Data", &self.backend_v6_data),
        ] {
            if let Some(data) = data {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                out.push_str(data.as_str());
            }
        }
        out.push('}');
        out
    }
}

/// A subnet lease as read from or written to the datastore.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub key: SubnetKey,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 for a reservation (no TTL).
    pub etcd_lease: i64,
    /// When the lease expires, if known; `None` for reservations or unknown.
    pub expiration: Option<SystemTime>,
    /// etcd ModRevision of the key (used for guarded updates).
    pub revision: i64,
}

impl Lease {
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_formats() {
        let k = SubnetKey::parse("10.5.34.0-24").unwrap();
        assert_eq!(k.to_string(), "10.5.34.0-24");
        let k = SubnetKey::parse("10.5.34.0-24&fc00:0:0:1::-64").unwrap();
        assert_eq!(k.ipv6.unwrap().to_string(), "fc00:0:0:1::/64");
        assert_eq!(k.to_string(), "10.5.34.0-24&fc00:0:0:1::-64");
        let k = SubnetKey::parse("fc00:0:0:2::-64").unwrap();
        assert_eq!(
            (k.ipv4, k.ipv6.unwrap().to_string()),
            (None, "fc00:0:0:2::/64".to_string())
        );
        for bad in [
            "",
            "config",
            "10.5.34.0",
            "10.5.34.0-",
            "10.5.34.0-33",
            "10.5.34.1-24",
            "10.5.34.0-24&10.1.0.0-16",
            "fc00::-64&10.0.0.0-8",
            "10.5.34.0-24&",
            "10.5.34.0-x24",
            "10.5.34.0--24",
            "a.b.c.d-24",
        ] {
            assert_eq!(
                SubnetKey::parse(bad),
                Err(NotASubnetKey(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn attrs_round_trip_flannel_example() {
        let text = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let attrs = LeaseAttrs::from_json(text.as_bytes()).unwrap();
        assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(attrs.to_json(), text);
    }

    #[test]
    fn attrs_minimal_and_v6() {
        let attrs = LeaseAttrs::default();
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#
        );
        let attrs = LeaseAttrs::from_json(
            br#"{"publicip":"10.0.0.1","publicipv6":"fc00::1","backendtype":"host-gw","BackendData":null,"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fc00::1","BackendType":"host-gw","BackendData":null}"#
        );
    }

    #[test]
    fn attrs_errors_name_the_field() {
        let err = LeaseAttrs::from_json(br#"{"PublicIP":"nope"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"lease value field PublicIP: "nope" is not an IPv4 address"#
        );
        let err = LeaseAttrs::from_json(b"[1]").unwrap_err();
        assert_eq!(err.to_string(), "lease value is not a JSON object: [1]");
        assert!(LeaseAttrs::from_json(b"{garbage").is_err());
    }

    #[test]
    fn backend_data_is_kept_as_compact_json_text() {
        // Whitespace, key order, a repeated key: written as the parsed value was.
        let attrs = LeaseAttrs::from_json(
            br#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData": { "VtepMAC" : "0a:58:00:00:00:01", "VNI": 1, "VNI": 2 }}"#,
        )
        .unwrap();
        let data = attrs.backend_data.as_ref().unwrap();
        assert_eq!(data.as_str(), r#"{"VtepMAC":"0a:58:00:00:00:01","VNI":2}"#);
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VtepMAC":"0a:58:00:00:00:01","VNI":2}}"#
        );
        assert_eq!(
            *data,
            serde_json::json!({"VtepMAC": "0a:58:00:00:00:01", "VNI": 2})
        );
        assert_eq!(format!("{data:?}"), data.as_str());
        // Clones share the text.
        assert!(std::ptr::eq(data.clone().as_str(), data.as_str()));
        let null = LeaseAttrs::from_json(br#"{"BackendData":null}"#).unwrap();
        assert!(null.backend_data.unwrap().is_null());
    }

    #[test]
    fn backend_data_fields_are_read_from_the_text() {
        let field = |text: &str| {
            BackendData::parse(text)
                .unwrap()
                .str_field("vtepmac", str::to_string)
        };
        assert_eq!(field(r#"{"VNI":1,"VtepMAC":"aa"}"#), Some("aa".into()));
        assert_eq!(field(r#"{"vtepmac":"b\u0061"}"#), Some("ba".into()));
        // The first field of that name in any case counts, string or not.
        assert_eq!(field(r#"{"VTEPMAC":"x","vtepmac":"y"}"#), Some("x".into()));
        assert_eq!(field(r#"{"VtepMAC":1,"vtepmac":"y"}"#), None);
        assert_eq!(field(r#"{"VtepMAC":{"a":[1,"b"]},"vtepmac":"y"}"#), None);
        assert_eq!(
            field(r#"{"VNI":[1,{"VtepMAC":"z"}],"VtepMAC":"c"}"#),
            Some("c".into())
        );
        for other in [r#"{"VNI":1}"#, "null", "[1]", r#""VtepMAC""#, "1.5", "{}"] {
            assert_eq!(field(other), None, "{other}");
        }
    }

    /// The lease value from the issue: its quoted array is 66 characters (70 bytes), so it
    /// is clipped, and byte 61 falls inside the first 'é' (cutting there used to panic).
    #[test]
    fn non_ascii_values_in_errors_do_not_panic() {
        let text = format!(
            r#"{{"PublicIP":["{}\u00e9\u00e9\u00e9\u00e9"],"BackendType":"vxlan"}}"#,
            "a".repeat(58)
        );
        let err = LeaseAttrs::from_json(text.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                r#"lease value field PublicIP: expected a string, got ["{}é..."#,
                "a".repeat(58)
            )
        );
        // Longer values are clipped to 64 characters, between characters.
        let text = format!(r#"{{"BackendType":{{"k":"{}"}}}}"#, "é".repeat(100));
        let err = LeaseAttrs::from_json(text.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                r#"lease value field BackendType: expected a string, got {{"k":"{}..."#,
                "é".repeat(55)
            )
        );
        let text = format!(r#"["{}"]"#, "€".repeat(70));
        let err = LeaseAttrs::from_json(text.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                r#"lease value is not a JSON object: ["{}..."#,
                "€".repeat(59)
            )
        );
    }
}
