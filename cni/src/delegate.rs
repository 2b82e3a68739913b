//! Building the delegate config: flannel's plugin's netconf plus subnet.env in, the exact
//! bytes flannel's plugin would hand to its delegate out. Pure.
//!
//! The rules (flannel's `cmdAdd`/`doCmdAdd`/`getDelegateIPAM`):
//! - `delegate` must not set `name` or `ipam`, and its `type`, if present, is a string;
//! - `runtimeConfig`, if given, is copied into the delegate (replacing any there);
//! - `name` is the network's name; `type` defaults to `bridge`; `ipMasq` defaults to
//!   NOT `FLANNEL_IPMASQ` (whoever is not masquerading in weftd does it in the bridge);
//!   `mtu` defaults to `FLANNEL_MTU`; a `bridge` gets `isGateway: true` by default;
//!   `cniVersion` is the network's if it has one; other delegate keys pass through;
//! - `ipam` starts from the netconf's `ipam` (or `{}`), `type` defaulting to `host-local`;
//!   `ranges` is replaced by one range set per family of the node's subnet(s); `routes` is
//!   the netconf's routes, re-encoded as CNI route structs, then one `{"dst": net}` per
//!   cluster network, IPv4 first.
//!
//! Where weft differs: a route in `ipam.routes` with no `dst` (or `null`) is refused here;
//! flannel would write `"dst":"<nil>"` and leave the delegate to fail on it.

use crate::cidr::{Cidr, go_ip_string};
use crate::gojson::{GoValue, map_from_json, marshal};
use crate::netconf::NetConf;
use crate::subnet_env::SubnetEnv;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The delegate config, ready to save and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegate {
    /// The plugin to run (the config's `type`).
    pub plugin: String,
    /// The config, serialised exactly as flannel's plugin serialises it.
    pub config: String,
}

/// A netconf flannel's plugin would refuse. The first three messages are flannel's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    #[error("'delegate' dictionary, if present, must have (string) 'type' field")]
    TypeNotString,
    #[error("'delegate' dictionary must not have 'name' field, it'll be set by flannel")]
    HasName,
    #[error("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")]
    HasIpam,
    #[error(
        "failed to assemble Delegate IPAM: failed to read IPAM routes: \
         failed to parse ipam.routes: {0}"
    )]
    Routes(String),
}

/// flannel's checks of the `delegate` object, done before anything else so that a bad
/// config fails at once rather than after waiting for subnet.env.
pub fn validate(conf: &NetConf) -> Result<(), DelegateError> {
    let Some(delegate) = &conf.delegate else {
        return Ok(());
    };
    if delegate.get("type").is_some_and(|t| !t.is_string()) {
        return Err(DelegateError::TypeNotString);
    }
    if delegate.contains_key("name") {
        return Err(DelegateError::HasName);
    }
    if delegate.contains_key("ipam") {
        return Err(DelegateError::HasIpam);
    }
    Ok(())
}

/// Builds the delegate config for `conf` on a node described by `env`.
pub fn build(conf: &NetConf, env: &SubnetEnv) -> Result<Delegate, DelegateError> {
    validate(conf)?;
    let mut d: BTreeMap<String, GoValue> = conf
        .delegate
        .as_ref()
        .map(map_from_json)
        .unwrap_or_default();

    if let Some(runtime_config) = &conf.runtime_config {
        d.insert(
            "runtimeConfig".into(),
            GoValue::Map(map_from_json(runtime_config)),
        );
    }
    d.insert("name".into(), GoValue::String(conf.name.clone()));
    d.entry("type".into())
        .or_insert_with(|| GoValue::String("bridge".into()));
    d.entry("ipMasq".into())
        .or_insert(GoValue::Bool(!env.ipmasq));
    d.entry("mtu".into())
        .or_insert(GoValue::Uint(u64::from(env.mtu)));
    let plugin = d
        .get("type")
        .and_then(GoValue::as_str)
        .unwrap_or_default()
        .to_owned();
    if plugin == "bridge" {
        d.entry("isGateway".into()).or_insert(GoValue::Bool(true));
    }
    if !conf.cni_version.is_empty() {
        d.insert(
            "cniVersion".into(),
            GoValue::String(conf.cni_version.clone()),
        );
    }
    d.insert("ipam".into(), GoValue::Map(ipam(conf.ipam.as_ref(), env)?));

    Ok(Delegate {
        plugin,
        config: marshal(&GoValue::Map(d)),
    })
}

