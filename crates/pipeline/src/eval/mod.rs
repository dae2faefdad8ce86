//! Evaluation: image metrics as the EDICT paper reports them ([`metrics`]) and PIE-Bench's
//! format, masks and scores ([`pie_bench`]).

pub mod metrics;
pub mod pie_bench;
