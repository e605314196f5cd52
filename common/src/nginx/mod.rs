//! What nonstop reads from nginx itself: its config as `nginx -T` shows it,
//! the upstream blocks in it, its pid file and worker processes, and the
//! probe through it (`probe_url`), the witness of where it sends traffic.

pub mod blocks;
pub mod conf;
pub mod pidfile;
pub mod probe;
pub mod upstream;
pub mod workers;
