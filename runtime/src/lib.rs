//! placeholder while the runtime crate is written
