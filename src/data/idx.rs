//! IDX files (the MNIST / Fashion-MNIST container): a big-endian header of magic + dimension
//! sizes followed by raw bytes, optionally gzip-compressed. Only unsigned-byte payloads are
//! supported, which is what every MNIST-style distribution uses.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{eight_bit_table, keep_rows, DataError, Dataset, Loaded};

/// First two bytes of any gzip stream; compression is detected by content, not by name.
pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Element type code for unsigned bytes (third magic byte).
const TYPE_U8: u8 = 0x08;

/// A decoded IDX file: its dimension sizes and the payload bytes.
struct Idx {
    dims: Vec<usize>,
    bytes: Vec<u8>,
    /// Offset of the payload in `bytes` (after the header).
    offset: usize,
}

impl Idx {
    fn payload(&self) -> &[u8] {
        &self.bytes[self.offset..]
    }
}

/// Reads (and if needed gunzips) the whole file, then validates the header against its length.
fn read_idx(path: &Path) -> Result<Idx, DataError> {
    let shown = path.display();
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let gzipped = raw.starts_with(&GZIP_MAGIC);
    let bytes = if gzipped {
        // Uncompressed MNIST images are ~8x their gzip size; a good guess avoids regrowth.
        let mut out = Vec::with_capacity(raw.len().saturating_mul(8));
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::invalid(&shown, format!("gzip decompression failed: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 {
        return Err(DataError::Length {
            path: shown.to_string(),
            what: "truncated IDX header",
            expected: 4,
            actual: bytes.len() as u64,
        });
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::invalid(
            &shown,
            format!("bad IDX magic 0x{magic:08x} (expected 0x00000803 for images or 0x00000801 for labels)"),
        ));
    }
    if bytes[2] != TYPE_U8 {
        return Err(DataError::invalid(
            &shown,
            format!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", bytes[2]),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(DataError::invalid(&shown, "IDX header declares 0 dimensions"));
    }
    let offset = 4 + 4 * ndim;
    if bytes.len() < offset {
        return Err(DataError::Length {
            path: shown.to_string(),
            what: "truncated IDX header",
            expected: offset as u64,
            actual: bytes.len() as u64,
        });
    }
    let dims: Vec<usize> =
        bytes[4..offset].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    // u64 arithmetic: the product of up to 255 u32 sizes can overflow anything, so check it.
    let expected =
        dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).and_then(|p| p.checked_add(offset as u64));
    let actual = bytes.len() as u64;
    match expected {
        Some(e) if e == actual => Ok(Idx { dims, bytes, offset }),
        Some(e) => Err(DataError::Length {
            path: shown.to_string(),
            what: match (e > actual, gzipped) {
                (true, false) => "truncated IDX file",
                (true, true) => "truncated IDX file (sizes after decompression)",
                (false, false) => "IDX file has trailing bytes",
                (false, true) => "IDX file has trailing bytes (sizes after decompression)",
            },
            expected: e,
            actual,
        }),
        None => Err(DataError::invalid(&shown, format!("IDX dimensions {dims:?} are too large"))),
    }
}

/// Loads an IDX image file (`0x00000803`, n × h × w bytes) as 8-bit rows of h·w pixels.
/// A 2-D byte array (`0x00000802`, n × d) is accepted as an 8-bit table without image shape.
pub(super) fn load_idx_images(path: &Path, limit: Option<usize>) -> Result<Loaded, DataError> {
    let idx = read_idx(path)?;
    let shown = path.display().to_string();
    let (n, dim, image_shape) = match idx.dims[..] {
        [n, h, w] => match h.checked_mul(w) {
            Some(dim) => (n, dim, Some([h, w])),
            None => return Err(DataError::invalid(&shown, "IDX image size overflows")),
        },
        [n, d] => (n, d, None),
        [_] => {
            return Err(DataError::invalid(
                &shown,
                "this is an IDX label file (1-D), not images; load the image file instead",
            ))
        }
        _ => {
            return Err(DataError::invalid(
                &shown,
                format!("IDX file has {} dimensions; expected 3 (images) or 2 (rows)", idx.dims.len()),
            ))
        }
    };
    if dim == 0 {
        return Err(DataError::invalid(&shown, "IDX rows have zero pixels"));
    }
    let keep = keep_rows(n, limit);
    let table = eight_bit_table();
    let rows: Vec<f32> = idx.payload()[..keep * dim].iter().map(|&p| table[p as usize]).collect();
    Ok(Loaded {
        data: Dataset { rows, n: keep, dim, eight_bit: true, image_shape, labels: None, source: shown },
        n_total: n,
    })
}

/// Loads an IDX label file (`0x00000801`, n bytes).
pub(super) fn load_idx_labels(path: &Path) -> Result<Vec<i64>, DataError> {
    let idx = read_idx(path)?;
    if idx.dims.len() != 1 {
        return Err(DataError::invalid(
            path.display(),
            format!("not an IDX label file: {} dimensions (expected 1, magic 0x00000801)", idx.dims.len()),
        ));
    }
    Ok(idx.payload().iter().map(|&b| b as i64).collect())
}

/// The conventional labels file next to `X-images-idx3-ubyte[.gz]`, if one exists
/// (compressed or not, whichever is present).
pub(super) fn sibling_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gz").unwrap_or(name);
    let base = stem.strip_suffix("-images-idx3-ubyte")?;
    let dir = images.parent().unwrap_or(Path::new(""));
    [".gz", ""].iter().map(|ext| dir.join(format!("{base}-labels-idx1-ubyte{ext}"))).find(|p| p.is_file())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::data::{load, LoadOptions};
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    /// Builds an IDX u8 file body: magic, big-endian sizes, payload.
    pub(crate) fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn images_payload(n: usize) -> Vec<u8> {
        (0..n * 6).map(|i| (i * 37 % 256) as u8).collect()
    }

    #[test]
    fn gzip_images_with_sibling_labels() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("toy-images-idx3-ubyte.gz");
        std::fs::write(&img, gz(&idx_bytes(&[3, 2, 3], &images_payload(3)))).unwrap();
        std::fs::write(dir.path().join("toy-labels-idx1-ubyte.gz"), gz(&idx_bytes(&[3], &[7, 0, 9]))).unwrap();
        let d = load(&img, &LoadOptions::default()).unwrap();
        assert_eq!((d.n, d.dim), (3, 6));
        assert!(d.eight_bit);
        assert_eq!(d.image_shape, Some([2, 3]));
        assert_eq!(d.labels, Some(vec![7, 0, 9]));
        assert_eq!(d.rows[1], (37.0 + 0.5) / 256.0);
        assert_eq!(d.rows[0], 0.5 / 256.0);

        let limited = load(&img, &LoadOptions { limit: Some(2), ..Default::default() }).unwrap();
        assert_eq!(limited.n, 2);
        assert_eq!(limited.rows.len(), 12);
        assert_eq!(limited.labels, Some(vec![7, 0]));
    }

    #[test]
    fn raw_images_any_name_and_explicit_labels() {
        let dir = tempfile::tempdir().unwrap();
        // Raw bytes under a name that says nothing: found by sniffing the magic.
        let img = dir.path().join("pictures.bin");
        std::fs::write(&img, idx_bytes(&[2, 2, 3], &images_payload(2))).unwrap();
        let lab = dir.path().join("whatever.idx");
        std::fs::write(&lab, gz(&idx_bytes(&[2], &[1, 2]))).unwrap();
        let d = load(&img, &LoadOptions::default()).unwrap();
        assert_eq!((d.n, d.dim, d.labels.clone()), (2, 6, None));
        let d = load(&img, &LoadOptions { labels_path: Some(lab), ..Default::default() }).unwrap();
        assert_eq!(d.labels, Some(vec![1, 2]));
    }

    #[test]
    fn truncated_file_reports_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t-images-idx3-ubyte");
        let mut b = idx_bytes(&[3, 2, 3], &images_payload(3));
        b.truncate(b.len() - 5);
        std::fs::write(&img, &b).unwrap();
        let msg = load(&img, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("expected 34 bytes") && msg.contains("found 29"), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
        // Extra bytes after the promised payload are as suspicious as missing ones.
        let mut long = idx_bytes(&[1, 2, 3], &images_payload(1));
        long.push(0);
        std::fs::write(&img, &long).unwrap();
        let msg = load(&img, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("trailing") && msg.contains("found 23"), "{msg}");
        // CSV-only options are refused rather than silently ignored.
        let opts = LoadOptions { label_column: Some("0".into()), ..Default::default() };
        assert!(load(&img, &opts).unwrap_err().to_string().contains("CSV"));
        // Truncated inside the header, and a truncated gzip stream.
        std::fs::write(&img, &b[..9]).unwrap();
        assert!(load(&img, &LoadOptions::default()).is_err());
        let z = gz(&idx_bytes(&[3, 2, 3], &images_payload(3)));
        std::fs::write(&img, &z[..z.len() / 2]).unwrap();
        let msg = load(&img, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("gzip"), "{msg}");
    }

    #[test]
    fn bad_magic_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("b-images-idx3-ubyte");
        let mut b = idx_bytes(&[1, 1, 1], &[0]);
        b[0] = 0x12;
        std::fs::write(&img, &b).unwrap();
        let msg = load(&img, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("bad IDX magic 0x12000803"), "{msg}");
        b[0] = 0;
        b[2] = 0x0d; // f32 payload
        std::fs::write(&img, &b).unwrap();
        let msg = load(&img, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("0x0d"), "{msg}");
        // A label file loaded as data is rejected with a hint.
        std::fs::write(&img, idx_bytes(&[2], &[1, 2])).unwrap();
        let msg = load(&img, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("label"), "{msg}");
        // Absurd sizes do not allocate or overflow.
        std::fs::write(&img, idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[])).unwrap();
        assert!(load(&img, &LoadOptions::default()).is_err());
    }

    #[test]
    fn label_count_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("m-images-idx3-ubyte");
        std::fs::write(&img, idx_bytes(&[3, 2, 3], &images_payload(3))).unwrap();
        std::fs::write(dir.path().join("m-labels-idx1-ubyte"), idx_bytes(&[2], &[1, 2])).unwrap();
        let msg = load(&img, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("2 labels") && msg.contains("3 rows"), "{msg}");
        // An image file given as labels is rejected too.
        let msg =
            load(&img, &LoadOptions { labels_path: Some(img.clone()), ..Default::default() }).unwrap_err().to_string();
        assert!(msg.contains("not an IDX label file"), "{msg}");
    }

    /// The Debian package the test command installs (scripts/setup.sh).
    fn fashion_mnist(file: &str) -> std::path::PathBuf {
        let p = Path::new("/usr/share/datasets/fashion-mnist").join(file);
        assert!(p.exists(), "{} missing: run scripts/setup.sh (Debian package dataset-fashion-mnist)", p.display());
        p
    }

    #[test]
    fn real_fashion_mnist_test_set() {
        let d = load(&fashion_mnist("t10k-images-idx3-ubyte.gz"), &LoadOptions::default()).unwrap();
        assert_eq!((d.n, d.dim), (10000, 784));
        assert_eq!(d.image_shape, Some([28, 28]));
        assert!(d.eight_bit);
        let labels = d.labels.as_ref().expect("labels beside the images");
        assert_eq!(labels.len(), 10000);
        for c in 0..10 {
            assert!(labels.contains(&c));
        }
        assert!(labels.iter().all(|l| (0..10).contains(l)));
        assert!(d.rows.iter().all(|&v| v > 0.0 && v < 1.0));
    }

    #[test]
    fn real_fashion_mnist_train_set() {
        let d = load(&fashion_mnist("train-images-idx3-ubyte.gz"), &LoadOptions::default()).unwrap();
        assert_eq!((d.n, d.dim), (60000, 784));
        assert_eq!(d.labels.as_ref().map(Vec::len), Some(60000));
    }
}
