//! Job files as a studio might write them, right or wrong: parsing and resolving return an
//! error or a checked spec, never a panic; oversized files are refused before they are read.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

const VALID: &str = "name = 'shot010'
frames = '1-240x2'
chunk = 4
priority = 3
regions = ['guian']
max_retries = 2
task_timeout = '90s'
output = 'shot010_####'
policy = 'cheapest'
deadline = 2025-06-01T18:00:00+08:00
max_slots = 8
patience = 2.0
value_of_hour = 800
[renderer]
kind = 'builtin'
width = 64
height = 32
samples = 4
";

/// A line a job file might hold: known keys with values of every type, tables, junk.
fn line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "name",
        "frames",
        "chunk",
        "priority",
        "regions",
        "max_retries",
        "task_timeout",
        "output",
        "scene",
        "policy",
        "deadline",
        "max_slots",
        "patience",
        "value_of_hour",
        "kind",
        "width",
        "height",
        "samples",
        "version",
        "format",
        "argv",
        "ext",
        "renderer.kind",
        "framez",
    ]);
    let value = prop::sample::select(vec![
        "'shot'",
        "'1-240x2'",
        "'0-999999'",
        "'1-1000000000x1'",
        "4",
        "-1",
        "0",
        "4294967296",
        "'2h'",
        "'99999999999999999999h'",
        "'+6h'",
        "'+99999999999999999999y'",
        "2025-06-01T18:00:00+08:00",
        "1979-05-27",
        "07:32:00",
        "'2025-06-01T18:00:00'",
        "1900000000000",
        "-1900000000000",
        "['guian', 'Bad Region']",
        "'builtin'",
        "'command'",
        "'blender'",
        "'exr'",
        "['prog', '{frame}', '{nope}']",
        "nan",
        "-inf",
        "1e308",
        "'frame_####'",
        "'../x_####'",
        "''",
        "true",
        "[]",
        "{}",
        "{ kind = 'builtin' }",
    ]);
    prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(vec!["[renderer]", "[[renderer]]", "[x]"]).prop_map(str::to_string),
        1 => ".{0,30}",
    ]
}

/// Parses `text` as a job file; what parses is resolved in an empty folder. Input folders
/// are dropped: walking whatever folder a random line names proves nothing here.
fn parse_and_resolve(text: &str) {
    let Ok(mut file) = parse_job_file(text, Path::new("job.toml")) else {
        return;
    };
    file.inputs.clear();
    let dir = tempfile::tempdir().unwrap();
    if let Ok(r) = resolve(file, Overrides::default(), dir.path()) {
        assert!(r.spec.validate().is_ok(), "{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_is_refused_or_parsed(text in any::<String>()) {
        parse_and_resolve(&text);
    }

    #[test]
    fn toml_like_lines_are_refused_or_resolved(lines in prop::collection::vec(line(), 0..12)) {
        parse_and_resolve(&lines.join("\n"));
    }

    /// The valid file with bytes changed or lines replaced, so most of it still parses.
    #[test]
    fn mutated_job_files_are_refused_or_resolved(
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), 0..4u8, line()), 1..4),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, byte, how, line) in edits {
            match how {
                0 => {
                    let i = at.index(bytes.len());
                    bytes[i] ^= byte | 1;
                }
                1 => bytes.insert(at.index(bytes.len() + 1), byte),
                2 if !bytes.is_empty() => {
                    bytes.remove(at.index(bytes.len()));
                }
                _ => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let mut lines: Vec<&str> = text.lines().collect();
                    let i = at.index(lines.len() + 1);
                    if i < lines.len() {
                        lines[i] = &line;
                    } else {
                        lines.push(&line);
                    }
                    bytes = lines.join("\n").into_bytes();
                }
            }
            parse_and_resolve(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn deadlines_are_refused_or_parsed(text in prop_oneof![
        any::<String>(),
        "[+0-9:TZ.-]{0,30}",
        "\\+[0-9]{1,25}[a-z]{0,5}",
    ]) {
        let _ = parse_deadline(&text, u64::MAX);
        let _ = parse_deadline(&text, 0);
    }
}

#[test]
fn the_valid_job_file_resolves() {
    let file = parse_job_file(VALID, Path::new("job.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = resolve(file, Overrides::default(), dir.path()).unwrap();
    assert_eq!(r.spec.frames.len(), 120);
    assert_eq!(r.spec.placement.max_slots, Some(8));
}

#[test]
fn an_oversized_job_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    let mut text = VALID.to_string();
    text.push_str(&"#".repeat(MAX_JOB_FILE as usize));
    std::fs::write(&path, &text).unwrap();
    let err = read_job_file(&path).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        format!(
            "job file {} is {} bytes, over the 1048576-byte limit",
            path.display(),
            text.len()
        )
    );
    // At the limit it is read and parsed.
    text.truncate(MAX_JOB_FILE as usize);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(read_job_file(&path).unwrap().chunk, Some(4));
    // A file with no size to ask (a device, a pipe) is read only up to the limit.
    let err = read_job_file(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "job file /dev/zero is over the 1048576-byte limit"
    );
}

#[test]
fn deeply_nested_values_are_refused_not_a_stack_overflow() {
    for text in [
        format!("deadline = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("deadline = {}1{}", "{a=".repeat(50_000), "}".repeat(50_000)),
        format!("{} = 1", "a.".repeat(100_000) + "a"),
    ] {
        assert!(parse_job_file(&text, Path::new("job.toml")).is_err());
    }
}

#[test]
fn requirements_from_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let text = "frames = '1-4'\n[requirements]\ncores = 4\nmemory = '32G'\ngpus = 1\ngpu_memory = 20480\ngpu_models = ['4090', 'A6000']\ntags = ['arnold']\n";
    let resolved = |text: &str, flags: Overrides| {
        let file: JobFile = toml::from_str(text).unwrap();
        resolve(file, flags, dir.path())
    };
    let r = resolved(text, Overrides::default()).unwrap();
    let req = &r.spec.requirements;
    assert_eq!(req.cores, Some(4));
    assert_eq!(req.memory_mib, Some(32 * 1024));
    assert_eq!((req.gpus, req.gpu_memory_mib), (1, Some(20480)));
    assert_eq!(req.gpu_models, ["4090", "A6000"]);
    assert_eq!(req.tags, ["arnold"]);
    let flags = Overrides {
        gpus: Some(2),
        tags: Some(vec!["fast-disk".into()]),
        ..Default::default()
    };
    let r = resolved(text, flags).unwrap();
    assert_eq!(r.spec.requirements.gpus, 2, "flags win");
    assert_eq!(r.spec.requirements.tags, ["fast-disk"]);
    let err = |text: &str| format!("{:#}", resolved(text, Overrides::default()).unwrap_err());
    assert!(err("frames = '1'\n[requirements]\nmemory = 'lots'\n").contains("requirements.memory"));
    assert!(err("frames = '1'\n[requirements]\ngpu_memory = '8G'\n").contains("need gpus"));
    assert!(toml::from_str::<JobFile>("[requirements]\nvram = 1\n").is_err());
}
