//! Shared pieces of pmesh's fuzz targets: a heap tracker (memory-bound invariants), an input
//! reader for script-driven targets, the JSON, OTA frame and MQTT request checks, and a host that runs a
//! node with the OTA and status plugins and checks its invariants. The targets themselves are
//! in `fuzz_targets/`; see README.md for how to run them.

pub mod heap;
pub mod host;
pub mod input;
pub mod json_check;
pub mod ota_check;
pub mod records;
pub mod request_check;
pub mod script;
