//! edge-llm-pack: the native model packer.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "edge-llm-pack", version, about = "Build, quantize, shard and verify edge-llm models")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the project's deterministic tiny test models (fp32, int8, int4) and tokenizer.
    GenTiny {
        /// Output folder.
        #[arg(default_value = "tests/fixtures/tiny")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::GenTiny { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, bytes) in edge_llm::tiny::files() {
                let path = dir.join(&name);
                std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                println!("{:>9} bytes  {}", bytes.len(), path.display());
            }
        }
    }
    Ok(())
}
