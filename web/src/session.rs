//! A loaded model and the operations the page runs on it, mirroring the CLI's commands. Each
//! returns a Promise; progress goes to a JS callback `(stage, done, total)` once per UNet call
//! (and once each for the VAE's encode and decode), and `cancel()` stops at the next call.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use edict_pipeline::image_io::{self, Size};
use edict_pipeline::pipeline::{Editor, Inversion, Latent, Method, Observer, Progress, Rgb, Settings};
use edict_pipeline::{PipelineError, latents, metrics};
use edict_sd::SdError;
use edict_sd::model::Precision;
use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::Lost;

/// Sampling and image settings; a fresh one holds the CLI's defaults.
#[wasm_bindgen]
#[derive(Clone)]
pub struct Options {
    pub steps: usize,
    pub strength: f64,
    pub mix: f64,
    pub guidance: f64,
    #[wasm_bindgen(getter_with_clone)]
    pub negative: String,
    pub leapfrog: bool,
    #[wasm_bindgen(js_name = stepsOffset)]
    pub steps_offset: usize,
    /// 0 and 0: long side 512, sides cropped to multiples of 64 (the CLI's rule).
    pub width: u32,
    pub height: u32,
}

impl Default for Options {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            steps: s.steps,
            strength: s.strength,
            mix: s.mix,
            guidance: s.guidance,
            negative: s.negative,
            leapfrog: s.leapfrog,
            steps_offset: s.steps_offset,
            width: 0,
            height: 0,
        }
    }
}

#[wasm_bindgen]
impl Options {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Self {
        Self::default()
    }
}

impl Options {
    fn settings(&self) -> Settings {
        Settings {
            steps: self.steps,
            strength: self.strength,
            mix: self.mix,
            guidance: self.guidance,
            negative: self.negative.clone(),
            leapfrog: self.leapfrog,
            steps_offset: self.steps_offset,
        }
    }

    fn size(&self) -> Result<Size, PipelineError> {
        match (self.width, self.height) {
            (0, 0) => Ok(Size::Auto),
            (w, h) => Size::exact(w, h),
        }
    }
}

/// What an operation produced; empty byte arrays for what it does not make.
#[wasm_bindgen]
#[derive(Default)]
pub struct Output {
    png: Vec<u8>,
    input_png: Vec<u8>,
    latents: Vec<u8>,
    report: String,
    warnings: Vec<String>,
}

#[wasm_bindgen]
impl Output {
    /// The result image (edit, reconstruct).
    #[wasm_bindgen(getter)]
    pub fn png(&self) -> Vec<u8> {
        self.png.clone()
    }
    /// The "before" image: the photo as sized for the model, or the latents file's decoded latent.
    #[wasm_bindgen(getter, js_name = inputPng)]
    pub fn input_png(&self) -> Vec<u8> {
        self.input_png.clone()
    }
    /// The inverted pair as a latents file, the CLI's `--save-latents` format (invert, edit).
    #[wasm_bindgen(getter)]
    pub fn latents(&self) -> Vec<u8> {
        self.latents.clone()
    }
    /// JSON: what was done (image sizing, timings, reconstruction metrics).
    #[wasm_bindgen(getter)]
    pub fn report(&self) -> String {
        self.report.clone()
    }
    #[wasm_bindgen(getter)]
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }
}

#[wasm_bindgen]
pub struct Session {
    /// `None` while an operation holds the editor: a second concurrent call is refused.
    editor: Rc<RefCell<Option<Editor>>>,
    lost: Lost,
    cancel: Rc<Cell<bool>>,
    name: String,
    precision: Precision,
    load_warning: Option<String>,
}

impl Session {
    pub(crate) fn new(editor: Editor, lost: Lost, name: String, precision: Precision, load_warning: Option<String>) -> Self {
        Self {
            editor: Rc::new(RefCell::new(Some(editor))),
            lost,
            cancel: Rc::new(Cell::new(false)),
            name,
            precision,
            load_warning,
        }
    }

