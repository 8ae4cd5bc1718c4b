//! The worker sandbox against a hostile command renderer, with real processes: a Python
//! script (the job's "scene") tries to open a TCP connection to a listener this test holds,
//! read the worker's identity file and another task's input, write outside its work folder
//! and into its inputs, and writes what succeeded into its frame. Inside the sandbox every
//! attempt must fail while a normal render still passes; unconfined, the same script succeeds,
//! so the attempts are real.
//!
//! Where `bwrap` is missing (or does not work), the sandbox tests say so and check the refusal
//! path instead: `--sandbox required` refuses to start.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{chunk, no_progress};
use suanli_shared::protocol::RendererSpec;
use suanli_worker::render::sandbox::{
    Confinement, Limits, SandboxError, SandboxMode, SandboxSettings,
};
use suanli_worker::render::{self, RenderJob, RenderOutcome, TaskConfinement};
use tokio_util::sync::CancellationToken;

/// Tries each forbidden thing and writes one `name=ok` or `name=blocked …` line per attempt
/// into its frame (`argv`: output folder, port, identity, another task's file, a path outside,
/// then optional memory and file-size probes).
const HOSTILE: &str = r##"
import os, socket, sys
out, port, identity, other, outside = sys.argv[1:6]
probes = sys.argv[6:]
report = []
def attempt(name, f):
    try:
        got = f()
        report.append(f"{name}=ok {got!r}"[:200])
    except BaseException as e:
        report.append(f"{name}=blocked {type(e).__name__}")
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(port)), 3).close())
attempt("identity", lambda: open(identity).read())
attempt("other_task", lambda: open(other).read())
attempt("write_outside", lambda: open(outside, "w").write("pwned"))
attempt("write_input", lambda: open("scene.py", "a").write("# pwned"))
def root():
    if os.getuid() != 0:
        raise PermissionError(f"uid {os.getuid()}")
    return "uid 0"
attempt("root", root)
if "memory" in probes:
    attempt("memory", lambda: len(bytearray(512 << 20)))
if "file" in probes:
    attempt("big_file", lambda: open(os.path.join(out, "big.bin"), "wb").write(b"x" * (4 << 20)))
with open(os.path.join(out, "frame_0001.txt"), "w") as f:
    f.write("\n".join(report) + "\n")
"##;

/// A worker's folders outside `/tmp` (so the sandbox's hiding, not its private `/tmp`, is
/// what keeps them out of sight): a cache with this task's and another task's folders, and an
/// identity in its own folder.
struct Farm {
    _root: tempfile::TempDir,
    cache: PathBuf,
    task: PathBuf,
    input: PathBuf,
    output: PathBuf,
    scratch: PathBuf,
    identity: PathBuf,
    other_input: PathBuf,
    outside: PathBuf,
}

fn farm() -> Farm {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // As a worker's folders are: traversable, the identity private to its owner.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = root.path().join("cache");
    let task = cache.join("work").join("job-0-abc");
    let (input, output, scratch) = (task.join("in"), task.join("out"), task.join("tmp"));
    for d in [&input, &output, &scratch] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(input.join("scene.py"), HOSTILE).unwrap();
    let other_input = cache
        .join("work")
        .join("job-1-def")
        .join("in")
        .join("secret.txt");
    std::fs::create_dir_all(other_input.parent().unwrap()).unwrap();
    std::fs::write(&other_input, "another studio's scene").unwrap();
    let identity = root.path().join("auth").join("worker-guian.nk");
    std::fs::create_dir_all(identity.parent().unwrap()).unwrap();
    std::fs::write(&identity, "SUAIDENTITYSEED").unwrap();
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    let outside = root.path().join("pwned.txt");
    Farm {
        _root: root,
        cache,
        task,
        input,
        output,
        scratch,
        identity,
        other_input,
        outside,
    }
}

