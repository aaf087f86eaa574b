//! Making hostile text safe for a terminal. A log line, a command line or an error
//! message may hold escape sequences (clear the screen, retitle the window, write the
//! clipboard with OSC 52), C1 controls, bidirectional overrides that reorder what is shown,
//! or zero-width characters that hide text. [`sanitize`] is the one function every terminal
//! writer uses: it shows each of them escaped, visibly, and executes none.

use std::borrow::Cow;

/// Characters that change how the rest of a line is shown without being visible
/// themselves: bidirectional embeddings, overrides, isolates and marks, and zero-width
/// characters.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || is_invisible_format(c)
}

/// Text safe to print on a terminal: C0 and C1 controls (but tab), DEL, and invisible
/// formatting characters are written as escapes (`\e[2J`, `\r`, `\x07`, `\u{202e}`), so an
/// escape sequence shows as text instead of acting. Borrows when there is nothing to do.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\u{1b}' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_shows_every_hostile_character_escaped() {
        let cases = [
            ("plain text", "plain text"),
            ("tab\tkept", "tab\tkept"),
            ("\x1b[2J\x1b[Hclear", "\\e[2J\\e[Hclear"),
            ("\x1b]52;c;aGk=\x07", "\\e]52;c;aGk=\\x07"),
            ("over\rwrite", "over\\rwrite"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("del\x7f", "del\\x7f"),
            ("abc\u{202e}fed", "abc\\u{202e}fed"),
            ("\u{2066}iso\u{2069}", "\\u{2066}iso\\u{2069}"),
            ("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}"),
            ("é ü 漢字 🙂", "é ü 漢字 🙂"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input:?}");
        }
        assert!(matches!(sanitize("fine"), Cow::Borrowed(_)));
    }
}
