//! Records and their wire form.
//!
//! A record is one line (or one chunk of an over-long line) of a run's output. Its JSON
//! form is a public contract (issue "corral core"):
//! `{"seq":17,"ts":1704067200.123456,"run_id":"…","stream":"stdout","line":"…"}` with
//! `"partial":true` and `"lossy":true` only when set. The encoder writes into a caller's
//! buffer so that a batch of records is encoded once and shared by every follower.
//!
//! **What `stream` carries.** The stream is the *channel within a run's source*, never
//! the source itself: `stdout` and `stderr` (a process's two pipes, local or remote),
//! `file` (the content of a followed file), and `system` (corral's own notes about the
//! run). *What* the source is (a child's pid, a file's path, a host, a container id) is a
//! property of the run, recorded once with the run, not repeated in every record. So a new
//! kind of source needs no change to the record format, the encoder or the seq index: it
//! hands its bytes in on one of these channels.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lifecycle notes written by corral itself (`started pid 123`, `exited with code 3`).
    System,
    /// The content of a followed file (`tail -F` of a local or remote file).
    File,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
            Stream::File => "file",
        }
    }

    /// The stream's byte in the seq index. Values are forever: they are on disk.
    pub fn to_u8(self) -> u8 {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::System => 2,
            Stream::File => 3,
        }
    }

    pub fn from_u8(v: u8) -> Option<Stream> {
        match v {
            0 => Some(Stream::Stdout),
            1 => Some(Stream::Stderr),
            2 => Some(Stream::System),
            3 => Some(Stream::File),
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
            "file" => Ok(Stream::File),
            _ => Err(format!(
                "unknown stream `{s}`; expected stdout, stderr, file or system"
            )),
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
    let mut middle = Vec::with_capacity(64 + run_id.len());
    encode_middle(&mut middle, (ts * 1e6).round() as u64, run_id, stream);
    encode_with_middle(out, seq, &middle, partial, content);
}

/// The part of a record's JSON that records of one batch share (same timestamp, run and
/// stream): `,"ts":…,"run_id":"…","stream":"…","line":"`. A batch encoder computes it once
/// and passes it to [`encode_with_middle`] for every record, which then costs little more
/// than copying the line.
pub fn encode_middle(out: &mut Vec<u8>, ts_micros: u64, run_id: &str, stream: Stream) {
    out.extend_from_slice(b",\"ts\":");
    push_ts_micros(out, ts_micros);
    out.extend_from_slice(b",\"run_id\":\"");
    escape_into(out, run_id);
    out.extend_from_slice(b"\",\"stream\":\"");
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(b"\",\"line\":\"");
}

/// Appends one record's JSON object given its shared `middle` (see [`encode_middle`]).
/// The output is exactly that of [`encode_json`].
pub fn encode_with_middle(
    out: &mut Vec<u8>,
    seq: u64,
    middle: &[u8],
    partial: bool,
    content: &[u8],
) {
    out.reserve(content.len() + middle.len() + 48);
    out.extend_from_slice(b"{\"seq\":");
    push_u64(out, seq);
    out.extend_from_slice(middle);
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

/// Appends the decimal digits of `v`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
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
#[cfg(test)]
fn push_ts(out: &mut Vec<u8>, ts: f64) {
    push_ts_micros(out, (ts * 1e6).round() as u64);
}

fn push_ts_micros(out: &mut Vec<u8>, micros: u64) {
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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that needs escaping (below 0x20, `"`, `\\`, DEL), and
/// possibly of bytes after the first such byte (borrows only propagate upwards), so the
/// lowest bit set marks the first byte to escape. Bytes of multi-byte UTF-8 characters
/// (0x80 and up) never match.
#[inline(always)]
fn escape_mask(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    (w.wrapping_sub(ONES * 0x20) & !w
        | zero(w ^ (ONES * b'"' as u64))
        | zero(w ^ (ONES * b'\\' as u64))
        | zero(w ^ (ONES * 0x7F)))
        & HIGHS
}

#[inline(always)]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0x7F
}

/// The index of the first byte at or after `i` that needs escaping, or `bytes.len()`.
/// Log lines are mostly plain text, so this looks at 16 bytes per step.
#[inline]
fn find_escape(bytes: &[u8], i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    let i = find_escape_sse2(bytes, i);
    find_escape_swar(bytes, i)
}

/// SSE2 is part of every x86_64 CPU, so this needs no runtime detection.
#[cfg(target_arch = "x86_64")]
#[inline]
fn find_escape_sse2(bytes: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is always available on x86_64; every load reads 16 bytes inside `bytes`.
    unsafe {
        let ctl = _mm_set1_epi8(0x1F);
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let del = _mm_set1_epi8(0x7F);
        while i + 16 <= bytes.len() {
            let v = _mm_loadu_si128(bytes.as_ptr().add(i) as *const __m128i);
            // v <= 0x1F (unsigned) exactly when max(v, 0x1F) == 0x1F.
            let low = _mm_cmpeq_epi8(_mm_max_epu8(v, ctl), ctl);
            let special = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                _mm_or_si128(_mm_cmpeq_epi8(v, del), low),
            );
            let m = _mm_movemask_epi8(special);
            if m != 0 {
                return i + m.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    i
}

/// The portable version: 16 bytes per step as two 8-byte words.
#[inline]
fn find_escape_swar(bytes: &[u8], mut i: usize) -> usize {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    while i + 16 <= bytes.len() {
        let (a, b) = (escape_mask(word(i)), escape_mask(word(i + 8)));
        if a | b != 0 {
            let m = if a != 0 { a } else { b };
            return i + if a != 0 { 0 } else { 8 } + (m.trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    while i < bytes.len() && !needs_escape(bytes[i]) {
        i += 1;
    }
    i
}

/// JSON string escaping. Control characters (ESC included) become `\u00XX`, so a hostile
/// line can never break out of its string. Clean runs between escapes are copied whole.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len());
    let mut from = 0;
    loop {
        let i = find_escape(bytes, from);
        out.extend_from_slice(&bytes[from..i]);
        let Some(&b) = bytes.get(i) else {
            return;
        };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xF) as usize]);
            }
        }
        from = i + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(partial: bool, content: &[u8]) -> String {
        let mut out = Vec::new();
        encode_json(
            &mut out,
            17,
            1704067200.123456,
            "r-1",
            Stream::Stdout,
            partial,
            content,
        );
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
        assert!(
            s.ends_with("\"line\":\"a\u{FFFD}b\",\"lossy\":true}"),
            "{s}"
        );
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

    /// Every stream goes through its three forms (JSON name, index byte, wire record)
    /// and back; `file` is the channel of followed files.
    #[test]
    fn every_stream_round_trips_through_name_byte_and_json() {
        let all = [Stream::Stdout, Stream::Stderr, Stream::System, Stream::File];
        for (i, s) in all.into_iter().enumerate() {
            assert_eq!(s.to_u8(), i as u8);
            assert_eq!(Stream::from_u8(s.to_u8()), Some(s));
            assert_eq!(s.as_str().parse::<Stream>(), Ok(s));
            let mut out = Vec::new();
            encode_json(&mut out, 1, 1.0, "r", s, false, b"x");
            let back: WireRecord = serde_json::from_slice(&out).unwrap();
            assert_eq!(back.stream, s);
            assert!(String::from_utf8(out)
                .unwrap()
                .contains(&format!("\"stream\":\"{}\"", s.as_str())));
        }
        assert_eq!(Stream::from_u8(4), None);
        assert!("pipe".parse::<Stream>().unwrap_err().contains("file"));
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let mut out = Vec::new();
        push_ts(&mut out, 5.000001);
        assert_eq!(out, b"5.000001");
    }
    /// The escaper that skips 8 clean bytes at a time must agree with the obvious one
    /// byte by byte, wherever the special byte sits in the word.
    #[test]
    fn word_at_a_time_escaping_matches_the_byte_loop() {
        fn reference(s: &str) -> Vec<u8> {
            let mut out = Vec::new();
            for c in s.chars() {
                match c {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    c if (c as u32) < 0x20 || c as u32 == 0x7F => {
                        out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                    }
                    c => out.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            out
        }
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}', 'é', '€', ' ', '~'])
            .collect();
        for len in 0..40 {
            for pos in 0..len {
                for &c in &specials {
                    let s: String = (0..len).map(|i| if i == pos { c } else { 'a' }).collect();
                    let mut out = Vec::new();
                    escape_into(&mut out, &s);
                    assert_eq!(out, reference(&s), "{s:?}");
                    let first = s.bytes().position(needs_escape).unwrap_or(s.len());
                    assert_eq!(find_escape_swar(s.as_bytes(), 0), first, "{s:?}");
                }
            }
        }
        for b in 0u8..0x80 {
            let s: String = std::iter::repeat_n(char::from(b), 17).collect();
            let mut out = Vec::new();
            escape_into(&mut out, &s);
            assert_eq!(out, reference(&s), "{s:?}");
        }
    }

    #[test]
    fn a_shared_middle_gives_the_same_bytes() {
        let mut middle = Vec::new();
        encode_middle(&mut middle, 1_704_067_200_123_456, "r-1", Stream::Stderr);
        let mut a = Vec::new();
        encode_with_middle(&mut a, 9, &middle, true, b"x\"y");
        let mut b = Vec::new();
        encode_json(
            &mut b,
            9,
            1704067200.123456,
            "r-1",
            Stream::Stderr,
            true,
            b"x\"y",
        );
        assert_eq!(a, b);
    }
}
