//! weftd, the node daemon: wiring of the subnet manager, the backend, subnet.env and the
//! health server. Each module has one job; `run` holds the startup order (etcd mode in
//! `run`, Kubernetes mode in `kube_mode`).

pub mod cli;
pub mod datapath;
pub mod health;
pub mod iface;
pub mod kube_mode;
pub mod log_limit;
pub mod logging;
pub mod node_state;
pub mod run;
pub mod shutdown;
pub mod subnet_file;

use std::ffi::OsString;
use std::process::ExitCode;

/// Parses the command line (flannel's flags, `-flag` or `--flag`, and `FLANNELD_*`), sets
/// up logging and runs the daemon until SIGTERM/SIGINT.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let cli = cli::Cli::parse_flannel_style(args);
    logging::init(cli.v);
    // One thread: weftd waits on etcd and netlink, it does not compute; a single thread
    // keeps its memory small and its behaviour easy to reason about.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(()) => {
            tracing::info!("Exiting cleanly...");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
