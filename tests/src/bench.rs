//! Small helpers the bench binaries and tests share: their flags, what `/proc` says of a
//! process, and a child's peak memory.

use std::process::{Command, Stdio};

/// The value after `--name` on the command line, if any.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A `/proc/<pid>/status` field in KiB (`"VmRSS:"`, `"VmHWM:"`), if the process is there.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `cmd` to its end; its exit status, peak resident set size in bytes and output (stdout,
/// then stderr). The peak is the child's `VmHWM`, read every 10 ms while it runs: `wait4`'s
/// `ru_maxrss` would count the pages of the (large, multi-threaded) parent it was forked
/// from, which Linux keeps in the figure across `exec`.
pub fn run_measured(cmd: &mut Command) -> (std::process::ExitStatus, u64, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let reader = |s: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut b = String::new();
            if let Some(mut s) = s {
                let _ = s.read_to_string(&mut b);
            }
            b
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status, peak_kib * 1024, text)
}
