use super::*;

fn flags(frames: &str) -> Overrides {
    Overrides {
        frames: Some(frames.into()),
        ..Default::default()
    }
}

/// A flag change that makes `resolve` fail: (frames, the change, part of the error).
type Refusal = (&'static str, fn(&mut Overrides), &'static str);

/// Resolves each case in an empty folder and checks its error names what was wrong.
fn assert_refused(cases: &[Refusal]) {
    let dir = tempfile::tempdir().unwrap();
    for (frames, change, want) in cases {
        let mut f = flags(frames);
        change(&mut f);
        let shown = format!("{f:?}");
        let err = resolve(JobFile::default(), f, dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains(want),
            "{shown}: '{err:#}' lacks '{want}'"
        );
    }
}

#[test]
fn refuses_bad_input_before_upload() {
    assert_refused(&[
        ("", |_| {}, "frame spec is empty"),
        ("1-10x0", |_| {}, "step"),
        ("1-10", |f| f.chunk = Some(0), "chunk size 0"),
        (
            "1",
            |f| f.renderer = Some("maya".into()),
            "unknown renderer 'maya'",
        ),
        (
            "1",
            |f| {
                f.scene = Some("nope.blend".into());
                f.renderer = Some("blender".into());
            },
            "does not exist",
        ),
        (
            "1",
            |f| f.renderer = Some("blender".into()),
            "needs a scene",
        ),
        (
            "1",
            |f| f.output = Some("../x_####".into()),
            "output file name",
        ),
        (
            "1",
            |f| f.regions = Some(vec!["Bad Region".into()]),
            "invalid region",
        ),
    ]);
}

#[test]
fn the_studio_comes_from_the_file_or_the_caller_and_they_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let studio = |file: Option<&str>, caller: Option<&str>| {
        let file = JobFile {
            studio: file.map(str::to_string),
            ..Default::default()
        };
        let flags = Overrides {
            studio: caller.map(|c| c.parse().unwrap()),
            ..flags("1")
        };
        resolve(file, flags, dir.path()).map(|r| r.spec.studio.to_string())
    };
    assert_eq!(studio(None, None).unwrap(), "default");
    assert_eq!(studio(Some("acme"), None).unwrap(), "acme");
    assert_eq!(studio(None, Some("acme")).unwrap(), "acme");
    assert_eq!(studio(Some("acme"), Some("acme")).unwrap(), "acme");
    let err = studio(Some("blue"), Some("acme")).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "this identity is studio acme; the job names studio blue"
    );
    let err = studio(Some("Acme Films"), None).unwrap_err();
    assert!(format!("{err:#}").contains("invalid studio"), "{err:#}");
}

#[test]
fn inputs_must_stay_inside_the_scene_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("shot/tex")).unwrap();
    std::fs::write(dir.path().join("shot/a.blend"), b"scene").unwrap();
    std::fs::write(dir.path().join("shot/tex/w.png"), b"tex").unwrap();
    std::fs::write(dir.path().join("secret"), b"x").unwrap();
    let base = dir.path().join("shot");
    let ok = resolve(
        JobFile::default(),
        Overrides {
            scene: Some("a.blend".into()),
            renderer: Some("blender".into()),
            inputs: vec!["tex".into()],
            ..flags("1-3")
        },
        &base,
    )
    .unwrap();
    let rels: Vec<&str> = ok.files.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rels, ["a.blend", "tex/w.png"]);
    assert_eq!(ok.spec.scene.as_deref(), Some("a.blend"));
    let err = resolve(
        JobFile::default(),
        Overrides {
            scene: Some("a.blend".into()),
            renderer: Some("blender".into()),
            inputs: vec!["../secret".into()],
            ..flags("1-3")
        },
        &base,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("outside the job's folder"));
}

