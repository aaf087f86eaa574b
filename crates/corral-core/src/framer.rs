//! Record framing: bytes from a pipe become records at newlines.
//!
//! The framer is a pure function over a buffer; the caller keeps the unconsumed tail
//! (an incomplete line) and passes it again with the next read. Invariants:
//! - every byte consumed belongs to exactly one record, in order, so concatenating the
//!   records' bytes gives back exactly what was read;
//! - a record's content (without its newline) is at most `max` bytes; a longer line is cut
//!   into chunks marked `partial`, every chunk but the one that ends the line;
//! - a cut never splits a UTF-8 character when the bytes are valid UTF-8 (it backs off to a
//!   character boundary), so chunks of a valid line stay valid.

/// Default longest record: 64 KiB of content.
pub const MAX_RECORD: usize = 64 * 1024;

/// One record inside the framed buffer: `buf[start..end]`, including the newline if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
    /// The line continues in the next record.
    pub partial: bool,
}

impl Frame {
    /// The record's content: its bytes without the trailing newline.
    pub fn content<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let b = &buf[self.start..self.end];
        b.strip_suffix(b"\n").unwrap_or(b)
    }
}

/// Frames `buf`, appending records to `out`. Returns how many bytes were consumed; the
/// rest is an incomplete line to pass again, with more bytes after it, on the next call.
/// With `eof`, everything is consumed (a last line without a newline becomes a record).
pub fn frame(buf: &[u8], max: usize, eof: bool, out: &mut Vec<Frame>) -> usize {
    assert!(max >= 4, "records must hold at least one UTF-8 character");
    let mut pos = 0;
    while pos < buf.len() {
        let window = &buf[pos..buf.len().min(pos + max + 1)];
        if let Some(i) = memchr::memchr(b'\n', window) {
            out.push(Frame {
                start: pos,
                end: pos + i + 1,
                partial: false,
            });
            pos += i + 1;
        } else if buf.len() - pos > max {
            let cut = char_boundary(buf, pos, pos + max);
            out.push(Frame {
                start: pos,
                end: cut,
                partial: true,
            });
            pos = cut;
        } else if eof {
            out.push(Frame {
                start: pos,
                end: buf.len(),
                partial: false,
            });
            pos = buf.len();
        } else {
            break;
        }
    }
    pos
}

/// Moves `cut` back (at most 3 bytes) to the lead byte of the UTF-8 character it would
/// split. Where no lead byte is found (invalid UTF-8), the cut stays where it was asked.
fn char_boundary(buf: &[u8], start: usize, cut: usize) -> usize {
    let is_cont = |b: u8| b & 0xC0 == 0x80;
    let mut c = cut;
    while c > start && cut - c < 3 && is_cont(buf[c]) {
        c -= 1;
    }
    if c > start && !is_cont(buf[c]) {
        c
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], max: usize) -> Vec<(Vec<u8>, bool)> {
        let mut pending = Vec::new();
        let mut records = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            pending.extend_from_slice(chunk);
            let eof = i == chunks.len() - 1;
            let mut frames = Vec::new();
            let used = frame(&pending, max, eof, &mut frames);
            for f in &frames {
                records.push((pending[f.start..f.end].to_vec(), f.partial));
            }
            pending.drain(..used);
        }
        assert!(pending.is_empty());
        records
    }

    fn texts(records: &[(Vec<u8>, bool)]) -> Vec<(String, bool)> {
        records
            .iter()
            .map(|(b, p)| (String::from_utf8_lossy(b).into_owned(), *p))
            .collect()
    }

    #[test]
    fn splits_at_newlines_and_keeps_incomplete_lines() {
        let r = run(&[b"a\nbb\nc", b"cc\n", b""], 64);
        assert_eq!(
            texts(&r),
            [
                ("a\n".into(), false),
                ("bb\n".into(), false),
                ("ccc\n".into(), false)
            ]
        );
    }

    #[test]
    fn last_line_without_newline_is_flushed_at_eof() {
        let r = run(&[b"x\ny"], 64);
        assert_eq!(texts(&r), [("x\n".into(), false), ("y".into(), false)]);
    }

    #[test]
    fn empty_lines_are_records() {
        let r = run(&[b"\n\n\n"], 8);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|(b, p)| b == b"\n" && !p));
    }

    #[test]
    fn long_lines_become_partial_chunks() {
        let line = vec![b'x'; 20];
        let mut input = line.clone();
        input.push(b'\n');
        let r = run(&[&input], 8);
        assert_eq!(
            r.iter().map(|(b, p)| (b.len(), *p)).collect::<Vec<_>>(),
            [(8, true), (8, true), (5, false)]
        );
    }

    #[test]
    fn a_line_of_exactly_max_is_one_record() {
        let mut input = vec![b'y'; 8];
        input.push(b'\n');
        let r = run(&[&input, b""], 8);
        assert_eq!(r, [(input, false)]);
    }

    #[test]
    fn a_long_line_without_newline_is_chunked_then_flushed() {
        let r = run(&[&[b'z'; 10][..], &[b'z'; 10][..], b""], 8);
        let lens: Vec<_> = r.iter().map(|(b, p)| (b.len(), *p)).collect();
        assert_eq!(lens, [(8, true), (8, true), (4, false)]);
    }

    #[test]
    fn cuts_do_not_split_utf8_characters() {
        let line = "é".repeat(10); // 20 bytes, 2 per character
        let r = run(&[line.as_bytes(), b"\n"], 7);
        for (b, _) in &r {
            assert!(std::str::from_utf8(b).is_ok(), "{b:?}");
        }
        let joined: Vec<u8> = r.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(joined, format!("{line}\n").as_bytes());
    }

    #[test]
    fn invalid_utf8_is_cut_where_asked() {
        let input = [0x80u8; 20];
        let r = run(&[&input, b""], 8);
        assert_eq!(
            r.iter().map(|(b, _)| b.len()).collect::<Vec<_>>(),
            [8, 8, 4]
        );
    }

    /// Exhaustive over small inputs: every split of every input made of `a`, `é` bytes,
    /// invalid bytes and newlines gives back the exact bytes with bounded records.
    #[test]
    fn concatenation_is_identity_for_all_splits() {
        let alphabet: [&[u8]; 4] = [b"a", "é".as_bytes(), &[0xFF], b"\n"];
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = inputs.clone();
        for _ in 0..6 {
            last = last
                .iter()
                .flat_map(|i| alphabet.iter().map(move |a| [i.as_slice(), a].concat()))
                .collect();
            inputs.extend(last.iter().cloned());
        }
        for input in &inputs {
            for split in 0..=input.len() {
                for max in [4, 5, 64] {
                    let r = run(&[&input[..split], &input[split..]], max);
                    let joined: Vec<u8> = r.iter().flat_map(|(b, _)| b.clone()).collect();
                    assert_eq!(&joined, input);
                    for (i, (b, partial)) in r.iter().enumerate() {
                        let content = b.strip_suffix(b"\n").unwrap_or(b);
                        assert!(content.len() <= max);
                        assert!(!content.contains(&b'\n'));
                        assert_eq!(*partial, !b.ends_with(b"\n") && i + 1 < r.len());
                    }
                }
            }
        }
    }
}
