//! CPU time of processes from /proc, shared by the load clients (`#[path]` modules).

use std::time::Duration;

/// CPU time (user + system, all threads) a process has used so far, from /proc; zero when it
/// is gone. `pid` may be `self`.
pub fn cpu_of(pid: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

/// The pids of the running processes whose command name (`/proc/PID/comm`) is `comm`.
#[allow(dead_code)] // used by the events client, not by the ingest client
pub fn pids_named(comm: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
        let c = std::fs::read_to_string(format!("/proc/{name}/comm")).ok()?;
        (c.trim() == comm).then_some(name)
    })
    .collect()
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}
