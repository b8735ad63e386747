//! NumPy `.npy` arrays: 2-D float rows (f32/f64), or 8-bit data (u8 2-D tables, u8 3-D images).
//! npyz parses the header and decodes elements; this module decides which arrays make sense as
//! a dataset and checks the payload length before allocating anything.

use std::io::{BufWriter, Write};
use std::path::Path;

use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar, WriterBuilder};

use super::{eight_bit_table, keep_rows, DataError, Dataset, Loaded};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    U8,
}

pub(super) fn load_npy(path: &Path, limit: Option<usize>) -> Result<Loaded, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_npy(&bytes, &path.display().to_string(), limit)
}

/// Parses an NPY file already in memory (e.g. a request body); `shown` names it in errors.
pub(super) fn parse_npy(bytes: &[u8], shown: &str, limit: Option<usize>) -> Result<Loaded, DataError> {
    let shown = shown.to_string();
    let mut body: &[u8] = bytes;
    let header = NpyHeader::from_reader(&mut body)
        .map_err(|e| DataError::invalid(&shown, format!("not a valid NPY file: {e}")))?;
    let shape = header.shape().to_vec();
    let dtype = header.dtype();
    let unsupported = |dtype: String, msg: &str| DataError::UnsupportedNpy {
        path: shown.clone(),
        dtype,
        shape: shape.clone(),
        msg: msg.to_string(),
    };
    let ts = match &dtype {
        DType::Plain(ts) => ts.clone(),
        other => return Err(unsupported(other.descr(), "structured dtypes are not supported")),
    };
    let elem = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => Elem::F32,
        (TypeChar::Float, 8) => Elem::F64,
        (TypeChar::Uint, 1) => Elem::U8,
        _ => return Err(unsupported(ts.to_string(), "expected float32, float64 or uint8")),
    };
    if header.order() == Order::Fortran {
        return Err(unsupported(
            ts.to_string(),
            "Fortran-ordered arrays are not supported; save with C order (np.ascontiguousarray)",
        ));
    }
    let too_big = || unsupported(ts.to_string(), "array is too large");
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| too_big());
    let (n, dim, image_shape) = match (shape.as_slice(), elem) {
        (&[n, d], _) => (to_usize(n)?, to_usize(d)?, None),
        (&[n, h, w], Elem::U8) => {
            let (h, w) = (to_usize(h)?, to_usize(w)?);
            (to_usize(n)?, h.checked_mul(w).ok_or_else(too_big)?, Some([h, w]))
        }
        (&[_, _, _], _) => {
            return Err(unsupported(ts.to_string(), "3-D arrays are only accepted as uint8 images [n, h, w]"))
        }
        _ => return Err(unsupported(ts.to_string(), "expected a 2-D array [n, d] (or a 3-D uint8 array [n, h, w])")),
    };
    if dim == 0 {
        return Err(unsupported(ts.to_string(), "rows have zero columns"));
    }
    let item = ts.num_bytes().ok_or_else(too_big)?;
    let expected = n.checked_mul(dim).and_then(|e| e.checked_mul(item)).ok_or_else(too_big)?;
    if expected != body.len() {
        return Err(DataError::Length {
            path: shown,
            what: if expected > body.len() { "truncated NPY data" } else { "NPY file has trailing bytes" },
            expected: expected as u64,
            actual: body.len() as u64,
        });
    }
    let keep = keep_rows(n, limit);
    let count = keep * dim;
    let file = NpyFile::with_header(header, body);
    let read_err = |e: std::io::Error| DataError::invalid(&shown, format!("reading NPY data: {e}"));
    let dtype_err = |e: npyz::DTypeError| DataError::invalid(&shown, e.to_string());
    let mut rows = Vec::with_capacity(count);
    match elem {
        Elem::F32 => {
            for v in file.data::<f32>().map_err(dtype_err)?.take(count) {
                rows.push(v.map_err(read_err)?);
            }
        }
        Elem::F64 => {
            for (k, v) in file.data::<f64>().map_err(dtype_err)?.take(count).enumerate() {
                let v = v.map_err(read_err)?;
                let x = v as f32;
                // Check here, while the f64 is at hand: a huge f64 becomes an f32 infinity.
                if !x.is_finite() {
                    return Err(DataError::NonFinite { path: shown, row: k / dim, column: k % dim, value: v });
                }
                rows.push(x);
            }
        }
        Elem::U8 => {
            let table = eight_bit_table();
            for v in file.data::<u8>().map_err(dtype_err)?.take(count) {
                rows.push(table[v.map_err(read_err)? as usize]);
            }
        }
    }
    super::check_finite(&rows, dim, &shown)?;
    Ok(Loaded {
        data: Dataset { rows, n: keep, dim, eight_bit: elem == Elem::U8, image_shape, labels: None, source: shown },
        n_total: n,
    })
}

