//! A loaded model and the operations the page runs on it, mirroring the CLI's commands. Each
//! returns a Promise; progress goes to a JS callback `(stage, done, total)` once per UNet call
//! (and once each for the VAE's encode and decode), and `cancel()` stops at the next call.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use edict_pipeline::image_io::{self, Size};
use edict_pipeline::pipeline::{Editor, Inversion, Latent, Method, Observer, Progress, Rgb, Settings};
use edict_pipeline::prompt_edit::{EditSpec, P2p};
use edict_pipeline::{PipelineError, latents, metrics};
use edict_sd::SdError;
use edict_sd::config::Precision;
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
    /// Prompt-to-prompt editing (the CLI's `--p2p`), with its windows as `START:END` strings.
    pub p2p: bool,
    #[wasm_bindgen(getter_with_clone, js_name = p2pTokens)]
    pub p2p_tokens: String,
    #[wasm_bindgen(getter_with_clone, js_name = p2pSelf)]
    pub p2p_self: String,
    /// Word weights as `WORD=W` strings (the CLI's `--reweight`).
    #[wasm_bindgen(getter_with_clone)]
    pub reweight: Vec<String>,
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
            p2p: false,
            p2p_tokens: P2p::default().tokens.to_string(),
            p2p_self: P2p::default().self_attn.to_string(),
            reweight: Vec::new(),
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

    /// The edit into `targets` these options ask for, parsed by the CLI's rules.
    fn spec(&self, targets: Vec<String>) -> Result<EditSpec, PipelineError> {
        let p2p = if self.p2p {
            Some(P2p {
                tokens: self.p2p_tokens.parse()?,
                self_attn: self.p2p_self.parse()?,
            })
        } else {
            None
        };
        let spec = EditSpec {
            targets,
            p2p,
            reweight: self.reweight.iter().map(|r| r.parse()).collect::<Result<_, _>>()?,
        };
        spec.validate()?;
        Ok(spec)
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
    /// One image per target (edit), or the reconstruction.
    pngs: Vec<Vec<u8>>,
    input_png: Vec<u8>,
    latents: Vec<u8>,
    report: String,
    warnings: Vec<String>,
}