    /// Runs `op` on the editor as a Promise of an `Output`.
    fn run<F, Fut>(&self, on_progress: Function, op: F) -> Promise
    where
        F: FnOnce(Editor, Job) -> Fut + 'static,
        Fut: Future<Output = (Editor, Result<Output, PipelineError>)> + 'static,
    {
        let slot = self.editor.clone();
        let lost = self.lost.clone();
        let job = Job {
            on_progress,
            cancel: self.cancel.clone(),
            model: self.name.clone(),
        };
        future_to_promise(async move {
            let editor = slot
                .borrow_mut()
                .take()
                .ok_or_else(|| JsError::new("another operation is still running on this model"))?;
            job.cancel.set(false);
            let t0 = js_sys::Date::now();
            let (editor, result) = op(editor, job).await;
            let result = match result {
                Err(PipelineError::Model(SdError::Device(reason))) => Err(lost_or(&lost, reason).await),
                r => r,
            };
            *slot.borrow_mut() = Some(editor);
            let mut out = result.map_err(crate::js_err)?;
            let seconds = (js_sys::Date::now() - t0) / 1000.0;
            let mut report: serde_json::Value = serde_json::from_str(&out.report).unwrap_or_else(|_| serde_json::json!({}));
            report["seconds"] = seconds.into();
            out.report = report.to_string();
            Ok(out.into())
        })
    }
}

/// A failed read can be the first sign of a lost device: WebGPU rejects the buffer map at once
/// but reports the loss itself only once the queue has drained. Waits up to 5 s for that report.
async fn lost_or(lost: &Lost, reason: String) -> PipelineError {
    for _ in 0..100 {
        if let Some(why) = lost.get() {
            return SdError::DeviceLost(why.clone()).into();
        }
        sleep_ms(50).await;
    }
    SdError::Device(reason).into()
}

async fn sleep_ms(ms: i32) {
    let tick = Promise::new(&mut |resolve, _| {
        let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<Function>().ok());
        match set_timeout {
            Some(f) => drop(f.call2(&JsValue::NULL, &resolve, &JsValue::from(ms))),
            None => drop(resolve.call0(&JsValue::NULL)),
        }
    });
    let _ = JsFuture::from(tick).await;
}

/// What one operation needs besides the editor.
struct Job {
    on_progress: Function,
    cancel: Rc<Cell<bool>>,
    model: String,
}

impl Observer for &Job {
    fn progress(&mut self, p: Progress) {
        // A throwing callback is the page's bug; it must not abort a long edit.
        let _ = self.on_progress.call3(
            &JsValue::NULL,
            &JsValue::from_str(p.stage),
            &JsValue::from(p.done as u32),
            &JsValue::from(p.total as u32),
        );
    }
    fn cancelled(&self) -> bool {
        self.cancel.get()
    }
}

impl Job {
    fn stage(&self, stage: &'static str, done: usize) {
        let mut obs = self;
        obs.progress(Progress { stage, done, total: 1 });
    }

    fn check_cancel(&self) -> Result<(), PipelineError> {
        if self.cancel.get() { Err(PipelineError::Cancelled) } else { Ok(()) }
    }

    /// Decodes, sizes and encodes the photo: its latent, the pixels used, and the sizing note.
    async fn encode(&self, ed: &mut Editor, image: &[u8], o: &Options) -> Result<(Latent, Rgb, String), PipelineError> {
        let img = image_io::decode(image)?;
        let (img, what) = image_io::fit(img, o.size()?, ed.model.configs.default_long_side())?;
        let (w, h) = img.dimensions();
        self.stage("encode", 0);
        let latent = ed.encode(image_io::to_pixels(&img), h as usize, w as usize, None).await?;
        self.stage("encode", 1);
        Ok((latent, image_io::from_rgb(&img), what))
    }

    async fn decode(&self, ed: &mut Editor, latent: &Latent) -> Result<Rgb, PipelineError> {
        self.check_cancel()?;
        self.stage("decode", 0);
        let rgb = ed.decode(latent).await?;
        self.stage("decode", 1);
        Ok(rgb)
    }

    async fn invert(&self, ed: &mut Editor, image: &[u8], prompt: &str, o: &Options) -> Result<(Inversion, Output), PipelineError> {
        let (latent, input, what) = self.encode(ed, image, o).await?;
        let (inv, warnings) = ed.invert(&latent, prompt, &o.settings(), Method::Edict, &mut &*self).await?;
        let out = Output {
            input_png: image_io::encode_png(&input)?,
            latents: latents::to_bytes(&inv, &latents::Origin::of(&self.model, &ed.model))?,
            report: serde_json::json!({ "image": what }).to_string(),
            warnings,
            ..Output::default()
        };
        Ok((inv, out))
    }

