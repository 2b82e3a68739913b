//! net-conf.json: parsing and validation with flannel's rules, defaults and messages.
//!
//! flannel decodes the file with Go's `encoding/json`, which matches keys
//! case-insensitively and ignores unknown keys; [`RawConfig::parse`] does the same.
//! [`RawConfig::validate`] then applies `CheckNetworkConfig`'s defaults and checks, with
//! its exact error messages, and yields a typed [`NetworkConfig`].
//!
//! Where weft differs from flannel (each is documented in `docs/compatibility.md`):
//! - a missing `Backend` means `vxlan` (flannel's code defaults to `udp`, its docs say vxlan);
//! - `SubnetMin` above `SubnetMax` is an error (flannel silently has no subnets);
//! - a field of the wrong JSON type names the field and the value.

use crate::family::{self, Family, Net};
use crate::text::describe;
use serde_json::{Map, Value};
use std::net::IpAddr;

/// A configuration error; the message is what the operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("net-conf.json is not valid JSON: {0}")]
    Json(String),
    #[error("net-conf.json must be a JSON object, got {0}")]
    NotAnObject(String),
    #[error("net-conf.json field {field}: expected {expected}, got {got}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("net-conf.json field {field}: {value:?} is not {expected}")]
    FieldValue {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("please define a correct {0} parameter in the flannel config")]
    MissingNetwork(&'static str),
    #[error("SubnetLen must be less than /{0}")]
    SubnetLenTooLong(u8),
    #[error("network must be able to accommodate at least four subnets")]
    TooFewSubnets,
    #[error("{0} is too small. Minimum useful network prefix is /{1}")]
    NetworkTooSmall(&'static str, u8),
    #[error("{field} is not in the range of the {network}")]
    OutOfRange {
        field: &'static str,
        network: &'static str,
    },
    #[error("{field} is not on a SubnetLen boundary: {ip}")]
    NotOnBoundary { field: &'static str, ip: IpAddr },
    #[error(
        "{min_field} {min} is greater than {max_field} {max}: there are no subnets to allocate"
    )]
    MinAboveMax {
        min_field: &'static str,
        min: IpAddr,
        max_field: &'static str,
        max: IpAddr,
    },
    #[error(
        "neither EnableIPv4 nor EnableIPv6 is true: at least one address family must be enabled"
    )]
    NoFamily,
    #[error("Backend must be a JSON object, got {0}")]
    BackendNotObject(String),
    #[error("Backend has no Type; set \"Type\" to one of: {}", BackendType::NAMES.join(", "))]
    MissingBackendType,
    #[error("unknown backend type: {name} (known types: {})", BackendType::NAMES.join(", "))]
    UnknownBackend { name: String },
}

/// The backend types flannel registers. weftd implements a subset; see `weftd --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendType {
    Vxlan,
    HostGw,
    Wireguard,
    Udp,
    Ipip,
    Ipsec,
    Alloc,
    Extension,
    TencentVpc,
}

impl BackendType {
    pub const NAMES: [&'static str; 9] = [
        "vxlan",
        "host-gw",
        "wireguard",
        "udp",
        "ipip",
        "ipsec",
        "alloc",
        "extension",
        "tencent-vpc",
    ];
    const ALL: [BackendType; 9] = [
        BackendType::Vxlan,
        BackendType::HostGw,
        BackendType::Wireguard,
        BackendType::Udp,
        BackendType::Ipip,
        BackendType::Ipsec,
        BackendType::Alloc,
        BackendType::Extension,
        BackendType::TencentVpc,
    ];

    /// Looks a type up case-insensitively, as flannel's backend manager does.
    pub fn from_name(name: &str) -> Option<BackendType> {
        let lower = name.to_ascii_lowercase();
        Self::NAMES
            .iter()
            .position(|n| *n == lower)
            .map(|i| Self::ALL[i])
    }

    pub fn name(self) -> &'static str {
        let index = Self::ALL.iter().position(|t| *t == self).unwrap_or(0);
        Self::NAMES[index]
    }
}

impl std::fmt::Display for BackendType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// net-conf.json as written, after case-insensitive key matching and type checks.
#[derive(Debug, Clone, PartialEq)]
pub struct RawConfig {
    pub network: Option<Net>,
    pub subnet_len: u32,
    pub subnet_min: Option<IpAddr>,
    pub subnet_max: Option<IpAddr>,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_nftables: bool,
    pub ipv6_network: Option<Net>,
    pub ipv6_subnet_len: u32,
    pub ipv6_subnet_min: Option<IpAddr>,
    pub ipv6_subnet_max: Option<IpAddr>,
    /// The `Backend` object with its keys as written; `None` when absent.
    pub backend: Option<Value>,
}

