//! Making hostile text safe for a terminal: escape sequences and control characters are
//! removed, so a log line cannot move the cursor, retitle the window, or hide text.

use std::borrow::Cow;

/// Removes ANSI escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \`, and
/// two-byte `ESC x`) and every other control character except tab.
pub fn strip_escapes(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in @..~.
                    for c in it.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') | Some('P') | Some('_') | Some('^') | Some('X') => {
                    // String sequences end at BEL or ST (ESC \).
                    while let Some(c) = it.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && it.peek() == Some(&'\\') {
                            it.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\u{9b}' => {
                // 8-bit CSI.
                for c in it.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_sequences_and_controls() {
        let cases = [
            ("plain text", "plain text"),
            ("\x1b[31mred\x1b[0m", "red"),
            ("\x1b]0;owned title\x07after", "after"),
            ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
            ("a\rb\x08c\x07d", "abcd"),
            ("tab\tkept", "tab\tkept"),
            ("\x1b[2J\x1b[Hclear", "clear"),
            ("\u{9b}31mc1", "c1"),
            ("unterminated \x1b[", "unterminated "),
            ("é ü 漢字", "é ü 漢字"),
        ];
        for (input, want) in cases {
            assert_eq!(strip_escapes(input), want, "{input:?}");
        }
    }

    #[test]
    fn borrows_when_nothing_to_strip() {
        assert!(matches!(strip_escapes("fine"), Cow::Borrowed(_)));
    }
}
