//! Model files: which files make a model ([`files`]), safetensors reading with checked shapes
//! ([`weights`]), and the key mapping of original single-file checkpoints ([`single_file`]).

pub mod files;
pub mod single_file;
pub mod weights;
