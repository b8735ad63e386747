//! Loading training/scoring data into one flat `f32` row matrix.
//!
//! Every input format (IDX, CSV, NPY) ends up as a [`Dataset`]: row-major `n × dim` values plus
//! the little metadata the model and the service need (8-bit origin, image shape, labels).
//! Each format lives in its own submodule; this module owns the shared type, the dispatch and
//! the row-level operations (split, select, statistics).

mod idx;
mod npy;
mod table;

use std::fmt;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use npy::{npy_bytes, write_npy};

/// Rows as the model sees them, row-major n × dim, f32.
#[derive(Clone)]
pub struct Dataset {
    pub rows: Vec<f32>,
    pub n: usize,
    pub dim: usize,
    /// Values came from 8-bit integers p and are stored as (p + 0.5) / 256 (the evaluation
    /// convention); training dequantises by adding (U(0,1) - 0.5) / 256.
    pub eight_bit: bool,
    /// Image layout [h, w] for IDX image files (and NPY 3-D u8 arrays); None for tables.
    pub image_shape: Option<[usize; 2]>,
    /// Optional integer labels, one per row (IDX label file, or a CSV label column).
    pub labels: Option<Vec<i64>>,
    /// Human-readable origin, e.g. the file path.
    pub source: String,
}

/// Hand-written so that printing a dataset (e.g. in a failed `unwrap_err`) never dumps millions
/// of values.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("n", &self.n)
            .field("dim", &self.dim)
            .field("eight_bit", &self.eight_bit)
            .field("image_shape", &self.image_shape)
            .field("labels", &self.labels.as_ref().map(|l| l.len()))
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// CSV columns to drop (by header name, or 0-based index as a string).
    pub exclude_columns: Vec<String>,
    /// CSV column (name or 0-based index) holding integer labels; it is removed from the features.
    pub label_column: Option<String>,
    /// Explicit IDX labels file; when None, an IDX image file `X-images-idx3-ubyte[.gz]` picks up
    /// `X-labels-idx1-ubyte[.gz]` beside it if present.
    pub labels_path: Option<PathBuf>,
    /// Keep only the first `limit` rows.
    pub limit: Option<usize>,
}

/// Everything that can go wrong turning a file into a [`Dataset`]. Every message starts with the
/// file (or dataset source) so a user with several inputs knows which one to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Structural problem: bad magic, wrong rank, no rows, unknown column, ...
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
    /// The header promises more (or fewer) bytes than the file holds.
    #[error("{path}: {what}: expected {expected} bytes from the header, found {actual}")]
    Length { path: String, what: &'static str, expected: u64, actual: u64 },
    /// A CSV field that does not parse as what its column needs. `line` is 1-based, `column`
    /// gives the header name (if any) and the 0-based index.
    #[error("{path}: line {line}, column {column}: {value:?} is not {expected}")]
    BadValue { path: String, line: u64, column: String, value: String, expected: &'static str },
    #[error("{path}: line {line}: expected {expected} fields, found {found}")]
    Ragged { path: String, line: u64, expected: usize, found: usize },
    /// A NaN or infinity in binary data (0-based row and column).
    #[error("{path}: row {row}, column {column} (0-based): value {value} is not finite")]
    NonFinite { path: String, row: usize, column: usize, value: f64 },
    /// An NPY array whose dtype, rank or memory order this loader does not handle.
    #[error("{path}: unsupported NPY array (dtype {dtype}, shape {shape:?}): {msg}")]
    UnsupportedNpy { path: String, dtype: String, shape: Vec<u64>, msg: String },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
    }

    pub(crate) fn invalid(path: impl fmt::Display, msg: impl Into<String>) -> Self {
        DataError::Invalid { path: path.to_string(), msg: msg.into() }
    }
}

/// The formats `load` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Npy,
    Idx,
}

