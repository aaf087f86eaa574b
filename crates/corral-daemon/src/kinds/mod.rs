//! Task kinds: what a task is. Each kind is a folder here implementing
//! [`TaskKind`](crate::supervisor::kind::TaskKind), and one line in [`builtin`]; the
//! supervisor never names a kind.
//!
//! **Rule:** kinds may use the engine (supervisor, logbook, bus) but never the API.

pub mod container;
pub mod file;
pub mod llama;
pub mod remote;

use crate::supervisor::kind::{Kinds, TaskKind};
use std::sync::Arc;

/// The kinds every daemon knows: `llama` (a llama-server coordinator), `rpc` (an
/// rpc-server backend), `file` (a followed local file), `remote-file` and `remote` (a
/// file and a command on another machine, over `ssh`), and `container` (a container run
/// or followed through `engine`, labelled with this `node`). Returns the registry and
/// the llama state the API shows.
pub fn builtin(
    cfg: llama::LlamaConfig,
    ssh: crate::ssh::Ssh,
    engine: crate::sources::container::engine::Engine,
    node: &str,
) -> (Kinds, llama::Llama) {
    let llama = llama::Llama::new(cfg);
    let kinds: Vec<Arc<dyn TaskKind>> = vec![
        Arc::new(llama::Coordinator(llama.clone())),
        Arc::new(llama::RpcServer(llama.clone())),
        Arc::new(file::FileKind),
        Arc::new(remote::RemoteFileKind(ssh.clone())),
        Arc::new(remote::RemoteKind(ssh)),
        Arc::new(container::ContainerKind::new(engine, node.to_string())),
    ];
    (Kinds::new(kinds), llama)
}
