//! How a fuzz input becomes the bytes under test.
//!
//! Design: most of what Flotilla parses is signed or hash-pinned, so bytes a
//! fuzzer invents from nothing are rejected at the first signature or hash check
//! and never reach the code behind it. Each target therefore reads a mode byte
//! first: in raw mode the rest of the input is the document, in splice mode it
//! is one edit of a genuine document (see [`splice`]). Raw mode still reaches
//! every byte string; splice mode starts next to a valid document without
//! needing a seed corpus.

/// The document a fuzz input stands for.
#[derive(Debug)]
pub enum Shaped<'a> {
    /// The input's bytes after the mode byte, as they are.
    Raw(&'a [u8]),
    /// A genuine document with one edit applied.
    Spliced(Vec<u8>),
}

impl Shaped<'_> {
    /// The bytes under test.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Shaped::Raw(b) => b,
            Shaped::Spliced(v) => v,
        }
    }
}

/// Reads `mode`'s lowest bit: 0 takes `rest` raw, 1 splices `rest` into `genuine`.
pub fn shape<'a>(mode: u8, rest: &'a [u8], genuine: &[u8]) -> Shaped<'a> {
    if mode & 1 == 0 {
        Shaped::Raw(rest)
    } else {
        Shaped::Spliced(splice(genuine, rest))
    }
}

/// Applies one edit to a copy of `genuine`. The edit's first two bytes are an
/// offset (big-endian, taken modulo the document's length plus one), its third
/// the number of bytes to remove there (clipped at the end), and the rest the
/// bytes to insert in their place. Missing header bytes read as zero, so the
/// empty edit gives the genuine document back.
pub fn splice(genuine: &[u8], edit: &[u8]) -> Vec<u8> {
    let byte = |i: usize| usize::from(edit.get(i).copied().unwrap_or(0));
    let at = ((byte(0) << 8) | byte(1)) % (genuine.len() + 1);
    let end = (at + byte(2)).min(genuine.len());
    let insert = edit.get(3..).unwrap_or_default();
    let mut out = Vec::with_capacity(genuine.len() + insert.len());
    out.extend_from_slice(&genuine[..at]);
    out.extend_from_slice(insert);
    out.extend_from_slice(&genuine[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_edit_gives_the_genuine_document_back() {
        assert_eq!(splice(b"abcdef", &[]), b"abcdef");
    }

    #[test]
    fn an_edit_replaces_the_span_it_names() {
        assert_eq!(splice(b"abcdef", &[0, 2, 3, b'X']), b"abXf");
        assert_eq!(splice(b"abcdef", &[0, 6, 9, b'!']), b"abcdef!");
        assert_eq!(splice(b"abcdef", &[0, 7, 1, b'>']), b">bcdef");
    }
}
