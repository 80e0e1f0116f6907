//! What the load generator reads from `/proc` (Linux): the server's resident memory and
//! storage reads, the process that listens on a local port, and this process's open-file
//! limit.

use std::fs;

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, &["VmRSS"]).pop()?
}

/// Fields of `/proc/<pid>/status` given in KiB (`VmRSS`, `RssAnon`, `RssFile`, ...), in the
/// order asked; `None` for a field that is missing (or for all, if the process is gone).
pub fn status_kib(pid: u32, keys: &[&str]) -> Vec<Option<u64>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    keys.iter()
        .map(|key| {
            let line = status
                .lines()
                .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
            line.split_ascii_whitespace().nth(1)?.parse().ok()
        })
        .collect()
}

/// `read_bytes` of `/proc/<pid>/io`: what the process made the kernel fetch from storage
/// (page-cache hits excluded; O_DIRECT reads included). `None` when unreadable.
pub fn io_read_bytes(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// The process holding a socket that listens on TCP `port` (any local address), found by
/// the socket's inode in `/proc/net/tcp{,6}` and then among every process's open files.
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            // local_address is `ADDR:PORT` in hex; state 0A is LISTEN; field 9 the inode.
            let listening = f.get(3) == Some(&"0A");
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if listening && local_port == Some(port) {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (capped by the hard
/// limit); returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> Result<u64, String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit: {e}"))?;
    if soft >= want {
        return Ok(soft);
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard).map_err(|e| format!("setrlimit: {e}"))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss_and_finds_a_listener() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        let parts = status_kib(std::process::id(), &["RssAnon", "NoSuchField"]);
        assert!(parts[0].unwrap() > 0);
        assert_eq!(parts[1], None);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        assert!(raise_nofile(64).unwrap() >= 64);
    }
}
