//! The shared test world for end-to-end tests: per-run certificates, agents (in-process
//! and as real processes), a local AWS API (moto) and a throwaway MariaDB.
#![forbid(unsafe_code)]

pub mod support;
