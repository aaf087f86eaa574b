//! Reading the daemon's NDJSON streams (logs, events) line by line, and showing a
//! record's text on a terminal.

use corral_client::wire::LogRecord;
use corral_core::term::sanitize;
use futures_util::StreamExt;
use std::borrow::Cow;

type Body =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// The lines of an NDJSON response body, as they arrive. A last line without its
/// newline (the connection broke mid-line) is not returned.
pub struct NdjsonLines {
    body: Body,
    pending: Vec<u8>,
    /// Where the next line starts in `pending`.
    start: usize,
}

impl NdjsonLines {
    pub fn new(resp: reqwest::Response) -> NdjsonLines {
        NdjsonLines {
            body: Box::pin(resp.bytes_stream()),
            pending: Vec::new(),
            start: 0,
        }
    }

    /// Whether a whole line is already here, so that [`next`](Self::next) will not wait
    /// for the network (a printer flushes its output before it waits).
    pub fn has_line(&self) -> bool {
        memchr::memchr(b'\n', &self.pending[self.start..]).is_some()
    }

    /// The next non-empty line without its newline; `None` at the end of the body, an
    /// error when the body broke off.
    pub async fn next(&mut self) -> Option<reqwest::Result<Vec<u8>>> {
        loop {
            while let Some(i) = memchr::memchr(b'\n', &self.pending[self.start..]) {
                let line = self.pending[self.start..self.start + i].to_vec();
                self.start += i + 1;
                if !line.is_empty() {
                    return Some(Ok(line));
                }
            }
            self.pending.drain(..self.start);
            self.start = 0;
            match self.body.next().await? {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A record's text as it goes to stdout: on a terminal every control character, escape
/// sequence and invisible formatting character shown escaped (log content is hostile);
/// the bytes as printed otherwise (a pipe, `--raw`).
pub fn text(rec: &LogRecord, strip: bool) -> Cow<'_, str> {
    if strip {
        sanitize(&rec.line)
    } else {
        Cow::Borrowed(&rec.line)
    }
}

/// Whether stdout is a terminal (then log text goes through the sanitiser).
pub fn stdout_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
}
