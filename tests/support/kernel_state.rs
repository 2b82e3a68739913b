//! The kernel state weft programs, read back with `ip -j` and `bridge -j` inside a node's
//! namespace: routes, FDB entries and neighbours on flannel.1.

use super::netns::Netns;
use serde_json::Value;

pub fn json(ns: &Netns, args: &[&str]) -> Value {
    let output = ns.exec(args);
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// The rows of an `ip -j`/`bridge -j` answer (none if the command failed).
pub fn rows(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// (destination, gateway, onlink) of routes on flannel.1.
pub fn peer_routes(ns: &Netns) -> Vec<(String, String, bool)> {
    let routes = json(ns, &["ip", "-j", "route", "show", "dev", "flannel.1"]);
    let mut out: Vec<_> = rows(&routes)
        .iter()
        .filter(|r| r.get("gateway").is_some())
        .map(|r| {
            let onlink = r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"));
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
                onlink,
            )
        })
        .collect();
    out.sort();
    out
}

pub fn fdb_entries(ns: &Netns) -> Vec<(String, String)> {
    let entries = json(ns, &["bridge", "-j", "fdb", "show", "dev", "flannel.1"]);
    let mut out: Vec<_> = rows(&entries)
        .iter()
        .filter(|e| e.get("dst").is_some())
        .map(|e| {
            (
                e["mac"].as_str().unwrap_or("").to_string(),
                e["dst"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn neighbours(ns: &Netns) -> Vec<(String, String)> {
    let entries = json(
        ns,
        &[
            "ip",
            "-j",
            "neigh",
            "show",
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ],
    );
    let mut out: Vec<_> = rows(&entries)
        .iter()
        .map(|e| {
            (
                e["dst"].as_str().unwrap_or("").to_string(),
                e["lladdr"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}