/// Picks the format from the file name; `None` means "sniff the content".
fn format_from_name(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".csv") {
        Some(Format::Csv)
    } else if name.ends_with(".npy") {
        Some(Format::Npy)
    } else if name.contains("-ubyte") || name.contains(".idx") {
        Some(Format::Idx)
    } else {
        None
    }
}

/// Content sniffing for names that say nothing: NPY and IDX both start with a magic number.
fn sniff_format(path: &Path) -> Result<Format, DataError> {
    use std::io::Read;
    let mut head = [0u8; 6];
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::io(path, e)),
        }
    }
    let head = &head[..got];
    if head.starts_with(b"\x93NUMPY") {
        Ok(Format::Npy)
    } else if head.starts_with(&idx::GZIP_MAGIC) || head.starts_with(&[0, 0, 0x08]) {
        Ok(Format::Idx)
    } else {
        Err(DataError::invalid(
            path.display(),
            "unrecognised format: expected a .csv, a .npy, or an IDX file (*-ubyte, *-ubyte.gz, *.idx)",
        ))
    }
}

/// Loads a data file, choosing the reader by file name (`*.csv`, `*.npy`, IDX names) and, for
/// other names, by the magic number at the start of the file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let format = match format_from_name(path) {
        Some(f) => f,
        None => sniff_format(path)?,
    };
    let source = path.display().to_string();
    if format != Format::Csv && (opts.label_column.is_some() || !opts.exclude_columns.is_empty()) {
        return Err(DataError::invalid(&source, "label/exclude columns only apply to CSV files"));
    }
    if format == Format::Csv && opts.label_column.is_some() && opts.labels_path.is_some() {
        return Err(DataError::invalid(&source, "give either a label column or a labels file, not both"));
    }
    let mut ds = match format {
        Format::Csv => table::load_csv(path, opts)?,
        Format::Npy => npy::load_npy(path, opts.limit)?,
        Format::Idx => idx::load_idx_images(path, opts.limit)?,
    };
    // Labels from a separate IDX file: explicit path for any format, or the conventional
    // sibling of an IDX image file.
    let labels_path = match &opts.labels_path {
        Some(p) => Some(p.clone()),
        None if format == Format::Idx => idx::sibling_labels(path),
        None => None,
    };
    if let Some(lp) = labels_path {
        let labels = idx::load_idx_labels(&lp)?;
        // Compare against the full row count of the data file, not the limited one.
        let total = ds.n_total;
        if labels.len() != total {
            return Err(DataError::invalid(
                lp.display(),
                format!("{} labels, but {} has {} rows", labels.len(), source, total),
            ));
        }
        let mut labels = labels;
        labels.truncate(ds.data.n);
        ds.data.labels = Some(labels);
    }
    if ds.data.n == 0 {
        return Err(DataError::invalid(&source, "no data rows (after the row limit)"));
    }
    Ok(ds.data)
}

/// Parses an NPY array held in memory (an upload or a request body); `source` names it in
/// errors. Same rules as NPY files: float32/float64/uint8, [n, d] (or uint8 [n, h, w]).
pub fn from_npy_bytes(bytes: &[u8], source: &str) -> Result<Dataset, DataError> {
    let ds = npy::parse_npy(bytes, source, None)?.data;
    if ds.n == 0 {
        return Err(DataError::invalid(source, "no data rows"));
    }
    Ok(ds)
}

/// A loaded dataset plus the number of rows the file holds before `limit`, which label files are
/// checked against.
struct Loaded {
    data: Dataset,
    n_total: usize,
}

/// Rows to keep out of `n` under an optional limit.
fn keep_rows(n: usize, limit: Option<usize>) -> usize {
    limit.map_or(n, |l| l.min(n))
}

/// `(p + 0.5) / 256` for every byte value, so 8-bit decoding is one table lookup per pixel.
fn eight_bit_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (p, v) in t.iter_mut().enumerate() {
        *v = (p as f32 + 0.5) / 256.0;
    }
    t
}