fn settings(farm: &Farm, mode: SandboxMode, run_as: Option<&str>, max: Limits) -> SandboxSettings {
    SandboxSettings {
        mode,
        run_as: run_as.map(str::to_string),
        hide: vec![farm.cache.clone(), farm.identity.clone()],
        max,
    }
}

/// A sandbox that requires bwrap, or `None` after checking that `required` refuses to start
/// where bwrap is missing or broken.
fn required(farm: &Farm, run_as: Option<&str>, max: Limits) -> Option<Confinement> {
    match Confinement::resolve(&settings(farm, SandboxMode::Required, run_as, max), None) {
        Ok(c) => {
            assert!(c.sandboxed());
            Some(c)
        }
        Err(SandboxError(reason)) => {
            eprintln!(
                "NOTE: no working bwrap here; checked only that --sandbox required refuses: {reason}"
            );
            assert!(reason.contains("--sandbox required"), "{reason}");
            None
        }
    }
}

fn command(argv: &[&str]) -> RendererSpec {
    RendererSpec::Command {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        profile: None,
        args: Default::default(),
        version: String::new(),
        ext: "txt".into(),
    }
}

async fn render_with(
    farm: &Farm,
    spec: &RendererSpec,
    confinement: Option<&Confinement>,
    limits: Limits,
) -> RenderOutcome {
    if let Some(c) = confinement {
        c.prepare(&farm.task, &[&farm.output, &farm.scratch])
            .unwrap();
    }
    let job = RenderJob {
        renderer: spec,
        chunk: chunk(1, 1, 1),
        scene: Some(PathBuf::from("scene.py")),
        input_dir: farm.input.clone(),
        output_dir: farm.output.clone(),
        output_pattern: "frame_####",
        threads: 1,
        timeout: std::time::Duration::from_secs(60),
        confinement: confinement.map(|c| TaskConfinement {
            confinement: Arc::new(c.clone()),
            limits: limits.within(&c.max),
            task_dir: farm.task.clone(),
        }),
        gpus: Vec::new(),
    };
    render::render(job, no_progress(), CancellationToken::new()).await
}

/// Runs the hostile script; returns its report, line by line, and the listener (to check no
/// connection arrived).
async fn hostile(
    farm: &Farm,
    confinement: Option<&Confinement>,
    probes: &[&str],
    limits: Limits,
) -> (Vec<String>, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut argv = vec![
        "python3",
        "{scene}",
        "{output}",
        &port,
        farm.identity.to_str().unwrap(),
        farm.other_input.to_str().unwrap(),
        farm.outside.to_str().unwrap(),
    ];
    argv.extend_from_slice(probes);
    let outcome = render_with(farm, &command(&argv), confinement, limits).await;
    let RenderOutcome::Rendered { frames } = outcome else {
        panic!("the hostile script must still write its report: {outcome:?}");
    };
    let report = std::fs::read_to_string(&frames[0].1).unwrap();
    eprintln!("hostile report:\n{report}");
    (report.lines().map(str::to_string).collect(), listener)
}

fn line<'a>(report: &'a [String], name: &str) -> &'a str {
    report
        .iter()
        .find(|l| l.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} line in {report:?}"))
}

fn assert_blocked(report: &[String], names: &[&str]) {
    for name in names {
        let l = line(report, name);
        assert!(
            l.starts_with(&format!("{name}=blocked")),
            "{l} ({report:?})"
        );
    }
}

fn nothing_arrived(listener: &TcpListener) -> bool {
    matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn unchanged(path: &Path, text: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t == text)
}

#[tokio::test]
async fn unconfined_the_hostile_renderer_gets_everything() {
    let farm = farm();
    let (report, listener) = hostile(&farm, None, &[], Limits::default()).await;
    for name in [
        "tcp",
        "identity",
        "other_task",
        "write_outside",
        "write_input",
    ] {
        assert!(
            line(&report, name).starts_with(&format!("{name}=ok")),
            "{report:?}"
        );
    }
    assert!(line(&report, "identity").contains("SUAIDENTITYSEED"));
    assert!(
        !nothing_arrived(&listener),
        "the connection reached the listener"
    );
    assert!(unchanged(&farm.outside, "pwned"));
}

