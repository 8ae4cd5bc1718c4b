//! Every decoder of bytes that arrive from the network or the store, fed input nobody checked:
//! arbitrary bytes, arbitrary UTF-8, arbitrary JSON, and mutations of valid encodings (bytes
//! flipped, inserted or deleted, a field replaced by a random JSON value or removed, a string or
//! number nudged to an edge), so the input reaches past the first parse error into the checks
//! behind it.
//!
//! Each decoder must return `Ok` or `Err`: a panic fails the property (proptest catches it and
//! shrinks the input). Each must hold memory in proportion to its input: a counting allocator
//! measures the most bytes a decode holds at once ([`assert_bounded`]). Every valid value
//! survives its round trip, and an oversized message is refused with its size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use suanli_shared::frames::{MAX_CHUNK, MAX_FRAME, MAX_FRAMES_PER_JOB};
use suanli_shared::nats;
use suanli_shared::protocol::api::{self, Endpoint, Request};
use suanli_shared::protocol::codec::{decode_limited, MAX_MESSAGE};
use suanli_shared::protocol::manifest::MAX_MANIFEST;
use suanli_shared::protocol::records::Blocklisted;
use suanli_shared::protocol::{
    decode, encode, ChunkRef, CurrentTask, DecodeError, EncodeError, Event, EventKind, Failure,
    FrameCounts, Gpu, ImageFormat, InputEntry, InputManifest, JobEvent, JobRecord, JobSpec,
    JobState, JobStatus, LeaseHolder, OutputFile, OutputManifest, Placement, Policy, RegionFigures,
    RendererSpec, Requirements, Resources, TaskAssignment, TaskCounts, TaskEvent, TaskEventKind,
    TaskFailure, TaskRecord, TaskState, WorkerInfo, WorkerState,
};
use suanli_shared::regions::{RegionCatalog, RegionProfile};
use suanli_shared::{ContentHash, FrameChunk, FrameSpec, JobId, Region, Studio, WorkerId};

// ---------------------------------------------------------------------------------------------
// Memory: a counting allocator, per thread, so tests running side by side do not mix.

struct Counting;

thread_local! {
    /// Bytes this thread holds now (frees of another thread's memory can push it below 0).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The most `LIVE` reached since [`peak_during`] last reset it.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a copy: for a moment both blocks are held.
            note(new_size as isize);
            note(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`; returns what it returned and the most bytes it held at once beyond what this
/// thread held before.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

/// Bytes a JSON decode may hold per byte of input. Decoding into structs takes a few; the worst
/// is serde's buffering of untyped content for `#[serde(flatten)]` and tagged enums (a 2-byte
/// `0,` becomes a 32-byte `Content` in a vector that grows by doubling): about 40 measured, for
/// a task event padded with `[0,0,…]`.
/// The operator's subject of every endpoint (a studio's are the same under
/// `suanli.studio.<studio>.`).
const OPERATOR_SUBJECTS: [&str; 10] = [
    api::Submit::SUBJECT,
    api::Status::SUBJECT,
    api::Jobs::SUBJECT,
    api::Job::SUBJECT,
    api::Cancel::SUBJECT,
    api::Retry::SUBJECT,
    api::Workers::SUBJECT,
    api::Tasks::SUBJECT,
    api::Drain::SUBJECT,
    api::Regions::SUBJECT,
];

/// The subject an event of `kind` about `job` arrives on (a task event from region guian).
fn event_subject(job: &JobId, kind: EventKind) -> String {
    match kind {
        EventKind::Job => nats::job_event_subject(&Studio::default(), job),
        _ => nats::task_event_subject(&Studio::default(), job, kind, &"guian".parse().unwrap()),
    }
}

const JSON_PER_BYTE: usize = 64;
/// Bytes a TOML parse may hold per byte of input: the toml crate keeps an event and a span
/// per token, about 110 measured for `[1,1,…]`. Files are read only up to 1 MiB.
const TOML_PER_BYTE: usize = 128;
/// Memory a decode may hold whatever its input: a frame spec expands a few bytes of text to at
/// most `MAX_FRAMES_PER_JOB` frames (400 KB, in a vector that grows by doubling).
const BASE_BYTES: usize = 2 * 1024 * 1024;

/// Runs a decode of `input` and checks it held memory in proportion to the input (at most
/// `per_byte` bytes for each of its bytes, plus [`BASE_BYTES`]), never in proportion to a
/// size the input claims.
fn assert_bounded<R>(what: &str, input: &[u8], per_byte: usize, decode: impl FnOnce() -> R) -> R {
    let (out, peak) = peak_during(decode);
    let bound = per_byte * input.len() + BASE_BYTES;
    assert!(
        peak <= bound,
        "{what}: decoding {} bytes held {peak} bytes at once (bound {bound})",
        input.len()
    );
    out
}

/// [`assert_bounded`] for JSON.
fn assert_json_bounded<R>(what: &str, input: &[u8], decode: impl FnOnce() -> R) -> R {
    assert_bounded(what, input, JSON_PER_BYTE, decode)
}

// ---------------------------------------------------------------------------------------------
// Every decoder, by name. Each takes raw bytes and returns whether it accepted them.

/// Decodes raw bytes; returns whether it accepted them.
type DecodeFn = Box<dyn Fn(&[u8]) -> bool>;

/// A decoder's name, the memory it may hold per byte of input, and the decoder.
type Decoder = (String, usize, DecodeFn);

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// A reply to `E` as the client decodes it.
fn reply<E: Endpoint>(bytes: &[u8]) -> bool {
    decode::<api::Reply<E::Reply>>(bytes, "reply").is_ok()
}

fn output_key() -> ContentHash {
    ContentHash::of(b"task key")
}

fn decoders() -> Vec<Decoder> {
    let mut all: Vec<Decoder> = Vec::new();
    let mut add = |name: &str, f: DecodeFn| {
        let per_byte = if name == "region catalog" {
            TOML_PER_BYTE
        } else {
            JSON_PER_BYTE
        };
        all.push((name.to_string(), per_byte, f))
    };
    for subject in OPERATOR_SUBJECTS {
        add(
            subject,
            Box::new(move |b| Request::decode(subject, b).is_ok()),
        );
        let studio_subject = subject.replace("suanli.api.", "suanli.studio.acme.");
        add(
            &studio_subject.clone(),
            Box::new(move |b| Request::decode(&studio_subject, b).is_ok()),
        );
    }
    add(
        "unknown API subject",
        Box::new(|b| Request::decode("suanli.api.nope", b).is_ok()),
    );
    add("submit reply", Box::new(reply::<api::Submit>));
    add("status reply", Box::new(reply::<api::Status>));
    add("jobs reply", Box::new(reply::<api::Jobs>));
    add("job reply", Box::new(reply::<api::Job>));
    add("cancel reply", Box::new(reply::<api::Cancel>));
    add("retry reply", Box::new(reply::<api::Retry>));
    add("workers reply", Box::new(reply::<api::Workers>));
    add("tasks reply", Box::new(reply::<api::Tasks>));
    add("drain reply", Box::new(reply::<api::Drain>));
    add("regions reply", Box::new(reply::<api::Regions>));
    let job = JobId::generate();
    for kind in EventKind::ALL {
        add(
            &format!("{} event", kind.as_str()),
            Box::new(move |b| Event::decode(kind, b).is_ok()),
        );
        let subject = event_subject(&job, kind);
        add(
            &subject.clone(),
            Box::new(move |b| nats::decode_event(&subject, b).is_ok()),
        );
    }
    add(
        "task message",
        Box::new(|b| TaskAssignment::decode(b).is_ok()),
    );
    add(
        "job record",
        Box::new(|b| decode::<JobRecord>(b, "job record").is_ok()),
    );
    add(
        "task record",
        Box::new(|b| decode::<TaskRecord>(b, "task record").is_ok()),
    );
    add(
        "worker record",
        Box::new(|b| decode::<WorkerInfo>(b, "worker record").is_ok()),
    );
    add(
        "lease holder",
        Box::new(|b| decode::<LeaseHolder>(b, "lease holder").is_ok()),
    );
    add(
        "input manifest",
        Box::new(|b| InputManifest::parse(b).is_ok()),
    );
    add(
        "output manifest",
        Box::new(|b| OutputManifest::parse(b, &output_key()).is_ok()),
    );
    add(
        "frame spec text",
        Box::new(|b| text(b).is_some_and(|t| t.parse::<FrameSpec>().is_ok())),
    );
    add(
        "frame spec JSON",
        Box::new(|b| decode::<FrameSpec>(b, "frame spec").is_ok()),
    );
    add(
        "region catalog",
        Box::new(|b| text(b).is_some_and(|t| RegionCatalog::from_toml(t, "inline").is_ok())),
    );
    all
}

/// Runs every decoder on `input`: none may panic or hold memory beyond the bound.
fn every_decoder_copes(input: &[u8]) {
    for (name, per_byte, decode) in decoders() {
        assert_bounded(&name, input, per_byte, || decode(input));
    }
}

// ---------------------------------------------------------------------------------------------
// Valid values.

fn job_id() -> impl Strategy<Value = JobId> {
    "[0-9a-z]{26}".prop_map(|s| s.parse().unwrap())
}

fn region() -> impl Strategy<Value = Region> {
    "[a-z0-9][a-z0-9-]{0,31}".prop_map(|s| s.parse().unwrap())
}

fn worker_id() -> impl Strategy<Value = WorkerId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| s.parse().unwrap())
}