fn ipam(
    input: Option<&Map<String, Value>>,
    env: &SubnetEnv,
) -> Result<BTreeMap<String, GoValue>, DelegateError> {
    let mut ipam = input.map(map_from_json).unwrap_or_default();
    ipam.entry("type".into())
        .or_insert_with(|| GoValue::String("host-local".into()));

    let range = |subnet: Cidr| {
        let mut r = BTreeMap::new();
        r.insert("subnet".to_owned(), GoValue::String(subnet.to_string()));
        GoValue::Array(vec![GoValue::Map(r)])
    };
    let ranges: Vec<GoValue> = env
        .subnet
        .iter()
        .chain(&env.ipv6_subnet)
        .map(|s| range(*s))
        .collect();
    // Go's nil slice; cannot happen, as subnet.env must have at least one subnet.
    let ranges = if ranges.is_empty() {
        GoValue::Null
    } else {
        GoValue::Array(ranges)
    };
    ipam.insert("ranges".into(), ranges);

    let mut routes = match input.and_then(|i| i.get("routes")) {
        None => Some(Vec::new()),
        Some(given) => parse_routes(given)?,
    };
    for network in env.networks.iter().chain(&env.ipv6_networks) {
        let dst = GoValue::String(network.to_string());
        routes
            .get_or_insert_with(Vec::new)
            .push(GoValue::Struct(vec![("dst", dst)]));
    }
    ipam.insert(
        "routes".into(),
        routes.map_or(GoValue::Null, GoValue::Array),
    );
    Ok(ipam)
}

