//! Model files: which files make a model ([`files`]), safetensors reading with checked shapes
//! ([`weights`]; piece by piece as the bytes arrive, [`stream`]), and the key mapping of
//! original single-file checkpoints ([`single_file`]); LoRA files merged as weights load ([`lora`]).

pub mod files;
pub mod lora;
pub mod single_file;
pub mod stream;
pub mod weights;
