//! A standalone codec for the `infer` call of KServe's Open Inference Protocol v2 (REST), with
//! Triton's binary tensor data extension: the request body is a JSON object, optionally followed
//! by raw little-endian tensor bytes whose start the `Inference-Header-Content-Length` header
//! gives; responses are built the same way.
//!
//! Only the shapes this service scores are accepted: exactly one input, FP32 or FP64, of shape
//! `[N, D]` (strictly two dimensions, `N ≥ 1`, `D ≥ 1`; a 1-D `[D]` is not taken as one row).
//! Tensor data is parsed straight into one flat `f32` buffer, without building JSON values for it.
//! Every error is the client's (HTTP 400), except [`OipError::TooLarge`] (HTTP 413).
//!
//! Depends on `serde`, `serde_json` and `thiserror` only.
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// The header giving the length of the JSON part of a body that carries binary tensor data
/// (lowercase, as HTTP/2 and `http::HeaderName` spell it).
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Why an inference request was refused. All are client errors: HTTP 400, except `TooLarge`
/// (HTTP 413).
#[derive(Debug, thiserror::Error)]
pub enum OipError {
    /// Malformed JSON, or JSON of the wrong structure (serde's message, with its position).
    #[error("invalid inference request: {0}")]
    Json(String),
    /// The `Inference-Header-Content-Length` value is unusable.
    #[error("{0}")]
    HeaderLength(String),
    #[error("the request has no inputs: send exactly one input, e.g. {{\"name\": \"inputs\", \"shape\": [N, D], \"datatype\": \"FP32\", \"data\": [...]}}")]
    NoInputs,
    #[error("the request has {} inputs ({}); send exactly one", .0.len(), .0.join(", "))]
    TooManyInputs(Vec<String>),
    /// A required field of the input is missing (named with its path, e.g. `inputs[0].shape`).
    #[error("`{0}` is missing")]
    MissingField(&'static str),
    #[error("input `{name}` has datatype {datatype}; the accepted datatypes are FP32 and FP64")]
    Datatype { name: String, datatype: String },
    #[error("input `{name}` has shape {shape:?}; expected [N, D] with N >= 1 rows and D >= 1 values per row")]
    Shape { name: String, shape: Vec<i64> },
    #[error("input `{name}` of shape [{n}, {d}] has {values} values, more than the limit of {max} per request")]
    TooLarge { name: String, n: u64, d: u64, values: u128, max: usize },
    #[error("input `{name}` has shape [{n}, {d}], which needs {expected} values, but its `data` has {got}")]
    DataLength { name: String, n: usize, d: usize, expected: usize, got: usize },
    #[error("input `{name}` has both `data` and `parameters.binary_data_size`; send one of them")]
    DataAndBinary { name: String },
    #[error("input `{name}` has neither `data` nor `parameters.binary_data_size`; send one of them")]
    NoData { name: String },
    /// A value outside the float32 range, or not finite (possible in binary data only).
    #[error("input `{name}` row {row} column {col} is {value}; values must be finite and within the float32 range (±3.4028235e38)")]
    BadValue { name: String, row: usize, col: usize, value: String },
    #[error("input `{name}` has binary_data_size {size}, but shape [{n}, {d}] of {datatype} needs {expected} bytes ({n} × {d} × {} bytes)", if *.datatype == "FP64" { 8 } else { 4 })]
    BinarySize { name: String, size: u64, n: usize, d: usize, datatype: &'static str, expected: usize },
    #[error("input `{name}` has binary_data_size {size}, but only {available} bytes of binary data follow the JSON{}",
        if *.no_header { " (there is no Inference-Header-Content-Length header, so the whole body was read as JSON)" } else { "" })]
    BinaryMissing { name: String, size: u64, available: usize, no_header: bool },
    #[error("{extra} byte{} of binary data {} left over after the inputs' binary_data_size bytes; the body must hold the JSON (Inference-Header-Content-Length bytes) and then exactly the binary tensor data",
        if *.extra == 1 { "" } else { "s" }, if *.extra == 1 { "is" } else { "are" })]
    BinaryLeftover { extra: usize },
    /// A parameter of the wrong type, e.g. a non-boolean `binary_data_output`.
    #[error("{0}")]
    BadParameter(String),
    /// A protocol extension this server does not implement (shared memory, classification, raw
    /// binary requests).
    #[error("{0}")]
    Unsupported(String),
}

/// A parsed `infer` request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub input_name: String,
    /// Row-major rows converted to f32 (FP64 inputs narrowed; values outside f32 range or
    /// non-finite refused with an error naming the position).
    pub rows: Vec<f32>,
    pub n: usize,
    pub d: usize,
    /// Outputs asked for by name, in order; empty = the caller's default.
    pub outputs: Vec<RequestedOutput>,
    /// Request-level `parameters.binary_data_output`.
    pub binary_data_output: bool,
    /// Request-level `parameters` other than binary_data_output, as given (the server reads e.g.
    /// `threshold`, `contamination`).
    pub parameters: Map<String, Value>,
}

/// One entry of the request's `outputs`. Per the extension, an output goes back as binary data
/// when `binary.unwrap_or(binary_data_output)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// `parameters.binary_data`, if given.
    pub binary: Option<bool>,
}

