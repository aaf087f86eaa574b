//! llama.cpp knowledge that needs no I/O: turning llama-server and rpc-server log lines
//! into structured events.

pub mod parse;

pub use parse::{LogParser, ParserKind};
