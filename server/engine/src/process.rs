//! Process-wide memory and signal settings for shards.

/// Gives the pages of freed heap memory back to the OS (glibc's `malloc_trim`). glibc keeps
/// freed buffers larger than its mmap threshold in the heap once that threshold has risen to
/// their size, so after a checkpoint its buffers (the frozen rows' table, RocksDB's batch) stay
/// resident: a shard's RSS drifted tens to hundreds of MiB above its live memory. `Store` calls
/// this after every checkpoint. (Fixing the mmap threshold at 128 KiB did the same job, but
/// every large request buffer then came from a fresh mapping: the gRPC word2vec run trained
/// about 25% slower.)
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
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
