//! Splits a YAML stream into documents the way kubectl does (a line starting with `---`, followed
//! by nothing but blanks or a comment), keeping each document's first line for error reports.

/// One document of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Document<'a> {
    pub text: &'a str,
    /// 1-based line of the source where `text` starts.
    pub first_line: usize,
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    })
}

/// Whether a document holds anything but blanks, comments and a `...` end marker.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "..."
    })
}

/// The non-empty documents of `text`.
pub fn documents(text: &str) -> impl Iterator<Item = Document<'_>> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line.trim_end_matches(['\n', '\r'])) {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
    });
    docs.into_iter().filter(|d| !is_blank(d.text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_kubectl() {
        let docs: Vec<_> = documents("---\na: 1\n--- # c\n\n---\nb: 2\n---x: no\nc: 3\n").collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0],
            Document {
                text: "a: 1\n",
                first_line: 2
            }
        );
        assert_eq!(docs[1].text, "b: 2\n---x: no\nc: 3\n");
        assert_eq!(docs[1].first_line, 6);
        assert_eq!(documents("").count(), 0);
        assert_eq!(documents("# only a comment\n...\n").count(), 0);
    }
}
