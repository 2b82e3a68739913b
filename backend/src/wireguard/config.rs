//! The `Backend` section for wireguard, with flannel's keys and defaults: `ListenPort`
//! (51820), `ListenPortV6` (51821), `MTU` (the external interface's), `PSK` (optional,
//! base64), `PersistentKeepaliveInterval` (seconds, 0 = off) and `Mode`.

use crate::backend_field::{FieldError, Fields};
use crate::tunnel::key::SecretKey;
use serde_json::Value;
use weft_lease::text::describe;

/// How IPv4 and IPv6 peers map to devices (flannel's `Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Two devices: `flannel-wg` for IPv4, `flannel-wg-v6` for IPv6 (the default).
    Separate,
    /// One device for both families, each peer's endpoint chosen by address scope.
    Auto,
    /// One device, endpoints over IPv4.
    Ipv4,
    /// One device, endpoints over IPv6.
    Ipv6,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Separate => "separate",
            Mode::Auto => "auto",
            Mode::Ipv4 => "ipv4",
            Mode::Ipv6 => "ipv6",
        }
    }
}

/// The wireguard backend's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// Underlay MTU to assume; `None`: the external interface's.
    pub mtu: Option<u32>,
    pub psk: Option<SecretKey>,
    /// Seconds; 0: off.
    pub keepalive: u16,
    pub mode: Mode,
}

impl Default for WireguardConfig {
    fn default() -> WireguardConfig {
        WireguardConfig {
            listen_port: 51820,
            listen_port_v6: 51821,
            mtu: None,
            psk: None,
            keepalive: 0,
            mode: Mode::Separate,
        }
    }
}

/// A wireguard `Backend` field that is not valid; the PSK's value is never shown.
pub type WireguardConfigError = FieldError;

const FIELDS: Fields = Fields {
    backend: "wireguard",
};

impl WireguardConfig {
    /// Parses the `Backend` object; keys are case-insensitive, as flannel's JSON decoding.
    pub fn parse(backend: &Value) -> Result<WireguardConfig, WireguardConfigError> {
        let mut config = WireguardConfig::default();
        let Value::Object(object) = backend else {
            return Ok(config);
        };
        for (key, value) in object {
            let uint = |field, max| FIELDS.uint(field, value, max);
            match key.to_ascii_lowercase().as_str() {
                "listenport" => {
                    config.listen_port = port("ListenPort", uint("ListenPort", 65_535)?)?
                }
                "listenportv6" => {
                    config.listen_port_v6 = port("ListenPortV6", uint("ListenPortV6", 65_535)?)?;
                }
                "mtu" => config.mtu = Some(uint("MTU", 65_535)? as u32).filter(|m| *m > 0),
                "psk" => config.psk = psk(value)?,
                "persistentkeepaliveinterval" => {
                    config.keepalive = uint("PersistentKeepaliveInterval", 65_535)? as u16;
                }
                "mode" => config.mode = mode(value)?,
                _ => {}
            }
        }
        Ok(config)
    }
}

fn port(field: &'static str, value: u64) -> Result<u16, WireguardConfigError> {
    if value == 0 {
        return Err(FIELDS.error(field, "a UDP port from 1 to 65535", "0".into()));
    }
    Ok(value as u16)
}

fn psk(value: &Value) -> Result<Option<SecretKey>, WireguardConfigError> {
    match value {
        Value::String(text) if text.is_empty() => Ok(None),
        Value::String(text) => SecretKey::parse(text).map(Some).map_err(|reason| {
            FIELDS.error(
                "PSK",
                "a 32-byte key in base64, as `wg genpsk` prints it",
                format!("a value that is not one ({reason}; the value is not shown)"),
            )
        }),
        // Not echoed either: it may still be a secret, mistyped.
        _ => Err(FIELDS.error(
            "PSK",
            "a string",
            "another JSON type (the value is not shown)".into(),
        )),
    }
}

fn mode(value: &Value) -> Result<Mode, WireguardConfigError> {
    let error = |got: String| FIELDS.error("Mode", "one of separate, auto, ipv4, ipv6", got);
    let Value::String(text) = value else {
        return Err(error(describe(value)));
    };
    match text.as_str() {
        "separate" | "" => Ok(Mode::Separate),
        "auto" => Ok(Mode::Auto),
        "ipv4" => Ok(Mode::Ipv4),
        "ipv6" => Ok(Mode::Ipv6),
        _ => Err(error(format!("{text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_flannels() {
        let config = WireguardConfig::parse(&json!({"Type": "wireguard"})).unwrap();
        assert_eq!(config, WireguardConfig::default());
        assert_eq!((config.listen_port, config.listen_port_v6), (51820, 51821));
        assert_eq!(config.mode, Mode::Separate);
    }

    #[test]
    fn every_key_is_read_case_insensitively() {
        let psk = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
        let config = WireguardConfig::parse(&json!({
            "listenPort": 51000, "ListenPortV6": 51001, "mtu": 1400, "PSK": psk,
            "PersistentKeepaliveInterval": 25, "Mode": "auto"
        }))
        .unwrap();
        assert_eq!(config.listen_port, 51000);
        assert_eq!(config.listen_port_v6, 51001);
        assert_eq!(config.mtu, Some(1400));
        assert_eq!(config.psk, Some(SecretKey::from_bytes([2; 32])));
        assert_eq!(config.keepalive, 25);
        assert_eq!(config.mode, Mode::Auto);
    }

    #[test]
    fn invalid_values_are_named_and_a_psk_never_shown() {
        let cases = [
            (
                json!({"ListenPort": 70000}),
                "invalid wireguard Backend field ListenPort: expected a non-negative integer in range, got 70000",
            ),
            (
                json!({"ListenPort": 0}),
                "invalid wireguard Backend field ListenPort: expected a UDP port from 1 to 65535, got 0",
            ),
            (
                json!({"Mode": "both"}),
                "invalid wireguard Backend field Mode: expected one of separate, auto, ipv4, ipv6, got \"both\"",
            ),
            (
                json!({"PSK": "hunter2-secret"}),
                "invalid wireguard Backend field PSK: expected a 32-byte key in base64, as `wg genpsk` \
                 prints it, got a value that is not one (it is not base64; the value is not shown)",
            ),
            (
                json!({"PersistentKeepaliveInterval": "25s"}),
                "invalid wireguard Backend field PersistentKeepaliveInterval: expected a number, got \"25s\"",
            ),
        ];
        for (input, message) in cases {
            let error = WireguardConfig::parse(&input).unwrap_err().to_string();
            assert_eq!(error, message, "{input}");
            assert!(!error.contains("hunter2"));
        }
    }
}