/// The subnet pool of one address family, after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPool {
    pub network: Net,
    pub subnet_len: u8,
    /// First allocatable subnet address.
    pub subnet_min: u128,
    /// Last allocatable subnet address.
    pub subnet_max: u128,
}

impl SubnetPool {
    pub fn family(&self) -> Family {
        self.network.family
    }

    /// Whether `subnet` is one this pool could hand out (flannel's `isSubnetCompatible`).
    pub fn admits(&self, subnet: &Net) -> bool {
        subnet.family == self.family()
            && subnet.prefix == self.subnet_len
            && subnet.addr >= self.subnet_min
            && subnet.addr <= self.subnet_max
    }

    pub fn subnet_count(&self) -> u128 {
        (self.subnet_max - self.subnet_min) / family::block(self.family(), self.subnet_len) + 1
    }
}

/// The `Backend` section: its type and the object as written (backends parse the rest).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub kind: BackendType,
    pub raw: Value,
}

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub ipv4: Option<SubnetPool>,
    pub ipv6: Option<SubnetPool>,
    pub enable_nftables: bool,
    pub backend: BackendConfig,
}

impl RawConfig {
    /// Parses net-conf.json text.
    pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let Value::Object(object) = value else {
            return Err(ConfigError::NotAnObject(describe(&value)));
        };
        let mut raw = RawConfig {
            network: None,
            subnet_len: 0,
            subnet_min: None,
            subnet_max: None,
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            ipv6_network: None,
            ipv6_subnet_len: 0,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            backend: None,
        };
        // Go's decoder lets a later key win when two differ only in case; so does this loop.
        for (key, value) in &object {
            match key.to_ascii_lowercase().as_str() {
                "network" => raw.network = cidr_field("Network", value, Family::V4)?,
                "subnetlen" => raw.subnet_len = uint_field("SubnetLen", value)?,
                "subnetmin" => raw.subnet_min = ip_field("SubnetMin", value, Family::V4)?,
                "subnetmax" => raw.subnet_max = ip_field("SubnetMax", value, Family::V4)?,
                "enableipv4" => raw.enable_ipv4 = bool_field("EnableIPv4", value)?,
                "enableipv6" => raw.enable_ipv6 = bool_field("EnableIPv6", value)?,
                "enablenftables" => raw.enable_nftables = bool_field("EnableNFTables", value)?,
                "ipv6network" => raw.ipv6_network = cidr_field("IPv6Network", value, Family::V6)?,
                "ipv6subnetlen" => raw.ipv6_subnet_len = uint_field("IPv6SubnetLen", value)?,
                "ipv6subnetmin" => {
                    raw.ipv6_subnet_min = ip_field("IPv6SubnetMin", value, Family::V6)?
                }
                "ipv6subnetmax" => {
                    raw.ipv6_subnet_max = ip_field("IPv6SubnetMax", value, Family::V6)?
                }
                "backend" => raw.backend = Some(value.clone()),
                _ => {}
            }
        }
        Ok(raw)
    }

    /// The backend type: the `Type` key of `Backend`, or `vxlan` when `Backend` is absent.
    pub fn backend_config(&self) -> Result<BackendConfig, ConfigError> {
        let Some(backend) = &self.backend else {
            return Ok(BackendConfig {
                kind: BackendType::Vxlan,
                raw: Value::Object(Map::from_iter([(
                    "Type".to_string(),
                    Value::String("vxlan".into()),
                )])),
            });
        };
        let Value::Object(object) = backend else {
            if backend.is_null() {
                return Err(ConfigError::MissingBackendType);
            }
            return Err(ConfigError::BackendNotObject(describe(backend)));
        };
        let type_value = object
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("type"))
            .map(|(_, v)| v)
            .next_back();
        let name = match type_value {
            None => return Err(ConfigError::MissingBackendType),
            Some(Value::String(s)) if s.is_empty() => return Err(ConfigError::MissingBackendType),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(ConfigError::FieldType {
                    field: "Backend.Type",
                    expected: "a string",
                    got: describe(other),
                });
            }
        };
        let kind = BackendType::from_name(name)
            .ok_or_else(|| ConfigError::UnknownBackend { name: name.clone() })?;
        Ok(BackendConfig {
            kind,
            raw: backend.clone(),
        })
    }

    /// Applies flannel's `CheckNetworkConfig` defaults and checks.
    pub fn validate(&self) -> Result<NetworkConfig, ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::NoFamily);
        }
        let ipv4 = if self.enable_ipv4 {
            Some(pool(
                &FamilyRules::V4,
                self.network,
                self.subnet_len,
                self.subnet_min,
                self.subnet_max,
            )?)
        } else {
            None
        };
        let ipv6 = if self.enable_ipv6 {
            Some(pool(
                &FamilyRules::V6,
                self.ipv6_network,
                self.ipv6_subnet_len,
                self.ipv6_subnet_min,
                self.ipv6_subnet_max,
            )?)
        } else {
            None
        };
        Ok(NetworkConfig {
            ipv4,
            ipv6,
            enable_nftables: self.enable_nftables,
            backend: self.backend_config()?,
        })
    }
}

