//! One module per subcommand; each has clap arguments and a `run`.

pub mod bench;
pub mod control;
pub mod decode;
pub mod demo;
pub mod node;
pub mod ota;
pub mod sign;
pub mod sim;