/// Encodes `data` as an in-memory NPY array of `shape` (C order, little-endian).
pub fn npy_bytes<T: npyz::AutoSerialize + Copy>(data: &[T], shape: &[u64]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(std::mem::size_of_val(data) + 128);
    let mut w = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut out).begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()?;
    Ok(out)
}

/// Writes rows as a C-ordered little-endian f32 array of shape [n, dim], readable by numpy.
pub fn write_npy(path: &Path, rows: &[f32], n: usize, dim: usize) -> Result<(), DataError> {
    if n.checked_mul(dim) != Some(rows.len()) {
        return Err(DataError::invalid(
            path.display(),
            format!("{} values do not form {} rows of {} columns", rows.len(), n, dim),
        ));
    }
    let io = |e| DataError::io(path, e);
    let mut out = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[n as u64, dim as u64])
        .writer(&mut out)
        .begin_nd()
        .map_err(io)?;
    w.extend(rows.iter().copied()).map_err(io)?;
    w.finish().map_err(io)?;
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load, LoadOptions};

    fn write_any<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
        write_with(path, shape, data, Order::C);
    }

    fn write_with<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T], order: Order) {
        let mut out = std::fs::File::create(path).unwrap();
        let mut w =
            npyz::WriteOptions::new().default_dtype().shape(shape).order(order).writer(&mut out).begin_nd().unwrap();
        w.extend(data.iter().copied()).unwrap();
        w.finish().unwrap();
    }

    fn load_default(p: &Path) -> Result<Dataset, DataError> {
        load(p, &LoadOptions::default())
    }

    #[test]
    fn f32_round_trip_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let rows: Vec<f32> = (0..12).map(|v| v as f32 * 0.25 - 1.0).collect();
        write_npy(&p, &rows, 4, 3).unwrap();
        let d = load_default(&p).unwrap();
        assert_eq!((d.n, d.dim), (4, 3));
        assert_eq!(d.rows, rows);
        assert!(!d.eight_bit && d.image_shape.is_none());
        let d = load(&p, &LoadOptions { limit: Some(1), ..Default::default() }).unwrap();
        assert_eq!(d.rows, &rows[..3]);
        assert!(write_npy(&p, &rows, 5, 3).is_err());
    }

    #[test]
    fn f64_and_u8() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.npy");
        write_any(&p, &[2, 2], &[1.5f64, -2.0, 3.0, 4.0]);
        let d = load_default(&p).unwrap();
        assert_eq!(d.rows, vec![1.5, -2.0, 3.0, 4.0]);
        assert!(!d.eight_bit);

        write_any(&p, &[1, 3], &[0u8, 1, 255]);
        let d = load_default(&p).unwrap();
        assert!(d.eight_bit && d.image_shape.is_none());
        assert_eq!(d.rows, vec![0.5 / 256.0, 1.5 / 256.0, 255.5 / 256.0]);

        write_any(&p, &[2, 2, 3], &[7u8; 12]);
        let d = load_default(&p).unwrap();
        assert_eq!((d.n, d.dim, d.image_shape), (2, 6, Some([2, 3])));
        assert!(d.eight_bit);
    }

    #[test]
    fn rejects_wrong_dtype_rank_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.npy");
        write_any(&p, &[2, 2], &[1i64, 2, 3, 4]);
        let msg = load_default(&p).unwrap_err().to_string();
        assert!(msg.contains("<i8") && msg.contains("dtype"), "{msg}");

        write_any(&p, &[3], &[1f32, 2.0, 3.0]);
        let msg = load_default(&p).unwrap_err().to_string();
        assert!(msg.contains("[3]") && msg.contains("2-D"), "{msg}");

        write_any(&p, &[1, 2, 2], &[1f32; 4]);
        let msg = load_default(&p).unwrap_err().to_string();
        assert!(msg.contains("3-D"), "{msg}");

        write_with(&p, &[2, 2], &[1f32; 4], Order::Fortran);
        let msg = load_default(&p).unwrap_err().to_string();
        assert!(msg.contains("Fortran"), "{msg}");

        std::fs::write(&p, b"\x93NUMPY garbage").unwrap();
        assert!(load_default(&p).is_err());
    }

    #[test]
    fn rejects_non_finite_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npy");
        write_npy(&p, &[1.0, 2.0, 3.0, f32::NAN, 5.0, 6.0], 3, 2).unwrap();
        let msg = load_default(&p).unwrap_err().to_string();
        assert!(msg.contains("row 1, column 1"), "{msg}");

        write_any(&p, &[1, 2], &[1.0f64, 1e300]);
        let msg = load_default(&p).unwrap_err().to_string();
        assert!(msg.contains("row 0, column 1"), "{msg}");

        write_npy(&p, &[1.0; 6], 3, 2).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len() - 3);
        std::fs::write(&p, &b).unwrap();
        let msg = load_default(&p).unwrap_err().to_string();
        assert!(msg.contains("expected 24 bytes") && msg.contains("found 21"), "{msg}");
    }
}
