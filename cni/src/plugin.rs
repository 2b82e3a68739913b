//! The commands: ADD, DEL and CHECK, once `cni` has done the common checks. Needs only
//! `protocol` from the CNI side, never `cni` itself (which calls in here).
//!
//! - ADD: netconf → (wait for) subnet.env → delegate config → saved under
//!   `dataDir/<containerID>` → delegate's ADD → its result printed as it gave it.
//!   The config is saved *before* the delegate runs: if ADD fails half-way, the runtime's
//!   DEL still finds what to undo.
//! - DEL: the saved config → delegate's DEL → the saved file removed. Nothing saved, or
//!   nothing usable saved, means there is nothing weft can undo: success.
//! - CHECK: the configuration is validated; the node is not inspected (see below).

use crate::netconf::{Fields, NetConf};
use crate::protocol::{CmdArgs, CniError, Code, Failure};
use crate::store::Store;
use crate::{delegate, exec, subnet_env};

pub fn add(args: &CmdArgs, fields: &Fields) -> Result<Vec<u8>, Failure> {
    let conf = NetConf::from_fields(fields)?;
    // Refuse a bad delegate before possibly waiting for subnet.env.
    delegate::validate(&conf)?;
    let env = subnet_env::load(&conf.subnet_file, conf.subnet_file_wait)?;
    let delegate = delegate::build(&conf, &env)?;
    // flannel logs the delegate config to stderr too; runtimes keep it for debugging.
    eprintln!(
        "weft: delegate config for {}: {}",
        args.container_id, delegate.config
    );

    let store = Store::new(&conf.data_dir);
    store
        .save(&args.container_id, delegate.config.as_bytes())
        .map_err(|e| {
            let path = store.path(&args.container_id);
            let reason = subnet_env::go_io_reason(&e);
            CniError::new(
                Code::IoFailure,
                format!(
                    "failed to save delegate config to {}: {reason}",
                    path.display()
                ),
            )
        })?;

    let in_add = |e: exec::ExecError| match Failure::from(e) {
        Failure::Error(mut e) => {
            e.msg = format!("failed to delegate add: {}", e.msg);
            Failure::Error(e)
        }
        relayed => relayed,
    };
    let plugin = exec::find_in_path(&delegate.plugin, &args.cni_path).map_err(in_add)?;
    let result = exec::run(&plugin, "ADD", delegate.config.as_bytes()).map_err(in_add)?;
    // The runtime parses what we print: make sure the delegate gave a result.
    if !serde_json::from_slice::<serde_json::Value>(&result).is_ok_and(|v| v.is_object()) {
        let msg = format!(
            "failed to delegate add: {} printed no result object: {:?}",
            delegate.plugin,
            String::from_utf8_lossy(&result)
        );
        return Err(CniError::new(Code::Generic, msg).into());
    }
    Ok(result)
}

pub fn del(args: &CmdArgs, fields: &Fields) -> Result<Vec<u8>, Failure> {
    let conf = NetConf::from_fields(fields)?;
    let store = Store::new(&conf.data_dir);
    let path = store.path(&args.container_id);
    let saved = match store.load(&args.container_id) {
        Ok(Some(saved)) => saved,
        // Never added here, or already deleted: DEL must be idempotent.
        Ok(None) => return Ok(Vec::new()),
        Err(e) => {
            eprintln!(
                "weft: cannot read {}, nothing to delete: {e}",
                path.display()
            );
            return Ok(Vec::new());
        }
    };
    let Some(plugin) = saved_plugin(&saved) else {
        // No delegate can be called with it; the interface goes with the pod's namespace.
        // Unlike flannel, remove the useless file so it does not stay forever.
        eprintln!(
            "weft: {} is not a delegate config, removing it: {:?}",
            path.display(),
            String::from_utf8_lossy(&saved)
        );
        let _ = store.remove(&args.container_id);
        return Ok(Vec::new());
    };
    let plugin = exec::find_in_path(&plugin, &args.cni_path)?;
    // On failure the file stays, so that the runtime's retry can still clean up.
    exec::run(&plugin, "DEL", &saved)?;
    if let Err(e) = store.remove(&args.container_id) {
        eprintln!("weft: deleted, but cannot remove {}: {e}", path.display());
    }
    Ok(Vec::new())
}

/// flannel's CHECK does nothing. weft validates the configuration, but does not pass CHECK
/// on to the delegate: kubelet never sends CHECK, and the bridge plugin Debian ships
/// (1.1.1) fails CHECK for the routes flannel's config gives it (no `gw`).
pub fn check(_args: &CmdArgs, fields: &Fields) -> Result<Vec<u8>, Failure> {
    let conf = NetConf::from_fields(fields)?;
    delegate::validate(&conf)?;
    Ok(Vec::new())
}

/// The delegate a saved config is for: its `type` (matched as Go would, case-insensitively).
fn saved_plugin(saved: &[u8]) -> Option<String> {
    let serde_json::Value::Object(map) = serde_json::from_slice(saved).ok()? else {
        return None;
    };
    let plugin = map
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("type"))
        .map(|(_, v)| v)
        .next_back()?;
    plugin.as_str().filter(|p| !p.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_plugin_is_the_type() {
        assert_eq!(
            saved_plugin(br#"{"type":"bridge","name":"cbr0"}"#).as_deref(),
            Some("bridge")
        );
        assert_eq!(
            saved_plugin(br#"{"Type":"ipvlan"}"#).as_deref(),
            Some("ipvlan")
        );
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"type":1}"#,
            br#"{"type":""}"#,
            br#"{"name":"x"}"#,
        ] {
            assert_eq!(saved_plugin(bad), None);
        }
    }
}
