//! Command line: a [`Cli`] struct and a [`Command`] enum whose doc comments are the help text,
//! and [`run`], which hands each command to its body in [`crate::commands`] and turns the
//! outcome into an exit code ([`crate::exit`]). Flags and `SUANLI_*` variables are parsed here;
//! each command resolves them once into its role's config.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use suanli_shared::access::{Access, Role};
use suanli_shared::protocol::api::Caller;
use suanli_shared::{JobId, Studio};

use crate::client::ClientConfig;
use crate::commands::{events, farm, jobs, local, roles};
use crate::exit::{self, BadInput};

pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_STORE: &str = "./suanli-store";

#[derive(Debug, Parser)]
#[command(name = "suanli", version, about)]
pub struct Cli {
    /// NATS server of the farm (the hub) [default: nats://127.0.0.1:4222; `up` starts its own].
    #[arg(long, global = true, env = "SUANLI_NATS")]
    pub nats: Option<String>,
    /// Object store for inputs and frames: file:///path, a plain path, s3://bucket[/prefix],
    /// gs://bucket, az://container [default: ./suanli-store; `up` uses DIR/store].
    #[arg(long, global = true, env = "SUANLI_STORE")]
    pub store: Option<String>,
    /// Identity file of a secure farm (an NKey seed written by `suanli auth init`, e.g.
    /// operator.nk); needs --ca and a tls:// NATS URL.
    #[arg(long, global = true, env = "SUANLI_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// CA certificate of a secure farm (its ca.pem): the NATS server must present a certificate
    /// it signed.
    #[arg(long, global = true, env = "SUANLI_CA")]
    pub ca: Option<PathBuf>,
    /// Act as studio NAME: API calls go on the studio's subjects and see only its jobs, and
    /// `submit` files the job under it [default: the operator, who sees every job]. Used by
    /// the commands that call the API; roles and `demo` ignore it, `tui` refuses it.
    #[arg(long, global = true, env = "SUANLI_STUDIO", value_name = "NAME")]
    pub studio: Option<Studio>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator: accepts jobs, dispatches tasks, tracks state. A second one stands
    /// by and takes over when the first stops.
    Coordinator(roles::CoordinatorArgs),
    /// Run a worker that renders tasks for one region (`suanli worker --region R`), or drain a
    /// running one (`suanli worker drain NAME`).
    Worker(roles::WorkerCommand),
    /// Run a whole farm on this machine: nats-server (unless --nats is given), a coordinator and
    /// workers. Stops on Ctrl-C.
    Up(roles::UpArgs),
    /// Render the built-in short film on a local farm, fetch the frames and make a contact sheet.
    Demo(crate::demo::DemoArgs),
    /// Submit a job from a JOB.toml and/or flags; prints the job id.
    Submit(Box<jobs::SubmitArgs>),
    /// Show one job, or list jobs.
    Status {
        job: Option<JobId>,
        #[arg(long)]
        json: bool,
    },
    /// Wait for a job to finish; exits 0 only when every frame is done.
    Wait {
        job: JobId,
        /// Give up after this long (e.g. 30m); exit code 4.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Download a job's frames into a folder, verifying each file's hash.
    Fetch {
        job: JobId,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: running renders are stopped, pending tasks dropped.
    Cancel {
        job: JobId,
        #[arg(long)]
        json: bool,
    },
    /// Queue a job's failed or canceled tasks again.
    Retry {
        job: JobId,
        #[arg(long)]
        json: bool,
    },
    /// The farm's events (job state changes, task starts, completions and failures, budget
    /// and region warnings) as lines a pipeline can read, each with its stream sequence:
    /// `--since SEQ` resumes after it, `--follow` keeps reading. A studio reads only its own.
    Events(events::EventsArgs),
    /// List workers: region, state, slots, current tasks.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Core-hours, cost, energy, carbon and bytes moved, per region, for one job or all; per
    /// studio with each one's spend this month against its budget. With `--studio S`, only
    /// studio S's jobs and budget.
    Ledger {
        job: Option<JobId>,
        #[arg(long)]
        json: bool,
    },
    /// Secure farm set-up: CA, certificates, one identity per role, nats-server configs with
    /// each role's permissions (`suanli auth init --out DIR --regions ... --studios ...`).
    #[command(subcommand)]
    Auth(crate::auth::AuthCommand),
    /// Operator terminal: regions, jobs, workers and the ledger, live (`?` shows the keys).
    Tui,
    /// Render one frame of the built-in film locally, without a farm (for checks and
    /// benchmarks).
    RenderFrame(local::RenderFrameArgs),
    /// Print a shell completion script: `suanli completions bash > /etc/bash_completion.d/suanli`,
    /// zsh into a folder on $fpath as `_suanli`, fish into ~/.config/fish/completions/suanli.fish.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on stdout, or with --out DIR write suanli.1 and one page per
    /// command (suanli-submit.1, …) there.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Simulate a farm scenario (TOML, see deploy/sim/) with the coordinator's own placement
    /// code: makespan, cost, carbon, utilization and data moved, per policy.
    Sim {
        scenario: PathBuf,
        /// balanced, cheapest, fastest, greenest, or all.
        #[arg(long, default_value = "all")]
        policy: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        // The client library logs a refused connection itself; the command's own error line
        // says it better, once.
        0 => "warn,async_nats=off",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a command and returns the process exit code; errors are printed here.
pub async fn run(cli: Cli) -> u8 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code_of(&e)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let Cli {
        nats: nats_given,
        store: store_given,
        identity,
        ca,
        studio,
        command,
        ..
    } = cli;
    let access = || {
        Access::load(identity.as_deref(), ca.as_deref())
            .map_err(|e| anyhow::Error::from(BadInput(e.to_string())))
    };
    if let Command::Up(args) = command {
        return roles::up(args, nats_given, store_given).await;
    }
    let nats = nats_given.unwrap_or_else(|| DEFAULT_NATS.to_string());
    let store = store_given.unwrap_or_else(|| DEFAULT_STORE.to_string());
    // Commands that call the API: as the studio named by --studio, else the identity's, else
    // the operator. A role identity that cannot call the API is refused here, in words.
    let api = || -> anyhow::Result<ClientConfig> {
        let access = access()?;
        let caller = match (&studio, access.role()) {
            (_, Some(Role::Coordinator | Role::Worker(_) | Role::Leaf(_))) => {
                let id = access
                    .identity
                    .as_ref()
                    .expect("a role comes from an identity");
                return Err(BadInput(format!(
                    "{} is the identity of {}, which does not call the API: use the operator's or a studio's",
                    id.path.display(),
                    id.role.describe()
                ))
                .into());
            }
            (Some(s), _) => Caller::Studio(s.clone()),
            (None, Some(Role::Studio(s))) => Caller::Studio(s.clone()),
            (None, _) => Caller::Operator,
        };
        Ok(ClientConfig {
            url: nats.clone(),
            caller,
            access,
        })
    };
    match command {
        Command::Coordinator(args) => roles::coordinator(args, &nats, &store, access()?).await,
        Command::Worker(roles::WorkerCommand {
            action: Some(roles::WorkerAction::Drain { worker, json }),
            ..
        }) => farm::drain_worker(&api()?, &worker, json).await,
        Command::Worker(roles::WorkerCommand { run: args, .. }) => {
            roles::worker(*args, &nats, &store, access()?).await
        }
        Command::Up(_) => unreachable!("handled above"),
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Auth(cmd) => crate::auth::run(cmd),
        Command::Submit(args) => jobs::submit(*args, &api()?, &store).await,
        Command::Status { job, json } => jobs::status(&api()?, job, json).await,
        Command::Wait { job, timeout, json } => jobs::wait(&api()?, job, timeout, json).await,
        Command::Fetch { job, out, json } => jobs::fetch(&api()?, &store, job, &out, json).await,
        Command::Cancel { job, json } => jobs::cancel(&api()?, job, json).await,
        Command::Retry { job, json } => jobs::retry(&api()?, job, json).await,
        Command::Events(args) => events::events(&api()?, args).await,
        Command::Ledger { job, json } => farm::ledger(&api()?, job, json).await,
        Command::Workers { json } => farm::workers(&api()?, json).await,
        Command::RenderFrame(args) => local::render_frame(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "suanli",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Man { out } => man(out.as_deref()),
        Command::Sim {
            scenario,
            policy,
            json,
        } => local::sim(&scenario, &policy, json),
        Command::Tui => {
            let api = api()?;
            if let Caller::Studio(studio) = &api.caller {
                return Err(BadInput(format!(
                    "the terminal is the operator's (it lists workers and every job): run `suanli tui` without --studio {studio} (or SUANLI_STUDIO)"
                ))
                .into());
            }
            crate::tui_api::run(&api, &store).await
        }
    }
}

/// `suanli man`: the page of the whole command on stdout, or every page into `out`.
fn man(out: Option<&std::path::Path>) -> anyhow::Result<u8> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = out else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(0);
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| BadInput(format!("cannot create {}: {e}", dir.display())))?;
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| anyhow::anyhow!("cannot write man pages into {}: {e}", dir.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn studio_is_a_global_flag_checked_as_a_name() {
        for args in [
            &["suanli", "--studio", "acme", "status"][..],
            &["suanli", "status", "--studio", "acme"],
            &["suanli", "submit", "--frames", "1", "--studio", "acme"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(
                cli.studio.as_ref().map(|s| s.as_str()),
                Some("acme"),
                "{args:?}"
            );
        }
        assert!(Cli::try_parse_from(["suanli", "status"])
            .unwrap()
            .studio
            .is_none());
        let err = Cli::try_parse_from(["suanli", "--studio", "Acme Films", "status"]).unwrap_err();
        assert!(err.to_string().contains("invalid studio"), "{err}");
    }

    #[test]
    fn submit_flags_land_in_the_overrides() {
        let cli = Cli::try_parse_from([
            "suanli",
            "submit",
            "JOB.toml",
            "--frames",
            "1-3",
            "--timeout",
            "90s",
            "--input",
            "tex",
            "--input",
            "cache",
            "--priority",
            "-3",
            "--wait",
            "--",
            "sh",
            "-c",
            "x",
        ])
        .unwrap();
        let Command::Submit(args) = cli.command else {
            panic!("not submit: {:?}", cli.command);
        };
        assert_eq!(args.job_file, Some(PathBuf::from("JOB.toml")));
        assert!(args.wait && !args.json);
        let f = &args.flags;
        assert_eq!(f.frames.as_deref(), Some("1-3"));
        assert_eq!(f.task_timeout, Some(Duration::from_secs(90)));
        assert_eq!(f.inputs, [PathBuf::from("tex"), PathBuf::from("cache")]);
        assert_eq!(f.priority, Some(-3));
        assert_eq!(f.argv, ["sh", "-c", "x"]);
    }
}
