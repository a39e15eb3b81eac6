//! Keys and values between the terminal and the wire: input as text or hex,
//! output as text when it is printable UTF-8 and as `0x…` hex otherwise.

use serde_json::{json, Value};

use crate::error::{OpsError, Result};

/// How keys and values typed on the command line are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// The argument's UTF-8 bytes, as typed.
    #[default]
    Text,
    /// Hexadecimal digits (an optional `0x` prefix is allowed).
    Hex,
}

impl InputFormat {
    /// The bytes `arg` stands for. `what` names the argument in errors.
    pub fn parse(self, what: &str, arg: &str) -> Result<Vec<u8>> {
        match self {
            InputFormat::Text => Ok(arg.as_bytes().to_vec()),
            InputFormat::Hex => decode_hex(arg).ok_or_else(|| {
                OpsError::InvalidInput(format!(
                    "{what} {arg:?} is not hexadecimal (expected an even number of 0-9a-f digits)"
                ))
            }),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// The bytes of a hex string (`0x` prefix optional), or `None`.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The text of `bytes` if it is UTF-8 without control characters (tabs
/// and newlines excepted).
pub fn printable(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.chars()
        .all(|c| !c.is_control() || c == '\t' || c == '\n')
        .then_some(text)
}

/// `bytes` for a person: the text itself when printable, `0x…` otherwise
/// (and for the empty string, `""`).
pub fn readable(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "\"\"".into();
    }
    match printable(bytes) {
        Some(text) => text.to_string(),
        None => format!("0x{}", encode_hex(bytes)),
    }
}

/// `bytes` as JSON fields: `{name}` holds the text (null when not
/// printable) and `{name}_hex` always holds the hex.
pub fn json_fields(name: &str, bytes: &[u8], into: &mut serde_json::Map<String, Value>) {
    into.insert(
        name.to_string(),
        printable(bytes).map_or(Value::Null, |t| json!(t)),
    );
    into.insert(format!("{name}_hex"), json!(encode_hex(bytes)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(encode_hex(b"\x00\xffab"), "00ff6162");
        assert_eq!(decode_hex("00FF6162").unwrap(), b"\x00\xffab");
        assert_eq!(decode_hex("0x6162").unwrap(), b"ab");
        assert!(decode_hex("abc").is_none());
        assert!(decode_hex("zz").is_none());
    }

    #[test]
    fn readable_prefers_text_and_falls_back_to_hex() {
        assert_eq!(readable(b"hello world"), "hello world");
        assert_eq!(readable(b"\x00\x01"), "0x0001");
        assert_eq!(readable(b"\xff"), "0xff");
        assert_eq!(readable(b""), "\"\"");
        assert_eq!(readable("héllo".as_bytes()), "héllo");
    }

    #[test]
    fn json_fields_carry_text_and_hex() {
        let mut map = serde_json::Map::new();
        json_fields("value", b"\x00", &mut map);
        json_fields("key", b"k", &mut map);
        assert_eq!(map["value"], Value::Null);
        assert_eq!(map["value_hex"], "00");
        assert_eq!(map["key"], "k");
        assert_eq!(map["key_hex"], "6b");
    }

    #[test]
    fn hex_input_is_checked() {
        assert_eq!(InputFormat::Hex.parse("key", "0a0b").unwrap(), vec![10, 11]);
        let err = InputFormat::Hex.parse("key", "xyz").unwrap_err();
        assert!(err.to_string().contains("not hexadecimal"), "{err}");
        assert_eq!(InputFormat::Text.parse("key", "xyz").unwrap(), b"xyz");
    }
}
