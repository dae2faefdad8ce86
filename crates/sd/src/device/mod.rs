//! Where the networks run: backend selection and device errors ([`backend`]), and a per-operation
//! profile of a network call ([`profile`]).

pub mod backend;
pub mod profile;
