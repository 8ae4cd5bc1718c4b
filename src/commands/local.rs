//! The commands that need no farm: `render-frame` (one builtin frame in this process) and
//! `sim` (a scenario through the coordinator's placement code).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use suanli_coordinator::sim::{self, ScenarioError};

use crate::exit::BadInput;
use crate::print;

#[derive(Debug, clap::Args)]
pub struct RenderFrameArgs {
    /// Frame number (the film loops every 96 frames).
    #[arg(long)]
    pub frame: u32,
    /// Image width in pixels (1 to 8192, as on the farm).
    #[arg(long, default_value_t = 320, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub width: u32,
    /// Image height in pixels (1 to 8192).
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub height: u32,
    /// Camera rays per pixel (1 to 4096).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub samples: u32,
    /// PNG file to write; byte-identical to the farm's output for the same frame and settings.
    #[arg(long)]
    pub out: PathBuf,
}

/// Renders one builtin frame in this process, on the blocking pool, and writes the PNG.
pub async fn render_frame(args: RenderFrameArgs) -> anyhow::Result<u8> {
    let settings = suanli_worker::builtin::SceneSettings {
        width: args.width,
        height: args.height,
        samples: args.samples,
    };
    let frame = args.frame;
    let png = tokio::task::spawn_blocking(move || {
        let never = std::sync::atomic::AtomicBool::new(false);
        suanli_worker::builtin::render_frame(&settings, frame, &never, &mut |_| {})
            .map(|image| suanli_worker::builtin::encode_png(&image))
    })
    .await
    .context("the render thread panicked")?
    .context("the render stopped before finishing the frame")?;
    std::fs::write(&args.out, png)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(0)
}

/// `suanli sim SCENARIO [--policy P|all] [--json]`; a bad scenario or policy is bad input.
pub fn sim(scenario: &Path, policy: &str, json: bool) -> anyhow::Result<u8> {
    let out = sim_output(scenario, policy, json).map_err(|e| BadInput(e.to_string()))?;
    print!("{out}");
    Ok(0)
}

/// Runs the scenario once per policy and renders the reports: text with a comparison table,
/// or a JSON array.
fn sim_output(path: &Path, policy: &str, json: bool) -> Result<String, ScenarioError> {
    let policies = sim::policies_from_arg(policy)?;
    let scenario = sim::Scenario::load(path)?;
    let runs = sim::run_policies(&scenario, &policies);
    Ok(if json {
        print::sim::json(&runs)
    } else {
        print::sim::text(&scenario, &runs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_reads_a_scenario_file_and_checks_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "name = \"tiny\"\n[[region]]\nname = \"guian\"\nworkers = 2\n[[job]]\nname = \"shot\"\ntasks = 6\ntask_core_seconds = 60.0\n",
        )
        .unwrap();
        let out = sim_output(&path, "cheapest", false).unwrap();
        assert!(
            out.contains("tiny / cheapest") && out.contains("| cheapest |"),
            "{out}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&sim_output(&path, "all", true).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 4);
        assert!(matches!(
            sim_output(&dir.path().join("nope.toml"), "all", false),
            Err(ScenarioError::Read { .. })
        ));
        assert!(matches!(
            sim_output(&path, "green", false),
            Err(ScenarioError::Invalid(_))
        ));
    }
}
