//! Progress bars per pipeline stage (indicatif), UNet evaluations per second, and one-line notes.

use std::cell::RefCell;

use edict_pipeline::pipeline::{Observer, Progress};
use indicatif::{ProgressBar, ProgressStyle};

pub struct Bars {
    quiet: bool,
    current: RefCell<Option<(&'static str, ProgressBar)>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            current: RefCell::new(None),
        }
    }

    /// A status line on stderr (silenced by --quiet).
    pub fn note(&self, msg: &str) {
        if !self.quiet {
            self.finish();
            eprintln!("{msg}");
        }
    }

    /// Warnings are shown even with --quiet: they say the output may not be what was asked.
    pub fn warn(&self, msg: &str) {
        self.finish();
        eprintln!("warning: {msg}");
    }

    fn finish(&self) {
        if let Some((_, bar)) = self.current.borrow_mut().take() {
            bar.finish();
        }
    }

    pub fn observer(&self) -> BarObserver<'_> {
        BarObserver { bars: self }
    }
}

pub struct BarObserver<'a> {
    bars: &'a Bars,
}

impl Observer for BarObserver<'_> {
    fn progress(&mut self, p: Progress) {
        if self.bars.quiet {
            return;
        }
        let mut cur = self.bars.current.borrow_mut();
        if cur.as_ref().is_none_or(|(stage, _)| *stage != p.stage) {
            if let Some((_, old)) = cur.take() {
                old.finish();
            }
            let bar = ProgressBar::new(p.total as u64).with_style(
                ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} UNet calls, {per_sec}, eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(p.stage);
            *cur = Some((p.stage, bar));
        }
        if let Some((_, bar)) = cur.as_ref() {
            bar.set_position(p.done as u64);
        }
    }
}
