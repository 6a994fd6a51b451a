//! Streaming: which part of a row's text is final and can be shown.

use std::ops::ControlFlow;

/// Where streamed text goes: `(row, piece)`; `Break` stops that row.
pub(crate) type TextSink<'a> = &'a mut TextFn<'a>;
pub(crate) type TextFn<'a> = dyn FnMut(usize, &str) -> ControlFlow<()> + 'a;
/// Where one row's streamed text goes; `Break` stops the row.
pub(crate) type PieceFn<'a> = dyn FnMut(&str) -> ControlFlow<()> + 'a;

/// How much of `text` can be shown: not a trailing replacement character (a UTF-8
/// sequence split across byte tokens) and not a suffix that may grow into a stop string.
pub(crate) fn stream_safe_len(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    while text[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let held = stops
        .iter()
        .flat_map(|s| {
            s.char_indices()
                .skip(1)
                .map(move |(i, _)| &s[..i])
                .filter(|prefix| text[..end].ends_with(prefix))
                .map(str::len)
        })
        .max()
        .unwrap_or(0);
    end - held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_holds_back_partial_characters_and_stop_prefixes() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(stream_safe_len("abc", &stops), 3);
        assert_eq!(stream_safe_len("abc\u{FFFD}", &stops), 3);
        assert_eq!(stream_safe_len("abc\n", &stops), 3);
        assert_eq!(stream_safe_len("abcEN", &stops), 3);
        assert_eq!(stream_safe_len("abcE", &[]), 4);
    }
}