fn hash() -> impl Strategy<Value = ContentHash> {
    any::<[u8; 8]>().prop_map(|b| ContentHash::of(&b))
}

/// Any text, control characters and non-ASCII included (JSON must escape them).
fn any_text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

/// A float that survives a JSON round trip exactly (a multiple of 1/16).
fn float() -> impl Strategy<Value = f64> {
    (0u32..1 << 24).prop_map(|n| f64::from(n) / 16.0)
}

fn fraction() -> impl Strategy<Value = f32> {
    (0u16..=1024).prop_map(|n| f32::from(n) / 1024.0)
}

/// A frame spec's text with the frames it selects: items in any order, each a frame, a range
/// or a stepped range, none overlapping.
fn frame_spec_text() -> impl Strategy<Value = (String, Vec<u32>)> {
    let item = (0u32..1000, 0u32..20, 1u32..5, 0usize..3);
    (
        0u32..900_000,
        prop::collection::vec(item, 1..6),
        any::<bool>(),
    )
        .prop_map(|(first, items, reversed)| {
            let mut next = first;
            let mut texts = Vec::new();
            let mut frames = Vec::new();
            for (gap, n, step, spaces) in items {
                let start = next + gap;
                let end = start + n * step;
                frames.extend((start..=end).step_by(step as usize));
                let pad = " ".repeat(spaces);
                texts.push(match (n, step) {
                    (0, _) => format!("{pad}{start}"),
                    (_, 1) => format!("{start}-{end}{pad}"),
                    _ => format!("{start}-{end}x{step}"),
                });
                next = end + 1;
            }
            if reversed {
                texts.reverse();
            }
            (texts.join(","), frames)
        })
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    frame_spec_text().prop_map(|(text, _)| text.parse().unwrap())
}

/// A chunk that passes `FrameChunk::is_valid`.
fn valid_chunk() -> impl Strategy<Value = FrameChunk> {
    (0..=MAX_FRAME, 1u32..=MAX_CHUNK, 1u32..5).prop_map(|(start, n, step)| {
        let n = n.min((MAX_FRAME - start) / step + 1);
        FrameChunk {
            start,
            end: start + (n - 1) * step,
            step,
        }
    })
}

/// Any chunk a record may carry (records are not checked on decode).
fn any_chunk() -> impl Strategy<Value = FrameChunk> {
    prop_oneof![
        valid_chunk(),
        any::<(u32, u32, u32)>().prop_map(|(start, end, step)| FrameChunk { start, end, step }),
    ]
}

fn image_format() -> impl Strategy<Value = ImageFormat> {
    prop::sample::select(vec![ImageFormat::Png, ImageFormat::Exr, ImageFormat::Jpeg])
}

/// Any renderer as serde reads it (not necessarily one `validate` accepts).
fn renderer() -> impl Strategy<Value = RendererSpec> {
    prop_oneof![
        any::<(u32, u32, u32)>().prop_map(|(width, height, samples)| RendererSpec::Builtin {
            width,
            height,
            samples
        }),
        (
            any_text(),
            image_format(),
            any::<Option<[u32; 2]>>(),
            any::<Option<u32>>()
        )
            .prop_map(|(version, format, resolution, samples)| {
                RendererSpec::Blender {
                    version,
                    format,
                    resolution,
                    samples,
                }
            }),
        (
            prop::collection::vec(any_text(), 0..4),
            any_text(),
            any_text()
        )
            .prop_map(|(argv, version, ext)| RendererSpec::Command {
                argv,
                profile: None,
                args: Default::default(),
                version,
                ext,
            }),
        (
            prop::option::of(any_text()),
            prop::collection::btree_map(any_text(), any_text(), 0..3),
            any_text()
        )
            .prop_map(|(profile, args, ext)| RendererSpec::Command {
                argv: vec![],
                profile,
                args,
                version: String::new(),
                ext,
            }),
    ]
}

/// A renderer that `validate` accepts (a task message is checked on decode).
fn valid_renderer() -> impl Strategy<Value = RendererSpec> {
    prop_oneof![
        (1u32..=8192, 1u32..=8192, 1u32..=4096).prop_map(|(width, height, samples)| {
            RendererSpec::Builtin {
                width,
                height,
                samples,
            }
        }),
        (
            "[ -~]{0,64}",
            image_format(),
            prop::option::of([1u32..=65536, 1u32..=65536]),
            prop::option::of(1u32..=1_000_000)
        )
            .prop_map(|(version, format, resolution, samples)| {
                RendererSpec::Blender {
                    version,
                    format,
                    resolution,
                    samples,
                }
            }),
        (
            "[a-z/]{1,12}",
            prop::collection::vec(
                prop::sample::select(vec![
                    "-o",
                    "{output}",
                    "{frame:04}",
                    "{start}-{end}x{step}",
                    "{scene}",
                    "--plain",
                ]),
                0..5
            ),
            "[ -~]{0,64}",
            "[a-z0-9]{1,10}"
        )
            .prop_map(|(program, args, version, ext)| {
                let argv = std::iter::once(program)
                    .chain(args.into_iter().map(str::to_string))
                    .collect();
                RendererSpec::Command {
                    argv,
                    profile: None,
                    args: Default::default(),
                    version,
                    ext,
                }
            }),
        (
            "[a-z][a-z0-9_-]{0,31}",
            prop::collection::btree_map("[a-z][a-z0-9_]{0,8}", "[a-zA-Z0-9 ./][ -z|~]{0,40}", 0..4),
            "[ -~]{0,64}",
            "[a-z0-9]{1,10}"
        )
            .prop_map(|(profile, args, version, ext)| RendererSpec::Command {
                argv: vec![],
                profile: Some(profile),
                args,
                version,
                ext,
            }),
    ]
}

