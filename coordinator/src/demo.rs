//! `demo`: the whole system on one machine.

use anyhow::Result;

/// Flags of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many local agents to start.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> Result<()> {
    anyhow::bail!("the demo needs the agent library, which is not wired in yet")
}
