//! CSV tables: numeric feature columns, an optional header (autodetected), optional label and
//! excluded columns. Every bad cell is reported with its 1-based line and its column, because
//! the usual fix is opening the file at that spot.

use std::path::Path;

use csv::{ReaderBuilder, StringRecord, Trim};

use super::{keep_rows, DataError, Dataset, LoadOptions, Loaded};

/// What each input column becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Feature,
    Label,
    Skip,
}

/// Header names (if any) plus the shown file name, for messages.
struct Columns<'a> {
    path: &'a str,
    header: Option<Vec<String>>,
    count: usize,
}

impl Columns<'_> {
    /// "'name' (index 3)" with a header, "index 3" without.
    fn describe(&self, i: usize) -> String {
        match self.header.as_ref().and_then(|h| h.get(i)) {
            Some(name) => format!("{name:?} (index {i})"),
            None => format!("index {i}"),
        }
    }

    /// A column given by header name or, failing that, by 0-based index.
    fn resolve(&self, spec: &str, option: &str) -> Result<usize, DataError> {
        if let Some(h) = &self.header {
            if let Some(i) = h.iter().position(|c| c == spec) {
                return Ok(i);
            }
        }
        match spec.trim().parse::<usize>() {
            Ok(i) if i < self.count => Ok(i),
            Ok(i) => Err(DataError::invalid(
                self.path,
                format!("{option}: column index {i} is out of range (the file has {} columns)", self.count),
            )),
            Err(_) => Err(DataError::invalid(
                self.path,
                match &self.header {
                    Some(h) => format!("{option}: no column named {spec:?} (columns: {})", h.join(", ")),
                    None => format!(
                        "{option}: no column named {spec:?}; the file has no header row, so give a 0-based index"
                    ),
                },
            )),
        }
    }
}

/// A header row is one with any non-empty field that is not a number.
fn looks_like_header(rec: &StringRecord) -> bool {
    rec.iter().any(|f| !f.is_empty() && f.parse::<f64>().is_err())
}

fn line_of(rec: &StringRecord) -> u64 {
    rec.position().map_or(0, |p| p.line())
}

