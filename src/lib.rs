//! flowscore: exact density scoring with NICE normalizing flows.
pub mod calibration;
pub mod cli;
pub mod data;
pub mod eval;
pub mod flow;
pub mod image;
pub mod store;
pub mod train;
