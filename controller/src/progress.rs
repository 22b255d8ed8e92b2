//! Progress bars for fleet-wide work (`fleet ping`, the runbooks' questions to every
//! agent), drawn on standard error, and only for a person at a terminal: never when
//! standard output or standard error is not a terminal, and never with `--output json`,
//! so that piped and machine-read output never carries a bar or an escape sequence.

use std::io::IsTerminal;

use crate::output::OutputFormat;

/// Whether this run may draw progress bars: a table for a person, both standard streams
/// on a terminal.
pub fn wanted(output: OutputFormat) -> bool {
    output == OutputFormat::Table && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A bar counting hosts done out of a total, or nothing at all when bars are not wanted.
pub struct HostProgress(Option<indicatif::ProgressBar>);

impl HostProgress {
    /// A bar for `total` hosts with `what` after the count ("hosts answered"); nothing
    /// when `on` is false or there are no hosts.
    pub fn new(on: bool, total: usize, what: &'static str) -> HostProgress {
        if !on || total == 0 {
            return HostProgress(None);
        }
        let bar = indicatif::ProgressBar::with_draw_target(Some(total as u64), indicatif::ProgressDrawTarget::stderr());
        // The template is fixed text; should it ever be refused, the default style stands.
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(what);
        HostProgress(Some(bar))
    }

    /// One more host done.
    pub fn inc(&self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }
}

impl Drop for HostProgress {
    /// The bar leaves no trace: the results printed after it start on a clean line.
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_never_wants_a_bar() {
        assert!(!wanted(OutputFormat::Json));
    }

    #[test]
    fn a_bar_that_is_not_wanted_is_nothing() {
        let p = HostProgress::new(false, 10, "hosts answered");
        assert!(p.0.is_none());
        p.inc();
        assert!(HostProgress::new(true, 0, "hosts answered").0.is_none(), "no hosts, no bar");
    }
}
