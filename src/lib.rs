//! callguard: a real-time deepfake guard for voice calls.
//!
//! Stages, in the order audio flows through them:
//! - [`audio`]: where audio enters (files, live devices, pushed frames), caller channel, resampling;
//! - [`pipeline`]: per-call speech gating and windows, and the engine that runs many calls;
//! - [`detect`]: the ONNX detector and VAD sessions, and the detector worker pool;
//! - [`verdict`]: evidence fusion, hysteresis and debounce into alerts;
//! - [`connect`]: cloud contact-center connectors (Twilio Media Streams, Genesys
//!   AudioHook, Asterisk AudioSocket);
//! - [`eval`]: detection quality on labelled sets (EER, minDCF, DET curves);
//! - [`sinks`]: where alerts leave for a SOC (webhooks, syslog with CEF);
//! - [`ops`]: the operations face (Prometheus metrics, health and readiness).

pub mod alert;
pub mod assets;
pub mod audio;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod detect;
pub mod eval;
pub mod grpc;
pub mod guard;
pub mod ops;
pub mod pipeline;
pub mod sinks;
pub mod tls;
pub mod transcribe;
pub mod verdict;
