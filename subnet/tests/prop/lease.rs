//! Lease values (`LeaseAttrs` JSON) and subnet keys.

use super::net;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, Ipv6Addr};
use weft_subnet::{BackendData, LeaseAttrs, SubnetKey};
use weft_testkit::{check, json, outcome, text};

/// LeaseAttrs' fields, and vxlan's BackendData fields.
const FIELDS: &[&str] = &[
    "PublicIP",
    "PublicIPv6",
    "BackendType",
    "BackendData",
    "BackendV6Data",
    "VNI",
    "VtepMAC",
];

fn valid() -> Vec<Value> {
    vec![
        json!({"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",
               "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}),
        json!({"PublicIP":"10.0.0.1","PublicIPv6":"fc00::1","BackendType":"vxlan",
               "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},
               "BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}),
        json!({"PublicIP":"198.18.0.2","BackendType":"host-gw","BackendData":null}),
    ]
}

#[test]
fn prop_lease_value_parses_or_errs() {
    let tally = check(json::bytes(valid(), FIELDS), |bytes| {
        let result = LeaseAttrs::from_json(&bytes);
        if let Ok(attrs) = &result {
            // What weft read, it can write back and read again.
            let written = attrs.to_json();
            let again = LeaseAttrs::from_json(written.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{e}, reading back {written}")))?;
            prop_assert_eq!(
                (&again.public_ip, &again.public_ipv6, &again.backend_type),
                (&attrs.public_ip, &attrs.public_ipv6, &attrs.backend_type)
            );
            let data = [&attrs.backend_data, &attrs.backend_v6_data];
            if !data
                .iter()
                .any(|d| d.as_ref().is_some_and(|d| json::has_float(&d.to_value())))
            {
                prop_assert_eq!(&again, attrs);
            }
        }
        Ok(outcome(&result))
    });
    tally.assert_seen(&["ok", "err"]);
}

fn attrs() -> impl Strategy<Value = LeaseAttrs> {
    let data = prop::option::of(json::exact_value(FIELDS));
    (
        any::<Ipv4Addr>(),
        prop::option::of(any::<Ipv6Addr>()),
        prop_oneof![
            Just(String::new()),
            Just("vxlan".to_string()),
            text::string()
        ],
        data.clone(),
        data,
    )
        .prop_map(
            |(public_ip, public_ipv6, backend_type, backend_data, backend_v6_data)| LeaseAttrs {
                public_ip,
                public_ipv6,
                backend_type,
                backend_data: backend_data.map(BackendData::from),
                backend_v6_data: backend_v6_data.map(BackendData::from),
            },
        )
}

#[test]
fn prop_lease_value_round_trips() {
    check(attrs(), |attrs| {
        prop_assert_eq!(LeaseAttrs::from_json(attrs.to_json().as_bytes()), Ok(attrs));
        Ok("ok")
    });
}

/// Any subnet key: IPv4, IPv6 or both.
fn key() -> impl Strategy<Value = SubnetKey> {
    prop_oneof![
        net(false).prop_map(|v4| SubnetKey {
            ipv4: Some(v4),
            ipv6: None
        }),
        net(true).prop_map(|v6| SubnetKey {
            ipv4: None,
            ipv6: Some(v6)
        }),
        (net(false), net(true)).prop_map(|(v4, v6)| SubnetKey {
            ipv4: Some(v4),
            ipv6: Some(v6)
        }),
    ]
}

#[test]
fn prop_subnet_key_parses_or_errs() {
    let keys = prop_oneof![
        text::string(),
        text::address(),
        text::near(key().prop_map(|k| k.to_string()).boxed()),
    ];
    let tally = check(keys, |text| {
        let result = SubnetKey::parse(&text);
        if let Ok(key) = &result {
            // A parsed key prints in the canonical form, which parses to the same key.
            let again = SubnetKey::parse(&key.to_string());
            prop_assert_eq!(again.as_ref(), Ok(key));
        }
        Ok(outcome(&result))
    });
    tally.assert_seen(&["ok", "err"]);
}

#[test]
fn prop_subnet_key_round_trips() {
    check(key(), |key| {
        prop_assert_eq!(SubnetKey::parse(&key.to_string()), Ok(key));
        Ok("ok")
    });
}
