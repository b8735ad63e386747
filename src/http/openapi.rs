//! The OpenAPI document as the server enforces it. The derived document (`ApiDoc`) knows the
//! types; this fills in what depends on the live model and the settings (row width, value range,
//! row and sample limits, image-only formats) and what the derive cannot say (query parameters
//! that are optional but never null, admin answers 401/403, path segment rules, the training
//! configuration's ranges), so that a client or a fuzzer generating from it sends only what the
//! server accepts and sees only the statuses it lists.
use super::AppState;
use crate::engine::ModelInfo;
use serde_json::{json, Map, Value};

/// Largest finite float32: rows are float32 on the model side, and larger numbers are refused.
const F32_MAX: f64 = f32::MAX as f64;

/// What a path segment naming a model or version may be (`store::registry::valid_segment`).
pub const SEGMENT_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$";

/// The document for `info`'s model: the unprefixed routes and `/models/{name}/...` describe its
/// rows (`name` can only be its name here; each model has its own `/models/{name}/openapi.json`).
pub fn document(state: &AppState, info: &ModelInfo) -> Value {
    use utoipa::OpenApi;
    let mut doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap_or_default();
    let limits = &state.limits;
    let rows = rows_schema(info, limits.max_rows, info.card.preprocess.domain());
    let latents = rows_schema(info, limits.max_rows, Some((-super::MAX_LATENT, super::MAX_LATENT)));
    let mask = {
        let mut m = rows.clone();
        m["items"]["items"] = json!({"type": "number", "enum": [0, 1]});
        m
    };
    let schemas = &mut doc["components"]["schemas"];
    schemas["InputsRequest"]["properties"]["inputs"] = rows.clone();
    schemas["ScoreRequest"]["properties"]["inputs"] = rows.clone();
    schemas["DecodeRequest"]["properties"]["latents"] = latents;
    schemas["InpaintRequest"]["properties"]["inputs"] = rows.clone();
    schemas["InpaintRequest"]["properties"]["mask"] = mask;
    let inpaint = &mut schemas["InpaintRequest"]["properties"];
    inpaint["steps"] = json!({"type": ["integer", "null"], "minimum": 0, "maximum": limits.max_inpaint_steps});
    inpaint["step_size"] = json!({"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e6});
    inpaint["noise"] = json!({"type": ["number", "null"], "minimum": 0, "maximum": 1e6});
    inpaint["seed"] = json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX});
    let mut explain_rows = rows.clone();
    let explain_limit = super::handlers::explain_row_limit(info).min(limits.max_rows);
    explain_rows["maxItems"] = explain_limit.into();
    explain_rows["description"] = format!("1 to {explain_limit} rows of {} numbers.", info.dim()).into();
    schemas["ExplainRequest"]["properties"]["inputs"] = explain_rows;
    schemas["ExplainRequest"]["properties"]["top_k"] =
        json!({"type": ["integer", "null"], "minimum": 0, "maximum": 1_000_000});
    // A threshold, a contamination or an FDR, at most one; score kinds this model has.
    let kinds = score_kinds(info);
    let score = &mut schemas["ScoreRequest"];
    score["properties"]["threshold"] = json!({"type": ["number", "null"]});
    score["properties"]["contamination"] =
        json!({"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1});
    score["properties"]["fdr"] = json!({"type": ["number", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 1});
    score["properties"]["kind"] = json!({"type": ["string", "null"], "enum": kinds.iter().map(|k| Value::from(*k)).chain([Value::Null]).collect::<Vec<_>>()});
    let both =
        |a: &str, b: &str| json!({"required": [a, b], "properties": {a: {"type": "number"}, b: {"type": "number"}}});
    score["not"] =
        json!({"anyOf": [both("threshold", "contamination"), both("threshold", "fdr"), both("contamination", "fdr")]});
    let train = &mut schemas["TrainRequest"];
    train["properties"]["name"] = json!({"type": ["string", "null"], "pattern": SEGMENT_PATTERN});
    train["properties"]["config"] = nullable(crate::train::TrainConfig::json_schema());
    // Exactly one source of rows.
    train["oneOf"] = json!([
        {"required": ["dataset"], "properties": {"dataset": {"type": "object"}, "inputs": {"type": "null"}}},
        {"required": ["inputs"], "properties": {"inputs": {"type": "array"}, "dataset": {"type": "null"}}},
    ]);
    let dataset = &mut schemas["DatasetSpec"];
    dataset["required"] = json!(["path"]);
    dataset["properties"]["path"] = json!({"type": "string", "minLength": 1});
    dataset["properties"]["limit"] = json!({"type": ["integer", "null"], "minimum": 3, "maximum": u32::MAX});
    // A training upload: at least 3 rows (2 to train on, 1 to validate) of 2 or more values.
    schemas["TrainRequest"]["properties"]["inputs"] = json!({
        "type": ["array", "null"], "minItems": 3, "maxItems": limits.max_upload_rows,
        "items": {"type": "array", "minItems": 2, "items": finite_number()},
        "description": "Training rows, all of one length: at least 3 rows of at least 2 values.",
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (_, op) in item.iter_mut() {
                tidy_operation(path, op, info, state);
            }
        }
        add_named_routes(paths, info);
        add_protocol_routes(paths, info);
    }
    doc
}

/// Each scoring route again under `/models/{name}`, for this model's name.
fn add_named_routes(paths: &mut Map<String, Value>, info: &ModelInfo) {
    // This document describes this model's rows; other models have their own documents.
    let name_param = json!({"name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "enum": [info.card.name]}, "description": "model name (its live version)"});
    for route in ["/log_prob", "/score", "/encode", "/decode", "/sample", "/inpaint", "/explain", "/spectrum"] {
        let Some(mut item) = paths.get(route).cloned() else { continue };
        if let Some(item) = item.as_object_mut() {
            for (_, op) in item.iter_mut() {
                if let Some(id) = op.get("operationId").and_then(Value::as_str).map(|s| format!("{s}_named")) {
                    op["operationId"] = id.into();
                }
                let mut params = op.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
                params.insert(0, name_param.clone());
                op["parameters"] = Value::Array(params);
                let responses = &mut op["responses"];
                if responses.get("404").is_none() {
                    responses["404"] = json!({"description": "no such model is loaded",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
                }
            }
        }
        paths.insert(format!("/models/{{name}}{route}"), item.clone());
        // The same at a loaded version: this document's model's live one.
        let version = version_param(info);
        if let Some(ops) = item.as_object_mut() {
            for (_, op) in ops.iter_mut() {
                if let Some(id) = op.get("operationId").and_then(Value::as_str).map(|s| format!("{s}_version")) {
                    op["operationId"] = id.into();
                }
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    params.insert(1, version.clone());
                }
            }
        }
        paths.insert(format!("/models/{{name}}/versions/{{version}}{route}"), item);
    }
}

/// The `version` path parameter: the live version of this document's model.
fn version_param(info: &ModelInfo) -> Value {
    json!({"name": "version", "in": "path", "required": true,
        "schema": {"type": "string", "enum": [info.card.version]}, "description": "a loaded version of the model"})
}

/// The Open Inference Protocol's routes (docs/protocol.md), for this model.
fn add_protocol_routes(paths: &mut Map<String, Value>, info: &ModelInfo) {
    let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    let err = |text: &str| {
        let mut e = error.clone();
        e["description"] = text.into();
        e
    };
    let ok = |text: &str| json!({"description": text, "content": {"application/json": {"schema": {"type": "object"}}}});
    let name = json!({"name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "enum": [info.card.name]}});
    let d = info.dim();
    let value = match info.card.preprocess.domain() {
        Some((lo, hi)) => in_range(lo, hi),
        None => finite_number(),
    };
    let infer_request = json!({
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": ["string", "null"]},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string", "const": "inputs"},
                "shape": {"type": "array", "prefixItems": [{"type": "integer", "const": 1}, {"type": "integer", "const": d}],
                    "minItems": 2, "maxItems": 2},
                "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
                "data": {"type": "array", "minItems": d, "maxItems": d, "items": value},
            }}},
        "outputs": {"type": "array", "maxItems": 1, "items": {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "enum": ["log_prob", "bits_per_dim", "latents"]}}}},
    }});
    paths.insert(
        "/v2".into(),
        json!({"get": {"tags": ["protocol"], "operationId": "oip_server_metadata",
        "responses": {"200": ok("server metadata")}}}),
    );
    paths.insert(
        "/v2/health/live".into(),
        json!({"get": {"tags": ["protocol"], "operationId": "oip_live",
        "responses": {"200": ok("the process is up")}}}),
    );
    paths.insert(
        "/v2/health/ready".into(),
        json!({"get": {"tags": ["protocol"], "operationId": "oip_ready",
        "responses": {"200": ok("ready to score"), "503": err("not ready")}}}),
    );
    paths.insert(
        "/v2/models/{name}".into(),
        json!({"get": {"tags": ["protocol"], "operationId": "oip_model_metadata",
        "parameters": [name.clone()],
        "responses": {"200": ok("model metadata: inputs [-1, D], outputs"), "404": err("no such model")}}}),
    );
    paths.insert(
        "/v2/models/{name}/ready".into(),
        json!({"get": {"tags": ["protocol"], "operationId": "oip_model_ready",
        "parameters": [name.clone()],
        "responses": {"200": ok("the model is loaded"), "404": err("no such model")}}}),
    );
    let version = version_param(info);
    let admin = |id: &str, text: &str, params: Vec<Value>| {
        json!({"post": {"tags": ["protocol", "admin"], "operationId": id, "parameters": params,
            "security": [{"bearer": []}],
            "responses": {"200": ok(text), "401": err("no bearer token"), "403": err("the wrong admin token"),
                "404": err("no such model"), "409": err("the model fails validation or the memory budget")}}})
    };
    let mut index = admin("oip_repository_index", "every version with its state", vec![]);
    index["post"]["responses"]["200"]["content"]["application/json"]["schema"] = json!({"type": "array",
        "items": {"type": "object", "required": ["name", "version", "state"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "state": {"type": "string", "enum": ["READY", "LOADING", "UNAVAILABLE"]}, "reason": {"type": "string"}}}});
    paths.insert("/v2/repository/index".into(), index);
    let repo_name = json!({"name": "name", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": SEGMENT_PATTERN}});
    paths.insert(
        "/v2/repository/models/{name}/load".into(),
        admin("oip_repository_load", "the name's live version is loaded", vec![repo_name.clone()]),
    );
    paths.insert(
        "/v2/repository/models/{name}/unload".into(),
        admin("oip_repository_unload", "every version of the name is unloaded", vec![repo_name]),
    );
    for (suffix, id) in [("", "oip_model_metadata"), ("/ready", "oip_model_ready")] {
        let mut item = paths.get(&format!("/v2/models/{{name}}{suffix}")).cloned().unwrap_or_default();
        if let Some(op) = item.get_mut("get") {
            op["operationId"] = format!("{id}_version").into();
            op["parameters"] = json!([name.clone(), version.clone()]);
        }
        paths.insert(format!("/v2/models/{{name}}/versions/{{version}}{suffix}"), item);
    }
    paths.insert(
        "/v2/models/{name}/versions/{version}/infer".into(),
        json!({"post": {"tags": ["protocol"], "operationId": "oip_infer_version",
        "parameters": [name.clone(), version],
        "requestBody": {"required": true, "content": {"application/json": {"schema": infer_request.clone()}}},
        "responses": {"200": ok("the outputs asked for (default: log_prob), JSON or binary"),
            "400": err("malformed or invalid input"), "404": err("no such model or version"),
            "408": err("the body did not arrive in time"), "413": err("too many rows, or a body over the limit"),
            "503": err("overloaded; retry after `Retry-After`")}}}),
    );
    paths.insert(
        "/v2/models/{name}/infer".into(),
        json!({"post": {"tags": ["protocol"], "operationId": "oip_infer",
        "parameters": [name],
        "requestBody": {"required": true, "content": {"application/json": {"schema": infer_request}}},
        "responses": {"200": ok("the outputs asked for (default: log_prob), JSON or binary"),
            "400": err("malformed or invalid input"), "404": err("no such model"),
            "408": err("the body did not arrive in time"), "413": err("too many rows, or a body over the limit"),
            "503": err("overloaded; retry after `Retry-After`")}}}),
    );
}

/// The score kinds `info`'s model can serve.
fn score_kinds(info: &ModelInfo) -> Vec<&'static str> {
    let cc = info.card.calibration.as_ref().is_some_and(|c| c.complexity_corrected.is_some());
    if cc && info.card.input.eight_bit && info.card.image_shape().is_some() {
        vec!["likelihood", "complexity_corrected"]
    } else {
        vec!["likelihood"]
    }
}

/// `n` rows of the model's D values, each within `domain` (or float32).
fn rows_schema(info: &ModelInfo, max_rows: usize, domain: Option<(f64, f64)>) -> Value {
    let value = match domain {
        Some((lo, hi)) => in_range(lo, hi),
        None => finite_number(),
    };
    let d = info.dim();
    json!({
        "type": "array", "minItems": 1, "maxItems": max_rows,
        "items": {"type": "array", "minItems": d, "maxItems": d, "items": value},
        "description": format!("1 to {max_rows} rows of {d} numbers (the live model's D)."),
    })
}

/// A number in [lo, hi] once rounded to float32, as the server checks it: the bounds widen by
/// half a float32 step, which rounds back onto them.
fn in_range(lo: f64, hi: f64) -> Value {
    let half_step = |v: f64, up: bool| {
        let f = v as f32;
        let next = if up { f.next_up() } else { f.next_down() };
        (f as f64 + next as f64) / 2.0
    };
    json!({"type": "number", "minimum": half_step(lo, false), "maximum": half_step(hi, true)})
}

/// `schema`, or null (an optional field sent as null counts as absent).
fn nullable(mut schema: Value) -> Value {
    match schema.get("type").cloned() {
        Some(Value::String(t)) => schema["type"] = json!([t, "null"]),
        _ => return json!({"oneOf": [schema, {"type": "null"}]}),
    }
    schema
}

fn finite_number() -> Value {
    json!({"type": "number", "minimum": -F32_MAX, "maximum": F32_MAX})
}

fn tidy_operation(path: &str, op: &mut Value, info: &ModelInfo, state: &AppState) {
    let admin = op.get("security").is_some();
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params.iter_mut() {
            tidy_parameter(path, p, info, state);
        }
    }
    // Every route that reads rows may also answer these.
    let reads_rows = op.get("requestBody").is_some() || path == "/sample";
    if reads_rows || path == "/train" {
        let responses = &mut op["responses"];
        for (code, text) in [
            ("400", "malformed or invalid input (the message says what and where)"),
            ("408", "the body did not arrive within the body timeout"),
            ("413", "too many rows, or a body over the size limit"),
            ("415", "a content type other than JSON or NPY"),
            ("503", "overloaded (retry after `Retry-After`), or past the time limit"),
        ] {
            if responses.get(code).is_none() {
                responses[code] = json!({"description": text,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
            }
        }
    }
    // Rows come back as NPY on `Accept: application/x-npy` (and /sample?format=npy or png).
    if let Some(ok) = op["responses"].get_mut("200").and_then(|r| r.get_mut("content")).and_then(Value::as_object_mut) {
        if matches!(path, "/log_prob" | "/encode" | "/decode" | "/inpaint" | "/sample") {
            ok.insert("application/x-npy".into(), json!({"schema": {"type": "string", "format": "binary"}}));
        }
        if path == "/sample" && info.card.image_shape().is_some() {
            ok.insert("image/png".into(), json!({"schema": {"type": "string", "format": "binary"}}));
        }
    }
    if admin {
        let responses = &mut op["responses"];
        let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
        for (code, text) in [("401", "no bearer token"), ("403", "the wrong admin token")] {
            let mut r = error.clone();
            r["description"] = Value::from(text);
            responses[code] = r;
        }
    }
}

fn tidy_parameter(path: &str, p: &mut Value, info: &ModelInfo, state: &AppState) {
    let name = p["name"].as_str().unwrap_or_default().to_string();
    if p["in"] == "path" {
        if path.starts_with("/models/") {
            p["schema"] = json!({"type": "string", "pattern": SEGMENT_PATTERN});
        }
        return;
    }
    // Optional query parameters: absent or a value, never null.
    if let Some(Value::Array(types)) = p["schema"].get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let t = types.remove(0);
            p["schema"]["type"] = t;
        }
    }
    let schema: Option<Map<String, Value>> = match (path, name.as_str()) {
        ("/sample", "n") => Some(range(json!("integer"), 1.0, state.limits.max_samples as f64)),
        ("/sample", "temperature") => {
            Some(json!({"type": "number", "exclusiveMinimum": 0, "maximum": crate::http::MAX_TEMPERATURE}))
        }
        ("/sample", "format") => {
            let formats: Vec<&str> = match info.card.image_shape() {
                Some(_) => vec!["json", "npy", "png"],
                None => vec!["json", "npy"],
            };
            Some(json!({"type": "string", "enum": formats}))
        }
        ("/sample", "seed") | ("/train", "seed") => Some(json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})),
        (_, "contamination") | (_, "fdr") => {
            Some(json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}))
        }
        (_, "kind") => Some(json!({"type": "string", "enum": score_kinds(info)})),
        (_, "top_k") => Some(json!({"type": "integer", "minimum": 0, "maximum": 1_000_000})),
        (p, "format") if p.ends_with("/explain") => {
            let formats: Vec<&str> = match (info.card.image_shape(), info.card.input.eight_bit) {
                (Some(_), true) => vec!["json", "png"],
                _ => vec!["json"],
            };
            Some(json!({"type": "string", "enum": formats}))
        }
        (_, "threshold") => Some(json!({"type": "number"})),
        ("/train", "name") => Some(json!({"type": "string", "pattern": SEGMENT_PATTERN})),
        ("/train", "epochs") => Some(range(json!("integer"), 1.0, 10_000.0)),
        ("/train", "max_seconds") => Some(json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1e7})),
        _ => None,
    }
    .and_then(|v| v.as_object().cloned());
    if let Some(schema) = schema {
        p["schema"] = Value::Object(schema);
    }
}

fn range(kind: Value, lo: f64, hi: f64) -> Value {
    json!({"type": kind, "minimum": lo, "maximum": hi})
}
