//! `corral diag RUN_ID`: the diagnostics bundle the daemon wrote when a run failed: a
//! summary here, the whole bundle as a `.tar.gz` with `--tar`.

use super::table;
use corral_client::wire::Diagnostics;
use corral_client::Client;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "When a run fails (a non-zero exit, a signal, a failed health check) the \
daemon writes a bundle beside its log: its last 500 records, how it ended, its command line \
and environment with secrets redacted, the task's recent events, memory, load and free disk, \
and the GPUs. `corral runs TASK` lists the run ids.\n\nExamples:\n  corral diag 1a2b3c4d\n  \
corral diag 1a2b3c4d --tar crash.tar.gz     # to attach to a bug report"
)]
pub struct DiagArgs {
    /// The failed run's id.
    pub run_id: String,
    /// Write the whole bundle to this `.tar.gz` file (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub tar: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn diag(c: &Client, a: DiagArgs) -> anyhow::Result<i32> {
    if let Some(path) = &a.tar {
        let bytes = c.diagnostics_tar(&a.run_id).await?;
        if path.as_os_str() == "-" {
            std::io::stdout().lock().write_all(&bytes)?;
        } else {
            std::fs::write(path, &bytes)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
        return Ok(0);
    }
    let d = c.diagnostics(&a.run_id).await?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&d)?)?;
    } else {
        print(&mut out, &d)?;
    }
    Ok(0)
}

/// The summary as `key  value` lines; every text from the daemon goes through the
/// terminal sanitiser.
fn print(out: &mut impl Write, d: &Diagnostics) -> std::io::Result<()> {
    let clean = |t: &str| corral_core::term::sanitize(t).into_owned();
    let ended = match (d.exit_code, d.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!(
            "signal {s} ({})",
            clean(d.signal_name.as_deref().unwrap_or("?"))
        ),
        _ => "unknown".into(),
    };
    let duration = d
        .ended_at
        .map(|e| format!("{:.1}s", (e - d.started_at).max(0.0)))
        .unwrap_or_else(|| "-".into());
    let rows: Vec<[String; 2]> = vec![
        ["run".into(), clean(&d.run_id)],
        ["task".into(), clean(&d.task)],
        ["node".into(), clean(&d.node)],
        ["status".into(), d.status.as_str().into()],
        ["ended".into(), ended],
        [
            "reason".into(),
            table::opt(d.error_message.as_deref().map(clean)),
        ],
        ["started".into(), table::time(d.started_at)],
        ["ran".into(), duration],
        [
            "output".into(),
            format!("{} lines, {} bytes", d.lines, d.bytes),
        ],
        ["bundle".into(), clean(&d.dir)],
        ["files".into(), clean(&d.files.join(" "))],
    ];
    for r in rows {
        writeln!(out, "{:<8} {}", r[0], r[1])?;
    }
    for p in &d.problems {
        writeln!(out, "{:<8} {}", "missing", clean(p))?;
    }
    writeln!(
        out,
        "\n`corral diag {} --tar FILE` packs the whole bundle.",
        clean(&d.run_id)
    )
}
