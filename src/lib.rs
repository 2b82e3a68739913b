//! weftd, the node daemon: wiring of the subnet manager, the backend, subnet.env and the
//! health server. Each module has one job: `daemon` checks flags, serves health and picks
//! the mode; `etcd_mode` and `kube_mode` each hold their datastore's startup order and
//! event source (neither imports the other); `bring_up` chooses the interface and builds
//! the datapath; `node_state` and `triggers` are what both modes share once a subnet is
//! held.

pub mod bring_up;
pub mod cli;
pub mod daemon;
pub mod etcd_mode;
pub mod health;
pub mod host_check;
pub mod iface;
pub mod kube_mode;
pub mod log_limit;
pub mod logging;
pub mod metrics;
pub mod node_loop;
pub mod node_state;
pub mod own_lease;
pub mod readiness;
pub mod settings;
pub mod shutdown;
pub mod state_channel;
pub mod state_view;
pub mod state_wire;
pub mod status;
pub mod status_table;
pub mod subnet_file;
pub mod systemd;
pub mod traffic_rules;
pub mod triggers;

use std::ffi::OsString;
use std::process::ExitCode;

/// Parses the command line (flannel's flags, `-flag` or `--flag`, and `FLANNELD_*`), sets
/// up logging and runs the daemon until SIGTERM/SIGINT; or, as `weftd status ...`, prints
/// a running weftd's state (see `status`).
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    // `weftd status` is a client of a running weftd; every other first argument is a flag.
    if args.get(1).is_some_and(|a| a == "status") {
        return status::run(args);
    }
    let cli = cli::Cli::parse_flannel_style(args);
    logging::init(cli.v, cli.log_format);
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
    match runtime.block_on(daemon::run(cli)) {
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
