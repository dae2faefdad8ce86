//! EDICT editing on Stable Diffusion 1.x and 2.x: the samplers (double-double and f64 on the
//! host), the [`editor::Editor`] that runs them on a model, and the [`ops`] the CLI and the
//! browser share.

pub mod difflib;
pub mod editor;
pub mod error;
pub mod eval;
pub mod io;
pub mod ops;
pub mod prompt_edit;
pub mod prompt_weights;
pub mod samplers;
pub mod settings;

pub use error::{PipelineError, Result};
