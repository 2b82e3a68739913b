//! Property tests of weft-backend's parsers of outside data: the vxlan `Backend` section
//! of net-conf.json, a peer's BackendData (its VTEP MAC) and MAC text. For any input each
//! returns a value or an error and never panics; MAC text also round-trips. Inputs come
//! from `weft_testkit`; every test is named `prop_*` (see docs/testing.md).

use proptest::prelude::*;
use serde_json::{Value, json};
use weft_backend::mac;
use weft_backend::vxlan::{VxlanConfig, vtep_mac};
use weft_lease::BackendData;
use weft_testkit::{check, json, outcome, text};

/// The vxlan `Backend` fields, and those of its BackendData.
const FIELDS: &[&str] = &[
    "Type",
    "VNI",
    "Port",
    "MTU",
    "GBP",
    "Learning",
    "DirectRouting",
    "VtepMAC",
];

#[test]
fn prop_vxlan_backend_section_parses_or_errs() {
    let valid = vec![
        json!({"Type":"vxlan"}),
        json!({"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1450,"GBP":false,
               "Learning":false,"DirectRouting":true}),
    ];
    let tally = check(json::documents(valid, FIELDS), |backend| {
        let result = VxlanConfig::parse(&backend);
        if let Ok(config) = &result {
            // The ranges the kernel accepts: a 24-bit VNI, a port, a positive MTU.
            prop_assert!(config.vni <= 0xff_ffff);
            prop_assert_ne!(config.mtu, Some(0));
        }
        Ok(outcome(&result))
    });
    tally.assert_seen(&["ok", "err"]);
}

/// Text that looks like a MAC address: five to seven groups, mostly two hex digits, else
/// one to three hex digits, signs or spaces, or any text, joined by `:` (or `-`).
fn mac_like() -> BoxedStrategy<String> {
    let group = prop_oneof![
        8 => "[0-9a-fA-F]{2}",
        1 => "[0-9a-fA-F+ -]{1,3}",
        1 => text::string(),
    ];
    (
        prop::collection::vec(group, 5..8),
        prop_oneof![8 => Just(":"), 1 => Just("-")],
    )
        .prop_map(|(groups, separator)| groups.join(separator))
        .boxed()
}

fn any_mac() -> BoxedStrategy<String> {
    any::<[u8; 6]>().prop_map(|m| mac::format(&m)).boxed()
}

#[test]
fn prop_mac_text_parses_or_not() {
    let texts = prop_oneof![mac_like(), text::string(), text::near(any_mac())];
    let tally = check(texts, |text| {
        let parsed = mac::parse(&text);
        if let Some(mac) = parsed {
            // Only the canonical spelling (in any case) is a MAC.
            prop_assert!(mac::format(&mac).eq_ignore_ascii_case(&text), "{text:?}");
        }
        Ok(if parsed.is_some() { "mac" } else { "none" })
    });
    tally.assert_seen(&["mac", "none"]);
}

#[test]
fn prop_mac_round_trips() {
    check(any::<[u8; 6]>(), |mac| {
        prop_assert_eq!(mac::parse(&mac::format(&mac)), Some(mac));
        prop_assert_eq!(mac::parse(&mac::format(&mac).to_uppercase()), Some(mac));
        Ok("ok")
    });
}

#[test]
fn prop_vtep_mac_of_backend_data() {
    let valid: Vec<Value> = vec![
        json!({"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}),
        json!({"vtepmac":"0A:58:0A:F4:01:00"}),
    ];
    let data = prop_oneof![
        4 => json::documents(valid, FIELDS).prop_map(Some),
        1 => Just(None),
        1 => mac_like().prop_map(|text| Some(json!({"VtepMAC": text}))),
    ];
    let tally = check(data, |data| {
        let found = vtep_mac(data.as_ref().map(BackendData::from).as_ref());
        if let Some(mac) = found {
            // A MAC comes only from a VtepMAC string that spells it.
            let spelled = data.as_ref().and_then(Value::as_object).is_some_and(|o| {
                o.iter().any(|(k, v)| {
                    k.eq_ignore_ascii_case("vtepmac")
                        && v.as_str().is_some_and(|s| mac::parse(s) == Some(mac))
                })
            });
            prop_assert!(spelled, "{data:?}");
        }
        // The same as reading the parsed value: the first field named VtepMAC in any case,
        // if it is a string (the data is read from its text, without building a value).
        let from_value = data
            .as_ref()
            .and_then(Value::as_object)
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("vtepmac")))
            .and_then(|(_, v)| v.as_str())
            .and_then(mac::parse);
        prop_assert_eq!(found, from_value, "{:?}", data);
        Ok(if found.is_some() { "mac" } else { "none" })
    });
    tally.assert_seen(&["mac", "none"]);
}
