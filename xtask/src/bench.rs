//! `cargo xtask bench`: storm benchmarks (in progress).

use anyhow::Result;
use std::path::Path;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Short run (< 3 minutes).
    #[arg(long)]
    pub quick: bool,
}

pub fn run_bench(_root: &Path, _args: BenchArgs) -> Result<()> {
    anyhow::bail!("storm benchmark not implemented yet")
}
