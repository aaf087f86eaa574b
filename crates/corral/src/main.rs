//! corral: keeps llama.cpp servers and GPU jobs running, and lets anyone watch them live.
//!
//! One binary: `corral serve` runs the daemon (the `corral-daemon` library), every other
//! command is a client of its API (through `corral-client`).

mod cli;
mod demo;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    // The holder is a small single-threaded poll loop: no async runtime, no threads.
    if let cli::Command::Hold(a) = cli.cmd {
        std::process::exit(cli::hold(a));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
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
                cli::say_error(&format!("{e:#}"));
                1
            }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}
