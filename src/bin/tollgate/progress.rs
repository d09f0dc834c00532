//! Progress bars for work that takes more than a moment (bench, scaling, verify and compact of
//! a large file), drawn on standard error only when it is a terminal: never in CI logs, pipes or
//! files.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress is drawn at all.
fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar of `len` steps labelled `label` (hidden when standard error is not a terminal).
pub fn bar(len: u64, label: &str) -> ProgressBar {
    if !on_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("  {prefix:<24} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
    {
        pb.set_style(style.progress_chars("#>-"));
    }
    pb.set_prefix(label.to_string());
    pb
}

/// A spinner with the time elapsed, for work whose length is not known in advance (hidden when
/// standard error is not a terminal).
pub fn spinner(label: &str) -> ProgressBar {
    if !on_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(label.to_string());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}