impl Dataset {
    /// Wraps caller-provided rows, checking the shape and that every value is finite (the
    /// model cannot score NaN/Inf, and catching it here names the offending cell).
    pub fn from_rows(rows: Vec<f32>, n: usize, dim: usize, source: impl Into<String>) -> Result<Dataset, DataError> {
        let source = source.into();
        if dim == 0 {
            return Err(DataError::invalid(&source, "rows must have at least one column"));
        }
        if n.checked_mul(dim) != Some(rows.len()) {
            return Err(DataError::invalid(
                &source,
                format!("{} values do not form {} rows of {} columns", rows.len(), n, dim),
            ));
        }
        check_finite(&rows, dim, &source)?;
        Ok(Dataset { rows, n, dim, eight_bit: false, image_shape: None, labels: None, source })
    }

    /// Row `i` as a slice. Panics if `i >= n`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// Deterministic shuffled split: (train, val) with round(n*val_fraction) rows in val (at least 1 when n>=2 and fraction>0). Labels/flags follow.
    ///
    /// The fraction is clamped to [0, 1] (NaN counts as 0). Both parts keep the file's row order,
    /// so the split depends only on (n, fraction, seed).
    pub fn split(&self, val_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let frac = if val_fraction.is_nan() { 0.0 } else { val_fraction.clamp(0.0, 1.0) };
        let mut n_val = ((self.n as f64) * frac).round() as usize;
        n_val = n_val.min(self.n);
        if self.n >= 2 && frac > 0.0 {
            n_val = n_val.max(1);
        }
        // Training needs two rows: from three rows on, the split leaves them.
        if self.n >= 3 {
            n_val = n_val.min(self.n - 2);
        }
        let mut order: Vec<usize> = (0..self.n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let (val_idx, train_idx) = order.split_at_mut(n_val);
        val_idx.sort_unstable();
        train_idx.sort_unstable();
        let mut train = self.select(train_idx);
        let mut val = self.select(val_idx);
        train.source = format!("{} [train]", self.source);
        val.source = format!("{} [val]", self.source);
        (train, val)
    }

    /// Subset by row indices (in the given order, repeats allowed). Panics on an index >= n.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let mut rows = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            rows.extend_from_slice(self.row(i));
        }
        Dataset {
            rows,
            n: idx.len(),
            dim: self.dim,
            eight_bit: self.eight_bit,
            image_shape: self.image_shape,
            labels: self.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect()),
            source: self.source.clone(),
        }
    }

    /// Per-feature mean and std (population std, floored at 1e-6 so standardisation never divides by 0), in f64.
    pub fn feature_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let mut mean = vec![0f64; self.dim];
        let mut var = vec![0f64; self.dim];
        if self.n == 0 {
            return (mean, vec![1e-6; self.dim]);
        }
        // Two passes in f64: cheap at these sizes and free of the cancellation of sum-of-squares.
        for r in self.rows.chunks_exact(self.dim) {
            for (m, &x) in mean.iter_mut().zip(r) {
                *m += x as f64;
            }
        }
        let inv_n = 1.0 / self.n as f64;
        mean.iter_mut().for_each(|m| *m *= inv_n);
        for r in self.rows.chunks_exact(self.dim) {
            for ((v, &m), &x) in var.iter_mut().zip(&mean).zip(r) {
                let d = x as f64 - m;
                *v += d * d;
            }
        }
        let std = var.iter().map(|v| (v * inv_n).sqrt().max(1e-6)).collect();
        (mean, std)
    }
}

