//! flowscore: exact density scoring with NICE normalizing flows.
pub mod calibration;
pub mod cli;
pub mod data;
pub mod engine;
pub mod eval;
pub mod flow;
pub mod http;
pub mod image;
pub mod jobs;
pub mod kernels;
pub mod metrics;
pub mod models;
pub mod serve;
pub mod store;
pub mod train;
