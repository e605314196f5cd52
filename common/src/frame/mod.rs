//! The stage frame: what every stage runs in (config, state directory,
//! lock, the deployment's plan, the body, its outcome), and the hook budget,
//! each stage's longest wait checked against the appspec's timeouts.

pub mod appspec;
pub mod budget;
pub mod stage;
