//! A loaded model and the operations the page runs on it, mirroring the CLI's commands. Each
//! returns a Promise; progress goes to a JS callback `(stage, done, total)` once per UNet call
//! (and once each for the VAE's encode and decode), and `cancel()` stops at the next call.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use edict_pipeline::PipelineError;
use edict_pipeline::editor::{Editor, Inversion, Observer, Progress, Rgb};
use edict_pipeline::io::image_io::{self, Size};
use edict_pipeline::io::latents;
use edict_pipeline::ops::{self, Photo};
use edict_pipeline::prompt_edit::{EditControls, EditSpec};
use edict_pipeline::settings::Settings;
use edict_sd::SdError;
use edict_sd::checkpoint::weights::{Bytes, WeightFile};
use edict_sd::config::Precision;
use edict_sd::models::autoencoder_tiny::{self, AutoencoderTiny};
use js_sys::{Function, Promise};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::Lost;

/// The `options` object every operation takes: the sampler settings and the edit controls under
/// the CLI flags' names, and the image size. Missing fields take the CLI's defaults
/// ([`default_options`]); unknown ones are refused.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Options {
    settings: Settings,
    controls: EditControls,
    /// 0 and 0: long side 512, sides cropped to multiples of 64 (the CLI's rule).
    width: u32,
    height: u32,
}

impl Options {
    fn read(options: JsValue) -> Result<Self, PipelineError> {
        serde_wasm_bindgen::from_value(options).map_err(|e| PipelineError::Invalid(format!("options: {e}")))
    }

    fn size(&self) -> Result<Size, PipelineError> {
        match (self.width, self.height) {
            (0, 0) => Ok(Size::Auto),
            (w, h) => Size::exact(w, h),
        }
    }
}

/// The options every field of which is the CLI's default (`p2p_tokens`, `p2p_self` included,
/// with `p2p` off).
#[wasm_bindgen(js_name = defaultOptions)]
pub fn default_options() -> Result<JsValue, JsError> {
    Options::default()
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(crate::js_err)
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
    preview_decoder_repo: &'static str,
    fingerprint: String,
}