/// Parses an `infer` request body. `header_length`: the value of Inference-Header-Content-Length
/// if present (None = the whole body is JSON). `max_values`: the most values (N × D) a request
/// may carry ([`OipError::TooLarge`] beyond).
pub fn parse_infer(body: &[u8], header_length: Option<&str>, max_values: usize) -> Result<InferRequest, OipError> {
    let (json, binary) = match header_length {
        None => (body, &[][..]),
        Some(raw) => {
            let k: usize = raw.trim().parse().map_err(|_| {
                OipError::HeaderLength(format!(
                    "Inference-Header-Content-Length is `{raw}`; expected the length of the JSON part of the body in bytes"
                ))
            })?;
            if k == 0 {
                return Err(OipError::Unsupported(
                    "Inference-Header-Content-Length is 0 (a raw binary request); this server needs the JSON \
                     inference header, which gives the input's shape"
                        .into(),
                ));
            }
            if k > body.len() {
                return Err(OipError::HeaderLength(format!(
                    "Inference-Header-Content-Length is {k} but the body has {} bytes",
                    body.len()
                )));
            }
            body.split_at(k)
        }
    };

    let mut de = serde_json::Deserializer::from_slice(json);
    let raw = RequestSeed { max_values }.deserialize(&mut de).and_then(|r| de.end().map(|()| r)).map_err(|e| {
        match header_length {
            None => OipError::Json(e.to_string()),
            Some(_) => OipError::Json(format!(
                "{e} (the JSON part is the first {} bytes of the body, per Inference-Header-Content-Length)",
                json.len()
            )),
        }
    })?;

    // Request-level parameters.
    let mut parameters = raw.parameters.unwrap_or_default();
    let binary_data_output = match parameters.remove("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(OipError::BadParameter(format!(
                "`parameters.binary_data_output` is {other}; expected true or false"
            )))
        }
    };

    // Requested outputs: structure only; the caller checks the names.
    let mut outputs = Vec::with_capacity(raw.outputs.as_ref().map_or(0, Vec::len));
    for (i, o) in raw.outputs.unwrap_or_default().into_iter().enumerate() {
        let mut binary = None;
        for (key, value) in o.parameters.unwrap_or_default() {
            match key.as_str() {
                "binary_data" => match value {
                    Value::Bool(b) => binary = Some(b),
                    other => {
                        return Err(OipError::BadParameter(format!(
                            "`outputs[{i}].parameters.binary_data` is {other}; expected true or false"
                        )))
                    }
                },
                "classification" => {
                    return Err(OipError::Unsupported(format!(
                        "`outputs[{i}].parameters.classification`: the classification extension is not supported"
                    )))
                }
                k if k.starts_with("shared_memory_") => {
                    return Err(OipError::Unsupported(format!(
                        "`outputs[{i}].parameters.{k}`: the shared memory extension is not supported; \
                         outputs come back in the response body"
                    )))
                }
                _ => {}
            }
        }
        outputs.push(RequestedOutput { name: o.name, binary });
    }

    // The one input.
    let mut inputs = raw.inputs.unwrap_or_default();
    if inputs.is_empty() {
        return Err(OipError::NoInputs);
    }
    if inputs.len() > 1 {
        return Err(OipError::TooManyInputs(
            inputs.into_iter().map(|i| i.name.unwrap_or_else(|| "<unnamed>".into())).collect(),
        ));
    }
    let input = inputs.remove(0);
    let name = input.name.ok_or(OipError::MissingField("inputs[0].name"))?;
    let datatype = input.datatype.ok_or(OipError::MissingField("inputs[0].datatype"))?;
    let (datatype, width) = match datatype.as_str() {
        "FP32" => ("FP32", 4),
        "FP64" => ("FP64", 8),
        _ => return Err(OipError::Datatype { name, datatype }),
    };
    let shape = input.shape.ok_or(OipError::MissingField("inputs[0].shape"))?;
    let (n, d) = match shape[..] {
        [n, d] if n >= 1 && d >= 1 => (n as u64, d as u64),
        _ => return Err(OipError::Shape { name, shape }),
    };
    let values = n as u128 * d as u128;
    if values > max_values as u128 {
        return Err(OipError::TooLarge { name, n, d, values, max: max_values });
    }
    // Both fit in usize now: their product is at most max_values.
    let (n, d, values) = (n as usize, d as usize, values as usize);

    let mut binary_size = None;
    for (key, value) in input.parameters.unwrap_or_default() {
        match key.as_str() {
            "binary_data_size" => match value.as_u64() {
                Some(s) => binary_size = Some(s),
                None => {
                    return Err(OipError::BadParameter(format!(
                        "`inputs[0].parameters.binary_data_size` is {value}; expected a byte count (an integer >= 0)"
                    )))
                }
            },
            k if k.starts_with("shared_memory_") => {
                return Err(OipError::Unsupported(format!(
                    "`inputs[0].parameters.{k}`: the shared memory extension is not supported; send the input as \
                     JSON `data` or as binary tensor data"
                )))
            }
            _ => {}
        }
    }

    let bad = |i: usize, value: String| OipError::BadValue { name: name.clone(), row: i / d, col: i % d, value };
    let rows = match (input.data, binary_size) {
        (Some(_), Some(_)) => return Err(OipError::DataAndBinary { name }),
        (None, None) => return Err(OipError::NoData { name }),
        (Some(data), None) => {
            if data.count != values {
                return Err(OipError::DataLength { name, n, d, expected: values, got: data.count });
            }
            if let Some((i, v)) = data.first_bad {
                return Err(bad(i, format!("{v:?}")));
            }
            if !binary.is_empty() {
                return Err(OipError::BinaryLeftover { extra: binary.len() });
            }
            data.values
        }
        (None, Some(size)) => {
            let expected = values * width;
            if size != expected as u64 {
                return Err(OipError::BinarySize { name, size, n, d, datatype, expected });
            }
            if binary.len() < expected {
                return Err(OipError::BinaryMissing {
                    name,
                    size,
                    available: binary.len(),
                    no_header: header_length.is_none(),
                });
            }
            if binary.len() > expected {
                return Err(OipError::BinaryLeftover { extra: binary.len() - expected });
            }
            let mut rows = Vec::with_capacity(values);
            if width == 4 {
                for (i, b) in binary.chunks_exact(4).enumerate() {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if !v.is_finite() {
                        return Err(bad(i, format!("{v:?}")));
                    }
                    rows.push(v);
                }
            } else {
                for (i, b) in binary.chunks_exact(8).enumerate() {
                    let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    match narrow(v) {
                        Some(f) => rows.push(f),
                        None => return Err(bad(i, format!("{v:?}"))),
                    }
                }
            }
            rows
        }
    };

    Ok(InferRequest { id: raw.id, input_name: name, rows, n, d, outputs, binary_data_output, parameters })
}