#[test]
fn job_files_parse_and_flags_win() {
    let file: JobFile = toml::from_str(
        "name = 'shot010'\nframes = '1-240x2'\nchunk = 4\ntask_timeout = '90s'\n[renderer]\nkind = 'builtin'\nwidth = 64\nheight = 32\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = resolve(
        file,
        Overrides {
            chunk: Some(8),
            ..Default::default()
        },
        dir.path(),
    )
    .unwrap();
    assert_eq!(r.spec.name, "shot010");
    assert_eq!(r.spec.frames.len(), 120);
    assert_eq!(r.spec.chunk, 8);
    assert_eq!(r.spec.task_timeout_secs, 90);
    assert!(matches!(
        r.spec.renderer,
        RendererSpec::Builtin {
            width: 64,
            height: 32,
            samples: 4
        }
    ));
    assert!(
        toml::from_str::<JobFile>("framez = '1'").is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn command_profiles_and_limits_from_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.exr"), "scene").unwrap();
    let text = "frames = '1'\nscene = 's.exr'\n[renderer]\nkind = 'command'\nprofile = 'denoise'\nargs = { quality = 'low', mode = 'hdr' }\n[limits]\nmemory_mib = 4096\nprocesses = 64\n";
    let file: JobFile = toml::from_str(text).unwrap();
    let r = resolve(
        file,
        Overrides {
            args: vec!["quality=high".into()],
            ..Default::default()
        },
        dir.path(),
    )
    .unwrap();
    let RendererSpec::Command {
        argv,
        profile,
        args,
        ..
    } = &r.spec.renderer
    else {
        panic!("a command job: {:?}", r.spec.renderer)
    };
    assert!(argv.is_empty());
    assert_eq!(profile.as_deref(), Some("denoise"));
    assert_eq!(args["quality"], "high", "flags win");
    assert_eq!(args["mode"], "hdr");
    assert_eq!(r.spec.limits.memory_mib, Some(4096));
    assert_eq!(r.spec.limits.processes, Some(64));

    let bad = |text: &str, flags: Overrides| {
        let file: JobFile = toml::from_str(text).unwrap();
        format!("{:#}", resolve(file, flags, dir.path()).unwrap_err())
    };
    let base = "frames = '1'\nscene = 's.exr'\n[renderer]\nkind = 'command'\n";
    assert!(bad(base, Overrides::default()).contains("needs a profile"));
    let flags = Overrides {
        profile: Some("denoise".into()),
        args: vec!["quality".into()],
        ..Default::default()
    };
    assert!(bad(base, flags).contains("must be NAME=VALUE"));
    let flags = Overrides {
        profile: Some("denoise".into()),
        args: vec!["quality=--exec".into()],
        ..Default::default()
    };
    assert!(bad(base, flags).contains("not starting with '-'"));
    let limits = "frames = '1'\n[limits]\nmemory_mib = 8\n";
    assert!(bad(limits, Overrides::default()).contains("memory_mib = 8"));
}

#[test]
fn placement_from_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file: JobFile = toml::from_str(
        "frames = '1-4'\npolicy = 'cheapest'\nmax_slots = 3\npatience = 2.0\nvalue_of_hour = 800\ndeadline = 2025-06-01T18:00:00+08:00\n",
    )
    .unwrap();
    let r = resolve(file, Overrides::default(), dir.path()).unwrap();
    assert_eq!(r.spec.placement.policy, Some(Policy::Cheapest));
    assert_eq!(r.spec.placement.max_slots, Some(3));
    assert_eq!(r.spec.placement.patience, Some(2.0));
    assert_eq!(r.spec.placement.value_of_hour, Some(800.0));
    // 2025-06-01T10:00:00Z
    assert_eq!(r.spec.placement.deadline_ms, Some(1_748_772_000_000));
    let file: JobFile =
        toml::from_str("frames = '1'\ndeadline = '2025-06-01T10:00:00Z'\npolicy = 'fastest'")
            .unwrap();
    let r = resolve(
        file,
        Overrides {
            policy: Some("greenest".into()),
            ..Default::default()
        },
        dir.path(),
    )
    .unwrap();
    assert_eq!(r.spec.placement.policy, Some(Policy::Greenest), "flags win");
    assert_eq!(r.spec.placement.deadline_ms, Some(1_748_772_000_000));
    let none = resolve(JobFile::default(), flags("1"), dir.path()).unwrap();
    assert_eq!(none.spec.placement, Placement::default());

    assert_eq!(
        parse_deadline("1900000000000", 0).unwrap(),
        1_900_000_000_000
    );
    assert_eq!(parse_deadline("+2h", 1_000).unwrap(), 1_000 + 7_200_000);
    assert_eq!(
        parse_deadline("1970-01-02T00:00:00Z", 0).unwrap(),
        86_400_000
    );
    assert_eq!(
        parse_deadline("2000-03-01T00:00:00-01:30", 0).unwrap(),
        951_868_800_000 + 5_400_000
    );
    assert_refused(&[
        (
            "1",
            |f| f.policy = Some("cheap".into()),
            "unknown placement policy 'cheap'",
        ),
        (
            "1",
            |f| f.deadline = Some("tomorrow".into()),
            "bad deadline 'tomorrow'",
        ),
        (
            "1",
            |f| f.deadline = Some("2025-06-01T18:00:00".into()),
            "UTC offset",
        ),
        (
            "1",
            |f| f.deadline = Some("1748772000".into()),
            "seconds given by mistake",
        ),
        (
            "1",
            |f| f.max_slots = Some(0),
            "max_slots must be at least 1",
        ),
        (
            "1",
            |f| f.patience = Some(0.5),
            "patience 0.5 must be at least 1",
        ),
        (
            "1",
            |f| f.value_of_hour = Some(-3.0),
            "value_of_hour -3 must be a number, 0 or more",
        ),
    ]);
}
