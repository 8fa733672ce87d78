//! The edge fuzzer (`fuzz_edge.rs`): hand-built HTTP/2 bytes ([`frames`]), the proptest
//! strategies of what it sends ([`cases`]), running and judging connections against a live
//! listener ([`run`]), and measurements of the server process ([`probe`]).
#![allow(dead_code)]

pub mod cases;
pub mod frames;
pub mod probe;
pub mod run;
pub mod valid;
