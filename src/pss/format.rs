//! Text helpers that reproduce upstream's message formatting byte for byte.

use std::fmt::Write;

use unicode_general_category::{GeneralCategory, get_general_category};

/// Upstream's `pluralize`: singular only for exactly one.
pub fn plural<'a>(count: usize, singular: &'a str, plural: &'a str) -> &'a str {
    if count == 1 { singular } else { plural }
}

/// Upstream's `joinQuote`: `"a", "b"` (no escaping), empty for no items.
pub fn quote_join<S: AsRef<str>>(out: &mut String, items: &[S]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(item.as_ref());
        out.push('"');
    }
}

/// `container "a"` / `containers "a", "b"`.
pub fn containers_phrase(out: &mut String, names: &[&str]) {
    out.push_str(plural(names.len(), "container ", "containers "));
    quote_join(out, names);
}

/// Sorts byte-wise and removes duplicates, as Go's `sets.String.List()`.
pub fn sorted_unique<T: Ord>(items: &mut Vec<T>) {
    items.sort_unstable();
    items.dedup();
}

/// Go's `strconv.Quote` (the `%q` verb): double-quoted, with Go's escapes for `"`, `\`, control
/// characters and every rune Go does not consider printable.
pub fn go_quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if go_is_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
fn go_is_print(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    use GeneralCategory::*;
    !matches!(
        get_general_category(c),
        Control
            | Format
            | Surrogate
            | PrivateUse
            | Unassigned
            | SpaceSeparator
            | LineSeparator
            | ParagraphSeparator
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        go_quote(&mut out, s);
        out
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(quoted("unconfined"), r#""unconfined""#);
        assert_eq!(quoted(""), r#""""#);
        assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quoted("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(quoted("\u{0}\u{7f}\u{1b}"), r#""\x00\x7f\x1b""#);
        assert_eq!(quoted("héllo 世界"), "\"héllo 世界\"");
        assert_eq!(quoted("\u{a0}\u{200b}\u{e000}"), r#""\u00a0\u200b\ue000""#);
        assert_eq!(quoted("\u{f0000}"), r#""\U000f0000""#);
    }

    #[test]
    fn quote_join_and_plural() {
        let mut s = String::new();
        quote_join::<&str>(&mut s, &[]);
        assert_eq!(s, "");
        containers_phrase(&mut s, &["a", "b"]);
        assert_eq!(s, r#"containers "a", "b""#);
        s.clear();
        containers_phrase(&mut s, &["a"]);
        assert_eq!(s, r#"container "a""#);
        let mut v = vec!["b", "a", "b", "B"];
        sorted_unique(&mut v);
        assert_eq!(v, ["B", "a", "b"]);
    }
}
