//! Progress bars per pipeline stage (indicatif), UNet evaluations per second, one-line notes,
//! and the live preview PNG (`--preview`).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use edict_pipeline::io::image_io;
use edict_pipeline::editor::{Observer, Progress, Rgb};
use indicatif::{ProgressBar, ProgressStyle};

pub struct Bars {
    quiet: bool,
    current: RefCell<Option<(&'static str, ProgressBar)>>,
    /// Warnings shown so far: each text once.
    warned: RefCell<Vec<String>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            current: RefCell::new(None),
            warned: RefCell::new(Vec::new()),
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
    /// A text already shown is not repeated.
    pub fn warn(&self, msg: &str) {
        if self.warned.borrow().iter().any(|w| w == msg) {
            return;
        }
        self.warned.borrow_mut().push(msg.to_string());
        self.finish();
        eprintln!("warning: {msg}");
    }

    fn finish(&self) {
        if let Some((_, bar)) = self.current.borrow_mut().take() {
            bar.finish();
        }
    }

    pub fn observer(&self) -> BarObserver<'_> {
        BarObserver { bars: self, preview: None }
    }
}

pub struct BarObserver<'a> {
    bars: &'a Bars,
    /// Where `--preview` rewrites the predicted image after every UNet call.
    preview: Option<PathBuf>,
}

impl BarObserver<'_> {
    pub fn preview_to(mut self, path: Option<&Path>) -> Self {
        self.preview = path.map(Path::to_path_buf);
        self
    }
}

/// Writes beside `path` and renames, so a viewer never reads a half-written image.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl Observer for BarObserver<'_> {
    fn warn(&mut self, message: &str) {
        self.bars.warn(message);
    }

    fn wants_preview(&self) -> bool {
        self.preview.is_some()
    }

    fn preview(&mut self, _p: Progress, image: &Rgb) {
        let Some(path) = &self.preview else { return };
        if let Err(e) = image_io::encode_png(image).map_err(|e| e.to_string()).and_then(|png| replace_file(path, &png).map_err(|e| e.to_string())) {
            self.bars.warn(&format!("preview {}: {e}; no more previews", path.display()));
            self.preview = None;
        }
    }

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