fn placement() -> impl Strategy<Value = Placement> {
    (
        prop::option::of(prop::sample::select(Policy::ALL.to_vec())),
        any::<Option<u64>>(),
        any::<Option<u32>>(),
        prop::option::of(float()),
        prop::option::of(float()),
    )
        .prop_map(
            |(policy, deadline_ms, max_slots, patience, value_of_hour)| Placement {
                policy,
                deadline_ms,
                max_slots,
                patience,
                value_of_hour,
            },
        )
}

fn requirements() -> impl Strategy<Value = Requirements> {
    (
        (any::<Option<u32>>(), any::<Option<u64>>(), any::<u32>()),
        (
            any::<Option<u64>>(),
            prop::collection::vec(any_text(), 0..3),
            prop::collection::vec(any_text(), 0..3),
            prop::collection::btree_map(any_text(), any::<u32>(), 0..3),
        ),
    )
        .prop_map(
            |((cores, memory_mib, gpus), (gpu_memory_mib, gpu_models, tags, licenses))| {
                Requirements {
                    cores,
                    memory_mib,
                    gpus,
                    gpu_memory_mib,
                    gpu_models,
                    tags,
                    licenses,
                }
            },
        )
}

fn resources() -> impl Strategy<Value = Resources> {
    let gpu = (any::<u32>(), any_text(), any::<u64>(), any_text()).prop_map(
        |(index, name, memory_mib, uuid)| Gpu {
            index,
            name,
            memory_mib,
            uuid,
        },
    );
    (
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec(gpu, 0..3),
        prop::collection::vec(any_text(), 0..3),
    )
        .prop_map(|(cores, memory_mib, gpus, tags)| Resources {
            cores,
            memory_mib,
            gpus,
            tags,
        })
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        (any_text(), any::<i32>(), frame_spec(), any::<u32>()),
        (
            prop::collection::vec(region(), 0..3),
            any::<u32>(),
            any::<u64>(),
        ),
        (renderer(), hash(), prop::option::of(any_text()), any_text()),
        placement(),
        requirements(),
    )
        .prop_map(
            |(
                (name, priority, frames, chunk),
                (regions, max_retries, task_timeout_secs),
                (renderer, inputs, scene, output),
                placement,
                requirements,
            )| JobSpec {
                webhooks: vec![],
                limits: Default::default(),
                requirements,
                studio: Studio::default(),
                name,
                priority,
                frames,
                chunk,
                regions,
                max_retries,
                task_timeout_secs,
                renderer,
                inputs,
                scene,
                output,
                placement,
            },
        )
}

fn job_state() -> impl Strategy<Value = JobState> {
    prop::sample::select(vec![
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Canceled,
    ])
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(vec![
        TaskState::Pending,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Done,
        TaskState::Cached,
        TaskState::Failed,
        TaskState::Canceled,
    ])
}

fn blocklisted() -> impl Strategy<Value = Blocklisted> {
    (region(), worker_id(), any::<u32>(), any::<u64>()).prop_map(
        |(region, worker, failures, at_ms)| Blocklisted {
            region,
            worker,
            failures,
            at_ms,
        },
    )
}

fn job_record() -> impl Strategy<Value = JobRecord> {
    (
        (
            job_id(),
            job_spec(),
            job_state(),
            any::<u32>(),
            any::<u64>(),
        ),
        (
            any::<Option<u64>>(),
            prop::option::of(any_text()),
            prop::collection::vec(blocklisted(), 0..3),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (id, spec, state, n_tasks, created_ms),
                (finished_ms, reason, blocklist, input_bytes),
            )| JobRecord {
                id,
                spec,
                state,
                n_tasks,
                created_ms,
                finished_ms,
                reason,
                blocklist,
                input_bytes,
            },
        )
}