/// `v` as f32, or None when it is not finite or beyond ±f32::MAX (even by less than the rounding).
#[inline]
fn narrow(v: f64) -> Option<f32> {
    let f = v as f32;
    (f.is_finite() && v.abs() <= f32::MAX as f64).then_some(f)
}

// ---- Request parsing: a hand-written visitor, so tensor data goes straight into a Vec<f32>. ----

struct RawRequest {
    id: Option<String>,
    parameters: Option<Map<String, Value>>,
    inputs: Option<Vec<RawInput>>,
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Default)]
struct RawInput {
    name: Option<String>,
    shape: Option<Vec<i64>>,
    datatype: Option<String>,
    parameters: Option<Map<String, Value>>,
    data: Option<DataAcc>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum RequestField {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

/// Flattened tensor values: up to `cap` are kept, all are counted, the first unrepresentable
/// one is remembered (reported once the shape gives its row and column).
struct DataAcc {
    values: Vec<f32>,
    count: usize,
    cap: usize,
    first_bad: Option<(usize, f64)>,
}

impl DataAcc {
    #[inline]
    fn push(&mut self, v: f64) {
        let f = match narrow(v) {
            Some(f) => f,
            None => {
                if self.first_bad.is_none() {
                    self.first_bad = Some((self.count, v));
                }
                0.0
            }
        };
        if self.count < self.cap {
            self.values.push(f);
        }
        self.count += 1;
    }
}

struct RequestSeed {
    max_values: usize,
}

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = RawRequest;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawRequest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = RawRequest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an inference request object {\"inputs\": [...], ...}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRequest, A::Error> {
        let mut r = RawRequest { id: None, parameters: None, inputs: None, outputs: None };
        let (mut seen_id, mut seen_parameters) = (false, false);
        while let Some(key) = map.next_key::<RequestField>()? {
            match key {
                RequestField::Id => {
                    dup(seen_id, "id")?;
                    seen_id = true;
                    r.id = map.next_value()?;
                }
                RequestField::Parameters => {
                    dup(seen_parameters, "parameters")?;
                    seen_parameters = true;
                    r.parameters = map.next_value()?;
                }
                RequestField::Inputs => {
                    dup(r.inputs.is_some(), "inputs")?;
                    r.inputs = Some(map.next_value_seed(InputsSeed { max_values: self.max_values })?);
                }
                RequestField::Outputs => {
                    dup(r.outputs.is_some(), "outputs")?;
                    r.outputs = Some(map.next_value()?);
                }
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(r)
    }
}

fn dup<E: de::Error>(seen: bool, field: &'static str) -> Result<(), E> {
    if seen {
        Err(E::duplicate_field(field))
    } else {
        Ok(())
    }
}

struct InputsSeed {
    max_values: usize,
}

impl<'de> DeserializeSeed<'de> for InputsSeed {
    type Value = Vec<RawInput>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<RawInput>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed {
    type Value = Vec<RawInput>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`inputs` as an array of input tensors")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RawInput>, A::Error> {
        let mut inputs = Vec::with_capacity(1);
        // Only the first input's data is kept: a second input is an error anyway.
        while let Some(input) =
            seq.next_element_seed(InputSeed { max_values: self.max_values, keep_data: inputs.is_empty() })?
        {
            inputs.push(input);
        }
        Ok(inputs)
    }
}

struct InputSeed {
    max_values: usize,
    keep_data: bool,
}

impl<'de> DeserializeSeed<'de> for InputSeed {
    type Value = RawInput;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawInput, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InputSeed {
    type Value = RawInput;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an input tensor {\"name\", \"shape\", \"datatype\", \"data\"}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawInput, A::Error> {
        let mut input = RawInput::default();
        let mut seen_data = false;
        while let Some(key) = map.next_key::<InputField>()? {
            match key {
                InputField::Name => {
                    dup(input.name.is_some(), "name")?;
                    input.name = Some(map.next_value()?);
                }
                InputField::Shape => {
                    dup(input.shape.is_some(), "shape")?;
                    input.shape = Some(map.next_value()?);
                }
                InputField::Datatype => {
                    dup(input.datatype.is_some(), "datatype")?;
                    input.datatype = Some(map.next_value()?);
                }
                InputField::Parameters => {
                    dup(input.parameters.is_some(), "parameters")?;
                    input.parameters = Some(map.next_value()?);
                }
                InputField::Data => {
                    dup(seen_data, "data")?;
                    seen_data = true;
                    if !self.keep_data {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    // With the shape already read (tritonclient sends it first), size the buffer.
                    let hint = match input.shape.as_deref() {
                        Some(&[n, d]) if n > 0 && d > 0 => (n as u64).saturating_mul(d as u64),
                        _ => 0,
                    };
                    let cap = self.max_values;
                    let mut acc = DataAcc {
                        values: Vec::with_capacity(hint.min(cap as u64) as usize),
                        count: 0,
                        cap,
                        first_bad: None,
                    };
                    map.next_value_seed(DataSeed { acc: &mut acc, top: true })?;
                    input.data = Some(acc);
                }
                InputField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(input)
    }
}

/// Tensor `data`: an array of numbers, or of nested arrays of numbers (any depth), flattened.
struct DataSeed<'a> {
    acc: &'a mut DataAcc,
    /// The outermost array (a bare number is not tensor data).
    top: bool,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.top {
            d.deserialize_seq(self)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.top {
            f.write_str("tensor `data` as an array of numbers (flat row-major, or nested)")
        } else {
            f.write_str("a number or an array of numbers in tensor `data`")
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(DataSeed { acc: &mut *self.acc, top: false })?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.acc.push(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.acc.push(v as f64);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.acc.push(v as f64);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        Err(E::custom(format!(
            "tensor `data` holds the string {v:?}: BYTES tensors are not accepted, send FP32 or FP64 numbers"
        )))
    }
}

// ---- Response encoding. ----

/// An output tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub enum OutData {
    Fp64(Vec<f64>),
    Fp32(Vec<f32>),
    Bool(Vec<bool>),
}

impl OutData {
    /// The OIP datatype name.
    fn datatype(&self) -> &'static str {
        match self {
            OutData::Fp64(_) => "FP64",
            OutData::Fp32(_) => "FP32",
            OutData::Bool(_) => "BOOL",
        }
    }

    /// The number of elements.
    fn len(&self) -> usize {
        match self {
            OutData::Fp64(v) => v.len(),
            OutData::Fp32(v) => v.len(),
            OutData::Bool(v) => v.len(),
        }
    }

    /// The size as binary tensor data, in bytes.
    fn byte_size(&self) -> usize {
        match self {
            OutData::Fp64(v) => v.len() * 8,
            OutData::Fp32(v) => v.len() * 4,
            OutData::Bool(v) => v.len(),
        }
    }

    fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            OutData::Fp64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            OutData::Fp32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            OutData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        }
    }
}

/// One output of a response. `binary`: sent as binary tensor data after the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: OutData,
    pub binary: bool,
}

/// An encoded response body.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// Some(json header length) when any output is binary: send it as
    /// Inference-Header-Content-Length (with Content-Type application/octet-stream).
    pub header_length: Option<usize>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

/// Floats go through serde_json's writer (ryu; non-finite values become `null`).
struct DataJson<'a>(&'a OutData);

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            OutData::Fp64(v) => v.serialize(s),
            OutData::Fp32(v) => v.serialize(s),
            OutData::Bool(v) => v.serialize(s),
        }
    }
}

