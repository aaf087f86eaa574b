//! Records and their wire form.
//!
//! A record is one line (or one chunk of an over-long line) of a run's output. Its JSON
//! form is a public contract (issue "corral core"):
//! `{"seq":17,"ts":1704067200.123456,"run_id":"…","stream":"stdout","line":"…"}` with
//! `"partial":true` and `"lossy":true` only when set. The encoder writes into a caller's
//! buffer so that a batch of records is encoded once and shared by every follower.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lifecycle notes written by corral itself (`started pid 123`, `exited with code 3`).
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::System => 2,
        }
    }

    pub fn from_u8(v: u8) -> Option<Stream> {
        match v {
            0 => Some(Stream::Stdout),
            1 => Some(Stream::Stderr),
            2 => Some(Stream::System),
            _ => None,
        }
    }
}

impl std::str::FromStr for Stream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            "system" => Ok(Stream::System),
            _ => Err(format!("unknown stream `{s}`; expected stdout, stderr or system")),
        }
    }
}

/// A record as read back by clients (the NDJSON/SSE/WebSocket form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireRecord {
    pub seq: u64,
    pub ts: f64,
    pub run_id: String,
    pub stream: Stream,
    pub line: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub partial: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub lossy: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Appends the JSON object of one record to `out` (no trailing newline).
/// `content` is the line without its newline; invalid UTF-8 is replaced and flagged `lossy`.
pub fn encode_json(
    out: &mut Vec<u8>,
    seq: u64,
    ts: f64,
    run_id: &str,
    stream: Stream,
    partial: bool,
    content: &[u8],
) {
    out.extend_from_slice(b"{\"seq\":");
    push_u64(out, seq);
    out.extend_from_slice(b",\"ts\":");
    push_ts(out, ts);
    out.extend_from_slice(b",\"run_id\":\"");
    escape_into(out, run_id);
    out.extend_from_slice(b"\",\"stream\":\"");
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(b"\",\"line\":\"");
    let lossy = match std::str::from_utf8(content) {
        Ok(s) => {
            escape_into(out, s);
            false
        }
        Err(_) => {
            escape_into(out, &String::from_utf8_lossy(content));
            true
        }
    };
    out.push(b'"');
    if partial {
        out.extend_from_slice(b",\"partial\":true");
    }
    if lossy {
        out.extend_from_slice(b",\"lossy\":true");
    }
    out.push(b'}');
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Seconds with microseconds: `1704067200.123456`.
fn push_ts(out: &mut Vec<u8>, ts: f64) {
    let micros = (ts * 1e6).round() as u64;
    push_u64(out, micros / 1_000_000);
    let frac = micros % 1_000_000;
    out.push(b'.');
    let digits = [
        frac / 100_000,
        frac / 10_000 % 10,
        frac / 1000 % 10,
        frac / 100 % 10,
        frac / 10 % 10,
        frac % 10,
    ];
    out.extend(digits.iter().map(|d| b'0' + *d as u8));
}

/// JSON string escaping. Control characters (ESC included) become `\u00XX`, so a hostile
/// line can never break out of its string.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1F | 0x7F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xF) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(partial: bool, content: &[u8]) -> String {
        let mut out = Vec::new();
        encode_json(&mut out, 17, 1704067200.123456, "r-1", Stream::Stdout, partial, content);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encodes_the_contract_shape() {
        assert_eq!(
            enc(false, b"hello"),
            r#"{"seq":17,"ts":1704067200.123456,"run_id":"r-1","stream":"stdout","line":"hello"}"#
        );
        assert!(enc(true, b"x").ends_with(r#""line":"x","partial":true}"#));
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let s = enc(false, b"a\xffb");
        assert!(s.ends_with("\"line\":\"a\u{FFFD}b\",\"lossy\":true}"), "{s}");
    }

    #[test]
    fn escapes_hostile_content_and_round_trips() {
        let nasty = "q\"b\\s\x1b[31mred\x07\u{7f}\ttab\rcr é";
        let s = enc(false, nasty.as_bytes());
        assert!(!s.bytes().any(|b| b < 0x20), "raw control byte in {s:?}");
        let back: WireRecord = serde_json::from_str(&s).unwrap();
        assert_eq!(back.line, nasty);
        assert_eq!(back.seq, 17);
        assert!(!back.partial && !back.lossy);
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let mut out = Vec::new();
        push_ts(&mut out, 5.000001);
        assert_eq!(out, b"5.000001");
    }
}
