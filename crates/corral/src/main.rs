//! corral: keeps llama.cpp servers and GPU jobs running, and lets anyone watch them live.
//!
//! One binary: `corral serve` runs the daemon (the `corral-daemon` library), every other
//! command is a client of its API (through `corral-client`). `serve` and `demo` log their
//! diagnostics through `tracing` ([`logging`]); the client commands print their errors
//! as `corral: …` on stderr.

mod cli;
mod demo;
mod logging;

use clap::Parser;
use std::time::Duration;

fn main() {
    let cli = cli::Cli::parse();
    // The holder is a small single-threaded poll loop: no async runtime, no threads.
    if let cli::Command::Hold(a) = cli.cmd {
        std::process::exit(cli::hold(a));
    }
    let logging = match cli.daemon_logging() {
        Some((args, file)) => match logging::init(args, file) {
            Ok(l) => Some(l),
            Err(e) => {
                cli::say_error(&format!("{e:#}"));
                std::process::exit(2);
            }
        },
        None => None,
    };
    // A handful of workers serve any number of tasks and viewers (capture has its own
    // thread); on a 64-core box the daemon still stays a few threads.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            cli::say_error(&format!("cannot start the async runtime: {e}"));
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        match cli::dispatch(cli).await {
            Ok(code) => code,
            Err(e) => {
                let broken_pipe = e
                    .chain()
                    .filter_map(|c| c.downcast_ref::<std::io::Error>())
                    .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
                if broken_pipe {
                    // The reader went away (`corral logs … | head`): not an error.
                    return 0;
                }
                if logging.is_some() {
                    tracing::error!("{e:#}");
                } else {
                    cli::say_error(&format!("{e:#}"));
                }
                1
            }
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    if let Some(l) = logging {
        l.flush(Duration::from_secs(1));
    }
    std::process::exit(code);
}
