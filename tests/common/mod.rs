//! Helpers shared by the integration tests that live in this directory.
#![allow(dead_code)]

pub mod sshd_host;