impl RawConfig {
    /// The config as the Kubernetes subnet manager uses it. flannel does not validate
    /// net-conf.json in kube mode (subnets come from the Nodes' podCIDRs, so SubnetLen,
    /// SubnetMin and SubnetMax are ignored); weft still requires a `Network` (or
    /// `IPv6Network`) for each enabled family, since podCIDRs are checked against it.
    /// The pools span the whole network.
    pub fn for_kube(&self) -> Result<NetworkConfig, ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::NoFamily);
        }
        let whole = |network: Option<Net>, field: &'static str| {
            network
                .map(|network| SubnetPool {
                    network,
                    subnet_len: network.prefix,
                    subnet_min: network.addr,
                    subnet_max: network.last(),
                })
                .ok_or(ConfigError::MissingNetwork(field))
        };
        Ok(NetworkConfig {
            ipv4: self
                .enable_ipv4
                .then(|| whole(self.network, "Network"))
                .transpose()?,
            ipv6: self
                .enable_ipv6
                .then(|| whole(self.ipv6_network, "IPv6Network"))
                .transpose()?,
            enable_nftables: self.enable_nftables,
            backend: self.backend_config()?,
        })
    }
}

impl NetworkConfig {
    /// Parses and validates net-conf.json text.
    pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        RawConfig::parse(text)?.validate()
    }

    /// A flat JSON summary with flannel's field names; used by fixtures and logs.
    pub fn summary(&self) -> Value {
        let mut out = Map::new();
        out.insert("EnableIPv4".into(), self.ipv4.is_some().into());
        out.insert("EnableIPv6".into(), self.ipv6.is_some().into());
        for (pool, prefix) in [(&self.ipv4, ""), (&self.ipv6, "IPv6")] {
            if let Some(pool) = pool {
                let network_key = if prefix.is_empty() {
                    "Network".to_string()
                } else {
                    "IPv6Network".to_string()
                };
                out.insert(network_key, pool.network.to_string().into());
                out.insert(format!("{prefix}SubnetLen"), pool.subnet_len.into());
                let min = family::from_u128(pool.family(), pool.subnet_min);
                let max = family::from_u128(pool.family(), pool.subnet_max);
                out.insert(format!("{prefix}SubnetMin"), min.to_string().into());
                out.insert(format!("{prefix}SubnetMax"), max.to_string().into());
            }
        }
        out.insert("EnableNFTables".into(), self.enable_nftables.into());
        out.insert("BackendType".into(), self.backend.kind.name().into());
        Value::Object(out)
    }
}

/// The per-family constants of `CheckNetworkConfig`.
struct FamilyRules {
    family: Family,
    network_field: &'static str,
    min_field: &'static str,
    max_field: &'static str,
    /// Longest explicit SubnetLen allowed.
    max_subnet_len: u8,
    /// Longest network prefix for which a default SubnetLen is computed.
    max_network_prefix: u8,
    /// Network prefixes up to this get the default SubnetLen below.
    default_threshold: u8,
    default_subnet_len: u8,
    too_small_name: &'static str,
}

