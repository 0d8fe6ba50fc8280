//! attest: a NixOS integration test driver. A test is a JSON config (nodes,
//! backends, vlans, limits) plus a Rhai script; [`driver::run_test`] boots the
//! nodes under a supervisor, runs the script and tears everything down.
//! See DESIGN.md for the architecture.
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod config;
pub mod console;
pub mod driver;
pub mod guest;
pub mod machine;
pub mod net;
pub mod process;
pub mod report;
pub mod script;