fn failure() -> impl Strategy<Value = Failure> {
    (
        any::<Option<i32>>(),
        any_text(),
        any_text(),
        worker_id(),
        region(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(exit_code, reason, stderr_tail, worker, region, attempt, at_ms)| Failure {
                exit_code,
                reason,
                stderr_tail,
                worker,
                region,
                attempt,
                at_ms,
            },
        )
}

/// An output file whose name a manifest accepts.
fn output_file() -> impl Strategy<Value = OutputFile> {
    (
        any::<u32>(),
        "[a-z_]{1,12}[0-9]{4}\\.png",
        hash(),
        any::<u64>(),
    )
        .prop_map(|(frame, name, hash, size)| OutputFile {
            frame,
            name,
            hash,
            size,
        })
}

fn task_record() -> impl Strategy<Value = TaskRecord> {
    (
        (job_id(), any::<u32>(), hash(), any_chunk(), task_state()),
        (
            any::<u32>(),
            prop::option::of(region()),
            prop::option::of(worker_id()),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
            float(),
        ),
        (
            any::<u64>(),
            prop::collection::vec(failure(), 0..3),
            prop::collection::vec(output_file(), 0..4),
            any::<u64>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (job, task, key, chunk, state),
                (attempt, region, worker, started_ms, finished_ms, core_seconds),
                (not_before_ms, failures, outputs, bytes_in, releases),
            )| {
                let mut t = TaskRecord::new(job, task, key, chunk, state, finished_ms);
                t.attempt = attempt;
                t.region = region;
                t.worker = worker;
                t.started_ms = started_ms;
                t.core_seconds = core_seconds;
                t.not_before_ms = not_before_ms;
                t.failures = failures;
                t.outputs = outputs;
                t.bytes_in = bytes_in;
                t.releases = releases;
                t
            },
        )
}

fn worker_info() -> impl Strategy<Value = WorkerInfo> {
    let current = (job_id(), any::<u32>(), any_chunk(), fraction()).prop_map(
        |(job, task, chunk, fraction)| CurrentTask {
            job,
            task,
            chunk,
            fraction,
        },
    );
    let state = prop::sample::select(vec![
        WorkerState::Idle,
        WorkerState::Rendering,
        WorkerState::Draining,
        WorkerState::Lost,
    ]);
    (
        (worker_id(), region(), any::<u32>(), any::<u32>(), state),
        (
            prop::collection::btree_map(any_text(), any_text(), 0..3),
            any_text(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (any::<u64>(), float(), prop::collection::vec(current, 0..3)),
        prop::option::of(resources()),
    )
        .prop_map(
            |(
                (id, region, slots, busy, state),
                (renderers, host, pid, started_ms, heartbeat_ms),
                (tasks_done, core_seconds, current),
                resources,
            )| WorkerInfo {
                resources,
                id,
                region,
                slots,
                busy,
                state,
                renderers,
                profiles: Vec::new(),
                host,
                pid,
                started_ms,
                heartbeat_ms,
                tasks_done,
                core_seconds,
                current,
                gpus_busy: busy,
            },
        )
}

fn lease_holder() -> impl Strategy<Value = LeaseHolder> {
    (any_text(), any::<u32>(), any_text(), any::<u64>()).prop_map(
        |(host, pid, instance, renewed_ms)| LeaseHolder {
            host,
            pid,
            instance,
            renewed_ms,
        },
    )
}

/// A relative path a manifest accepts: no empty, `.` or `..` parts.
fn rel_path() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ ]{1,8}(\\.[a-z]{1,3})?(/[a-zA-Z0-9_ .-]{0,6}[a-zA-Z0-9_]){0,3}"
}

/// A task message that its decoder's checks accept.
fn task_assignment() -> impl Strategy<Value = TaskAssignment> {
    (
        (job_id(), any::<u32>(), hash(), any::<u32>(), valid_chunk()),
        (
            valid_renderer(),
            hash(),
            prop::option::of(rel_path()),
            "[a-z_]{0,8}#{1,6}[a-z_]{0,8}",
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (job, task, key, attempt, chunk),
                (renderer, inputs, scene, output, timeout_secs),
            )| TaskAssignment {
                studio: Studio::default(),
                job,
                task,
                key,
                attempt,
                chunk,
                renderer,
                inputs,
                scene,
                output,
                timeout_secs,
            },
        )
}

fn task_event_kind() -> impl Strategy<Value = TaskEventKind> {
    prop_oneof![
        Just(TaskEventKind::Started),
        fraction().prop_map(|fraction| TaskEventKind::Progress { fraction }),
        (
            any::<bool>(),
            any::<u64>(),
            float(),
            prop::collection::vec(output_file(), 0..4),
            any::<u64>()
        )
            .prop_map(|(cached, started_ms, core_seconds, outputs, bytes_in)| {
                TaskEventKind::Completed {
                    cached,
                    started_ms,
                    core_seconds,
                    outputs,
                    bytes_in,
                    gpu: None,
                }
            }),
        failure().prop_map(|failure| TaskEventKind::Failed { failure }),
    ]
}

fn task_event() -> impl Strategy<Value = TaskEvent> {
    (
        (job_id(), any::<u32>(), hash(), any::<u32>()),
        (worker_id(), region(), any::<u64>(), task_event_kind()),
    )
        .prop_map(
            |((job, task, key, attempt), (worker, region, at_ms, kind))| TaskEvent {
                job,
                task,
                key,
                attempt,
                worker,
                region,
                at_ms,
                kind,
            },
        )
}

fn job_event() -> impl Strategy<Value = JobEvent> {
    (
        job_id(),
        job_state(),
        any::<u64>(),
        prop::option::of(any_text()),
    )
        .prop_map(|(job, state, at_ms, reason)| JobEvent {
            job,
            state,
            at_ms,
            reason,
        })
}

fn input_manifest() -> impl Strategy<Value = InputManifest> {
    // A file stored whole (any size), or chunked (its size the sum of its chunks').
    let chunks = prop::collection::vec((hash(), 1..u64::from(u32::MAX)), 0..4);
    let entry =
        (hash(), any::<u64>(), any::<u32>(), chunks).prop_map(|(hash, size, mode, chunks)| {
            let chunks: Vec<ChunkRef> = chunks
                .into_iter()
                .map(|(hash, size)| ChunkRef { hash, size })
                .collect();
            let size = if chunks.is_empty() {
                size
            } else {
                chunks.iter().map(|c| c.size).sum()
            };
            InputEntry {
                hash,
                size,
                mode,
                chunks,
            }
        });
    prop::collection::btree_map(rel_path(), entry, 0..6).prop_map(|files| InputManifest { files })
}

fn output_manifest() -> impl Strategy<Value = OutputManifest> {
    (
        any_text(),
        prop::collection::vec(output_file(), 0..6),
        job_id(),
        worker_id(),
        region(),
        any::<u64>(),
    )
        .prop_map(
            |(renderer, files, job, worker, region, committed_ms)| OutputManifest {
                task_key: output_key(),
                renderer,
                files,
                job,
                worker,
                region,
                committed_ms,
            },
        )
}

fn job_status() -> impl Strategy<Value = JobStatus> {
    let counts = prop::array::uniform8(any::<u32>()).prop_map(|c| TaskCounts {
        total: c[0],
        pending: c[1],
        queued: c[2],
        running: c[3],
        done: c[4],
        failed: c[5],
        cached: c[6],
        canceled: c[7],
    });
    let frames = prop::array::uniform4(any::<u32>()).prop_map(|c| FrameCounts {
        total: c[0],
        done: c[1],
        failed: c[2],
        cached: c[3],
    });
    let figures = (
        any::<u32>(),
        prop::array::uniform5(float()),
        any::<u64>(),
        prop::collection::btree_map(any_text(), float(), 0..2),
    )
        .prop_map(|(frames_done, f, bytes_in, gpu_models)| RegionFigures {
            frames_done,
            core_seconds: f[0],
            bytes_in,
            gpu_seconds: f[4],
            gpu_models,
            cost: f[1],
            energy_kwh: f[2],
            carbon_kg: f[3],
        });
    let task_failure = (any::<u32>(), any_text(), task_state(), failure()).prop_map(
        |(task, frames, state, failure)| TaskFailure {
            task,
            frames,
            state,
            failure,
        },
    );
    (
        (job_id(), any_text(), job_state(), any::<i32>(), any_text()),
        (
            any::<u64>(),
            any::<Option<u64>>(),
            prop::option::of(any_text()),
            frames,
            counts,
        ),
        (
            prop::collection::btree_map(any_text(), figures, 0..3),
            prop::collection::vec(task_failure, 0..3),
            any::<u32>(),
            prop::collection::vec(blocklisted(), 0..2),
            any::<u32>(),
        ),
        requirements(),
    )
        .prop_map(
            |(
                (id, name, state, priority, renderer),
                (created_ms, finished_ms, reason, frames, tasks),
                (regions, failures, failures_total, blocklist, max_retries),
                requirements,
            )| JobStatus {
                requirements,
                studio: Studio::default(),
                id,
                name,
                state,
                priority,
                renderer,
                created_ms,
                finished_ms,
                reason,
                frames,
                tasks,
                regions,
                failures,
                failures_total,
                blocklist,
                max_retries,
                waiting: None,
                budget: None,
                inputs_in: Default::default(),
            },
        )
}

fn region_profile() -> impl Strategy<Value = RegionProfile> {
    (
        region(),
        prop::array::uniform8(float()),
        prop::collection::btree_map(any_text(), float(), 0..2),
    )
        .prop_map(|(name, f, gpu_prices)| RegionProfile {
            name,
            price_per_core_hour: f[0],
            pue: f[1],
            carbon_g_per_kwh: f[2],
            watts_per_core: f[3],
            egress_per_gb: f[4],
            bandwidth_mbps: f[5],
            price_per_gpu_hour: f[6],
            gpu_prices,
            watts_per_gpu: f[7],
        })
}

/// An API reply: the value, or an error of any kind.
fn reply_of<T: Debug + Clone>(
    ok: impl Strategy<Value = T>,
) -> impl Strategy<Value = api::Reply<T>> {
    let kind = prop::sample::select(vec![
        api::ErrorKind::BadRequest,
        api::ErrorKind::NotFound,
        api::ErrorKind::Unavailable,
        api::ErrorKind::Internal,
    ]);
    prop_oneof![
        ok.prop_map(api::Reply::Ok),
        (kind, any_text())
            .prop_map(|(kind, message)| api::Reply::Error(api::ApiError { kind, message })),
    ]
}

// ---------------------------------------------------------------------------------------------
// Arbitrary JSON, with the field names and values the decoders look for, so that random
// objects get past "missing field" now and then.

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "job", "task", "key", "attempt", "chunk", "start", "end", "step", "renderer", "kind",
            "type", "inputs", "scene", "output", "timeout_secs", "spec", "frames", "name", "ok",
            "error", "files", "hash", "size", "mode", "outputs", "failure", "fraction", "state",
            "worker", "region", "at_ms", "id", "limit", "offset",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{0,8}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any_text().prop_map(Value::String),
        prop::sample::select(vec![
            "1-10",
            "0-999999",
            "1-1000000000x1",
            "guian",
            "w1",
            "builtin",
            "command",
            "started",
            "completed",
            "frame_####",
            "../etc/passwd",
            "done",
            "png",
        ])
        .prop_map(Value::from),
        Just(Value::from(output_key().to_hex())),
        Just(Value::from(JobId::generate().to_string())),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------------------------
// Mutations of a valid encoding.

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    /// Cut the encoding short.
    Truncate(Index),
    /// Replace one node of the JSON tree (an object, array, field value or element).
    Replace(Index, Value),
    /// Remove one field of an object, or one element of an array.
    Remove(Index),
    /// Change one string or number a little, keeping its type, so the value still parses and
    /// reaches the checks behind the parse (paths, names, chunks, templates, limits).
    Tweak(Index, Tweak),
}