/// Encodes an `infer` response: `{"model_name", "model_version"?, "id"?, "outputs": [...]}`,
/// each output with `name`, `datatype`, `shape` and either `data` or, when binary,
/// `parameters.binary_data_size`; the binary outputs' little-endian bytes (BOOL: one byte each)
/// follow the JSON in output order.
pub fn encode_infer(
    model_name: &str,
    model_version: Option<&str>,
    id: Option<&str>,
    outputs: &[OutTensor],
) -> Result<Encoded, serde_json::Error> {
    let json = ResponseJson {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .map(|o| {
                debug_assert_eq!(o.shape.iter().product::<usize>(), o.data.len(), "output `{}` shape", o.name);
                OutputJson {
                    name: &o.name,
                    datatype: o.data.datatype(),
                    shape: &o.shape,
                    parameters: o.binary.then(|| BinaryParams { binary_data_size: o.data.byte_size() }),
                    data: (!o.binary).then_some(DataJson(&o.data)),
                }
            })
            .collect(),
    };
    let binary_len: usize = outputs.iter().filter(|o| o.binary).map(|o| o.data.byte_size()).sum();
    let json_estimate: usize = 96 + outputs.iter().filter(|o| !o.binary).map(|o| o.data.len() * 20).sum::<usize>();
    let mut body = Vec::with_capacity(json_estimate + binary_len);
    serde_json::to_writer(&mut body, &json)?;
    let header_length = outputs.iter().any(|o| o.binary).then_some(body.len());
    for o in outputs.iter().filter(|o| o.binary) {
        o.data.write_binary(&mut body);
    }
    Ok(Encoded { body, header_length })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn parse_json(v: &Value) -> Result<InferRequest, OipError> {
        parse_infer(v.to_string().as_bytes(), None, MAX)
    }

    /// A request whose one input is sent as binary data, as tritonclient does by default.
    fn binary_body(header: &Value, data: &[u8]) -> (Vec<u8>, String) {
        let mut body = header.to_string().into_bytes();
        let k = body.len();
        body.extend_from_slice(data);
        (body, k.to_string())
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn f64_bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn input(shape: Value, datatype: &str, data: Value) -> Value {
        json!({"name": "inputs", "shape": shape, "datatype": datatype, "data": data})
    }

    fn err(r: Result<InferRequest, OipError>) -> OipError {
        r.expect_err("expected an error")
    }

    #[test]
    fn json_flat_fp32() {
        let r = parse_json(&json!({
            "id": "req-1",
            "inputs": [input(json!([2, 3]), "FP32", json!([1, 2.5, -3, 4e-3, 0, 6]))],
        }))
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("req-1"));
        assert_eq!(r.input_name, "inputs");
        assert_eq!((r.n, r.d), (2, 3));
        assert_eq!(r.rows, vec![1.0, 2.5, -3.0, 4e-3, 0.0, 6.0]);
        assert!(r.outputs.is_empty());
        assert!(!r.binary_data_output);
        assert!(r.parameters.is_empty());
    }

    #[test]
    fn json_nested_equals_flat() {
        let flat = parse_json(&json!({"inputs": [input(json!([2, 2]), "FP32", json!([1, 2, 3, 4]))]})).unwrap();
        let nested = parse_json(&json!({"inputs": [input(json!([2, 2]), "FP32", json!([[1, 2], [3, 4]]))]})).unwrap();
        let deep =
            parse_json(&json!({"inputs": [input(json!([2, 2]), "FP32", json!([[[1], [2]], [[3, [4]]]]))]})).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat, deep);
    }

    #[test]
    fn fields_in_any_order_and_unknown_fields_ignored() {
        let body = br#"{"extension": {"x": [1, 2]}, "inputs": [{"data": [[0.5, 1.5]], "datatype": "FP64",
            "future": null, "shape": [1, 2], "name": "in\u0070uts"}], "model_name": "m"}"#;
        let r = parse_infer(body, None, MAX).unwrap();
        assert_eq!(r.input_name, "inputs");
        assert_eq!(r.rows, vec![0.5, 1.5]);
    }

    #[test]
    fn fp64_json_is_narrowed() {
        let r = parse_json(&json!({"inputs": [input(json!([1, 2]), "FP64", json!([0.1, 1e-50]))]})).unwrap();
        assert_eq!(r.rows, vec![0.1f64 as f32, 0.0]);
    }

    #[test]
    fn out_of_f32_range_names_position() {
        for dt in ["FP32", "FP64"] {
            let e = err(parse_json(&json!({"inputs": [input(json!([2, 2]), dt, json!([1, 2, 3, -1e39]))]})));
            assert!(matches!(e, OipError::BadValue { row: 1, col: 1, .. }), "{e:?}");
            assert!(e.to_string().contains("row 1 column 1"), "{e}");
        }
    }

    #[test]
    fn parameters_and_outputs() {
        let r = parse_json(&json!({
            "parameters": {"binary_data_output": true, "threshold": 0.5, "contamination": 0.01},
            "inputs": [input(json!([1, 1]), "FP32", json!([1]))],
            "outputs": [
                {"name": "log_prob", "parameters": {"binary_data": false}},
                {"name": "latents"},
                {"name": "is_anomaly", "parameters": {"binary_data": true, "custom": 3}},
            ],
        }))
        .unwrap();
        assert!(r.binary_data_output);
        assert_eq!(r.parameters.len(), 2);
        assert_eq!(r.parameters["threshold"], json!(0.5));
        assert!(!r.parameters.contains_key("binary_data_output"));
        let names: Vec<_> = r.outputs.iter().map(|o| (o.name.as_str(), o.binary)).collect();
        assert_eq!(names, [("log_prob", Some(false)), ("latents", None), ("is_anomaly", Some(true))]);
    }

    #[test]
    fn bad_parameters() {
        let base = |params: Value, outputs: Value| {
            parse_json(&json!({"parameters": params, "outputs": outputs,
                "inputs": [input(json!([1, 1]), "FP32", json!([1]))]}))
        };
        assert!(matches!(err(base(json!({"binary_data_output": "yes"}), json!([]))), OipError::BadParameter(_)));
        let e = err(base(json!({}), json!([{"name": "x", "parameters": {"binary_data": 1}}])));
        assert!(e.to_string().contains("outputs[0].parameters.binary_data"), "{e}");
        let e = err(base(json!({}), json!([{"name": "x", "parameters": {"classification": 2}}])));
        assert!(matches!(e, OipError::Unsupported(_)), "{e:?}");
        assert!(matches!(err(base(json!({}), json!([{"parameters": {}}]))), OipError::Json(_)));
        assert!(matches!(err(base(json!({}), json!({"name": "x"}))), OipError::Json(_)));
        assert!(matches!(err(base(json!([1]), json!([]))), OipError::Json(_)));
    }

    #[test]
    fn binary_fp32_round_trip() {
        let rows = [1.0f32, -2.5, 3.25, 1e-30, 7.0, f32::MAX];
        let header = json!({
            "inputs": [{"name": "inputs", "shape": [3, 2], "datatype": "FP32",
                "parameters": {"binary_data_size": 24}}],
        });
        let (body, k) = binary_body(&header, &f32_bytes(&rows));
        let r = parse_infer(&body, Some(&k), MAX).unwrap();
        assert_eq!((r.n, r.d), (3, 2));
        assert_eq!(r.rows, rows);
    }

    #[test]
    fn binary_fp64_narrowed() {
        let rows = [0.1f64, -1e-3, 12345.678901234];
        let header = json!({
            "inputs": [{"name": "inputs", "shape": [1, 3], "datatype": "FP64",
                "parameters": {"binary_data_size": 24}}],
        });
        let (body, k) = binary_body(&header, &f64_bytes(&rows));
        let r = parse_infer(&body, Some(&k), MAX).unwrap();
        assert_eq!(r.rows, rows.map(|v| v as f32));

        let (body, k) = binary_body(&header, &f64_bytes(&[0.0, 0.0, 1e300]));
        let e = err(parse_infer(&body, Some(&k), MAX));
        assert!(matches!(e, OipError::BadValue { row: 0, col: 2, .. }), "{e:?}");
    }

    #[test]
    fn binary_non_finite_refused() {
        let header = json!({
            "inputs": [{"name": "inputs", "shape": [2, 2], "datatype": "FP32",
                "parameters": {"binary_data_size": 16}}],
        });
        let (body, k) = binary_body(&header, &f32_bytes(&[0.0, 1.0, f32::NAN, 2.0]));
        let e = err(parse_infer(&body, Some(&k), MAX));
        assert!(matches!(e, OipError::BadValue { row: 1, col: 0, .. }), "{e:?}");
        assert!(e.to_string().contains("NaN"), "{e}");
    }

    #[test]
    fn header_length_with_whole_json_body() {
        // The header may be sent with no binary data at all (the JSON is then the whole body).
        let body = json!({"inputs": [input(json!([1, 2]), "FP32", json!([1, 2]))]}).to_string();
        let r = parse_infer(body.as_bytes(), Some(&format!(" {} ", body.len())), MAX).unwrap();
        assert_eq!(r.rows, vec![1.0, 2.0]);
    }

    #[test]
    fn wrong_datatypes() {
        for dt in ["BYTES", "INT32", "INT64", "BOOL", "FP16", "BF16", "fp32"] {
            let e = err(parse_json(&json!({"inputs": [input(json!([1, 1]), dt, json!([1]))]})));
            assert!(matches!(e, OipError::Datatype { .. }), "{dt}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(dt) && msg.contains("FP32") && msg.contains("FP64"), "{msg}");
        }
        // BYTES data is strings: still the datatype error? No: strings are refused while parsing.
        let e = err(parse_json(&json!({"inputs": [input(json!([1]), "BYTES", json!(["abc"]))]})));
        assert!(matches!(e, OipError::Json(_)), "{e:?}");
    }

    #[test]
    fn shapes() {
        for shape in [json!([4]), json!([1, 2, 2]), json!([0, 4]), json!([4, 0]), json!([-1, 4]), json!([])] {
            let e = err(parse_json(&json!({"inputs": [input(shape.clone(), "FP32", json!([1, 2, 3, 4]))]})));
            assert!(matches!(e, OipError::Shape { .. }), "{shape}: {e:?}");
            assert!(e.to_string().contains("[N, D]"), "{e}");
        }
        let e = err(parse_json(&json!({"inputs": [input(json!([1.5, 2]), "FP32", json!([1, 2]))]})));
        assert!(matches!(e, OipError::Json(_)), "{e:?}");
    }

    #[test]
    fn too_large() {
        let body = json!({"inputs": [input(json!([3, 4]), "FP32", json!(vec![0; 12]))]}).to_string();
        assert!(parse_infer(body.as_bytes(), None, 12).is_ok());
        let e = err(parse_infer(body.as_bytes(), None, 11));
        assert!(matches!(e, OipError::TooLarge { values: 12, max: 11, .. }), "{e:?}");
        // A shape whose product overflows u64 is too large, not a panic.
        let huge = json!({"inputs": [input(json!([i64::MAX, i64::MAX]), "FP32", json!([1]))]});
        assert!(matches!(err(parse_json(&huge)), OipError::TooLarge { .. }));
        // More data than max_values, with a small shape: only up to the cap is stored.
        let body = json!({"inputs": [input(json!([1, 2]), "FP32", json!(vec![0; 100]))]}).to_string();
        let e = err(parse_infer(body.as_bytes(), None, 10));
        assert!(matches!(e, OipError::DataLength { expected: 2, got: 100, .. }), "{e:?}");
    }

    #[test]
    fn data_length_mismatch() {
        let e = err(parse_json(&json!({"inputs": [input(json!([2, 3]), "FP32", json!([[1, 2, 3], [4, 5]]))]})));
        assert!(matches!(e, OipError::DataLength { expected: 6, got: 5, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("[2, 3]") && msg.contains('6') && msg.contains('5'), "{msg}");
    }

    #[test]
    fn non_numbers_refused() {
        for bad in [json!([1, "2"]), json!([1, null]), json!([true, 1]), json!([[1], {"a": 1}]), json!(3)] {
            let e = err(parse_json(&json!({"inputs": [input(json!([1, 2]), "FP32", bad.clone())]})));
            assert!(matches!(e, OipError::Json(_)), "{bad}: {e:?}");
            assert!(e.to_string().contains("data"), "{e}");
        }
    }

    #[test]
    fn input_counts() {
        assert!(matches!(err(parse_json(&json!({"inputs": []}))), OipError::NoInputs));
        assert!(matches!(err(parse_json(&json!({"id": "x"}))), OipError::NoInputs));
        let e = err(parse_json(&json!({"inputs": [
            input(json!([1, 1]), "FP32", json!([1])),
            {"name": "second", "shape": [1], "datatype": "BYTES", "data": ["x"]},
        ]})));
        assert!(matches!(&e, OipError::TooManyInputs(names) if names == &["inputs", "second"]), "{e:?}");
        assert!(e.to_string().contains("inputs, second"), "{e}");
    }

    #[test]
    fn missing_fields() {
        let e = err(parse_json(&json!({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]})));
        assert!(matches!(e, OipError::MissingField("inputs[0].shape")), "{e:?}");
        let e = err(parse_json(&json!({"inputs": [{"shape": [1, 1], "datatype": "FP32", "data": [1]}]})));
        assert!(matches!(e, OipError::MissingField("inputs[0].name")), "{e:?}");
        let e = err(parse_json(&json!({"inputs": [{"name": "x", "shape": [1, 1], "data": [1]}]})));
        assert!(matches!(e, OipError::MissingField("inputs[0].datatype")), "{e:?}");
        let e = err(parse_json(&json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32"}]})));
        assert!(matches!(e, OipError::NoData { .. }), "{e:?}");
    }

    #[test]
    fn malformed_json() {
        for body in [&b"{"[..], b"", b"[]", b"{\"inputs\": [}", b"{} x", b"{\"id\": 1}", b"\xff"] {
            let e = err(parse_infer(body, None, MAX));
            assert!(matches!(e, OipError::Json(_)), "{body:?}: {e:?}");
        }
        let e = err(parse_infer(br#"{"inputs": [], "inputs": []}"#, None, MAX));
        assert!(e.to_string().contains("duplicate field `inputs`"), "{e}");
    }

    #[test]
    fn lying_header_length() {
        let header = json!({
            "inputs": [{"name": "inputs", "shape": [1, 2], "datatype": "FP32",
                "parameters": {"binary_data_size": 8}}],
        });
        let (body, k) = binary_body(&header, &f32_bytes(&[1.0, 2.0]));
        let k: usize = k.parse().unwrap();
        // Longer than the body.
        let e = err(parse_infer(&body, Some(&(body.len() + 1).to_string()), MAX));
        assert!(matches!(e, OipError::HeaderLength(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("Inference-Header-Content-Length is {} but the body has {} bytes", body.len() + 1, body.len())
        );
        // Too long (swallows binary bytes into the JSON) and too short (cuts the JSON).
        for lie in [k + 3, k - 3] {
            let e = err(parse_infer(&body, Some(&lie.to_string()), MAX));
            assert!(matches!(e, OipError::Json(_)), "{lie}: {e:?}");
            assert!(e.to_string().contains(&format!("first {lie} bytes")), "{e}");
        }
        // Not a number.
        for bad in ["abc", "-5", "", "1.5"] {
            let e = err(parse_infer(&body, Some(bad), MAX));
            assert!(matches!(e, OipError::HeaderLength(_)), "{bad}: {e:?}");
        }
        // Zero: a raw binary request.
        assert!(matches!(err(parse_infer(&body, Some("0"), MAX)), OipError::Unsupported(_)));
    }

    #[test]
    fn binary_size_mismatch_and_leftovers() {
        let header = |size: u64, dt: &str| {
            json!({"inputs": [{"name": "inputs", "shape": [2, 2], "datatype": dt,
                "parameters": {"binary_data_size": size}}]})
        };
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        // binary_data_size disagrees with the shape.
        let (body, k) = binary_body(&header(12, "FP32"), &data[..12]);
        let e = err(parse_infer(&body, Some(&k), MAX));
        assert!(matches!(e, OipError::BinarySize { size: 12, expected: 16, .. }), "{e:?}");
        // FP64 needs 8 bytes a value.
        let (body, k) = binary_body(&header(16, "FP64"), &data);
        let e = err(parse_infer(&body, Some(&k), MAX));
        assert!(matches!(e, OipError::BinarySize { expected: 32, .. }), "{e:?}");
        assert!(e.to_string().contains("8 bytes"), "{e}");
        // Missing bytes.
        let (body, k) = binary_body(&header(16, "FP32"), &data[..10]);
        let e = err(parse_infer(&body, Some(&k), MAX));
        assert!(matches!(e, OipError::BinaryMissing { size: 16, available: 10, .. }), "{e:?}");
        // Leftover bytes.
        let mut more = data.clone();
        more.extend_from_slice(&[0, 0, 0]);
        let (body, k) = binary_body(&header(16, "FP32"), &more);
        let e = err(parse_infer(&body, Some(&k), MAX));
        assert!(matches!(e, OipError::BinaryLeftover { extra: 3 }), "{e:?}");
        // Binary bytes after a JSON-data input.
        let json_header = json!({"inputs": [input(json!([1, 1]), "FP32", json!([1]))]});
        let (body, k) = binary_body(&json_header, &[1, 2]);
        assert!(matches!(err(parse_infer(&body, Some(&k), MAX)), OipError::BinaryLeftover { extra: 2 }));
        assert!(OipError::BinaryLeftover { extra: 1 }.to_string().starts_with("1 byte of binary data is left over"));
        assert!(OipError::BinaryLeftover { extra: 2 }.to_string().starts_with("2 bytes of binary data are left over"));
        // binary_data_size without the header: the body is all JSON, so no binary data.
        let e = err(parse_infer(header(16, "FP32").to_string().as_bytes(), None, MAX));
        assert!(matches!(e, OipError::BinaryMissing { available: 0, no_header: true, .. }), "{e:?}");
        assert!(e.to_string().contains("no Inference-Header-Content-Length"), "{e}");
        // Both data and binary_data_size.
        let both = json!({"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "FP32", "data": [1],
            "parameters": {"binary_data_size": 4}}]});
        let (body, k) = binary_body(&both, &f32_bytes(&[1.0]));
        assert!(matches!(err(parse_infer(&body, Some(&k), MAX)), OipError::DataAndBinary { .. }));
        // A negative or non-integer binary_data_size.
        let (body, k) = binary_body(&header(16, "FP32"), &data);
        let body = String::from_utf8_lossy(&body[..k.parse().unwrap()]).replace("16", "-16");
        let e = err(parse_infer(body.as_bytes(), Some(&body.len().to_string()), MAX));
        assert!(matches!(e, OipError::BadParameter(_)), "{e:?}");
    }

    #[test]
    fn shared_memory_refused() {
        let e = err(parse_json(&json!({"inputs": [{"name": "inputs", "shape": [1, 1], "datatype": "FP32",
            "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]})));
        assert!(matches!(e, OipError::Unsupported(_)), "{e:?}");
    }

    #[test]
    fn tritonclient_style_request() {
        // What tritonclient.http sends by default: binary input, no outputs, binary_data_output.
        let header = r#"{"inputs":[{"name":"inputs","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":24}}],"parameters":{"binary_data_output":true}}"#;
        let rows = [0.5f32, 1.0, 1.5, 2.0, 2.5, 3.0];
        let mut body = header.as_bytes().to_vec();
        body.extend(f32_bytes(&rows));
        let r = parse_infer(&body, Some(&header.len().to_string()), MAX).unwrap();
        assert!(r.binary_data_output && r.outputs.is_empty() && r.parameters.is_empty());
        assert_eq!(r.rows, rows);
    }

    #[test]
    fn encode_json_byte_exact() {
        let outputs = [
            OutTensor { name: "log_prob".into(), shape: vec![2], data: OutData::Fp64(vec![-1.5, 0.1]), binary: false },
            OutTensor {
                name: "is_anomaly".into(),
                shape: vec![2],
                data: OutData::Bool(vec![true, false]),
                binary: false,
            },
            OutTensor {
                name: "latents".into(),
                shape: vec![2, 1],
                data: OutData::Fp32(vec![0.1, f32::NAN]),
                binary: false,
            },
        ];
        let e = encode_infer("m\"1", Some("3"), Some("abc"), &outputs).unwrap();
        assert_eq!(e.header_length, None);
        assert_eq!(
            std::str::from_utf8(&e.body).unwrap(),
            r#"{"model_name":"m\"1","model_version":"3","id":"abc","outputs":[{"name":"log_prob","datatype":"FP64","shape":[2],"data":[-1.5,0.1]},{"name":"is_anomaly","datatype":"BOOL","shape":[2],"data":[true,false]},{"name":"latents","datatype":"FP32","shape":[2,1],"data":[0.1,null]}]}"#
        );
        let e = encode_infer("m", None, None, &[]).unwrap();
        assert_eq!(e.body, br#"{"model_name":"m","outputs":[]}"#);
    }

    #[test]
    fn encode_binary_byte_exact() {
        let outputs = [
            OutTensor { name: "a".into(), shape: vec![2], data: OutData::Fp64(vec![1.0, -2.0]), binary: true },
            OutTensor { name: "b".into(), shape: vec![1], data: OutData::Fp32(vec![0.5]), binary: false },
            OutTensor { name: "c".into(), shape: vec![3], data: OutData::Bool(vec![true, false, true]), binary: true },
            OutTensor { name: "d".into(), shape: vec![1, 1], data: OutData::Fp32(vec![3.0]), binary: true },
        ];
        let e = encode_infer("m", None, Some("i"), &outputs).unwrap();
        let json = r#"{"model_name":"m","id":"i","outputs":[{"name":"a","datatype":"FP64","shape":[2],"parameters":{"binary_data_size":16}},{"name":"b","datatype":"FP32","shape":[1],"data":[0.5]},{"name":"c","datatype":"BOOL","shape":[3],"parameters":{"binary_data_size":3}},{"name":"d","datatype":"FP32","shape":[1,1],"parameters":{"binary_data_size":4}}]}"#;
        assert_eq!(e.header_length, Some(json.len()));
        let mut expected = json.as_bytes().to_vec();
        expected.extend(f64_bytes(&[1.0, -2.0]));
        expected.extend([1, 0, 1]);
        expected.extend(3.0f32.to_le_bytes());
        assert_eq!(e.body, expected);
    }

    #[test]
    fn encoded_response_decodes_like_a_client() {
        // Decode as tritonclient's InferResult does: JSON header, then buffers by binary_data_size.
        let log_prob = vec![-3.25, 1e-300, 12345.678];
        let latents = vec![0.25f32, -1.0, 2.0, 3.5, -0.125, 7.0];
        let outputs = [
            OutTensor { name: "log_prob".into(), shape: vec![3], data: OutData::Fp64(log_prob.clone()), binary: true },
            OutTensor { name: "latents".into(), shape: vec![3, 2], data: OutData::Fp32(latents.clone()), binary: true },
        ];
        let e = encode_infer("m", Some("1"), None, &outputs).unwrap();
        let k = e.header_length.unwrap();
        let header: Value = serde_json::from_slice(&e.body[..k]).unwrap();
        let mut offset = k;
        let mut decoded = Vec::new();
        for o in header["outputs"].as_array().unwrap() {
            let size = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            decoded.push(e.body[offset..offset + size].to_vec());
            offset += size;
        }
        assert_eq!(offset, e.body.len());
        assert_eq!(decoded[0], f64_bytes(&log_prob));
        assert_eq!(decoded[1], f32_bytes(&latents));
    }

    #[test]
    fn json_round_trip_through_encode() {
        // Rows encoded as an FP32 JSON output parse back to the same f32 values.
        let rows: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin() * 10f32.powi(i % 7 - 3)).collect();
        let e = encode_infer(
            "m",
            None,
            None,
            &[OutTensor { name: "x".into(), shape: vec![8, 5], data: OutData::Fp32(rows.clone()), binary: false }],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        let out = &v["outputs"][0];
        let req = json!({"inputs": [{"name": "x", "shape": out["shape"], "datatype": out["datatype"],
            "data": out["data"]}]});
        let r = parse_json(&req).unwrap();
        assert_eq!((r.n, r.d), (8, 5));
        assert_eq!(r.rows, rows);
    }

    #[test]
    fn json_parse_is_fast() {
        // 64 × 10 values; a generous bound that still catches building a Value per number.
        let data: Vec<Vec<f64>> =
            (0..64).map(|i| (0..10).map(|j| ((i * 10 + j) as f64 * 0.731).sin()).collect()).collect();
        let body = json!({"inputs": [input(json!([64, 10]), "FP32", json!(data))]}).to_string();
        let runs = 200;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            let r = parse_infer(body.as_bytes(), None, MAX).unwrap();
            assert_eq!(r.rows.len(), 640);
        }
        let per = start.elapsed() / runs;
        eprintln!("64x10 JSON request: {per:?} per parse");
        assert!(per < std::time::Duration::from_millis(if cfg!(debug_assertions) { 20 } else { 1 }), "{per:?}");
    }
}
