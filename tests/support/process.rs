//! What the kernel says of a running process (its memory and CPU time, from /proc), and
//! the test process's own fd limit.

/// A field of /proc/<pid>/status in kB (e.g. `"VmRSS:"`, `"VmHWM:"`).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line in /proc/{pid}/status"))
}

/// utime and stime of a process (in its own code, in the kernel for it), all its threads,
/// dead ones included, in clock ticks.
pub fn cpu_ticks_split(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may contain spaces): utime is field 14 and
    // stime 15.
    let after_comm = &stat[stat.rfind(')').expect("comm") + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    (
        fields[11].parse::<u64>().expect("utime"),
        fields[12].parse::<u64>().expect("stime"),
    )
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let (user, kernel) = cpu_ticks_split(pid);
    user + kernel
}

pub fn clock_ticks_per_second() -> f64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output();
    output
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Raises this process's soft fd limit to the hard one (a flood holds thousands of
/// sockets).
pub fn raise_own_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// CPU time of a process's live threads in nanoseconds (/proc/<pid>/task/*/schedstat):
/// far finer than the tick counters, for sub-millisecond costs.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
