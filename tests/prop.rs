//! Property tests of weftd's own parsers of outside data: reading the previous subnet back
//! from an existing subnet.env (`subnet_file::parse_previous`), which a person or another
//! tool may have edited: for any text it returns a subnet key or `None`, never panics,
//! and reads back exactly the subnets weftd rendered; and the query string of
//! `/debug/state` (`StateQuery::parse`), which any HTTP client sends: `Ok` within the
//! page bounds, or `Err`. Every test is named `prop_*` (see docs/testing.md).

use proptest::prelude::*;
use proptest::sample::select;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft::state_view::{MAX_LIMIT, StateQuery};
use weft::subnet_file::{SubnetEnv, parse_previous};
use weft_subnet::SubnetKey;
use weft_subnet::family::Net;
use weft_testkit::{check, text};

const KEYS: &[&str] = &[
    "FLANNEL_NETWORK",
    "FLANNEL_SUBNET",
    "FLANNEL_IPV6_NETWORK",
    "FLANNEL_IPV6_SUBNET",
    "FLANNEL_MTU",
    "FLANNEL_IPMASQ",
];

/// A network of the family, with a prefix up to the longest subnet flannel allows
/// (/30, /126), so that the rendered first host address stays inside it.
fn net(v6: bool) -> impl Strategy<Value = Net> {
    let longest: u8 = if v6 { 126 } else { 30 };
    (any::<u128>(), 0..=longest).prop_map(move |(bits, prefix)| {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        };
        Net::new_masked(ip, prefix)
    })
}

fn env() -> impl Strategy<Value = SubnetEnv> {
    (
        prop::option::of((net(false), net(false))),
        prop::option::of((net(true), net(true))),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|(v4, v6, mtu, ip_masq)| SubnetEnv {
            network: v4.map(|(n, _)| n),
            subnet: v4.map(|(_, s)| s),
            ipv6_network: v6.map(|(n, _)| n),
            ipv6_subnet: v6.map(|(_, s)| s),
            mtu,
            ip_masq,
        })
}

/// A line of subnet.env as people and tools write it: a known key (any case) or any
/// text, `=`, any value, with the dotenv extras weftd tolerates (`export `, quotes,
/// spaces, comments).
fn line() -> BoxedStrategy<String> {
    let key = prop_oneof![4 => select(KEYS).prop_map(str::to_string), 1 => text::any_case(KEYS), 1 => text::string()];
    let value = prop_oneof![text::address(), text::string()];
    let decoration = select(&["", "export ", " ", "# ", "\t"][..]);
    let quote = select(&["", "\"", "'"][..]);
    (
        decoration,
        key,
        select(&["=", " = ", "", "=="][..]),
        quote.clone(),
        value,
        quote,
    )
        .prop_map(|(d, k, eq, q1, v, q2)| format!("{d}{k}{eq}{q1}{v}{q2}"))
        .boxed()
}

#[test]
fn prop_previous_subnet_env_reads_or_not() {
    let files = prop_oneof![
        text::string(),
        prop::collection::vec(line(), 0..8).prop_map(|lines| lines.join("\n")),
        text::near(env().prop_map(|e| e.render()).boxed()),
    ];
    let tally = check(files, |text| {
        let Some(key) = parse_previous(&text) else {
            return Ok("none");
        };
        // Whatever was read is a subnet key weftd can write and read back.
        let again = SubnetKey::parse(&key.to_string());
        prop_assert_eq!(again, Ok(key));
        Ok("subnet")
    });
    tally.assert_seen(&["subnet", "none"]);
}

#[test]
fn prop_rendered_subnet_env_reads_back() {
    check(env(), |env| {
        let expected = SubnetKey {
            ipv4: env.subnet,
            ipv6: env.ipv6_subnet,
        };
        let read = parse_previous(&env.render());
        let has_subnet = expected.ipv4.is_some() || expected.ipv6.is_some();
        prop_assert_eq!(read, has_subnet.then_some(expected));
        Ok("ok")
    });
}

/// A `/debug/state` query: known and unknown keys (any case), values of every kind,
/// joined by `&` (or not), or any text.
fn state_query() -> BoxedStrategy<String> {
    const QUERY_KEYS: &[&str] = &["offset", "limit", "only"];
    let key = prop_oneof![
        4 => select(QUERY_KEYS).prop_map(str::to_string),
        1 => text::any_case(QUERY_KEYS),
        1 => text::string()
    ];
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        select(
            &[
                "problems",
                "all",
                "",
                "-1",
                "1e3",
                "99999999999999999999999"
            ][..]
        )
        .prop_map(str::to_string),
        text::string(),
    ];
    let pair =
        (key, select(&["=", "", "=="][..]), value).prop_map(|(k, eq, v)| format!("{k}{eq}{v}"));
    prop_oneof![
        4 => prop::collection::vec(pair, 0..5).prop_map(|pairs| pairs.join("&")),
        1 => text::string(),
    ]
    .boxed()
}

#[test]
fn prop_state_query_parses_within_bounds_or_refuses() {
    let tally = check(
        prop::option::of(state_query()),
        |query| match StateQuery::parse(query.as_deref()) {
            Ok(q) => {
                prop_assert!((1..=MAX_LIMIT).contains(&q.limit), "limit {}", q.limit);
                Ok("ok")
            }
            Err(refused) => {
                prop_assert!(!refused.to_string().is_empty());
                Ok("err")
            }
        },
    );
    tally.assert_seen(&["ok", "err"]);
}
