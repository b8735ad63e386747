//! What one replica does with the shared model store (docs/scaling.md).
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Scores, trains and writes the store: one process on its own.
    #[default]
    All,
    /// Scores; follows the store's live pointers and never writes the store.
    Scorer,
    /// Runs training jobs and writes versions and live pointers; scores too (for checks, not
    /// for traffic).
    Trainer,
}

impl Role {
    /// Whether this replica may write versions, live pointers and jobs.
    pub fn writes_store(self) -> bool {
        self != Role::Scorer
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Scorer => "scorer",
            Role::Trainer => "trainer",
        }
    }
}
