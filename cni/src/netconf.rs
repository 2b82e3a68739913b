//! The network configuration kubelet's runtime passes on stdin: flannel's plugin's keys
//! (`name`, `cniVersion`, `subnetFile`, `dataDir`, `delegate`, `ipam`, `runtimeConfig`)
//! plus weft's `subnetFileWaitSeconds`.
//!
//! flannel decodes this with Go's `encoding/json`, and configs written for it rely on how
//! that behaves, so decoding follows it: top-level keys match case-insensitively, the last
//! occurrence in the document wins, `null` leaves a string at its default and turns an
//! object off, and two occurrences of an object key are merged (Go reuses the map).
//! Nested values are kept as JSON and re-encoded the Go way later (see `gojson`).

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// How long ADD waits for a missing subnet.env by default: long enough to cover weftd
/// starting up on a booting node, short enough to stay well inside runtime timeouts.
pub const DEFAULT_SUBNET_FILE_WAIT: Duration = Duration::from_secs(5);
/// The most `subnetFileWaitSeconds` may ask for: kubelet retries a failed ADD anyway, and
/// holding a sandbox creation longer only hides the problem.
pub const MAX_SUBNET_FILE_WAIT_SECONDS: f64 = 60.0;

/// The top-level object, key/value pairs in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields(Vec<(String, Value)>);

impl Fields {
    /// Decodes stdin. Anything but a JSON object is a decoding failure.
    pub fn parse(bytes: &[u8]) -> Result<Fields, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The key/value pairs in document order, repeated keys included (the property tests
    /// rebuild a document from them).
    #[cfg(test)]
    pub fn entries(&self) -> &[(String, Value)] {
        &self.0
    }

    /// The values given for `key`, matched as Go does (ASCII case-insensitively), in
    /// document order.
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// A string field as a Go `string`: absent or `null` is `""`, the last value wins.
    fn string(&self, key: &'static str) -> Result<Option<String>, NetConfError> {
        let mut out = None;
        for value in self.all(key) {
            match value {
                Value::Null => {}
                Value::String(s) => out = Some(s.clone()),
                other => return Err(NetConfError::wrong_type(key, "a string", other)),
            }
        }
        Ok(out)
    }

    /// An object field as a Go `map[string]interface{}`: `null` sets it to nil, a second
    /// object is merged into the first.
    fn object(&self, key: &'static str) -> Result<Option<Map<String, Value>>, NetConfError> {
        let mut out: Option<Map<String, Value>> = None;
        for value in self.all(key) {
            match value {
                Value::Null => out = None,
                Value::Object(map) => {
                    out.get_or_insert_with(Map::new).extend(map.clone());
                }
                other => return Err(NetConfError::wrong_type(key, "an object", other)),
            }
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = access.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// What every command needs before dispatch: the network name and the spec version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `name`; `""` if absent.
    pub name: String,
    /// `cniVersion`; `""` if absent (the spec then means 0.1.0).
    pub cni_version: String,
}

impl Header {
    pub fn from_fields(fields: &Fields) -> Result<Header, NetConfError> {
        Ok(Header {
            name: fields.string("name")?.unwrap_or_default(),
            cni_version: fields.string("cniVersion")?.unwrap_or_default(),
        })
    }
}

/// flannel's plugin configuration, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub name: String,
    pub cni_version: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    /// weft only: how long ADD waits for a missing subnet.env.
    pub subnet_file_wait: Duration,
    /// `None` when absent or `null` (Go's nil map), as opposed to `{}`.
    pub delegate: Option<Map<String, Value>>,
    pub ipam: Option<Map<String, Value>>,
    pub runtime_config: Option<Map<String, Value>>,
}

/// A network configuration that decodes but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfError {
    #[error("failed to load netconf: {key} must be {expected}, not {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "failed to load netconf: subnetFileWaitSeconds must be a number of seconds from 0 to \
         {MAX_SUBNET_FILE_WAIT_SECONDS}, not {0}"
    )]
    BadWait(String),
}