impl FamilyRules {
    const V4: FamilyRules = FamilyRules {
        family: Family::V4,
        network_field: "Network",
        min_field: "SubnetMin",
        max_field: "SubnetMax",
        max_subnet_len: 30,
        max_network_prefix: 28,
        default_threshold: 22,
        default_subnet_len: 24,
        too_small_name: "network",
    };
    const V6: FamilyRules = FamilyRules {
        family: Family::V6,
        network_field: "IPv6Network",
        min_field: "IPv6SubnetMin",
        max_field: "IPv6SubnetMax",
        max_subnet_len: 126,
        max_network_prefix: 124,
        default_threshold: 62,
        default_subnet_len: 64,
        too_small_name: "IPv6Network",
    };
}

fn pool(
    rules: &FamilyRules,
    network: Option<Net>,
    subnet_len: u32,
    subnet_min: Option<IpAddr>,
    subnet_max: Option<IpAddr>,
) -> Result<SubnetPool, ConfigError> {
    let network = network.ok_or(ConfigError::MissingNetwork(rules.network_field))?;
    let subnet_len = if subnet_len > 0 {
        if subnet_len > u32::from(rules.max_subnet_len) {
            return Err(ConfigError::SubnetLenTooLong(rules.max_subnet_len + 1));
        }
        if subnet_len < u32::from(network.prefix) + 2 {
            return Err(ConfigError::TooFewSubnets);
        }
        subnet_len as u8
    } else if network.prefix > rules.max_network_prefix {
        return Err(ConfigError::NetworkTooSmall(
            rules.too_small_name,
            rules.max_network_prefix,
        ));
    } else if network.prefix <= rules.default_threshold {
        rules.default_subnet_len
    } else {
        network.prefix + 2
    };
    let step = family::block(rules.family, subnet_len);
    let endpoint = |field: &'static str, given: Option<IpAddr>, default: u128| {
        let Some(ip) = given else { return Ok(default) };
        let value = family::to_u128(ip);
        if !network.contains(value) {
            return Err(ConfigError::OutOfRange {
                field,
                network: rules.network_field,
            });
        }
        if !value.is_multiple_of(step) {
            return Err(ConfigError::NotOnBoundary { field, ip });
        }
        Ok(value)
    };
    // By default the first and the last subnet of the network are not handed out.
    let subnet_min = endpoint(rules.min_field, subnet_min, network.addr + step)?;
    let subnet_max = endpoint(rules.max_field, subnet_max, network.last() - (step - 1))?;
    if subnet_min > subnet_max {
        return Err(ConfigError::MinAboveMax {
            min_field: rules.min_field,
            min: family::from_u128(rules.family, subnet_min),
            max_field: rules.max_field,
            max: family::from_u128(rules.family, subnet_max),
        });
    }
    Ok(SubnetPool {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

/// A string field that may be absent, null or empty (all meaning "unset"), parsed by
/// `parse` into a value of the right family; errors name the field and the value.
fn typed_string_field<T>(
    field: &'static str,
    value: &Value,
    kind: &'static str,
    [expected_v4, expected_v6]: [&'static str; 2],
    family: Family,
    parse: impl Fn(&str) -> Option<(T, Family)>,
) -> Result<Option<T>, ConfigError> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => s,
        other => {
            return Err(ConfigError::FieldType {
                field,
                expected: kind,
                got: describe(other),
            });
        }
    };
    let expected = match family {
        Family::V4 => expected_v4,
        Family::V6 => expected_v6,
    };
    match parse(text) {
        Some((parsed, parsed_family)) if parsed_family == family => Ok(Some(parsed)),
        _ => Err(ConfigError::FieldValue {
            field,
            value: text.clone(),
            expected,
        }),
    }
}

fn cidr_field(
    field: &'static str,
    value: &Value,
    family: Family,
) -> Result<Option<Net>, ConfigError> {
    let parse = |text: &str| text.parse::<Net>().ok().map(|n| (n, n.family));
    typed_string_field(
        field,
        value,
        "a CIDR string",
        ["an IPv4 CIDR", "an IPv6 CIDR"],
        family,
        parse,
    )
}

fn ip_field(
    field: &'static str,
    value: &Value,
    family: Family,
) -> Result<Option<IpAddr>, ConfigError> {
    let parse = |text: &str| text.parse::<IpAddr>().ok().map(|ip| (ip, Family::of(ip)));
    typed_string_field(
        field,
        value,
        "an IP address string",
        ["an IPv4 address", "an IPv6 address"],
        family,
        parse,
    )
}

fn uint_field(field: &'static str, value: &Value) -> Result<u32, ConfigError> {
    match value {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ConfigError::FieldType {
                field,
                expected: "a non-negative integer",
                got: n.to_string(),
            }),
        other => Err(ConfigError::FieldType {
            field,
            expected: "a non-negative integer",
            got: describe(other),
        }),
    }
}

