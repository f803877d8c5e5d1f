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

/// Go's `sets.String.List()` of a few values: sorted byte-wise, without duplicates, kept on the
/// stack up to eight values (a Pod's containers rarely give more).
pub struct SortedSet<T> {
    len: usize,
    inline: [T; 8],
    spill: Vec<T>,
}

impl<T: Ord + Copy + Default> SortedSet<T> {
    pub fn new() -> Self {
        SortedSet {
            len: 0,
            inline: [T::default(); 8],
            spill: Vec::new(),
        }
    }

    pub fn insert(&mut self, value: T) {
        if !self.spill.is_empty() {
            if let Err(i) = self.spill.binary_search(&value) {
                self.spill.insert(i, value);
            }
            return;
        }
        let Err(i) = self.inline[..self.len].binary_search(&value) else {
            return;
        };
        if self.len == self.inline.len() {
            self.spill.reserve(2 * self.len);
            self.spill.extend_from_slice(&self.inline);
            self.spill.insert(i, value);
        } else {
            self.inline.copy_within(i..self.len, i + 1);
            self.inline[i] = value;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[T] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Ord + Copy + Default> Default for SortedSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Ord + Copy + Default> FromIterator<T> for SortedSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut set = SortedSet::new();
        for value in iter {
            set.insert(value);
        }
        set
    }
}

/// An integer as the decimal text Go's `strconv.Itoa` gives, on the stack, ordered as that text
/// (upstream keeps host ports as strings in a set: "10000" sorts before "9090").
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct DecimalText {
    len: u8,
    bytes: [u8; 20],
}

impl DecimalText {
    pub fn new(value: i64) -> Self {
        let mut digits = [0u8; 20];
        let mut n = value.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut text = DecimalText::default();
        let mut len = 0;
        if value < 0 {
            text.bytes[0] = b'-';
            len = 1;
        }
        let count = digits.len() - i;
        text.bytes[len..len + count].copy_from_slice(&digits[i..]);
        text.len = (len + count) as u8;
        text
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and '-' are ever written.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl Ord for DecimalText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for DecimalText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Appends the decimal text of `n`.
pub fn push_decimal(out: &mut String, n: i64) {
    out.push_str(DecimalText::new(n).as_str());
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