/// Integer label: "3", or "3.0" as written by tools that store everything as float.
fn parse_label(s: &str) -> Option<i64> {
    if let Ok(v) = s.parse::<i64>() {
        return Some(v);
    }
    let f = s.parse::<f64>().ok()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

pub(super) fn load_csv(path: &Path, opts: &LoadOptions) -> Result<Loaded, DataError> {
    let shown = path.display().to_string();
    let csv_err = |e: csv::Error| {
        let msg = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(io) => DataError::io(path, io),
            _ => DataError::invalid(&shown, msg),
        }
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // Flexible so that ragged rows reach our own check, which reports the line in our words.
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(Trim::All)
        .from_reader(std::io::BufReader::with_capacity(1 << 16, file));

    let mut rec = StringRecord::new();
    if !reader.read_record(&mut rec).map_err(csv_err)? {
        return Err(DataError::invalid(&shown, "empty CSV file"));
    }
    let count = rec.len();
    let header = looks_like_header(&rec).then(|| rec.iter().map(str::to_string).collect());
    let has_header = header.is_some();
    let cols = Columns { path: &shown, header, count };

    let mut roles = vec![Role::Feature; count];
    for spec in &opts.exclude_columns {
        roles[cols.resolve(spec, "exclude column")?] = Role::Skip;
    }
    let label_col = match &opts.label_column {
        Some(spec) => {
            let i = cols.resolve(spec, "label column")?;
            roles[i] = Role::Label;
            Some(i)
        }
        None => None,
    };
    let dim = roles.iter().filter(|&&r| r == Role::Feature).count();
    if dim == 0 {
        return Err(DataError::invalid(
            &shown,
            "no numeric feature columns (all columns are excluded or used as labels)",
        ));
    }

    let keep = keep_rows(usize::MAX, opts.limit);
    // Rows past the limit only need counting, and only when a labels file is checked against them.
    let count_rest = opts.labels_path.is_some();
    let mut rows: Vec<f32> = Vec::new();
    let mut labels: Vec<i64> = Vec::new();
    let mut n = 0usize;
    let mut n_total = 0usize;
    let mut pending = !has_header; // the first record is data when there is no header
    loop {
        if !pending && !reader.read_record(&mut rec).map_err(csv_err)? {
            break;
        }
        pending = false;
        n_total += 1;
        if n >= keep {
            if count_rest {
                continue;
            }
            break;
        }
        let line = line_of(&rec);
        if rec.len() != count {
            return Err(DataError::Ragged { path: shown.clone(), line, expected: count, found: rec.len() });
        }
        for (i, (field, role)) in rec.iter().zip(&roles).enumerate() {
            match role {
                Role::Skip => {}
                Role::Feature => match field.parse::<f32>() {
                    Ok(v) if v.is_finite() => rows.push(v),
                    _ => {
                        return Err(DataError::BadValue {
                            path: shown.clone(),
                            line,
                            column: cols.describe(i),
                            value: field.to_string(),
                            expected: "a finite number",
                        })
                    }
                },
                Role::Label => match parse_label(field) {
                    Some(v) => labels.push(v),
                    None => {
                        return Err(DataError::BadValue {
                            path: shown.clone(),
                            line,
                            column: cols.describe(i),
                            value: field.to_string(),
                            expected: "an integer label",
                        })
                    }
                },
            }
        }
        n += 1;
    }
    if n_total == 0 {
        return Err(DataError::invalid(&shown, "no data rows after the header"));
    }
    Ok(Loaded {
        data: Dataset {
            rows,
            n,
            dim,
            eight_bit: false,
            image_shape: None,
            labels: label_col.map(|_| labels),
            source: shown,
        },
        n_total,
    })
}

#[cfg(test)]
mod tests {
    use crate::data::{load, DataError, LoadOptions};
    use std::path::PathBuf;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn opts(exclude: &[&str], label: Option<&str>) -> LoadOptions {
        LoadOptions {
            exclude_columns: exclude.iter().map(|s| s.to_string()).collect(),
            label_column: label.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn with_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "t.csv", "a, b ,c\n1,2,3\n4.5,-5e-1,6\n\n");
        let d = load(&p, &LoadOptions::default()).unwrap();
        assert_eq!((d.n, d.dim), (2, 3));
        assert_eq!(d.rows, vec![1.0, 2.0, 3.0, 4.5, -0.5, 6.0]);
        assert!(!d.eight_bit && d.image_shape.is_none() && d.labels.is_none());
        assert!(d.source.ends_with("t.csv"));
    }

    #[test]
    fn without_header_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "t.csv", "1,2\n3,4\n5,6\n");
        let d = load(&p, &LoadOptions::default()).unwrap();
        assert_eq!((d.n, d.dim), (3, 2));
        assert_eq!(d.rows, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let d = load(&p, &LoadOptions { limit: Some(2), ..Default::default() }).unwrap();
        assert_eq!(d.rows, vec![1.0, 2.0, 3.0, 4.0]);
        let err = load(&p, &LoadOptions { limit: Some(0), ..Default::default() });
        assert!(err.is_err());
    }

    #[test]
    fn bad_value_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "bad.csv", "x,y,z\n1,2,3\n4,oops,6\n");
        let err = load(&p, &LoadOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::BadValue { line: 3, .. }), "{msg}");
        assert!(msg.contains("bad.csv") && msg.contains("line 3") && msg.contains("\"y\" (index 1)"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
        for (text, line) in [("1,2\n3,NaN\n", 2), ("1,2\n3,inf\n", 2), ("1,2\n3,\n", 2), ("1,,2\n", 1)] {
            let p = write(&dir, "b2.csv", text);
            let err = load(&p, &LoadOptions::default()).unwrap_err();
            assert!(matches!(&err, DataError::BadValue { line: l, .. } if *l == line), "{text:?}: {err}");
            assert!(err.to_string().contains("index"), "{err}");
        }
    }

    #[test]
    fn ragged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "r.csv", "1,2,3\n4,5,6\n7,8\n");
        let msg = load(&p, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("line 3") && msg.contains("expected 3") && msg.contains("found 2"), "{msg}");
    }

    #[test]
    fn empty_and_header_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "e.csv", "");
        let msg = load(&p, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("empty"), "{msg}");
        let p = write(&dir, "h.csv", "a,b\n");
        let msg = load(&p, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("no data rows"), "{msg}");
        let p = write(&dir, "x.csv", "a,b\n1,2\n");
        let msg = load(&p, &opts(&["a", "b"], None)).unwrap_err().to_string();
        assert!(msg.contains("no numeric feature columns"), "{msg}");
    }

    #[test]
    fn exclude_and_label_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "l.csv", "id,f1,class,f2\nabc,1,0,2\nxyz,3,2.0,4\n");
        // The id column is text, so it must be excluded to load at all.
        let msg = load(&p, &LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains("\"id\" (index 0)") && msg.contains("line 2"), "{msg}");
        let d = load(&p, &opts(&["id"], Some("class"))).unwrap();
        assert_eq!((d.n, d.dim), (2, 2));
        assert_eq!(d.rows, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.labels, Some(vec![0, 2]));
        let msg = load(&p, &opts(&["id"], Some("nope"))).unwrap_err().to_string();
        assert!(msg.contains("nope") && msg.contains("columns: id, f1"), "{msg}");
    }

    #[test]
    fn labels_file_for_a_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "t.csv", "1,2\n3,4\n5,6\n");
        let lab = dir.path().join("labels.idx");
        std::fs::write(&lab, crate::data::idx::tests::idx_bytes(&[3], &[4, 5, 6])).unwrap();
        let o = LoadOptions { labels_path: Some(lab.clone()), limit: Some(2), ..Default::default() };
        // The count is checked against the whole file even when only 2 rows are kept.
        let d = load(&p, &o).unwrap();
        assert_eq!((d.n, d.labels), (2, Some(vec![4, 5])));
        let p = write(&dir, "t4.csv", "1,2\n3,4\n5,6\n7,8\n");
        let msg = load(&p, &o).unwrap_err().to_string();
        assert!(msg.contains("3 labels") && msg.contains("4 rows"), "{msg}");
    }

    #[test]
    fn exclude_and_label_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "i.csv", "9,1,0,2\n9,3,1,4\n");
        let d = load(&p, &opts(&["0"], Some("2"))).unwrap();
        assert_eq!(d.rows, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.labels, Some(vec![0, 1]));
        let msg = load(&p, &opts(&["7"], None)).unwrap_err().to_string();
        assert!(msg.contains("out of range"), "{msg}");
        let msg = load(&p, &opts(&["name"], None)).unwrap_err().to_string();
        assert!(msg.contains("no header"), "{msg}");
        let p = write(&dir, "i2.csv", "1,0.5\n2,1\n");
        let msg = load(&p, &opts(&[], Some("1"))).unwrap_err().to_string();
        assert!(msg.contains("integer label") && msg.contains("line 1"), "{msg}");
    }
}
