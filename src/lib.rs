//! attest: a NixOS integration test driver. A test is a JSON config (nodes,
//! backends, vlans, limits) plus a Rhai script; [`driver::run_test`] boots the
//! nodes under a supervisor, runs the script and tears everything down.
//! README.md, "How it works", maps the modules.
#![warn(missing_docs)]
// Machine errors carry the failing command's full output so a report needs no
// second lookup; they are returned once per failed step, never in a hot loop,
// so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod backend;
pub mod bench;
pub mod cancel;
pub mod config;
pub mod console;
pub mod convert;
pub mod driver;
pub mod errors;
pub mod exit_code;
pub mod guest;
pub mod machine;
pub mod net;
pub mod process;
pub mod report;
pub mod script;
pub mod shell;