#[derive(Debug, Clone)]
enum Tweak {
    /// Replace a number by an edge value.
    Number(Value),
    /// Add text before or after a string.
    Prepend(&'static str),
    Append(&'static str),
    /// Repeat a string `n` times.
    Repeat(usize),
    Empty,
}

fn tweak() -> impl Strategy<Value = Tweak> {
    let edges: Vec<Value> = vec![
        0.into(),
        1.into(),
        (-1).into(),
        u32::MAX.into(),
        (u64::from(u32::MAX) + 1).into(),
        u64::MAX.into(),
        i64::MIN.into(),
        1.5.into(),
        1e300.into(),
        MAX_FRAME.into(),
        (MAX_FRAME + 1).into(),
        MAX_CHUNK.into(),
    ];
    let text = vec![
        "../",
        "/",
        ".",
        "./",
        "a/../",
        "//",
        "#",
        "##",
        "{",
        "}",
        "{frame}",
        "{nope}",
        "{frame:4}",
        "\u{0}",
        "\n",
        " ",
        "-",
        "x0",
        "0-",
        ",",
        "é",
        ":",
    ];
    prop_oneof![
        prop::sample::select(edges).prop_map(Tweak::Number),
        prop::sample::select(text.clone()).prop_map(Tweak::Prepend),
        prop::sample::select(text).prop_map(Tweak::Append),
        (2usize..300).prop_map(Tweak::Repeat),
        Just(Tweak::Empty),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\":,0123456789-.eE+tfnul\\ x#/".to_vec()),
    ];
    prop_oneof![
        1 => (any::<Index>(), 1u8..).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<Index>().prop_map(Mutation::Remove),
        6 => (any::<Index>(), tweak()).prop_map(|(i, t)| Mutation::Tweak(i, t)),
    ]
}

/// JSON pointers of every node of `v` below the root.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

/// Applies one mutation; a tree mutation of bytes that are no longer JSON changes nothing.
fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(i, mask) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Mutation::Delete(i) if !bytes.is_empty() => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
        Mutation::Tweak(i, t) => {
            let Ok(mut tree) = serde_json::from_slice::<Value>(bytes) else {
                return;
            };
            let mut all = Vec::new();
            pointers(&tree, String::new(), &mut all);
            let fits = |p: &&String| match (tree.pointer(p), t) {
                (Some(Value::Number(_)), Tweak::Number(_)) => true,
                (Some(Value::String(_)), Tweak::Number(_)) => false,
                (Some(Value::String(_)), _) => true,
                _ => false,
            };
            let leaves: Vec<&String> = all.iter().filter(fits).collect();
            if leaves.is_empty() {
                return;
            }
            let leaf = tree.pointer_mut(leaves[i.index(leaves.len())]).unwrap();
            match (leaf, t) {
                (leaf, Tweak::Number(n)) => *leaf = n.clone(),
                (Value::String(s), Tweak::Prepend(p)) => s.insert_str(0, p),
                (Value::String(s), Tweak::Append(a)) => s.push_str(a),
                // Up to about twice the message limit, so the size check is reached too.
                (Value::String(s), Tweak::Repeat(n)) => {
                    *s = s.repeat((*n).min(2 * MAX_MESSAGE / s.len().max(1)))
                }
                (Value::String(s), Tweak::Empty) => s.clear(),
                _ => unreachable!("only leaves that fit the tweak are picked"),
            }
            *bytes = serde_json::to_vec(&tree).unwrap();
        }
        Mutation::Replace(i, _) | Mutation::Remove(i) => {
            let Ok(mut tree) = serde_json::from_slice::<Value>(bytes) else {
                return;
            };
            let mut all = Vec::new();
            pointers(&tree, String::new(), &mut all);
            if let Mutation::Replace(_, new) = m {
                // The root counts too: the whole message replaced by another value.
                let at = i.index(all.len() + 1);
                match all.get(at) {
                    Some(p) => *tree.pointer_mut(p).unwrap() = new.clone(),
                    None => tree = new.clone(),
                }
            } else if !all.is_empty() {
                let p = &all[i.index(all.len())];
                let (parent, last) = p.rsplit_once('/').unwrap();
                let key = last.replace("~1", "/").replace("~0", "~");
                match tree.pointer_mut(parent).unwrap() {
                    Value::Object(map) => {
                        map.remove(&key);
                    }
                    Value::Array(items) => {
                        items.remove(key.parse::<usize>().unwrap());
                    }
                    _ => unreachable!("a pointer's parent is an object or an array"),
                }
            }
            *bytes = serde_json::to_vec(&tree).unwrap();
        }
        _ => {}
    }
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

/// Applies `muts` to `valid` one by one; after each, `decode` must cope with the result.
fn mutated_inputs_cope(what: &str, valid: &[u8], muts: &[Mutation], decode: impl Fn(&[u8])) {
    let mut bytes = valid.to_vec();
    for m in muts {
        mutate(&mut bytes, m);
        assert_json_bounded(what, &bytes, || decode(&bytes));
    }
}

/// Encodes `v`, decodes it back and checks the result is `v`; returns the encoding.
fn round_trip<T>(v: &T, what: &'static str) -> Vec<u8>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = encode(v, what).unwrap();
    let back: T = decode(&bytes, what).unwrap();
    assert_eq!(&back, v);
    bytes.to_vec()
}

