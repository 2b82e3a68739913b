//! systemd's readiness protocol, end to end: the real weftd under a `NOTIFY_SOCKET` the
//! test listens on (a datagram socket, as systemd's), in a namespace node against a real
//! etcd. A `Type=notify` unit hears `STATUS=` lines saying what weftd waits for, then
//! `READY=1` once `/readyz` answers 200, and `STOPPING=1` on SIGTERM. The unit file
//! shipped in deploy/ is checked against weftd's own flags.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use support::cluster::{CONFIG_KEY, Cluster};
use weft::cli::Cli;

const ALLOC_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}"#;
const LIMIT: Duration = Duration::from_secs(30);

/// The next datagram within what is left of `deadline`, as text.
fn next_message(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

#[test]
fn a_notify_unit_hears_what_weftd_waits_for_then_ready_with_readyz_then_stopping() {
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, ALLOC_CONFIG]);
    let path = c.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let notify = path.display().to_string();
    c.start_with_env(0, &[], &[("NOTIFY_SOCKET", &notify)]);

    let deadline = Instant::now() + LIMIT;
    let mut statuses = Vec::new();
    let ready_message = loop {
        let Some(message) = next_message(&socket, deadline) else {
            panic!(
                "no READY=1 within {LIMIT:?}; heard {statuses:?}; log:\n{}",
                c.nodes[0].log()
            );
        };
        if message.lines().any(|l| l == "READY=1") {
            break message;
        }
        statuses.extend(
            message
                .lines()
                .filter_map(|l| l.strip_prefix("STATUS="))
                .map(String::from),
        );
    };
    // Said at the moment /readyz turns ready: it answers 200 already.
    assert_eq!(c.readyz(0).0, 200, "READY=1 before /readyz was ready");
    assert!(
        ready_message.lines().any(|l| l == "STATUS=ready"),
        "{ready_message}"
    );
    // Before that, what it was waiting for, in words (the readiness reasons).
    assert!(
        statuses.iter().any(|s| s == "no subnet lease yet"),
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|s| !s.contains('\n')), "{statuses:?}");

    c.nodes[0].terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopping = None;
    while let Some(message) = next_message(&socket, deadline) {
        if message.lines().any(|l| l == "STOPPING=1") {
            stopping = Some(message);
            break;
        }
    }
    let stopping = stopping.expect("STOPPING=1 after SIGTERM");
    assert!(
        stopping.contains("STATUS=shutting down; the datapath is left in place"),
        "{stopping}"
    );
}

#[test]
fn without_notify_socket_nothing_is_sent_and_weftd_runs_as_before() {
    let mut c = Cluster::new(1, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, ALLOC_CONFIG]);
    c.start(0, &[]);
    c.nodes[0].wait_log("weftd is ready", LIMIT);
    assert!(
        !c.nodes[0].log().contains("cannot notify systemd"),
        "{}",
        c.nodes[0].log()
    );
}

/// The unit in deploy/ is a notify unit whose command line weftd accepts.
#[test]
fn the_shipped_unit_is_type_notify_and_its_flags_are_weftds() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/weftd.service"),
    )
    .expect("deploy/weftd.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("NotifyAccess"), "main");
    let exec = value("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], "/usr/local/bin/weftd");
    let parsed =
        Cli::try_parse_flannel_style(args.iter().map(|a| std::ffi::OsString::from(*a)).collect());
    assert!(parsed.is_ok(), "{exec}: {:?}", parsed.err());
}