#[wasm_bindgen]
impl Output {
    /// The result image (edit: the first target's; reconstruct).
    #[wasm_bindgen(getter)]
    pub fn png(&self) -> Vec<u8> {
        self.pngs.first().cloned().unwrap_or_default()
    }
    /// The result images, one `Uint8Array` of PNG bytes per target in order.
    #[wasm_bindgen(getter)]
    pub fn pngs(&self) -> js_sys::Array {
        self.pngs.iter().map(|p| js_sys::Uint8Array::from(p.as_slice())).collect()
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
    preview: Rc<RefCell<Option<Function>>>,
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
            preview: Rc::new(RefCell::new(None)),
            name,
            precision,
            load_warning,
        }
    }

    /// Runs `op` on the editor as a Promise of an `Output`.
    fn run<F, Fut>(&self, on_progress: Function, op: F) -> Promise
    where
        F: FnOnce(Editor, Rc<Job>) -> Fut + 'static,
        Fut: Future<Output = (Editor, Result<Output, PipelineError>)> + 'static,
    {
        let slot = self.editor.clone();
        let lost = self.lost.clone();
        let job = Rc::new(Job {
            on_progress,
            on_preview: self.preview.borrow().clone(),
            cancel: self.cancel.clone(),
            model: self.name.clone(),
            warnings: RefCell::new(Vec::new()),
        });
        future_to_promise(async move {
            let editor = slot
                .borrow_mut()
                .take()
                .ok_or_else(|| JsError::new("another operation is still running on this model"))?;
            job.cancel.set(false);
            let t0 = js_sys::Date::now();
            let (editor, result) = op(editor, job.clone()).await;
            let result = match result {
                Err(PipelineError::Model(SdError::Device(reason))) => Err(lost_or(&lost, reason).await),
                r => r,
            };
            *slot.borrow_mut() = Some(editor);
            let mut out = result.map_err(crate::js_err)?;
            out.warnings = job.warnings.take();
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
    on_preview: Option<Function>,
    cancel: Rc<Cell<bool>>,
    model: String,
    /// What the pipeline warned about, each text once.
    warnings: RefCell<Vec<String>>,
}

impl Observer for &Job {
    fn warn(&mut self, message: &str) {
        let mut w = self.warnings.borrow_mut();
        if !w.iter().any(|m| m == message) {
            w.push(message.to_string());
        }
    }
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
    fn wants_preview(&self) -> bool {
        self.on_preview.is_some()
    }
    fn preview(&mut self, p: Progress, image: &Rgb) {
        let Some(f) = &self.on_preview else { return };
        let rgba: Vec<u8> = image.data.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
        let args: js_sys::Array = [
            JsValue::from_str(p.stage),
            JsValue::from(p.done as u32),
            JsValue::from(p.total as u32),
            JsValue::from(image.width as u32),
            JsValue::from(image.height as u32),
            js_sys::Uint8ClampedArray::from(rgba.as_slice()).into(),
        ]
        .into_iter()
        .collect();
        // a throwing callback is the page's bug; it must not abort a long edit
        let _ = f.apply(&JsValue::NULL, &args);
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
        let inv = ed.invert(&latent, prompt, &o.settings(), Method::Edict, &mut &*self).await?;
        let out = Output {
            input_png: image_io::encode_png(&input)?,
            latents: latents::to_bytes(&inv, &latents::Origin::of(&self.model, &ed.model))?,
            report: serde_json::json!({ "image": what }).to_string(),
            ..Output::default()
        };
        Ok((inv, out))
    }

    /// Denoises `inv` into each target of `spec` and decodes each x, as `edict edit` does.
    async fn edit(&self, ed: &mut Editor, inv: &Inversion, spec: &EditSpec, out: &mut Output) -> Result<(), PipelineError> {
        let pairs = ed.edit(inv, spec, "edit", &mut &*self).await?;
        for pair in pairs {
            let rgb = self.decode(ed, &Latent { values: pair.x_f64(), shape: inv.latent.shape }).await?;
            out.pngs.push(image_io::encode_png(&rgb)?);
        }
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

    /// A callback `(stage, done, total, width, height, rgba: Uint8ClampedArray)` called after every
    /// UNet call with the image being predicted (1/8 size, one tile per target); `null` turns it off.
    #[wasm_bindgen(js_name = setPreview)]
    pub fn set_preview(&self, callback: Option<Function>) {
        *self.preview.borrow_mut() = callback;
    }

    /// `edict invert`: the photo's EDICT noise pair as a latents file.
    pub fn invert(&self, image: Vec<u8>, prompt: String, options: &Options, on_progress: Function) -> Promise {
        let o = options.clone();
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async { job.invert(&mut ed, &image, &prompt, &o).await.map(|(_, out)| out) })
        })
    }

    /// `edict edit --save-latents`: invert under `source`, denoise into each of `targets` (with
    /// the options' P2P and word weights); `pngs` has one image per target.
    pub fn edit(&self, image: Vec<u8>, source: String, targets: Vec<String>, options: &Options, on_progress: Function) -> Promise {
        let o = options.clone();
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let spec = o.spec(targets)?;
                ed.check_edit(&spec)?;
                let (inv, mut out) = job.invert(&mut ed, &image, &source, &o).await?;
                job.edit(&mut ed, &inv, &spec, &mut out).await?;
                Ok(out)
            })
        })
    }

    /// `edict edit --from-latents`: edit a saved pair (from the CLI or this page) into `targets`;
    /// of the options only the edit controls apply (the pair fixes the rest).
    #[wasm_bindgen(js_name = editLatents)]
    pub fn edit_latents(&self, latents_file: Vec<u8>, targets: Vec<String>, options: &Options, on_progress: Function) -> Promise {
        let o = options.clone();
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let spec = o.spec(targets)?;
                let (inv, origin) = latents::from_bytes(&latents_file, "latents file")?;
                latents::check_fits(&inv, &origin, &ed.model, &job.model, "latents file")?;
                let mut out = Output::default();
                out.input_png = image_io::encode_png(&job.decode(&mut ed, &inv.latent).await?)?;
                job.edit(&mut ed, &inv, &spec, &mut out).await?;
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
                let rec = ed.reconstruct(&latent, &prompt, &o.settings(), Method::Edict, &mut &*job).await?;
                let rgb = job.decode(&mut ed, &rec.latent).await?;
                let q = metrics::compare(&input, &rgb)?;
                Ok(Output {
                    pngs: vec![image_io::encode_png(&rgb)?],
                    input_png: image_io::encode_png(&input)?,
                    report: serde_json::json!({
                        "image": what,
                        "latent_rel_err": rec.latent_rel_err,
                        "mse": q.mse, "psnr": q.psnr, "ssim": q.ssim,
                        "unet_evals": rec.unet_evals,
                    })
                    .to_string(),
                    ..Output::default()
                })
            })
        })
    }
}