/// For types without `PartialEq` (requests, replies): the decoded value encodes to the same
/// bytes (maps are sorted, so equal values have equal encodings).
fn round_trip_bytes<T: Serialize + DeserializeOwned>(v: &T, what: &'static str) -> Vec<u8> {
    let bytes = encode(v, what).unwrap();
    let back: T = decode(&bytes, what).unwrap();
    assert_eq!(encode(&back, what).unwrap(), bytes);
    bytes.to_vec()
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input, every decoder.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_are_refused_or_decoded(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        every_decoder_copes(&bytes);
    }

    #[test]
    fn arbitrary_text_is_refused_or_decoded(text in any::<String>()) {
        every_decoder_copes(text.as_bytes());
    }

    #[test]
    fn arbitrary_json_is_refused_or_decoded(v in json()) {
        every_decoder_copes(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn only_known_subjects_decode(
        subject in prop_oneof![
            any::<String>(),
            ("[a-z0-9.]{0,30}", prop::sample::select(vec!["started", "progress", "completed", "failed", "job", "x", ""]))
                .prop_map(|(mid, kind)| format!("suanli.evt.{mid}.{kind}")),
            prop_oneof![
                prop::sample::select(OPERATOR_SUBJECTS.to_vec()).prop_map(str::to_string),
                "[a-z.>*]{0,10}".prop_map(|token| format!("suanli.api.{token}")),
            ],
        ],
        ev in task_event(),
    ) {
        let payload = encode(&ev, "task event").unwrap();
        let decoded = nats::decode_event(&subject, &payload);
        // An event is accepted only on an event subject of the payload's own kind.
        prop_assert_eq!(
            decoded.is_ok(),
            nats::event_kind(&subject) == Some(ev.kind.event_kind()),
            "{} -> {:?}", subject, decoded
        );
        // A request only on an API subject (a job request is a valid body for several).
        let body = encode(&api::JobRequest { job: ev.job.clone() }, "request").unwrap();
        let request = Request::decode(&subject, &body);
        if !OPERATOR_SUBJECTS.contains(&subject.as_str()) && !subject.starts_with("suanli.studio.") {
            let err = request.unwrap_err();
            prop_assert_eq!(err.kind, api::ErrorKind::BadRequest);
            prop_assert!(err.message.contains("unknown API subject"), "{}", err.message);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Valid values survive their round trip; their mutations are refused or decoded.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn task_messages(t in task_assignment(), muts in mutations()) {
        let bytes = encode(&t, "task message").unwrap();
        prop_assert_eq!(TaskAssignment::decode(&bytes).unwrap(), t);
        mutated_inputs_cope("task message", &bytes, &muts, |b| {
            let _ = TaskAssignment::decode(b);
        });
    }

    #[test]
    fn task_events(ev in task_event(), muts in mutations()) {
        let bytes = encode(&ev, "task event").unwrap();
        let kind = ev.kind.event_kind();
        let subject = nats::task_event_subject(&Studio::default(), &ev.job, kind, &ev.region);
        prop_assert_eq!(Event::decode(kind, &bytes).unwrap(), Event::Task(ev.clone()));
        prop_assert_eq!(nats::decode_event(&subject, &bytes).unwrap().1, Event::Task(ev));
        for other in EventKind::ALL.into_iter().filter(|k| *k != kind) {
            prop_assert!(Event::decode(other, &bytes).is_err());
        }
        mutated_inputs_cope("task event", &bytes, &muts, |b| {
            for kind in EventKind::ALL {
                let _ = Event::decode(kind, b);
            }
            let _ = nats::decode_event(&subject, b);
        });
    }

    #[test]
    fn job_events(ev in job_event(), muts in mutations()) {
        let bytes = encode(&ev, "job event").unwrap();
        let subject = nats::job_event_subject(&Studio::default(), &ev.job);
        prop_assert_eq!(nats::decode_event(&subject, &bytes).unwrap().1, Event::Job(ev));
        mutated_inputs_cope("job event", &bytes, &muts, |b| {
            let _ = nats::decode_event(&subject, b);
        });
    }

    #[test]
    fn job_records(rec in job_record(), muts in mutations()) {
        let bytes = round_trip(&rec, "job record");
        mutated_inputs_cope("job record", &bytes, &muts, |b| {
            let _ = decode::<JobRecord>(b, "job record");
        });
    }

    #[test]
    fn task_records(rec in task_record(), muts in mutations()) {
        let bytes = round_trip(&rec, "task record");
        mutated_inputs_cope("task record", &bytes, &muts, |b| {
            if let Ok(t) = decode::<TaskRecord>(b, "task record") {
                // Records are not checked on decode: what readers do with a chunk must
                // still not panic.
                let _ = (t.chunk.len(), t.chunk.is_valid(), t.chunk.to_string());
            }
        });
    }

    #[test]
    fn worker_records(rec in worker_info(), muts in mutations()) {
        let bytes = round_trip(&rec, "worker record");
        mutated_inputs_cope("worker record", &bytes, &muts, |b| {
            let _ = decode::<WorkerInfo>(b, "worker record");
        });
    }

    #[test]
    fn lease_holders(rec in lease_holder(), muts in mutations()) {
        let bytes = round_trip(&rec, "lease holder");
        mutated_inputs_cope("lease holder", &bytes, &muts, |b| {
            let _ = decode::<LeaseHolder>(b, "lease holder");
        });
    }

    #[test]
    fn input_manifests(m in input_manifest(), muts in mutations()) {
        prop_assert_eq!(InputManifest::parse(&m.to_bytes()).unwrap(), m.clone());
        mutated_inputs_cope("input manifest", &m.to_bytes(), &muts, |b| {
            let _ = InputManifest::parse(b);
        });
    }

    #[test]
    fn output_manifests(m in output_manifest(), muts in mutations()) {
        let bytes = serde_json::to_vec(&m).unwrap();
        prop_assert_eq!(OutputManifest::parse(&bytes, &output_key()).unwrap(), m);
        prop_assert!(OutputManifest::parse(&bytes, &ContentHash::of(b"other")).is_err());
        mutated_inputs_cope("output manifest", &bytes, &muts, |b| {
            let _ = OutputManifest::parse(b, &output_key());
        });
    }

    #[test]
    fn region_profiles(p in region_profile(), muts in mutations()) {
        let bytes = round_trip(&p, "region profile");
        mutated_inputs_cope("region profile", &bytes, &muts, |b| {
            let _ = decode::<RegionProfile>(b, "region profile");
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The API: every endpoint's request on every subject, every endpoint's reply.

/// A valid request for one endpoint: its subject and its body.
fn request() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    prop_oneof![
        job_spec().prop_map(|spec| {
            (
                api::Submit::SUBJECT,
                round_trip_bytes(&api::SubmitRequest { spec }, "request"),
            )
        }),
        (
            prop::sample::select(vec![
                api::Status::SUBJECT,
                api::Job::SUBJECT,
                api::Cancel::SUBJECT,
                api::Retry::SUBJECT,
            ]),
            job_id(),
        )
            .prop_map(|(subject, job)| {
                (
                    subject,
                    round_trip_bytes(&api::JobRequest { job }, "request"),
                )
            }),
        prop::sample::select(vec![api::Jobs::SUBJECT, api::Regions::SUBJECT])
            .prop_map(|subject| (subject, round_trip_bytes(&api::Empty {}, "request"))),
        any::<u32>().prop_map(|offset| {
            (
                api::Workers::SUBJECT,
                round_trip_bytes(&api::WorkersRequest { offset }, "request"),
            )
        }),
        (job_id(), any::<u32>(), any::<u32>()).prop_map(|(job, offset, limit)| {
            (
                api::Tasks::SUBJECT,
                round_trip_bytes(&api::TasksRequest { job, offset, limit }, "request"),
            )
        }),
        (region(), worker_id()).prop_map(|(region, worker)| {
            (
                api::Drain::SUBJECT,
                round_trip_bytes(&api::DrainRequest { region, worker }, "request"),
            )
        }),
    ]
}

/// The subject a decoded request belongs to, and its body encoded again.
fn request_parts(r: &Request) -> (&'static str, Vec<u8>) {
    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }
    match r {
        Request::Submit(v) => (api::Submit::SUBJECT, enc(v)),
        Request::Status(v) => (api::Status::SUBJECT, enc(v)),
        Request::Jobs(v) => (api::Jobs::SUBJECT, enc(v)),
        Request::Job(v) => (api::Job::SUBJECT, enc(v)),
        Request::Cancel(v) => (api::Cancel::SUBJECT, enc(v)),
        Request::Retry(v) => (api::Retry::SUBJECT, enc(v)),
        Request::Workers(v) => (api::Workers::SUBJECT, enc(v)),
        Request::Tasks(v) => (api::Tasks::SUBJECT, enc(v)),
        Request::Drain(v) => (api::Drain::SUBJECT, enc(v)),
        Request::Regions(v) => (api::Regions::SUBJECT, enc(v)),
    }
}

/// One endpoint's reply: round trip, then mutations through the client's decoder.
fn reply_copes<E: Endpoint>(r: &api::Reply<E::Reply>, muts: &[Mutation]) {
    let bytes = round_trip_bytes(r, "reply");
    mutated_inputs_cope(E::SUBJECT, &bytes, muts, |b| {
        let _ = reply::<E>(b);
    });
}

#[test]
fn every_endpoint_is_covered() {
    // `request_parts` matches every `Request` variant (the compiler checks that); this checks
    // the subjects list has no endpoint the properties below leave out.
    assert_eq!(
        OPERATOR_SUBJECTS.len(),
        api::TOKENS.len(),
        "a new endpoint needs its properties here"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn api_requests((subject, body) in request(), muts in mutations()) {
        let (_, decoded) = Request::decode(subject, &body).unwrap();
        prop_assert_eq!(request_parts(&decoded), (subject, body.clone()));
        for other in OPERATOR_SUBJECTS.iter().filter(|s| **s != subject) {
            // The body of one endpoint on another's subject: refused or decoded, never a panic
            // (an `Empty` body is the same JSON as any object without fields).
            let _ = Request::decode(other, &body);
        }
        mutated_inputs_cope(subject, &body, &muts, |b| {
            for s in OPERATOR_SUBJECTS {
                let _ = Request::decode(s, b);
            }
        });
    }

    #[test]
    fn submit_and_status_replies(
        submit in reply_of((job_id(), any::<u32>(), any::<u32>())
            .prop_map(|(id, tasks, cached)| api::SubmitReply { id, tasks, cached })),
        status in reply_of(job_status()),
        jobs in reply_of(prop::collection::vec(job_status(), 0..3)),
        muts in mutations(),
    ) {
        reply_copes::<api::Submit>(&submit, &muts);
        reply_copes::<api::Status>(&status, &muts);
        reply_copes::<api::Cancel>(&status, &muts);
        reply_copes::<api::Retry>(&status, &muts);
        reply_copes::<api::Jobs>(&jobs, &muts);
    }

    #[test]
    fn record_replies(
        job in reply_of(job_record()),
        workers in reply_of(prop::collection::vec(worker_info(), 0..3)),
        drain in reply_of(worker_info()),
        tasks in reply_of((any::<u32>(), any::<u32>(), prop::collection::vec(task_record(), 0..3))
            .prop_map(|(total, offset, tasks)| api::TasksPage { total, offset, tasks })),
        regions in reply_of(prop::collection::vec(region_profile(), 0..3)),
        muts in mutations(),
    ) {
        reply_copes::<api::Job>(&job, &muts);
        reply_copes::<api::Workers>(&workers, &muts);
        reply_copes::<api::Drain>(&drain, &muts);
        reply_copes::<api::Tasks>(&tasks, &muts);
        reply_copes::<api::Regions>(&regions, &muts);
    }
}

// ---------------------------------------------------------------------------------------------
// Frame specs: text from a studio, and in every job spec on the wire.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frame_specs_select_their_frames((text, mut want) in frame_spec_text()) {
        let spec: FrameSpec = text.parse().unwrap();
        want.sort_unstable();
        prop_assert_eq!(spec.frames(), &want[..]);
        prop_assert_eq!(spec.to_string().parse::<FrameSpec>().unwrap(), spec.clone());
        prop_assert_eq!(round_trip(&spec, "frame spec"), encode(&text.trim(), "text").unwrap().to_vec());
        let chunks = spec.chunks(3).unwrap();
        prop_assert!(chunks.iter().all(FrameChunk::is_valid));
        let all: Vec<u32> = chunks.iter().flat_map(FrameChunk::frames).collect();
        prop_assert_eq!(all, want);
    }

    /// Text from the frame-spec alphabet reaches every check (steps, ranges, limits).
    #[test]
    fn frame_spec_like_text_is_refused_or_parsed(text in "[0-9xX, -]{0,40}") {
        let spec = assert_json_bounded("frame spec", text.as_bytes(), || text.parse::<FrameSpec>());
        if let Ok(spec) = spec {
            prop_assert!(!spec.is_empty() && spec.len() <= MAX_FRAMES_PER_JOB);
            prop_assert!(spec.frames().windows(2).all(|w| w[0] < w[1]));
            prop_assert!(spec.frames().iter().all(|&f| f <= MAX_FRAME));
        }
    }

    /// A chunk read from a record without checks: its length never overflows and matches the
    /// frames it yields.
    #[test]
    fn chunk_lengths_never_overflow(c in any_chunk(), start in any::<u32>(), span in 0u32..2000, step in any::<u32>()) {
        let _ = (c.len(), c.is_empty(), c.is_valid(), c.to_string());
        let small = FrameChunk { start, end: start.saturating_add(span), step };
        prop_assert_eq!(small.len() as usize, small.frames().count());
        prop_assert_eq!(small.is_empty(), small.frames().next().is_none());
        let backwards = FrameChunk { start: small.end, end: small.start, step };
        prop_assert_eq!(backwards.len() as usize, backwards.frames().count());
    }
}

#[test]
fn huge_frame_specs_are_refused_before_allocating() {
    // Each names more frames than a job may hold, in a few bytes: refused from the numbers,
    // before a single frame is stored.
    for text in [
        "0-999999",
        "1-1000000000",
        "0-1000000x1",
        "1-4294967295",
        "0-999999999999",
        "0-50000,50001-100001",
    ] {
        let (result, peak) = peak_during(|| text.parse::<FrameSpec>());
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains("at most") || err.to_string().contains("highest"),
            "{text}: {err}"
        );
        // The second item of the last one comes after 50,000 frames (200 KB) are stored.
        let bound = if text.contains(',') {
            1024 * 1024
        } else {
            4096
        };
        assert!(peak <= bound, "{text}: held {peak} bytes");
    }
    let full = format!("0-{}", MAX_FRAMES_PER_JOB - 1);
    assert_eq!(full.parse::<FrameSpec>().unwrap().len(), MAX_FRAMES_PER_JOB);
}

// ---------------------------------------------------------------------------------------------
// The region catalog (TOML from the operator's disk).

const CATALOG: &str = r#"
currency = "CNY"
policy = "cheapest"
patience = 2.0

[[region]]
name = "guian"
price_per_core_hour = 0.08
pue = 1.12
carbon_g_per_kwh = 420.0
bandwidth_mbps = 2000.0

[[region]]
name = "shenzhen"
price_per_core_hour = 0.2
"#;

/// A line as a catalog might hold one, right or wrong.
fn toml_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "currency",
        "policy",
        "patience",
        "value_of_hour",
        "carbon_price_per_tonne",
        "name",
        "pue",
        "price_per_core_hour",
        "bandwidth_mbps",
        "region",
        "x",
    ]);
    let value = prop::sample::select(vec![
        "\"CNY\"",
        "\"guian\"",
        "\"cheapest\"",
        "1.5",
        "-1",
        "0",
        "nan",
        "inf",
        "1e400",
        "[1, 2]",
        "{ a = 1 }",
        "\"\"",
        "true",
        "1979-05-27T07:32:00Z",
    ]);
    prop_oneof![
        (key.clone(), value).prop_map(|(k, v)| format!("{k} = {v}")),
        key.clone().prop_map(|k| format!("[[{k}]]")),
        key.prop_map(|k| format!("[{k}]")),
        any_text(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn region_catalogs_are_refused_or_loaded(
        lines in prop::collection::vec(toml_line(), 0..12),
        muts in prop::collection::vec((any::<Index>(), any::<Index>(), toml_line()), 0..3),
    ) {
        let catalog = |text: &str| {
            assert_bounded("region catalog", text.as_bytes(), TOML_PER_BYTE, || RegionCatalog::from_toml(text, "inline"))
        };
        let _ = catalog(&lines.join("\n"));
        // The valid catalog with lines replaced or inserted.
        let mut valid: Vec<String> = CATALOG.lines().map(str::to_string).collect();
        prop_assert_eq!(catalog(CATALOG).unwrap().len(), 2);
        for (at, cut, line) in muts {
            let i = at.index(valid.len());
            if cut.index(2) == 0 {
                valid[i] = line;
            } else {
                valid.insert(i, line);
            }
            let _ = catalog(&valid.join("\n"));
        }
    }
}

#[test]
fn deeply_nested_toml_is_refused_not_a_stack_overflow() {
    for text in [
        format!("patience = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("patience = {}1{}", "{a=".repeat(50_000), "}".repeat(50_000)),
        format!("{} = 1", "a.".repeat(100_000) + "a"),
    ] {
        assert!(
            assert_bounded("region catalog", text.as_bytes(), TOML_PER_BYTE, || {
                RegionCatalog::from_toml(&text, "inline")
            })
            .is_err()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Oversized messages.

#[test]
fn a_full_chunk_reports_in_one_message() {
    // The largest completion a worker can send, and the task record it becomes: MAX_CHUNK
    // frames, each named with the longest file name a manifest accepts (200 bytes) of the
    // character JSON doubles, with the largest numbers; the record also keeps its last
    // failures, each with a 4 KiB stderr tail of escape sequences.
    let outputs: Vec<OutputFile> = (0..MAX_CHUNK)
        .map(|i| OutputFile {
            frame: MAX_FRAME - i,
            name: "\"".repeat(200),
            hash: ContentHash::of(&i.to_le_bytes()),
            size: u64::MAX,
        })
        .collect();
    let worker: WorkerId = "w".repeat(64).parse().unwrap();
    let region: Region = "r".repeat(32).parse().unwrap();
    let failure = Failure {
        exit_code: Some(i32::MIN),
        reason: "\u{1b}".repeat(1024),
        stderr_tail: "\u{1b}".repeat(4096),
        worker: worker.clone(),
        region: region.clone(),
        attempt: u32::MAX,
        at_ms: u64::MAX,
    };
    let chunk = FrameChunk {
        start: MAX_FRAME - (MAX_CHUNK - 1),
        end: MAX_FRAME,
        step: 1,
    };
    assert!(chunk.is_valid());
    let event = TaskEvent {
        job: JobId::generate(),
        task: u32::MAX,
        key: output_key(),
        attempt: u32::MAX,
        worker: worker.clone(),
        region: region.clone(),
        at_ms: u64::MAX,
        kind: TaskEventKind::Completed {
            cached: false,
            started_ms: u64::MAX,
            core_seconds: f64::MAX,
            outputs: outputs.clone(),
            bytes_in: u64::MAX,
            gpu: None,
        },
    };
    let mut record = TaskRecord::new(
        event.job.clone(),
        u32::MAX,
        output_key(),
        chunk,
        TaskState::Done,
        Some(u64::MAX),
    );
    record.outputs = outputs;
    record.failures = vec![failure; suanli_shared::fold::FAILURES_KEPT];
    record.region = Some(region);
    record.worker = Some(worker);
    for (what, result) in [
        ("task event", encode(&event, "task event").map(|b| b.len())),
        (
            "task record",
            encode(&record, "task record").map(|b| b.len()),
        ),
    ] {
        let size = result.unwrap_or_else(|e| panic!("a full chunk's {what}: {e}"));
        assert!(size <= MAX_MESSAGE, "{what}: {size}");
    }
}

#[test]
fn an_oversized_message_is_refused_with_its_size() {
    // A valid task message padded with whitespace to 3 MiB: refused for its size, by every
    // decoder that reads NATS messages, before it is parsed.
    let ev = TaskEvent {
        job: JobId::generate(),
        task: 0,
        key: output_key(),
        attempt: 0,
        worker: "w1".parse().unwrap(),
        region: "guian".parse().unwrap(),
        at_ms: 1,
        kind: TaskEventKind::Started,
    };
    let mut bytes = encode(&ev, "task event").unwrap().to_vec();
    bytes.resize(3 * 1024 * 1024, b' ');
    let subject =
        nats::task_event_subject(&Studio::default(), &ev.job, EventKind::Started, &ev.region);
    let (err, peak) = peak_during(|| nats::decode_event(&subject, &bytes).unwrap_err());
    assert_eq!(
        err.to_string(),
        "task event of 3145728 bytes is over the 1048576-byte limit"
    );
    assert!(peak < 4096, "refused before parsing, held {peak} bytes");
    let err = TaskAssignment::decode(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "task message of 3145728 bytes is over the 1048576-byte limit"
    );
    let err = Request::decode(api::Status::SUBJECT, &bytes).unwrap_err();
    assert_eq!(err.kind, api::ErrorKind::BadRequest);
    assert_eq!(
        err.message,
        "status request of 3145728 bytes is over the 1048576-byte limit"
    );
    assert!(matches!(
        decode::<WorkerInfo>(&bytes, "worker record"),
        Err(DecodeError::TooLarge {
            size: 3_145_728,
            limit: MAX_MESSAGE,
            ..
        })
    ));
    // The same message without the padding decodes.
    let trimmed = bytes.trim_ascii_end();
    assert_eq!(
        nats::decode_event(&subject, trimmed).unwrap().1,
        Event::Task(ev)
    );
}

#[test]
fn an_oversized_message_is_refused_on_encode_with_its_size() {
    // A job event whose reason alone is over the limit: the sender learns why, NATS never sees
    // it.
    let ev = JobEvent {
        job: JobId::generate(),
        state: JobState::Failed,
        at_ms: 1,
        reason: Some("x".repeat(MAX_MESSAGE)),
    };
    let err = encode(&ev, "job event").unwrap_err();
    let text = err.to_string();
    let EncodeError::TooLarge { size, limit, .. } = err else {
        panic!("{text}")
    };
    assert_eq!(limit, MAX_MESSAGE);
    assert!(size > MAX_MESSAGE);
    assert_eq!(
        text,
        format!("job event of {size} bytes is over the 1048576-byte limit of a message")
    );
}

#[test]
fn manifests_have_their_own_larger_limit() {
    // Over MAX_MESSAGE but under MAX_MANIFEST: a manifest decodes.
    let mut m = InputManifest::default();
    for i in 0..20_000u64 {
        m.files.insert(
            format!("textures/t{i:05}.png"),
            InputEntry::whole(ContentHash::of(&i.to_le_bytes()), i, 0o644),
        );
    }
    let bytes = m.to_bytes();
    assert!(bytes.len() > MAX_MESSAGE && bytes.len() < MAX_MANIFEST);
    assert_eq!(InputManifest::parse(&bytes).unwrap(), m);
    // Over MAX_MANIFEST: refused before parsing.
    let mut big = bytes;
    big.resize(MAX_MANIFEST + 1, b' ');
    let (err, peak) = peak_during(|| InputManifest::parse(&big).unwrap_err());
    assert_eq!(
        err.to_string(),
        format!(
            "input manifest of {} bytes is over the 67108864-byte limit",
            MAX_MANIFEST + 1
        )
    );
    assert!(peak < 4096, "refused before parsing, held {peak} bytes");
    let err = OutputManifest::parse(&big, &output_key()).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::TooLarge {
            what: "output manifest",
            limit: MAX_MANIFEST,
            ..
        }
    ));
    assert!(decode_limited::<Value>(b"[]", "x", 1).is_err());
}

// ---------------------------------------------------------------------------------------------
// Memory on large input: the worst shapes, near the message limit.

#[test]
fn large_messages_hold_memory_in_proportion() {
    let n = MAX_MESSAGE / 2 - 64;
    // Untyped content buffered for a flattened field (a task event) or a tagged enum.
    let zeros = vec!["0"; n / 2].join(",");
    let event = format!(r#"{{"x":[{zeros}],"type":"started"}}"#);
    let objects = vec!["{}"; n / 3].join(",");
    let spec = format!(r#"{{"spec":{{"x":[{objects}]}}}}"#);
    // Many small entries in a manifest's map.
    let entries: Vec<String> = (0..n / 100)
        .map(|i| format!(r#""{i}":{{"hash":"{}","size":1,"mode":1}}"#, output_key()))
        .collect();
    let manifest = format!(r#"{{"files":{{{}}}}}"#, entries.join(","));
    for input in [event, spec, manifest] {
        assert!(input.len() <= MAX_MESSAGE, "{}", input.len());
        every_decoder_copes(input.as_bytes());
    }
}