/// Reports the first non-finite value with its row and column.
fn check_finite(rows: &[f32], dim: usize, source: &str) -> Result<(), DataError> {
    match rows.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(k) => {
            Err(DataError::NonFinite { path: source.to_string(), row: k / dim, column: k % dim, value: rows[k] as f64 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Dataset {
        let rows: Vec<f32> = (0..20).map(|v| v as f32).collect();
        let mut d = Dataset::from_rows(rows, 10, 2, "toy").unwrap();
        d.labels = Some((0..10).collect());
        d.eight_bit = true;
        d
    }

    #[test]
    fn from_rows_checks_shape_and_finiteness() {
        assert!(Dataset::from_rows(vec![1.0; 5], 2, 3, "x").is_err());
        assert!(Dataset::from_rows(vec![], 0, 0, "x").is_err());
        let err = Dataset::from_rows(vec![1.0, 2.0, 3.0, f32::NAN], 2, 2, "x").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("row 1") && msg.contains("column 1"), "{msg}");
        let d = Dataset::from_rows(vec![1.0, 2.0, 3.0, 4.0], 2, 2, "x").unwrap();
        assert_eq!(d.row(1), &[3.0, 4.0]);
        assert!(!d.eight_bit && d.labels.is_none() && d.image_shape.is_none());
    }

    #[test]
    fn split_is_deterministic_and_sized() {
        let d = toy();
        let (t1, v1) = d.split(0.3, 7);
        let (t2, v2) = d.split(0.3, 7);
        assert_eq!((t1.n, v1.n), (7, 3));
        assert_eq!(t1.rows, t2.rows);
        assert_eq!(v1.rows, v2.rows);
        assert_eq!(v1.labels, v2.labels);
        // Disjoint and covering, labels follow rows, flags carried.
        let mut all: Vec<i64> = t1.labels.clone().unwrap().into_iter().chain(v1.labels.clone().unwrap()).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        for (i, &l) in v1.labels.as_ref().unwrap().iter().enumerate() {
            assert_eq!(v1.row(i), &[2.0 * l as f32, 2.0 * l as f32 + 1.0]);
        }
        assert!(t1.eight_bit && v1.eight_bit);
        // A different seed gives a different split (for this seed pair).
        let (_, v3) = d.split(0.3, 8);
        assert_ne!(v1.labels, v3.labels);
        // Small fractions still give one validation row; zero gives none.
        assert_eq!(d.split(0.01, 1).1.n, 1);
        assert_eq!(d.split(0.0, 1).1.n, 0);
        // However large the fraction, two rows stay to train on.
        assert_eq!(d.split(1.0, 1).1.n, 8);
        assert_eq!(d.split(0.99, 1).0.n, 2);
        assert_eq!(d.select(&[0]).split(0.5, 1).1.n, 1);
    }

    #[test]
    fn select_picks_rows_and_labels() {
        let d = toy();
        let s = d.select(&[3, 1, 3]);
        assert_eq!(s.n, 3);
        assert_eq!(s.rows, vec![6.0, 7.0, 2.0, 3.0, 6.0, 7.0]);
        assert_eq!(s.labels, Some(vec![3, 1, 3]));
        assert_eq!(d.select(&[]).n, 0);
    }

    #[test]
    fn feature_stats_values() {
        let d = Dataset::from_rows(vec![1.0, 5.0, 3.0, 5.0], 2, 2, "x").unwrap();
        let (m, s) = d.feature_stats();
        assert_eq!(m, vec![2.0, 5.0]);
        assert!((s[0] - 1.0).abs() < 1e-12);
        assert_eq!(s[1], 1e-6);
        let (m, s) = d.select(&[]).feature_stats();
        assert_eq!((m.len(), s.len()), (2, 2));
    }

    #[test]
    fn unknown_name_is_sniffed_or_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mystery.bin");
        std::fs::write(&p, b"hello world").unwrap();
        let msg = load(&p, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("unrecognised format"), "{msg}");
        let q = dir.path().join("data.dat");
        write_npy(&q, &[1.0, 2.0], 1, 2).unwrap();
        assert_eq!(load(&q, &LoadOptions::default()).unwrap().dim, 2);
        let missing = dir.path().join("nope.csv");
        let msg = load(&missing, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("nope.csv"), "{msg}");
    }
}
