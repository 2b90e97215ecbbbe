//! Protobuf text format as Triton's `config.pbtxt` files write it, made acceptable to
//! prost-reflect's parser: a list of messages without a colon (`input [ {..} ]`) gets one,
//! and nesting past protobuf's own recursion limit is refused before the recursive parser
//! could overflow the stack. Strings and `#` comments are skipped as the lexer skips them,
//! so a `[` inside either is never touched. `write` gives a message back in the same style.

use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};

/// protobuf's default recursion limit (C++ `TextFormat::Parser`), which Triton's parse uses.
pub const MAX_NESTING: usize = 100;

/// The text with the missing colons added, and where each was added (offsets in the new
/// text), so that an error's offset can be mapped back to the file as written.
#[derive(Debug)]
pub struct Prepared {
    pub text: String,
    inserted: Vec<usize>,
}

impl Prepared {
    /// The offset in the original text of `offset` in the prepared one.
    pub fn original_offset(&self, offset: usize) -> usize {
        offset - self.inserted.iter().take_while(|&&at| at < offset).count()
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Adds the colon protobuf's grammar allows to be left out before a list of messages, and
/// checks nesting. An error is the 1-based line and what is wrong.
pub fn prepare(text: &str) -> Result<Prepared, (usize, String)> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 64);
    let mut inserted = Vec::new();
    let mut copied = 0;
    let mut depth = 0usize;
    // The last significant token: an identifier (with where it ended) or a punctuation byte.
    let mut last: Option<Token> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                i = memchr_newline(bytes, i);
                continue;
            }
            b'"' | b'\'' => {
                i = string_end(bytes, i)
                    .ok_or_else(|| (line_column(text, i).0, "a string is not closed".to_owned()))?;
                last = Some(Token::Value);
                continue;
            }
            b'{' | b'<' | b'[' => {
                if b == b'[' {
                    if let Some(Token::FieldName { end }) = last {
                        out.push_str(&text[copied..end]);
                        inserted.push(out.len());
                        out.push(':');
                        copied = end;
                    }
                }
                depth += 1;
                if depth > MAX_NESTING {
                    return Err((
                        line_column(text, i).0,
                        format!("nests deeper than {MAX_NESTING} levels"),
                    ));
                }
                last = Some(Token::Punct(b));
            }
            b'}' | b'>' | b']' => {
                depth = depth.saturating_sub(1);
                last = Some(Token::Punct(b));
            }
            b if b.is_ascii_whitespace() => {}
            b if b.is_ascii_alphabetic() || b == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                // An identifier right after a colon is a value (an enum name); elsewhere it
                // names a field.
                last = Some(match last {
                    Some(Token::Punct(b':')) => Token::Value,
                    _ => Token::FieldName { end: i },
                });
                continue;
            }
            b':' | b',' | b';' => last = Some(Token::Punct(b)),
            _ => {
                // Numbers, signs, dots: part of a value.
                while i < bytes.len() && !is_boundary(bytes[i]) {
                    i += 1;
                }
                last = Some(Token::Value);
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    Ok(Prepared {
        text: out,
        inserted,
    })
}

/// `message` in text format as Triton's own files write it: fields in declaration order,
/// lists of messages as `input [ {..}, {..} ]`, scalar lists as `dims: [ 3, 224 ]`, map
/// entries as `key`/`value` messages sorted by key, so the output is the same every time.
pub fn write(message: &DynamicMessage) -> String {
    let mut out = String::new();
    write_fields(message, 0, &mut out);
    out
}

