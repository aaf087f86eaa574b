//! Plain aligned tables for listings (`--json` gives the data itself).

use std::io::Write;

pub fn print(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let s: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        writeln!(out, "{}", s.join("  ").trim_end())
    };
    line(headers.iter().map(|h| h.to_string()).collect())?;
    for r in rows {
        line(r.clone())?;
    }
    Ok(())
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub fn time(unix: f64) -> String {
    corral_core::time::rfc3339_utc(unix)
        .replace('T', " ")
        .trim_end_matches('Z')
        .rsplit_once('.')
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}
