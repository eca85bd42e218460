//! Progress display shared by the training commands: a bar on stderr when it is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Moves `bar` (if any) to `done` of `total`: the `on_progress` of the exports.
pub(crate) fn show(bar: &Option<ProgressBar>, done: u64, total: u64) {
    if let Some(b) = bar {
        b.set_length(total);
        b.set_position(done);
    }
}

/// A progress bar on stderr when it is a terminal (and not `--quiet`).
pub(crate) fn progress_bar(quiet: bool, len: u64) -> Option<ProgressBar> {
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(len);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {percent:>3}% {msg} (eta {eta})",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        b
    })
}
