//! `weft`: weft's CNI plugin. It does the job of flannel's CNI plugin and reads the same
//! network configuration, so a conflist can name it `weft` or, installed under that name,
//! `flannel`. It reads the subnet.env weftd writes, builds the same delegate config as
//! flannel's plugin (a `bridge` with `host-local` IPAM by default), saves it for DEL, and
//! runs the delegate.
//!
//! Modules, one job each: `cni` (one invocation: checks, versions, the answer), `protocol`
//! (the CNI values `cni` and `plugin` share: command, environment, errors), `netconf`
//! (input config), `subnet_env` (subnet.env), `delegate` (the delegate config, pure),
//! `gojson` and `cidr` (Go's encoding and address printing, so the bytes match flannel's),
//! `store` (saved configs), `exec` (running the delegate), `plugin` (the commands).
//!
//! # Where weft deliberately differs from flannel's plugin
//!
//! - **A missing subnet.env is waited for**, up to `subnetFileWaitSeconds` (default 5 s,
//!   at most 60, polled every 100 ms), then reported with code 11 (try again later) and a
//!   message saying weftd has not leased a subnet on this node yet and where to look (its
//!   log, its `/readyz`). flannel fails at once with a bare "no such file or directory".
//!   A subnet.env that exists but lacks keys keeps flannel's message.
//! - **Error codes**: flannel reports every failure of its own as 999. weft uses the spec's
//!   codes: 7 for configuration errors (including flannel's `delegate` checks, same text),
//!   11 for the missing subnet.env, 5 for I/O errors, 999 for the rest.
//! - **The delegate's result is printed as the delegate printed it**, not decoded and
//!   re-encoded; a delegate's error object is relayed as is, with its exit status.
//! - **A bad `delegate` is refused before waiting for subnet.env**, so the error is about
//!   the config rather than the file.
//! - **DEL keeps the saved config when the delegate's DEL fails**, so the runtime's retry can
//!   still release the address (flannel removes it whatever happens). A saved config that
//!   is unreadable is skipped and one that is unusable is removed; both are success, as in
//!   flannel, which however leaves an unusable file behind forever.
//! - **The saved config is written atomically** (see `store`).
//! - **`subnetFile: ""` or `dataDir: ""` mean the default**; flannel opens `""` or writes
//!   into the working directory.
//! - **A route in `ipam.routes` without `dst` is refused** (flannel writes `"<nil>"`).
//! - **CHECK validates the configuration**; flannel's CHECK does nothing at all. Neither
//!   passes CHECK on to the delegate (see `plugin::check`).
//! - **Spec 1.1.0 (GC, STATUS) is not offered**: flannel's library lists 1.1.0 but
//!   implements neither command; weft lists up to 1.0.0.
//! - **Error texts for malformed JSON** come from serde, not from Go.
//!
//! The binary has one more job, outside the CNI protocol: `weft install` (module
//! `install`) copies itself and a conflist onto the node, for the chart's init containers.
//! It runs only when `CNI_COMMAND` is unset and the first argument is exactly `install`,
//! so a runtime can never trigger it.

mod cidr;
mod cni;
mod delegate;
mod exec;
mod gojson;
mod install;
mod netconf;
mod plugin;
#[cfg(test)]
mod proptests;
mod protocol;
mod store;
mod subnet_env;

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if install::requested(&args, std::env::var_os("CNI_COMMAND")) {
        return ExitCode::from(install::main(&args[2..]));
    }
    let response = cni::run(
        &|name| std::env::var(name).ok(),
        &mut std::io::stdin().lock(),
    );
    // Nothing useful can be done if stdout or stderr is gone; the status still tells.
    let _ = std::io::stderr().write_all(&response.stderr);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(&response.stdout)
        .and_then(|()| stdout.flush());
    ExitCode::from(response.status)
}