impl Session {
    pub(crate) fn new(editor: Editor, lost: Lost, name: String, precision: Precision, load_warning: Option<String>) -> Self {
        Self {
            preview_decoder_repo: autoencoder_tiny::hub_id(editor.model.configs.is_sdxl()),
            fingerprint: editor.model.fingerprint.clone(),
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
    fn vae(&mut self, p: Progress) {
        self.progress(p);
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
    /// Decodes the photo's bytes, sizes and encodes it.
    async fn photo(&self, ed: &mut Editor, image: &[u8], o: &Options) -> Result<Photo, PipelineError> {
        ops::encode_photo(ed, image_io::decode(image)?, o.size()?, None, &mut &*self).await
    }

    async fn invert(&self, ed: &mut Editor, image: &[u8], prompt: &str, o: &Options) -> Result<(Inversion, Output), PipelineError> {
        let photo = self.photo(ed, image, o).await?;
        let inv = ed.invert(&photo.latent, prompt, &o.settings, &mut &*self).await?;
        let out = Output {
            input_png: image_io::encode_png(&photo.image)?,
            latents: latents::to_bytes(&inv, &latents::Origin::of(&self.model, &ed.model))?,
            report: serde_json::json!({ "image": photo.sizing }).to_string(),
            ..Output::default()
        };
        Ok((inv, out))
    }

    /// Denoises `inv` into each target of `spec` and encodes each image, as `edict edit` does.
    async fn edit(&self, ed: &mut Editor, inv: &Inversion, spec: &EditSpec, out: &mut Output) -> Result<(), PipelineError> {
        for rgb in ops::edit(ed, inv, spec, &mut &*self).await? {
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

    /// The model fingerprint its latents files carry (the CLI prints it on load); it covers the
    /// merged LoRAs.
    #[wasm_bindgen(getter)]
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
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
    /// UNet call with the image being predicted (1/8 size, or full size with a preview decoder; one
    /// tile per target); `null` turns it off.
    #[wasm_bindgen(js_name = setPreview)]
    pub fn set_preview(&self, callback: Option<Function>) {
        *self.preview.borrow_mut() = callback;
    }

    /// Decodes the previews with TAESD from now on (full size): `config` is its `config.json`,
    /// `weights` its `diffusion_pytorch_model.safetensors`; `null` for both goes back to the
    /// linear 1/8-size preview.
    #[wasm_bindgen(js_name = setPreviewDecoder)]
    pub fn set_preview_decoder(&self, config: Option<String>, weights: Option<Vec<u8>>) -> Result<(), JsError> {
        let mut editor = self.editor.borrow_mut();
        let ed = editor.as_mut().ok_or_else(|| JsError::new("another operation is still running on this model"))?;
        let (Some(config), Some(weights)) = (config, weights) else {
            ed.clear_preview_decoder();
            return Ok(());
        };
        let file = WeightFile::from_bytes("taesd/diffusion_pytorch_model.safetensors", Bytes::Owned(weights)).map_err(crate::js_err)?;
        let tiny = AutoencoderTiny::from_files(&config, "taesd/config.json", file, &ed.device).map_err(crate::js_err)?;
        ed.set_preview_decoder(tiny).map_err(crate::js_err)
    }

    /// The Hugging Face repository of this model's TAESD (madebyollin's, for SD 1.x/2.x or SDXL).
    #[wasm_bindgen(getter, js_name = previewDecoderRepo)]
    pub fn preview_decoder_repo(&self) -> String {
        self.preview_decoder_repo.to_string()
    }

    /// Checks `options` (a given image size against the memory the device can give it, and,
    /// given `targets`, the edit into them against the model's tokens) before any work, with
    /// the error the operation would end in.
    pub fn check(&self, options: JsValue, targets: Option<Vec<String>>) -> Result<(), JsError> {
        let o = Options::read(options).map_err(crate::js_err)?;
        let editor = self.editor.borrow();
        let ed = editor.as_ref().ok_or_else(|| JsError::new("another operation is still running on this model"))?;
        o.settings.validate(&ed.schedule).map_err(crate::js_err)?;
        if let Size::Exact { width, height } = o.size().map_err(crate::js_err)? {
            ed.check_fits_memory(width as usize, height as usize).map_err(crate::js_err)?;
        }
        if let Some(targets) = targets {
            ed.check_edit(&o.controls.spec(targets).map_err(crate::js_err)?).map_err(crate::js_err)?;
        }
        Ok(())
    }

    /// `edict invert`: the photo's EDICT noise pair as a latents file.
    pub fn invert(&self, image: Vec<u8>, prompt: String, options: JsValue, on_progress: Function) -> Promise {
        let o = Options::read(options);
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async { job.invert(&mut ed, &image, &prompt, &o?).await.map(|(_, out)| out) })
        })
    }

    /// `edict edit --save-latents`: invert under `source`, denoise into each of `targets` (with
    /// the options' edit controls); `pngs` has one image per target.
    pub fn edit(&self, image: Vec<u8>, source: String, targets: Vec<String>, options: JsValue, on_progress: Function) -> Promise {
        let o = Options::read(options);
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let o = o?;
                let spec = o.controls.spec(targets)?;
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
    pub fn edit_latents(&self, latents_file: Vec<u8>, targets: Vec<String>, options: JsValue, on_progress: Function) -> Promise {
        let o = Options::read(options);
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let spec = o?.controls.spec(targets)?;
                let inv = ops::read_latents(&ed, &latents_file, "latents file", &job.model)?;
                let mut out = Output::default();
                out.input_png = image_io::encode_png(&ops::decode(&mut ed, &inv.latent, &mut &*job).await?)?;
                job.edit(&mut ed, &inv, &spec, &mut out).await?;
                Ok(out)
            })
        })
    }

    /// `edict reconstruct`: invert and denoise with the same prompt; the report is the CLI's
    /// (`latent_rel_err`, `mse`, `psnr`, `ssim`, `unet_evals`, …) with the image sizing.
    pub fn reconstruct(&self, image: Vec<u8>, prompt: String, options: JsValue, on_progress: Function) -> Promise {
        let o = Options::read(options);
        self.run(on_progress, move |ed, job| async move {
            with_editor!(ed, async {
                let o = o?;
                let photo = job.photo(&mut ed, &image, &o).await?;
                let (rgb, q) = ops::reconstruct(&mut ed, &photo, &prompt, &o.settings, &mut &*job).await?;
                let mut report = serde_json::to_value(&q).map_err(|e| PipelineError::Invalid(e.to_string()))?;
                report["image"] = photo.sizing.into();
                Ok(Output {
                    pngs: vec![image_io::encode_png(&rgb)?],
                    input_png: image_io::encode_png(&photo.image)?,
                    report: report.to_string(),
                    ..Output::default()
                })
            })
        })
    }
}
