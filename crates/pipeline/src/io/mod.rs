//! What goes in and out as files or bytes: photos and PNGs ([`image_io`]), saved inversions
//! ([`latents`]), and the live preview's small RGB image ([`preview`]).

pub mod image_io;
pub mod latents;
pub mod preview;
