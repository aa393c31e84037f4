//! Documents read straight from the buffers of an Arrow string or binary array (a
//! Parquet row group or `datasets` record batch, handed over by `lmrs.records`), so no
//! Python `str` is made per document: building those strings (and, under the abi3 API,
//! copying each back to UTF-8) cost more than decompressing the Parquet pages.
//!
//! Arrow's layout: a values buffer holding every document's bytes back to back, and an
//! offsets buffer of `n + 1` little-endian i32 (i64 for the `large_` types) positions
//! into it. The caller sends the `n + 1` offsets of the rows it wants and the values
//! from the first of them on (only the bytes those rows use, so a slice of a large row
//! group is not copied whole): row `i` is `values[offsets[i] - offsets[0]..offsets[i + 1]
//! - offsets[0]]`. Nulls are the caller's business (it sends only arrays without them).

use crate::{Error, Result};

/// The rows of an Arrow array as text: `texts` the rows that are valid UTF-8, in order,
/// and `invalid` the indices (0-based within the array) of those that are not.
#[derive(Debug, Default)]
pub struct ArrowTexts<'a> {
    pub texts: Vec<&'a str>,
    pub invalid: Vec<usize>,
}

/// Reads the rows that `offsets` (their `n + 1` offsets, `wide`: i64, else i32) mark in
/// `values`. Malformed offsets (outside the values, decreasing, negative, a length that
/// is no whole number of offsets) are an error: the file is corrupt, and no row of it
/// is trusted.
pub fn arrow_texts<'a>(values: &'a [u8], offsets: &[u8], wide: bool) -> Result<ArrowTexts<'a>> {
    let width = if wide { 8 } else { 4 };
    let malformed = |what: &str| Error::Invalid(format!("malformed Arrow array: {what}"));
    if !offsets.len().is_multiple_of(width) || offsets.is_empty() {
        return Err(malformed("offsets buffer is not n + 1 offsets"));
    }
    let read = |bytes: &[u8]| -> Option<usize> {
        if wide {
            usize::try_from(i64::from_le_bytes(bytes.try_into().ok()?)).ok()
        } else {
            usize::try_from(i32::from_le_bytes(bytes.try_into().ok()?)).ok()
        }
    };
    let mut out = ArrowTexts {
        texts: Vec::with_capacity(offsets.len() / width - 1),
        invalid: Vec::new(),
    };
    let mut bounds = offsets.chunks_exact(width).map(read);
    let base = bounds
        .next()
        .flatten()
        .ok_or_else(|| malformed("negative offset"))?;
    let mut begin = 0;
    for (row, end) in bounds.enumerate() {
        let end = end
            .and_then(|end| end.checked_sub(base))
            .ok_or_else(|| malformed("negative or decreasing offset"))?;
        let bytes = values
            .get(begin..end)
            .ok_or_else(|| malformed("offsets outside the values or decreasing"))?;
        match std::str::from_utf8(bytes) {
            Ok(text) => out.texts.push(text),
            Err(_) => out.invalid.push(row),
        }
        begin = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets32(positions: &[i32]) -> Vec<u8> {
        positions.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    #[test]
    fn rows_slices_and_invalid_utf8() {
        let values = b"abc\xffdcaf\xc3\xa9";
        let all = arrow_texts(values, &offsets32(&[0, 3, 4, 4, 10]), false).expect("valid");
        assert_eq!(all.texts, ["abc", "", "dcaf\u{e9}"]);
        assert_eq!(all.invalid, [1]);
        // a slice of the array: its offsets, and the values from the first of them on
        let tail = arrow_texts(&values[4..], &offsets32(&[4, 4, 10]), false).expect("slice");
        assert_eq!(tail.texts, ["", "dcaf\u{e9}"]);
        assert!(tail.invalid.is_empty());
        let wide: Vec<u8> = [0i64, 3, 10].iter().flat_map(|p| p.to_le_bytes()).collect();
        let big = arrow_texts(values, &wide, true).expect("large_string layout");
        assert_eq!(big.texts, ["abc"]);
        assert_eq!(big.invalid, [1]);
    }

    #[test]
    fn malformed_offsets_are_errors_not_panics() {
        let values = b"abcdef";
        for positions in [
            vec![0, 7],    // past the values
            vec![0, 4, 2], // decreasing
            vec![3, 2],    // below the first offset
            vec![-1, 3],   // negative
            vec![],        // not even the first offset
        ] {
            let result = arrow_texts(values, &offsets32(&positions), false);
            assert!(matches!(result, Err(Error::Invalid(_))), "{positions:?}");
        }
        let ragged = arrow_texts(values, &[0, 0, 0, 0, 3], false);
        assert!(matches!(ragged, Err(Error::Invalid(_))));
        let empty = arrow_texts(values, &offsets32(&[2]), false).expect("no rows");
        assert!(empty.texts.is_empty() && empty.invalid.is_empty());
    }
}
