//! Task kinds: what a task is. Each kind is a folder here implementing
//! [`TaskKind`](crate::supervisor::kind::TaskKind), and one line in [`builtin`]; the
//! supervisor never names a kind.
//!
//! **Rule:** kinds may use the engine (supervisor, logbook, bus) but never the API.

pub mod file;
pub mod llama;

use crate::supervisor::kind::{Kinds, TaskKind};
use std::sync::Arc;

/// The kinds every daemon knows: `llama` (a llama-server coordinator), `rpc` (an
/// rpc-server backend) and `file` (a followed local file). Returns the registry and the llama state the API shows.
pub fn builtin(cfg: llama::LlamaConfig) -> (Kinds, llama::Llama) {
    let llama = llama::Llama::new(cfg);
    let kinds: Vec<Arc<dyn TaskKind>> = vec![
        Arc::new(llama::Coordinator(llama.clone())),
        Arc::new(llama::RpcServer(llama.clone())),
        Arc::new(file::FileKind),
    ];
    (Kinds::new(kinds), llama)
}
