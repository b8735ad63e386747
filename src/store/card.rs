//! The model card: what a model is, how it was trained and how to score with it.
use super::StoreError;
use crate::calibration::Calibration;
use crate::flow::{Architecture, Preprocess, Prior};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    pub flowscore_version: String,
    /// RFC 3339 UTC time of creation.
    pub created: String,
    pub architecture: Architecture,
    pub prior: Prior,
    pub preprocess: Preprocess,
    pub input: InputSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub weights: WeightsRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Layout of one row, e.g. [28, 28] for images or [D] for tables; the product is D.
    pub shape: Vec<usize>,
    /// Rows are 8-bit data scaled as (pixel + 0.5) / 256.
    pub eight_bit: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsRef {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub data: String,
    pub train_rows: usize,
    pub val_rows: usize,
    pub epochs: usize,
    pub best_epoch: usize,
    pub wall_seconds: f64,
    /// Mean validation log-likelihood of the kept weights, nats per row.
    pub val_log_likelihood: f64,
    pub val_bits_per_dim: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_rows: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_log_likelihood: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_bits_per_dim: Option<f64>,
    /// Where it trained: `cpu` or `cuda:N` (it loads on either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The hyperparameters used.
    pub recipe: serde_json::Value,
    pub history: Vec<EpochRecord>,
}

/// One epoch of training, as logged and kept in the card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub seconds: f64,
    pub train_log_likelihood: f64,
    pub val_log_likelihood: f64,
    pub val_bits_per_dim: f64,
    pub rows_per_second: f64,
}

impl ModelCard {
    /// A card for a new, untrained model.
    pub fn new(
        name: &str,
        architecture: Architecture,
        prior: Prior,
        preprocess: Preprocess,
        input: InputSpec,
    ) -> ModelCard {
        ModelCard {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            version: "1".into(),
            flowscore_version: env!("CARGO_PKG_VERSION").into(),
            created: now_rfc3339(),
            architecture,
            prior,
            preprocess,
            input,
            training: None,
            calibration: None,
            weights: WeightsRef { file: super::WEIGHTS_FILE.into(), sha256: String::new() },
        }
    }

    /// Parses and validates a card; errors name the file and what is wrong.
    pub fn from_json(text: &str, path: &Path) -> Result<ModelCard, StoreError> {
        let card_err = |message: String| StoreError::Card { path: path.to_path_buf(), message };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| card_err(e.to_string()))?;
        let found = value.get("format_version").and_then(|v| v.as_u64());
        match found {
            None => return Err(card_err("missing or non-integer format_version".into())),
            Some(v) if v != u64::from(FORMAT_VERSION) => {
                return Err(StoreError::Version { path: path.to_path_buf(), found: v.min(u32::MAX as u64) as u32 })
            }
            Some(_) => {}
        }
        let card: ModelCard = serde_json::from_value(value).map_err(|e| card_err(e.to_string()))?;
        card.flow_spec().validate().map_err(|source| StoreError::Spec { path: path.to_path_buf(), source })?;
        let dim: usize = card.input.shape.iter().product();
        if dim != card.architecture.dim {
            return Err(card_err(format!(
                "input.shape {:?} holds {dim} values but architecture.dim is {}",
                card.input.shape, card.architecture.dim
            )));
        }
        if let Some(c) = &card.calibration {
            c.validate().map_err(|e| card_err(format!("calibration: {e}")))?;
        }
        Ok(card)
    }

    /// An image layout [h, w], if the model's rows are images.
    pub fn image_shape(&self) -> Option<[usize; 2]> {
        match self.input.shape.as_slice() {
            [h, w] => Some([*h, *w]),
            _ => None,
        }
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}
