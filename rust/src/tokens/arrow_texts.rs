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
//!
//! From Python the array arrives through the Arrow C Data Interface (the
//! `__arrow_c_array__` PyCapsules pyarrow gives any array): [`c_array_bytes`] reads the
//! offsets and values where pyarrow keeps them, without a copy.

use std::ffi::{c_char, c_void, CStr};

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
    let read = |bytes: &[u8]| offset_value(bytes, wide);
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

/// One little-endian offset (`wide`: 8 bytes, else 4) as a position; None when it is
/// negative or `bytes` is not one offset long.
fn offset_value(bytes: &[u8], wide: bool) -> Option<usize> {
    if wide {
        usize::try_from(i64::from_le_bytes(bytes.try_into().ok()?)).ok()
    } else {
        usize::try_from(i32::from_le_bytes(bytes.try_into().ok()?)).ok()
    }
}

/// One array's `(values, offsets, wide)`, as [`arrow_texts`] takes them.
pub type ArrowBuffers<'a> = (&'a [u8], &'a [u8], bool);

/// The rows of several arrays, given as [`arrow_texts`] takes each, in order, as one
/// batch: `invalid` counts rows across all of them (array 0's rows first).
pub fn arrow_texts_of<'a>(arrays: &[ArrowBuffers<'a>]) -> Result<ArrowTexts<'a>> {
    let mut all = ArrowTexts::default();
    let mut rows_before = 0;
    for &(values, offsets, wide) in arrays {
        let rows = arrow_texts(values, offsets, wide)?;
        let count = rows.texts.len() + rows.invalid.len();
        all.texts.extend(rows.texts);
        all.invalid
            .extend(rows.invalid.iter().map(|row| row + rows_before));
        rows_before += count;
    }
    Ok(all)
}

/// `struct ArrowSchema` of the Arrow C Data Interface (its ABI is fixed by the spec).
#[repr(C)]
pub struct FfiArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut FfiArrowSchema,
    dictionary: *mut FfiArrowSchema,
    release: Option<unsafe extern "C" fn(*mut FfiArrowSchema)>,
    private_data: *mut c_void,
}

/// `struct ArrowArray` of the Arrow C Data Interface.
#[repr(C)]
pub struct FfiArrowArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut FfiArrowArray,
    dictionary: *mut FfiArrowArray,
    release: Option<unsafe extern "C" fn(*mut FfiArrowArray)>,
    private_data: *mut c_void,
}

/// The `(values, offsets, wide)` that [`arrow_texts`] takes, borrowed from a string or
/// binary array exported through the C Data Interface (`u`, `z`: i32 offsets; `U`, `Z`:
/// i64). Arrays with nulls, other types and released structs are errors.
///
/// # Safety
/// `schema` and `array` must be live (not released) structs of one exported array, as
/// the Arrow spec defines them, left alive and unchanged for `'a`: the spec makes the
/// buffers immutable while the struct is alive, and sized for its `offset + length`
/// rows (the offsets buffer holds `offset + length + 1` offsets; the values buffer
/// every byte the offsets point at).
pub unsafe fn c_array_bytes<'a>(
    schema: &'a FfiArrowSchema,
    array: &'a FfiArrowArray,
) -> Result<ArrowBuffers<'a>> {
    let refuse = |what: String| Error::Invalid(format!("Arrow array: {what}"));
    if schema.release.is_none() || array.release.is_none() {
        return Err(refuse("released".into()));
    }
    if schema.format.is_null() {
        return Err(refuse("schema without a format".into()));
    }
    // SAFETY: a live schema's format is a NUL-terminated string (the spec).
    let format = unsafe { CStr::from_ptr(schema.format) }.to_bytes();
    let wide = match format {
        b"u" | b"z" => false,
        b"U" | b"Z" => true,
        _ => {
            let name = String::from_utf8_lossy(format);
            return Err(refuse(format!(
                "format {name:?} is not a string or binary array"
            )));
        }
    };
    if array.null_count != 0 {
        return Err(refuse("has nulls".into()));
    }
    let (Ok(length), Ok(offset)) = (usize::try_from(array.length), usize::try_from(array.offset))
    else {
        return Err(refuse("negative length or offset".into()));
    };
    if array.n_buffers != 3 || array.buffers.is_null() {
        return Err(refuse(format!("{} buffers, not 3", array.n_buffers)));
    }
    let width = if wide { 8 } else { 4 };
    // SAFETY: a live array of a string/binary type has `n_buffers` (checked: 3) buffer
    // pointers: validity, offsets, values.
    let (offsets_ptr, values_ptr) = unsafe { (*array.buffers.add(1), *array.buffers.add(2)) };
    if offsets_ptr.is_null() {
        // only an empty array may leave its offsets out
        return if length == 0 {
            Ok((&[], &[0; 8][..width], wide))
        } else {
            Err(refuse("no offsets buffer".into()))
        };
    }
    // a valid array's buffers fit in memory; anything else is refused before it is read
    let span = |rows: usize| {
        rows.checked_mul(width)
            .filter(|&b| b <= isize::MAX as usize)
    };
    let (Some(skip), Some(len)) = (span(offset), length.checked_add(1).and_then(span)) else {
        return Err(refuse("offset or length too large".into()));
    };
    // SAFETY: the offsets buffer holds `offset + length + 1` offsets of `width` bytes
    // (the spec), alive and unchanged for 'a (the caller's contract).
    let offsets = unsafe { std::slice::from_raw_parts(offsets_ptr.cast::<u8>().add(skip), len) };
    let read = |i: usize| offset_value(&offsets[i * width..(i + 1) * width], wide);
    let (Some(first), Some(last)) = (read(0), read(length)) else {
        return Err(refuse("negative offset".into()));
    };
    if last < first || last - first > isize::MAX as usize {
        return Err(refuse("decreasing offsets".into()));
    }
    if last == first {
        return Ok((&[], offsets, wide));
    }
    if values_ptr.is_null() {
        return Err(refuse("no values buffer".into()));
    }
    // SAFETY: the values buffer holds every byte the array's offsets point at (the
    // spec), so `first..last` is inside it; alive and unchanged for 'a.
    let values =
        unsafe { std::slice::from_raw_parts(values_ptr.cast::<u8>().add(first), last - first) };
    Ok((values, offsets, wide))
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
    fn several_arrays_are_one_batch_with_rows_counted_across_them() {
        let (a, b) = (b"ab\xffc".as_slice(), b"\xfedef".as_slice());
        let (oa, ob) = (offsets32(&[0, 2, 3, 4]), offsets32(&[0, 1, 4]));
        let all = arrow_texts_of(&[(a, &oa, false), (b, &ob, false)]).expect("valid");
        assert_eq!(all.texts, ["ab", "c", "def"]);
        assert_eq!(all.invalid, [1, 3]);
        let bad = offsets32(&[0, 9]);
        assert!(arrow_texts_of(&[(a, &oa, false), (b, &bad, false)]).is_err());
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
