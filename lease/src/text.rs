//! Shortening text that came from outside (lease values, net-conf.json, annotations) for
//! error messages and logs.
//!
//! Such text may hold any Unicode, so it must never be cut at a byte index: slicing a
//! `str` inside a multi-byte character panics, and a panic on a peer's malformed lease
//! would stop the daemon. [`clip`] counts characters and builds the result from whole
//! characters, so it cannot panic whatever the input.

use serde_json::Value;

/// The length, in characters, up to which error messages quote a value whole.
pub const MESSAGE_CHARS: usize = 64;

/// What [`clip`] appends to show that text was cut.
pub const ELLIPSIS: &str = "...";

/// `text` unchanged if it has at most `max_chars` characters (Unicode scalar values, not
/// bytes); otherwise its first `max_chars - 3` characters followed by [`ELLIPSIS`], so the
/// result never has more than `max_chars` characters (for a `max_chars` below 3, only the
/// ellipsis is kept). Never cuts inside a character.
pub fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().nth(max_chars).is_none() {
        return text.to_string();
    }
    let keep = max_chars.saturating_sub(ELLIPSIS.len());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(ELLIPSIS);
    out
}

/// A JSON value as error messages quote it: compact, and clipped to [`MESSAGE_CHARS`].
pub fn describe(value: &Value) -> String {
    clip(&value.to_string(), MESSAGE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(clip("", 64), "");
        assert_eq!(clip("abc", 3), "abc");
        // 64 characters but 68 bytes: short enough, although longer than 64 bytes.
        let text = format!("{}éééé", "a".repeat(60));
        assert_eq!(text.len(), 68);
        assert_eq!(clip(&text, 64), text);
    }

    #[test]
    fn long_text_is_cut_between_characters() {
        assert_eq!(clip("abcdef", 5), "ab...");
        // Byte 61 of this text is inside an 'é' (the panic `&text[..61]` used to hit).
        let text = format!("{}{}", "a".repeat(60), "é".repeat(10));
        assert_eq!(clip(&text, 64), format!("{}{}...", "a".repeat(60), "é"));
        assert_eq!(clip(&"€".repeat(100), 6), "€€€...");
        assert_eq!(clip("𝄞𝄞𝄞", 3), "𝄞𝄞𝄞");
        assert_eq!(clip("𝄞𝄞𝄞𝄞", 3), "...");
        assert_eq!(clip("𝄞𝄞𝄞𝄞", 1), "...");
    }

    #[test]
    fn the_result_never_exceeds_the_limit() {
        for max in 0..8 {
            for text in ["", "a", "é", "aé𝄞", "aaaaaaaaaa", "éééééééééé"] {
                let clipped = clip(text, max);
                assert!(
                    clipped.chars().count() <= max.max(ELLIPSIS.len()),
                    "{text} {max}"
                );
                if text.chars().count() <= max {
                    assert_eq!(clipped, text);
                }
            }
        }
    }
}