fn write_fields(message: &DynamicMessage, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for field in message.descriptor().fields() {
        if !message.has_field(&field) {
            continue;
        }
        let name = field.name();
        match &*message.get_field(&field) {
            Value::List(items) if matches!(field.kind(), Kind::Message(_)) => {
                out.push_str(&format!("{pad}{name} [\n"));
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&format!("{pad}  {{\n"));
                    write_fields(item.as_message().expect("a message list"), indent + 4, out);
                    let comma = if i + 1 < items.len() { "," } else { "" };
                    out.push_str(&format!("{pad}  }}{comma}\n"));
                }
                out.push_str(&format!("{pad}]\n"));
            }
            Value::List(items) => {
                let items: Vec<String> = items.iter().map(|v| scalar(v, &field.kind())).collect();
                out.push_str(&format!("{pad}{name}: [ {} ]\n", items.join(", ")));
            }
            Value::Map(entries) => {
                let Kind::Message(entry) = field.kind() else {
                    unreachable!("a map field's kind is its entry message")
                };
                let value_kind = entry.map_entry_value_field().kind();
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_by_key(|(key, _)| format!("{key:?}"));
                for (key, value) in sorted {
                    let key = scalar(
                        &Value::from(key.clone()),
                        &entry.map_entry_key_field().kind(),
                    );
                    out.push_str(&format!("{pad}{name} {{\n{pad}  key: {key}\n"));
                    match value.as_message() {
                        Some(inner) => {
                            out.push_str(&format!("{pad}  value {{\n"));
                            write_fields(inner, indent + 4, out);
                            out.push_str(&format!("{pad}  }}\n"));
                        }
                        None => {
                            out.push_str(&format!("{pad}  value: {}\n", scalar(value, &value_kind)))
                        }
                    }
                    out.push_str(&format!("{pad}}}\n"));
                }
            }
            Value::Message(inner) => {
                out.push_str(&format!("{pad}{name} {{\n"));
                write_fields(inner, indent + 2, out);
                out.push_str(&format!("{pad}}}\n"));
            }
            value => out.push_str(&format!("{pad}{name}: {}\n", scalar(value, &field.kind()))),
        }
    }
}

/// A scalar as text format writes it: strings quoted and escaped, enums by name.
fn scalar(value: &Value, kind: &Kind) -> String {
    match (value, kind) {
        (Value::String(s), _) => format!("{s:?}"),
        (Value::EnumNumber(n), Kind::Enum(e)) => e
            .get_value(*n)
            .map_or_else(|| n.to_string(), |v| v.name().to_owned()),
        (Value::Bool(b), _) => b.to_string(),
        (Value::I32(n), _) => n.to_string(),
        (Value::I64(n), _) => n.to_string(),
        (Value::U32(n), _) => n.to_string(),
        (Value::U64(n), _) => n.to_string(),
        (Value::F32(n), _) => n.to_string(),
        (Value::F64(n), _) => n.to_string(),
        (other, _) => format!("{other:?}"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Token {
    FieldName { end: usize },
    Value,
    Punct(u8),
}

fn is_boundary(b: u8) -> bool {
    b.is_ascii_whitespace() || b"{}<>[]:,;#\"'".contains(&b)
}

fn memchr_newline(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| from + p)
}

/// The offset after the string that starts at `start`, honouring backslash escapes; None
/// where the line or the text ends first (text format strings do not span lines).
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\n' => return None,
            b if b == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(text: &str) -> String {
        prepare(text).unwrap().text
    }

    #[test]
    fn a_colon_goes_before_a_list_that_lacks_one() {
        assert_eq!(
            prepared("input [ { name: \"x\" dims: [ 16 ] } ]"),
            "input: [ { name: \"x\" dims: [ 16 ] } ]"
        );
        assert_eq!(
            prepared("max_batch_size : 0\noutput\n  [ {} ]"),
            "max_batch_size : 0\noutput:\n  [ {} ]"
        );
        // After a comment between the name and the bracket too.
        assert_eq!(prepared("step # the steps\n[ ]"), "step: # the steps\n[ ]");
    }

    #[test]
    fn strings_and_comments_are_left_as_they_are() {
        for text in [
            "name: \"input [ x ]\"",
            "name: 'a\\' b ['",
            "# input [ {} ]\nname: \"x\"",
            "label_filename: \"l.txt\" # output [",
            "kind: KIND_CPU",
            "dims: [ 1, -1 ]",
        ] {
            assert_eq!(prepared(text), text);
        }
    }

    #[test]
    fn offsets_map_back_to_the_file_as_written() {
        let p = prepare("input [ ]\noutput [ bad ]").unwrap();
        let at = p.text.find("bad").unwrap();
        let original = p.original_offset(at);
        assert_eq!(&"input [ ]\noutput [ bad ]"[original..original + 3], "bad");
        assert_eq!(line_column("input [ ]\noutput [ bad ]", original), (2, 10));
    }

    #[test]
    fn deep_nesting_and_open_strings_are_refused() {
        let deep = "a { ".repeat(10_000);
        let (line, what) = prepare(&deep).unwrap_err();
        assert_eq!(line, 1);
        assert!(what.contains("deeper than 100"), "{what}");
        let (line, what) = prepare("name: \"x\nplatform: \"y\"").unwrap_err();
        assert_eq!((line, what.as_str()), (1, "a string is not closed"));
    }
}
