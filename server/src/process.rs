//! Process-wide settings for long-running shards, applied once by a binary's `main`.

/// Makes glibc's malloc give large freed buffers back to the OS when they are freed. By
/// default it raises its mmap threshold to the size of the largest buffer freed (up to 32 MiB).
/// After that, checkpoint-sized buffers (the frozen rows' table, RocksDB's batch and memtable
/// arenas) come from the heap, and their pages are kept once freed. A shard's RSS then drifts
/// tens to hundreds of MiB above its live memory. A fixed threshold of 128 KiB keeps it close.
/// Rows themselves (a few hundred bytes each) are unaffected.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc parameters and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Makes writes past the file-size limit (`RLIMIT_FSIZE`) fail with `EFBIG` instead of killing
/// the process with `SIGXFSZ`. A shard that cannot write its log then refuses pushes with a
/// clear error and keeps serving reads, as it does on a full disk.
#[allow(unsafe_code)]
pub fn ignore_file_size_signal() {
    #[cfg(target_os = "linux")]
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