/// `ipam.routes` decoded into Go's `[]types.Route`: `None` for `null` (a nil slice).
fn parse_routes(value: &Value) -> Result<Option<Vec<GoValue>>, DelegateError> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                parse_route(item).map_err(|e| DelegateError::Routes(format!("routes[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(DelegateError::Routes("routes must be an array".into())),
    }
}

/// One CNI route (`types.Route` of containernetworking/cni 1.2): fields `dst`, `gw`, `mtu`,
/// `advmss`, `priority`, `table`, `scope` in that order, keys matched case-insensitively,
/// unknown keys dropped, zero `int`s and absent pointers left out. `dst` keeps its host bits
/// (CNI's own `ParseCIDR` does).
fn parse_route(value: &Value) -> Result<GoValue, String> {
    let Value::Object(route) = value else {
        return Err(if value.is_null() {
            "no dst".into()
        } else {
            "not an object".into()
        });
    };
    let field = |name: &str| {
        route
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .next_back()
    };
    let dst = match field("dst") {
        Some(Value::String(s)) => Cidr::parse(s).map_err(|e| e.to_string())?,
        Some(Value::Null) | None => return Err("no dst".into()),
        Some(_) => return Err("dst must be a string".into()),
    };
    let mut out = vec![("dst", GoValue::String(dst.to_string()))];
    match field("gw") {
        Some(Value::String(s)) if !s.is_empty() => {
            let ip = s.parse().map_err(|_| format!("invalid IP address: {s}"))?;
            out.push(("gw", GoValue::String(go_ip_string(ip))));
        }
        Some(Value::String(_) | Value::Null) | None => {}
        Some(_) => return Err("gw must be a string".into()),
    }
    for name in ["mtu", "advmss", "priority"] {
        match int_field(field(name), name)? {
            Some(0) | None => {}
            Some(n) => out.push((name, GoValue::Int(n))),
        }
    }
    for name in ["table", "scope"] {
        if let Some(n) = int_field(field(name), name)? {
            out.push((name, GoValue::Int(n)));
        }
    }
    Ok(GoValue::Struct(out))
}

/// A Go `int` field: an integer literal, or `null` for "not set".
fn int_field(value: Option<&Value>, name: &str) -> Result<Option<i64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{name} must be an integer, not {n}")),
        Some(other) => Err(format!("{name} must be an integer, not {other}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::netconf::Fields;
    use crate::subnet_env;

    fn conf(json: &str) -> NetConf {
        NetConf::from_fields(&Fields::parse(json.as_bytes()).unwrap()).unwrap()
    }

    fn env(content: &str) -> SubnetEnv {
        subnet_env::parse(content.as_bytes()).unwrap()
    }

    const STOCK_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
    const STOCK_CONF: &str = r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
        "delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;

    /// The stock manifest's conflist on a node with `--ip-masq`. flannel's plugin builds
    /// this as Go maps and `json.Marshal` sorts map keys, so these are its exact bytes.
    #[test]
    fn stock_conflist_delegate_is_byte_for_byte_flannels() {
        let d = build(&conf(STOCK_CONF), &env(STOCK_ENV)).unwrap();
        assert_eq!(d.plugin, "bridge");
        assert_eq!(
            d.config,
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    /// flannel.md §8.2 quotes the same config with its keys in another order. It is the
    /// same JSON value; only the key order differs (Go cannot write map keys unsorted).
    #[test]
    fn stock_conflist_delegate_is_the_value_in_flannel_md() {
        let reference = r#"{"cniVersion":"0.3.1","hairpinMode":true,"isDefaultGateway":true,"ipMasq":false,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}}"#;
        let d = build(&conf(STOCK_CONF), &env(STOCK_ENV)).unwrap();
        let ours: Value = serde_json::from_str(&d.config).unwrap();
        assert_eq!(ours, serde_json::from_str::<Value>(reference).unwrap());
    }

    #[test]
    fn minimal_conf_without_cni_version() {
        // flannel's own test input: no cniVersion, no delegate; ipmasq true -> ipMasq false.
        let d = build(
            &conf(r#"{"name":"cni-flannel","type":"flannel"}"#),
            &env("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"),
        )
        .unwrap();
        assert_eq!(
            d.config,
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
    }

    #[test]
    fn dual_stack() {
        let d = build(
            &conf(r#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel"}"#),
            &env("FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"),
        )
        .unwrap();
        assert_eq!(
            d.config,
            r#"{"cniVersion":"1.0.0","ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.42.0.0/24"}],[{"subnet":"2001:cafe:42::/64"}]],"routes":[{"dst":"10.42.0.0/16"},{"dst":"2001:cafe:42::/56"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn several_cluster_networks_give_one_route_each() {
        let d = build(
            &conf(r#"{"name":"n"}"#),
            &env("FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"),
        )
        .unwrap();
        assert!(
            d.config
                .contains(r#""routes":[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}]"#),
            "{}",
            d.config
        );
    }

    /// flannel's own "input IPAM is provided" case: a custom IPAM type, an unknown key and
    /// two routes of its own, one with a gateway; the cluster route is appended.
    #[test]
    fn custom_ipam_passes_through_with_extra_routes() {
        let d = build(
            &conf(
                r#"{"name":"cni-flannel","type":"flannel","ipam":{
                    "type":"my-ipam","unknown-param":"unknown-value",
                    "dataDir":"/tmp/ipam","ranges":[[{"subnet":"1.2.3.0/24"}]],
                    "routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"}]}}"#,
            ),
            &env("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"),
        )
        .unwrap();
        assert_eq!(
            d.config,
            r#"{"ipMasq":false,"ipam":{"dataDir":"/tmp/ipam","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"},{"dst":"10.1.0.0/16"}],"type":"my-ipam","unknown-param":"unknown-value"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
    }

    #[test]
    fn ipam_without_type_gets_host_local() {
        let d = build(
            &conf(r#"{"name":"n","ipam":{"routes":[{"dst":"10.96.0.0/12"}]}}"#),
            &env(STOCK_ENV),
        )
        .unwrap();
        assert!(
            d.config.contains(
                r#""routes":[{"dst":"10.96.0.0/12"},{"dst":"10.244.0.0/16"}],"type":"host-local"}"#
            ),
            "{}",
            d.config
        );
    }

    /// Routes go through Go's `types.Route`: struct field order, canonical addresses, host
    /// bits of `dst` kept, unknown keys dropped, case-insensitive keys, zero ints omitted.
    #[test]
    fn input_routes_are_re_encoded_as_cni_routes() {
        let d = build(
            &conf(
                r#"{"name":"n","ipam":{"routes":[
                    {"priority":5,"GW":"fc00:0::1","Dst":"FC00:0::1/64","comment":"x","mtu":0,"table":0},
                    {"scope":253,"advmss":1400,"mtu":1300,"dst":"10.96.0.1/12","gw":""}]}}"#,
            ),
            &env(STOCK_ENV),
        )
        .unwrap();
        assert!(
            d.config.contains(
                r#""routes":[{"dst":"fc00::1/64","gw":"fc00::1","priority":5,"table":0},{"dst":"10.96.0.1/12","mtu":1300,"advmss":1400,"scope":253},{"dst":"10.244.0.0/16"}]"#
            ),
            "{}",
            d.config
        );
    }

    #[test]
    fn bad_input_routes_are_refused() {
        for (routes, why) in [
            (r#"{"dst":"10.0.0.0/8"}"#, "routes must be an array"),
            (r#"[{"gw":"10.0.0.1"}]"#, "routes[0]: no dst"),
            (r#"[null]"#, "routes[0]: no dst"),
            (
                r#"[{"dst":"10.0.0.0/8"},{"dst":"nope"}]"#,
                "routes[1]: invalid CIDR address: nope",
            ),
            (
                r#"[{"dst":"10.0.0.0/8","gw":"x"}]"#,
                "routes[0]: invalid IP address: x",
            ),
            (
                r#"[{"dst":"10.0.0.0/8","mtu":1.5}]"#,
                "routes[0]: mtu must be an integer, not 1.5",
            ),
        ] {
            let c = conf(&format!(r#"{{"name":"n","ipam":{{"routes":{routes}}}}}"#));
            assert_eq!(
                build(&c, &env(STOCK_ENV)).unwrap_err().to_string(),
                format!(
                    "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: {why}"
                )
            );
        }
        // null routes are Go's nil slice: the cluster route is still added.
        let c = conf(r#"{"name":"n","ipam":{"routes":null}}"#);
        assert!(
            build(&c, &env(STOCK_ENV))
                .unwrap()
                .config
                .contains(r#""routes":[{"dst":"10.244.0.0/16"}]"#)
        );
    }

    #[test]
    fn runtime_config_is_passed_through() {
        let d = build(
            &conf(
                r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
                    "delegate":{"runtimeConfig":{"ignored":true}},
                    "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"bandwidth":{"ingressRate":1e9}}}"#,
            ),
            &env(STOCK_ENV),
        )
        .unwrap();
        assert_eq!(
            d.config,
            r#"{"cniVersion":"0.3.1","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"cbr0","runtimeConfig":{"bandwidth":{"ingressRate":1000000000},"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]},"type":"bridge"}"#
        );
    }

    #[test]
    fn delegate_keys_override_defaults_and_pass_through() {
        let d = build(
            &conf(
                r#"{"name":"n","cniVersion":"0.4.0","delegate":{"cniVersion":"0.3.0","mtu":1400,
                    "ipMasq":true,"isGateway":false,"bridge":"mynet0","note":"<a&b>"}}"#,
            ),
            &env(STOCK_ENV),
        )
        .unwrap();
        assert_eq!(
            d.config,
            r#"{"bridge":"mynet0","cniVersion":"0.4.0","ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isGateway":false,"mtu":1400,"name":"n","note":"\u003ca\u0026b\u003e","type":"bridge"}"#
        );
        // Without a network cniVersion, the delegate's own stays.
        let d = build(
            &conf(r#"{"name":"n","delegate":{"cniVersion":"0.3.0"}}"#),
            &env(STOCK_ENV),
        )
        .unwrap();
        assert!(
            d.config.starts_with(r#"{"cniVersion":"0.3.0","#),
            "{}",
            d.config
        );
    }

    #[test]
    fn other_delegate_types_get_no_is_gateway() {
        let d = build(
            &conf(r#"{"name":"n","delegate":{"type":"ipvlan","master":"eth0"}}"#),
            &env(STOCK_ENV),
        )
        .unwrap();
        assert_eq!(d.plugin, "ipvlan");
        assert_eq!(
            d.config,
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"master":"eth0","mtu":1450,"name":"n","type":"ipvlan"}"#
        );
    }

    #[test]
    fn name_and_ipam_in_the_delegate_are_refused_with_flannels_messages() {
        let refused = |delegate: &str| {
            let c = conf(&format!(r#"{{"name":"cbr0","delegate":{delegate}}}"#));
            let by_validate = validate(&c).unwrap_err();
            assert_eq!(build(&c, &env(STOCK_ENV)).unwrap_err(), by_validate);
            by_validate.to_string()
        };
        assert_eq!(
            refused(r#"{"name":"other"}"#),
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
        );
        assert_eq!(
            refused(r#"{"ipam":{"type":"host-local"}}"#),
            "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"
        );
        assert_eq!(
            refused(r#"{"type":7}"#),
            "'delegate' dictionary, if present, must have (string) 'type' field"
        );
        assert_eq!(
            refused(r#"{"type":null}"#),
            "'delegate' dictionary, if present, must have (string) 'type' field"
        );
    }
}
