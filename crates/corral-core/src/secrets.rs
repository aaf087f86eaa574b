//! Secrets in what corral shows: which environment variables hold one, and a command
//! line or URL with them hidden. Every place that prints a task's command line or
//! environment (the log's notes, events, `ps`, diagnostics bundles) goes through here.

/// corral's own variables, never passed on to a task from the daemon's environment: its
/// API token and token file, everything else `CORRAL_*` (the daemon's settings), and the
/// Redis credentials it reads.
pub fn is_corral_variable(name: &str) -> bool {
    name.starts_with("CORRAL_")
        || name.starts_with("SOLLOL_")
        || matches!(name, "REDIS_PASSWORD" | "REDIS_URL")
}

/// Whether an environment variable's value is a secret: its name says so (`KEY`,
/// `TOKEN`, `SECRET`, `PASSWORD`, `PASSWD`, `CREDENTIAL`, `AUTH`), or it is one of
/// corral's own.
pub fn is_secret_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|w| up.contains(w))
        || is_corral_variable(name)
}

/// A command line with the values of secret-looking options replaced: `--api-key X`,
/// `--token=X`, `--hf-token X` and the like (see [`is_secret_name`]), and a password in a
/// URL (`redis://user:pass@host`).
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for a in argv {
        // A secret option's value is the next word, unless that is another option (the
        // first was a switch, such as `--no-auth`).
        if std::mem::take(&mut hide_next) && !a.starts_with('-') {
            out.push("[redacted]".to_string());
            continue;
        }
        if let Some(opt) = a.strip_prefix('-').filter(|_| a.len() > 1) {
            let name = opt.trim_start_matches('-');
            match name.split_once('=') {
                Some((n, _)) if is_secret_name(&n.replace('-', "_")) => {
                    out.push(format!(
                        "{}=[redacted]",
                        &a[..a.len() - name.len() + n.len()]
                    ));
                    continue;
                }
                None if is_secret_name(&name.replace('-', "_")) => hide_next = true,
                _ => {}
            }
        }
        out.push(redact_url(a));
    }
    out
}

/// A URL's password, hidden: `scheme://user:[redacted]@host…`.
pub fn redact_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return s.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, _)) => format!(
            "{}://{user}:[redacted]@{}",
            &s[..scheme_end],
            &rest[at + 1..]
        ),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn secrets_in_a_command_line_are_redacted() {
        assert_eq!(
            redact_argv(&argv(&[
                "llama-server",
                "--api-key",
                "s3cret",
                "--port",
                "8080",
                "--hf-token=abc",
                "redis://u:pw@h:6379/0",
                "-m",
                "/m.gguf"
            ])),
            argv(&[
                "llama-server",
                "--api-key",
                "[redacted]",
                "--port",
                "8080",
                "--hf-token=[redacted]",
                "redis://u:[redacted]@h:6379/0",
                "-m",
                "/m.gguf"
            ])
        );
        assert_eq!(
            redact_argv(&argv(&["srv", "--no-auth", "--port", "8080"])),
            argv(&["srv", "--no-auth", "--port", "8080"])
        );
    }

    #[test]
    fn secret_names() {
        for n in [
            "OPENAI_API_KEY",
            "HF_TOKEN",
            "db_password",
            "CORRAL_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["PATH", "HOME", "CUDA_VISIBLE_DEVICES", "PORT"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }
}