fn bool_field(field: &'static str, value: &Value) -> Result<bool, ConfigError> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(ConfigError::FieldType {
            field,
            expected: "true or false",
            got: describe(other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_example_defaults() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.3.0.0/16"}"#).unwrap();
        let v4 = cfg.ipv4.unwrap();
        assert_eq!(v4.subnet_len, 24);
        assert_eq!(
            family::from_u128(Family::V4, v4.subnet_min).to_string(),
            "10.3.1.0"
        );
        assert_eq!(
            family::from_u128(Family::V4, v4.subnet_max).to_string(),
            "10.3.255.0"
        );
        assert_eq!(v4.subnet_count(), 255);
        assert_eq!(cfg.backend.kind, BackendType::Vxlan);
    }

    #[test]
    fn v6_defaults() {
        let cfg = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
        )
        .unwrap();
        let v6 = cfg.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(
            family::from_u128(Family::V6, v6.subnet_min).to_string(),
            "fc00:0:0:1::"
        );
        assert_eq!(
            family::from_u128(Family::V6, v6.subnet_max).to_string(),
            "fc00:0:0:ffff::"
        );
    }

    #[test]
    fn lowercase_keys_and_later_key_wins() {
        let cfg = NetworkConfig::parse(
            r#"{"network":"10.1.0.0/16","NETWORK":"10.2.0.0/16","subnetlen":20}"#,
        )
        .unwrap();
        assert_eq!(cfg.ipv4.unwrap().network.to_string(), "10.2.0.0/16");
        assert_eq!(cfg.ipv4.unwrap().subnet_len, 20);
    }

    #[test]
    fn backend_lookup_is_case_insensitive() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"type":"Host-GW"}}"#)
            .unwrap();
        assert_eq!(cfg.backend.kind, BackendType::HostGw);
    }

    /// A field of the wrong type holding non-ASCII text: the quoted value is 66 characters
    /// (70 bytes), so it is clipped, and byte 61 falls inside the first 'é' (cutting there
    /// used to panic).
    #[test]
    fn non_ascii_values_in_errors_do_not_panic() {
        let a58 = "a".repeat(58);
        let text = format!(r#"{{"Network":["{a58}\u00e9\u00e9\u00e9\u00e9"]}}"#);
        assert_eq!(
            NetworkConfig::parse(&text).unwrap_err().to_string(),
            format!(r#"net-conf.json field Network: expected a CIDR string, got ["{a58}é..."#)
        );
        let text = format!(r#"["{}"]"#, "é".repeat(70));
        assert_eq!(
            RawConfig::parse(&text).unwrap_err().to_string(),
            format!(
                r#"net-conf.json must be a JSON object, got ["{}..."#,
                "é".repeat(59)
            )
        );
        let text = format!(r#"{{"Backend":{{"Type":["{}"]}}}}"#, "€".repeat(70));
        assert_eq!(
            RawConfig::parse(&text)
                .unwrap()
                .backend_config()
                .unwrap_err()
                .to_string(),
            format!(
                r#"net-conf.json field Backend.Type: expected a string, got ["{}..."#,
                "€".repeat(59)
            )
        );
    }

    #[test]
    fn kube_mode_ignores_subnet_rules_but_needs_a_network() {
        // A SubnetLen that validate() refuses is irrelevant when Nodes carry podCIDRs.
        let raw = RawConfig::parse(r#"{"Network":"10.244.0.0/16","SubnetLen":12}"#).unwrap();
        assert!(raw.validate().is_err());
        let cfg = raw.for_kube().unwrap();
        assert_eq!(cfg.ipv4.unwrap().network.to_string(), "10.244.0.0/16");
        assert_eq!(cfg.ipv6, None);
        let dual = RawConfig::parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#).unwrap();
        assert_eq!(
            dual.for_kube().unwrap_err().to_string(),
            "please define a correct IPv6Network parameter in the flannel config"
        );
        let none = RawConfig::parse(r#"{"EnableIPv4":false}"#).unwrap();
        assert_eq!(none.for_kube().unwrap_err(), ConfigError::NoFamily);
    }
}
