//! EDICT editing on Stable Diffusion 1.x and 2.x: the DDIM schedule, the EDICT and DDIM samplers
//! (f64 on the host) and the editing pipeline the CLI and the browser share.

pub mod difflib;
pub mod error;
pub mod image_io;
pub mod latents;
pub mod metrics;
pub mod pie_bench;
pub mod pipeline;
pub mod preview;
pub mod prompt_edit;
pub mod sampler;
pub mod schedule;

pub use error::{PipelineError, Result};
