//! avlm's streaming server: media ingest with FFmpeg, live sessions, the gRPC
//! service, the client, and the `avlm` command's subcommands.

pub mod bundle;
pub mod capture;
pub mod chaos;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod media;
pub mod metrics;
pub mod realtime;
pub mod replies;
pub mod server;
pub mod service;
pub mod session;
pub mod state;
pub mod subtitles;
pub mod web;