    /// Denoises `inv` under `target` and decodes x, as `edict edit` does.
    async fn edit(&self, ed: &mut Editor, inv: &Inversion, target: &str, out: &mut Output) -> Result<(), PipelineError> {
        let (pair, w) = ed.denoise(inv, target, "edit", &mut &*self).await?;
        out.warnings.extend(w);
        let rgb = self.decode(ed, &Latent { values: pair.x_f64(), shape: inv.latent.shape }).await?;
        out.png = image_io::encode_png(&rgb)?;
        Ok(())
    }
}

/// Runs an async step on an owned editor and hands the editor back with its result.
macro_rules! with_editor {
    ($ed:ident, $body:expr) => {{
        let mut $ed = $ed;
        let r: Result<Output, PipelineError> = $body.await;
        ($ed, r)
    }};
}

#[wasm_bindgen]
impl Session {
    /// "f16" or "f32": what the networks run in.
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        self.precision.to_string()
    }

    /// A note from loading (unused weights in the files), if any.
    #[wasm_bindgen(getter, js_name = loadWarning)]
    pub fn load_warning(&self) -> Option<String> {
        self.load_warning.clone()
    }

    /// Stops the running operation before its next UNet call; its Promise rejects with "cancelled".
    pub fn cancel(&self) {
        self.cancel.set(true);
    }

    /// `edict invert`: the photo's EDICT noise pair as a latents file.
    pub fn invert(&self, image: Vec<u8>, prompt: String, options: &Options, on_progress: Function) -> Promise {
        let o = options.clone();
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async { job.invert(&mut ed, &image, &prompt, &o).await.map(|(_, out)| out) })
        })
    }

    /// `edict edit --save-latents`: invert under `source`, denoise under `target`.
    pub fn edit(&self, image: Vec<u8>, source: String, target: String, options: &Options, on_progress: Function) -> Promise {
        let o = options.clone();
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let (inv, mut out) = job.invert(&mut ed, &image, &source, &o).await?;
                job.edit(&mut ed, &inv, &target, &mut out).await?;
                Ok(out)
            })
        })
    }

    /// `edict edit --from-latents`: edit a saved pair (from the CLI or this page) under `target`.
    #[wasm_bindgen(js_name = editLatents)]
    pub fn edit_latents(&self, latents_file: Vec<u8>, target: String, on_progress: Function) -> Promise {
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let (inv, origin) = latents::from_bytes(&latents_file, "latents file")?;
                latents::check_fits(&inv, &origin, &ed.model, &job.model, "latents file")?;
                let mut out = Output::default();
                out.input_png = image_io::encode_png(&job.decode(&mut ed, &inv.latent).await?)?;
                job.edit(&mut ed, &inv, &target, &mut out).await?;
                Ok(out)
            })
        })
    }

    /// `edict reconstruct`: invert and denoise with the same prompt; the report has
    /// `latent_rel_err`, `mse`, `psnr`, `ssim` and `unet_evals`.
    pub fn reconstruct(&self, image: Vec<u8>, prompt: String, options: &Options, on_progress: Function) -> Promise {
        let o = options.clone();
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let (latent, input, what) = job.encode(&mut ed, &image, &o).await?;
                let (rec, warnings) = ed.reconstruct(&latent, &prompt, &o.settings(), Method::Edict, &mut &job).await?;
                let rgb = job.decode(&mut ed, &rec.latent).await?;
                let q = metrics::compare(&input, &rgb)?;
                Ok(Output {
                    png: image_io::encode_png(&rgb)?,
                    input_png: image_io::encode_png(&input)?,
                    report: serde_json::json!({
                        "image": what,
                        "latent_rel_err": rec.latent_rel_err,
                        "mse": q.mse, "psnr": q.psnr, "ssim": q.ssim,
                        "unet_evals": rec.unet_evals,
                    })
                    .to_string(),
                    warnings,
                    ..Output::default()
                })
            })
        })
    }
}