impl NetConfError {
    fn wrong_type(key: &'static str, expected: &'static str, found: &Value) -> NetConfError {
        let found = match found {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        NetConfError::WrongType {
            key,
            expected,
            found,
        }
    }
}

impl NetConf {
    pub fn from_fields(fields: &Fields) -> Result<NetConf, NetConfError> {
        let header = Header::from_fields(fields)?;
        // The network type is not used (kubelet already chose this binary by it), but Go
        // would refuse a non-string, so weft does too.
        fields.string("type")?;
        // flannel keeps an explicit "" (and then fails to open "" or writes relative to
        // the working directory); weft treats it as unset.
        let path_or = |key, default: &str| -> Result<PathBuf, NetConfError> {
            let value = fields.string(key)?.filter(|s| !s.is_empty());
            Ok(PathBuf::from(value.unwrap_or_else(|| default.to_owned())))
        };
        Ok(NetConf {
            name: header.name,
            cni_version: header.cni_version,
            subnet_file: path_or("subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: path_or("dataDir", DEFAULT_DATA_DIR)?,
            subnet_file_wait: subnet_file_wait(fields)?,
            delegate: fields.object("delegate")?,
            ipam: fields.object("ipam")?,
            runtime_config: fields.object("runtimeConfig")?,
        })
    }
}

fn subnet_file_wait(fields: &Fields) -> Result<Duration, NetConfError> {
    let mut wait = DEFAULT_SUBNET_FILE_WAIT;
    for value in fields.all("subnetFileWaitSeconds") {
        wait = match value {
            Value::Null => DEFAULT_SUBNET_FILE_WAIT,
            Value::Number(n) => n
                .as_f64()
                .filter(|s| (0.0..=MAX_SUBNET_FILE_WAIT_SECONDS).contains(s))
                .map(Duration::from_secs_f64)
                .ok_or_else(|| NetConfError::BadWait(n.to_string()))?,
            other => return Err(NetConfError::BadWait(other.to_string())),
        };
    }
    Ok(wait)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(json: &str) -> Result<NetConf, NetConfError> {
        NetConf::from_fields(&Fields::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn defaults() {
        let c = conf(r#"{"name":"cbr0","type":"flannel"}"#).unwrap();
        assert_eq!(c.name, "cbr0");
        assert_eq!(c.cni_version, "");
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/flannel"));
        assert_eq!(c.subnet_file_wait, Duration::from_secs(5));
        assert_eq!((c.delegate, c.ipam, c.runtime_config), (None, None, None));
    }

    #[test]
    fn the_stock_conflist_entry() {
        // As kubelet's runtime hands it over: the conflist's name and cniVersion injected.
        let c = conf(
            r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
                "delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, "0.3.1");
        let delegate = json!({"hairpinMode": true, "isDefaultGateway": true});
        assert_eq!(c.delegate, delegate.as_object().cloned());
    }

    #[test]
    fn keys_match_case_insensitively_and_the_last_one_wins() {
        let c = conf(
            r#"{"NAME":"a","name":"b","SubnetFile":"/x","subnetfile":"/y","DATADIR":"/d",
                "CNIVERSION":"1.0.0","subnetfilewaitseconds":0.5}"#,
        )
        .unwrap();
        assert_eq!(c.name, "b");
        assert_eq!(c.subnet_file, PathBuf::from("/y"));
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.subnet_file_wait, Duration::from_millis(500));
    }

    #[test]
    fn null_and_empty_values() {
        let c = conf(
            r#"{"name":"n","subnetFile":null,"dataDir":"","delegate":null,"ipam":{},
                "runtimeConfig":{}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.delegate, None);
        assert_eq!(c.ipam, Some(Map::new()));
        assert_eq!(c.runtime_config, Some(Map::new()));
    }

    #[test]
    fn repeated_objects_merge_like_go_maps() {
        let c = conf(r#"{"name":"n","delegate":{"a":1,"b":1},"Delegate":{"b":2,"c":2}}"#).unwrap();
        assert_eq!(c.delegate, json!({"a":1,"b":2,"c":2}).as_object().cloned());
        let c = conf(r#"{"name":"n","ipam":{"a":1},"ipam":null}"#).unwrap();
        assert_eq!(c.ipam, None);
    }

    #[test]
    fn wrong_types_are_refused() {
        assert_eq!(
            conf(r#"{"name":"n","subnetFile":5}"#)
                .unwrap_err()
                .to_string(),
            "failed to load netconf: subnetFile must be a string, not a number"
        );
        assert_eq!(
            conf(r#"{"name":"n","delegate":"bridge"}"#)
                .unwrap_err()
                .to_string(),
            "failed to load netconf: delegate must be an object, not a string"
        );
        assert_eq!(
            conf(r#"{"name":"n","type":["flannel"]}"#)
                .unwrap_err()
                .to_string(),
            "failed to load netconf: type must be a string, not an array"
        );
        assert!(conf(r#"{"name":"n","runtimeConfig":[]}"#).is_err());
        assert!(conf(r#"{"name":"n","ipam":true}"#).is_err());
    }

    #[test]
    fn subnet_file_wait_is_bounded() {
        assert_eq!(
            conf(r#"{"subnetFileWaitSeconds":0}"#)
                .unwrap()
                .subnet_file_wait,
            Duration::ZERO
        );
        assert_eq!(
            conf(r#"{"subnetFileWaitSeconds":60}"#)
                .unwrap()
                .subnet_file_wait
                .as_secs(),
            60
        );
        for bad in ["-1", "61", "\"5\"", "true"] {
            let err = conf(&format!(r#"{{"subnetFileWaitSeconds":{bad}}}"#)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "failed to load netconf: subnetFileWaitSeconds must be a number of seconds \
                     from 0 to 60, not {bad}"
                )
            );
        }
    }

    #[test]
    fn only_objects_decode() {
        for bad in ["", "[]", "null", "\"x\"", "{", "{} x"] {
            assert!(Fields::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_types() {
        let f = Fields::parse(br#"{"name":"cbr0","cniVersion":"0.3.1"}"#).unwrap();
        let h = Header::from_fields(&f).unwrap();
        assert_eq!((h.name.as_str(), h.cni_version.as_str()), ("cbr0", "0.3.1"));
        let f = Fields::parse(br#"{"cniVersion":1}"#).unwrap();
        assert!(Header::from_fields(&f).is_err());
    }
}
