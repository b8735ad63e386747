//! Request bodies (JSON or NPY rows) and response encoding (JSON, or NPY on `Accept`).
use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

pub const NPY: &str = "application/x-npy";

/// A row-major matrix parsed straight into one flat f32 buffer (no per-row allocation), with
/// ragged rows and non-finite or out-of-f32-range values refused while parsing.
#[derive(Debug, Default, Clone)]
pub struct Matrix {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Matrix {
    /// Checks the row width against the model and the row count against the limit.
    pub fn check(&self, what: &str, dim: usize, max_rows: usize) -> Result<(), ApiError> {
        if self.rows == 0 {
            return Err(ApiError::BadRequest(format!("`{what}` is empty: send at least one row")));
        }
        if self.cols != dim {
            return Err(ApiError::BadRequest(format!(
                "`{what}` rows have {} values, the model expects {dim}",
                self.cols
            )));
        }
        if self.rows > max_rows {
            return Err(ApiError::PayloadTooLarge(format!(
                "too many rows: {} (the limit is {max_rows} per request)",
                self.rows
            )));
        }
        Ok(())
    }

    /// Refuses values outside [lo, hi] (where the model's density is defined).
    pub fn check_domain(&self, what: &str, domain: Option<(f64, f64)>) -> Result<(), ApiError> {
        let Some((lo, hi)) = domain else {
            return Ok(());
        };
        match self.data.iter().position(|v| !(lo..=hi).contains(&(*v as f64))) {
            None => Ok(()),
            Some(i) => Err(ApiError::BadRequest(format!(
                "`{what}` row {} column {} is {}, outside the model's input range [{lo}, {hi}]",
                i / self.cols,
                i % self.cols,
                self.data[i]
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Matrix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Matrix, D::Error> {
        d.deserialize_seq(MatrixVisitor)
    }
}

struct MatrixVisitor;

impl<'de> Visitor<'de> for MatrixVisitor {
    type Value = Matrix;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows, each an array of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Matrix, A::Error> {
        let mut m = Matrix::default();
        while let Some(cols) = seq.next_element_seed(RowSeed { data: &mut m.data, row: m.rows })? {
            if m.rows == 0 {
                m.cols = cols;
            } else if cols != m.cols {
                return Err(de::Error::custom(format!(
                    "ragged rows: row {} has {cols} values, row 0 has {}",
                    m.rows, m.cols
                )));
            }
            m.rows += 1;
        }
        Ok(m)
    }
}

struct RowSeed<'a> {
    data: &'a mut Vec<f32>,
    row: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "row {} as an array of numbers", self.row)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(v) = seq.next_element::<f64>()? {
            let f = v as f32;
            // Beyond ±f32::MAX (even by less than the rounding to float32) is out of range.
            if !f.is_finite() || v.abs() > f32::MAX as f64 {
                return Err(de::Error::custom(format!(
                    "row {} column {n}: {v} is outside the float32 range",
                    self.row
                )));
            }
            self.data.push(f);
            n += 1;
        }
        if n == 0 {
            return Err(de::Error::custom(format!("row {} is empty", self.row)));
        }
        Ok(n)
    }
}

/// Serialises a flat row-major buffer as an array of rows, without building nested vectors.
pub struct RowsOut<'a> {
    pub data: &'a [f32],
    pub cols: usize,
}

impl Serialize for RowsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.data.chunks(self.cols.max(1)))
    }
}

/// How a body was sent.
pub enum Body {
    Json(Bytes),
    Npy(Bytes),
}

/// The raw body with its kind, read within the body timeout; too-large bodies and unknown content
/// types become our JSON errors rather than axum's plain-text rejections.
impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Body, ApiError> {
        let kind = content_kind(req.headers())?;
        let timeout = state.limits.body_read_timeout;
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state)).await.map_err(|_| {
            ApiError::RequestTimeout(format!("the request body did not arrive within {} ms", timeout.as_millis()))
        })?;
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body exceeds the server's size limit".into())
            } else {
                ApiError::BadRequest(format!("could not read the request body: {rejection}"))
            }
        })?;
        Ok(if kind { Body::Npy(bytes) } else { Body::Json(bytes) })
    }
}

/// true for NPY, false for JSON (also assumed when no content type is given).
fn content_kind(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(false);
    };
    let ct = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match ct.as_str() {
        "application/json" | "" => Ok(false),
        NPY => Ok(true),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported content type `{other}`: send application/json or {NPY}"
        ))),
    }
}

/// Parses a JSON body into `T`, with serde's message (which names the field and position).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// `parse_json` for the small bodies with integer fields (training, inpainting): JSON has one
/// number type, so `210.0` is taken as the integer 210 wherever an integer is expected.
pub fn parse_json_integral<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value: serde_json::Value = parse_json(bytes)?;
    integral(&mut value);
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Whole floats (within the range integers are exact in) become integers, everywhere in `v`.
pub fn integral(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                *v = if f < 0.0 { Value::from(f as i64) } else { Value::from(f as u64) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral),
        Value::Object(fields) => fields.values_mut().for_each(integral),
        _ => {}
    }
}

/// Parses an NPY body into rows.
pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, ApiError> {
    let ds = crate::data::from_npy_bytes(bytes, "request body")
        .map_err(|e| ApiError::BadRequest(format!("invalid NPY body: {e}")))?;
    Ok(Matrix { rows: ds.n, cols: ds.dim, data: ds.rows })
}

/// Whether the client asked for NPY back.
pub fn wants_npy(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with(NPY)))
}

/// An NPY response.
pub fn npy_response<T: npyz::AutoSerialize + Copy>(data: &[T], shape: &[u64]) -> Result<Response, ApiError> {
    let bytes = crate::data::npy_bytes(data, shape)
        .map_err(|e| ApiError::Engine(crate::engine::EngineError::Inference(e.to_string())))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(NPY))], bytes).into_response())
}