#[tokio::test]
async fn in_the_sandbox_the_hostile_renderer_gets_nothing_and_a_normal_render_passes() {
    let farm = farm();
    let Some(sandbox) = required(&farm, None, Limits::default()) else {
        return;
    };
    let (report, listener) = hostile(&farm, Some(&sandbox), &[], Limits::default()).await;
    assert_blocked(
        &report,
        &[
            "tcp",
            "identity",
            "other_task",
            "write_outside",
            "write_input",
        ],
    );
    assert!(
        nothing_arrived(&listener),
        "a connection reached the listener"
    );
    assert!(!farm.outside.exists(), "the write outside landed");
    assert!(unchanged(&farm.input.join("scene.py"), HOSTILE));
    assert!(unchanged(&farm.identity, "SUAIDENTITYSEED"));

    // A normal render in the same sandbox: reads its scene, writes its frame.
    std::fs::remove_dir_all(&farm.output).unwrap();
    std::fs::create_dir(&farm.output).unwrap();
    let copy = command(&["cp", "{scene}", "{output}/frame_{frame:04}.txt"]);
    let outcome = render_with(&farm, &copy, Some(&sandbox), Limits::default()).await;
    let RenderOutcome::Rendered { frames } = outcome else {
        panic!("a normal render must pass in the sandbox: {outcome:?}");
    };
    assert_eq!(std::fs::read_to_string(&frames[0].1).unwrap(), HOSTILE);
}

#[tokio::test]
async fn renders_run_as_the_unprivileged_user_within_their_limits() {
    let farm = farm();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let err = Confinement::resolve(
            &settings(&farm, SandboxMode::Off, Some("nobody"), Limits::default()),
            None,
        )
        .unwrap_err();
        eprintln!("NOTE: not root; checked only that --run-as refuses: {err}");
        assert!(err.0.contains("needs the worker to start as root"), "{err}");
        return;
    }
    let err = Confinement::resolve(
        &settings(
            &farm,
            SandboxMode::Off,
            Some("no-such-user-here"),
            Limits::default(),
        ),
        None,
    )
    .unwrap_err();
    assert!(err.0.contains("no such user"), "{err}");
    let max = Limits {
        memory_bytes: Some(1 << 30),
        processes: None,
        file_bytes: Some(1 << 20),
    };
    // The job asks for less memory than the worker's maximum; it gets what it asked.
    let job = Limits {
        memory_bytes: Some(256 << 20),
        ..Default::default()
    };
    // Without bwrap: the user and the limits alone.
    let plain = Confinement::resolve(
        &settings(&farm, SandboxMode::Off, Some("nobody"), max),
        None,
    )
    .unwrap();
    let (report, _listener) = hostile(&farm, Some(&plain), &["memory", "file"], job).await;
    assert_blocked(
        &report,
        &["root", "identity", "write_input", "memory", "big_file"],
    );
    let big = farm.output.join("big.bin");
    assert!(std::fs::metadata(&big).map_or(true, |m| m.len() <= 1 << 20));

    // And in the sandbox, as that user.
    let Some(sandbox) = required(&farm, Some("nobody"), max) else {
        return;
    };
    std::fs::remove_dir_all(&farm.output).unwrap();
    std::fs::create_dir(&farm.output).unwrap();
    let (report, listener) = hostile(&farm, Some(&sandbox), &["memory", "file"], job).await;
    assert_blocked(
        &report,
        &[
            "tcp",
            "identity",
            "other_task",
            "write_outside",
            "write_input",
            "root",
            "memory",
            "big_file",
        ],
    );
    assert!(nothing_arrived(&listener));
}
