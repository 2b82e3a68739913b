//! Property tests of the plugin's parsers of outside data: subnet.env, the network
//! configuration on stdin (and the delegate config built from it), and whole invocations
//! with any stdin and any `CNI_*` environment (`run`, confined to a temporary directory:
//! see that module). For any input each returns a result or an error, never panics.
//! Inputs come from `weft_testkit`; every test is named `prop_*` (see docs/testing.md).
//!
//! They live inside the binary crate because it has no library target to test from
//! outside.

#![allow(clippy::unwrap_used)]

mod run;

use crate::delegate;
use crate::netconf::{Fields, Header, NetConf};
use crate::subnet_env::{self, SubnetEnv};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use weft_testkit::{check, json, outcome, text};

const ENV_KEYS: &[&str] = &[
    "FLANNEL_NETWORK",
    "FLANNEL_SUBNET",
    "FLANNEL_IPV6_NETWORK",
    "FLANNEL_IPV6_SUBNET",
    "FLANNEL_MTU",
    "FLANNEL_IPMASQ",
];

const VALID_ENVS: &[&str] = &[
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n\
     FLANNEL_IPMASQ=true\n",
    "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\n\
     FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
     FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
];

/// subnet.env content: any bytes or text, `KEY=VALUE` lines with the known keys (any
/// case, sometimes no `=`, CRLF or LF), and valid files with one change.
fn env_file() -> BoxedStrategy<Vec<u8>> {
    let key =
        prop_oneof![4 => select(ENV_KEYS).prop_map(str::to_string), 1 => text::any_case(ENV_KEYS)];
    let value = prop_oneof![
        text::address(),
        text::string(),
        "[0-9]{1,12}",
        select(&["true", "false", "True", ""][..]).prop_map(str::to_string),
    ];
    let line =
        (key, select(&["=", "", "=="][..]), value).prop_map(|(k, eq, v)| format!("{k}{eq}{v}"));
    let lines = (
        prop::collection::vec(line, 0..8),
        select(&["\n", "\r\n"][..]),
    )
        .prop_map(|(lines, end)| lines.join(end));
    let valid = select(VALID_ENVS).prop_map(str::to_string).boxed();
    prop_oneof![
        1 => text::bytes(),
        1 => text::string().prop_map(String::into_bytes),
        2 => lines.prop_map(String::into_bytes),
        2 => text::near(valid).prop_map(String::into_bytes),
    ]
    .boxed()
}

#[test]
fn prop_subnet_env_parses_or_errs() {
    let tally = check(env_file(), |content| {
        let result = subnet_env::parse(&content);
        if let Ok(env) = &result {
            // What the plugin relies on: a network and a subnet, subnets as network
            // addresses, no repeated networks.
            prop_assert!(!(env.networks.is_empty() && env.ipv6_networks.is_empty()));
            prop_assert!(env.subnet.is_some() || env.ipv6_subnet.is_some());
            for subnet in env.subnet.iter().chain(&env.ipv6_subnet) {
                prop_assert_eq!(subnet.network(), *subnet);
            }
            for list in [&env.networks, &env.ipv6_networks] {
                for (i, network) in list.iter().enumerate() {
                    prop_assert!(!list[..i].contains(network), "{list:?}");
                }
            }
        }
        Ok(outcome(&result))
    });
    tally.assert_seen(&["ok", "err"]);
}

/// The network configuration's keys, and those of `delegate`, `ipam` and routes.
pub const NETCONF_FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "subnetFile",
    "dataDir",
    "subnetFileWaitSeconds",
    "delegate",
    "ipam",
    "runtimeConfig",
    "hairpinMode",
    "isDefaultGateway",
    "isGateway",
    "mtu",
    "ipMasq",
    "routes",
    "ranges",
    "dst",
    "gw",
    "advmss",
    "priority",
    "table",
    "scope",
];

/// Network configurations as kubelet's runtime passes them.
pub fn valid_netconfs() -> Vec<Value> {
    vec![
        json!({"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
               "delegate":{"hairpinMode":true,"isDefaultGateway":true}}),
        json!({"cniVersion":"1.0.0","name":"cbr0","type":"flannel",
               "delegate":{"type":"bridge","mtu":1400,"ipMasq":false},
               "ipam":{"type":"host-local","routes":[
                   {"dst":"10.0.0.0/8","gw":"10.244.1.1","mtu":1400,"priority":5,"table":100}]},
               "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80}]}}),
        json!({"cniVersion":"0.4.0","name":"n","type":"flannel","ipam":{"routes":null}}),
    ]
}

#[test]
fn prop_netconf_and_delegate_config() {
    let inputs = (
        json::bytes(valid_netconfs(), NETCONF_FIELDS),
        prop_oneof![3 => select(VALID_ENVS).prop_map(|e| e.as_bytes().to_vec()), 1 => env_file()],
    );
    let fallback: SubnetEnv = subnet_env::parse(VALID_ENVS[1].as_bytes()).unwrap();
    let tally = check(inputs, |(stdin, env_file)| {
        let Ok(fields) = Fields::parse(&stdin) else {
            return Ok("not an object");
        };
        let header = Header::from_fields(&fields);
        let Ok(conf) = NetConf::from_fields(&fields) else {
            return Ok("netconf error");
        };
        prop_assert_eq!(header.map(|h| h.name), Ok(conf.name.clone()));
        let env = subnet_env::parse(&env_file).unwrap_or_else(|_| fallback.clone());
        let Ok(delegate) = delegate::build(&conf, &env) else {
            return Ok("delegate error");
        };
        // The delegate config is JSON (written by weft's Go-compatible encoder) naming the
        // plugin that will run it, the network and an IPAM section.
        let config: Value = serde_json::from_str(&delegate.config)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", delegate.config)))?;
        prop_assert_eq!(config["type"].as_str(), Some(delegate.plugin.as_str()));
        prop_assert_eq!(config["name"].as_str(), Some(conf.name.as_str()));
        prop_assert!(config["ipam"].is_object(), "{config}");
        Ok("built")
    });
    tally.assert_seen(&["not an object", "netconf error", "delegate error", "built"]);
}
