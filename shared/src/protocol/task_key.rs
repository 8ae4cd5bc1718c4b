//! The task key: the content hash that makes memoization work. Same key, same pixels; nothing
//! that leaves pixels alone may enter it.

use super::renderer::RendererSpec;
use super::spec::JobSpec;
use crate::frames::FrameChunk;
use crate::hash::ContentHash;

/// Task key: BLAKE3 over a canonical encoding of everything that changes a task's pixels:
/// renderer kind, version and settings, the input manifest, the scene path, the frame chunk
/// and the output naming. The job's name, studio, priority, regions, retries and timeout are
/// left out on purpose: changing them must not re-render anything (a studio's outputs are kept
/// apart by its object-store prefix, not by its keys).
pub fn task_key(spec: &JobSpec, chunk: &FrameChunk) -> ContentHash {
    let mut enc = KeyEncoder::new();
    let r = &spec.renderer;
    enc.field("renderer", r.kind());
    enc.field("renderer.version", r.version());
    match r {
        RendererSpec::Builtin {
            width,
            height,
            samples,
        } => {
            enc.field("builtin.size", &format!("{width}x{height}"));
            enc.field("builtin.samples", &samples.to_string());
        }
        RendererSpec::Blender {
            format,
            resolution,
            samples,
            ..
        } => {
            enc.field("blender.format", format.blender_name());
            if let Some([w, h]) = resolution {
                enc.field("blender.resolution", &format!("{w}x{h}"));
            }
            if let Some(s) = samples {
                enc.field("blender.samples", &s.to_string());
            }
        }
        RendererSpec::Command {
            argv,
            profile,
            args,
            ext,
            ..
        } => {
            enc.field("command.argc", &argv.len().to_string());
            for a in argv {
                enc.field("command.arg", a);
            }
            // Only profile jobs add these fields, so raw-argv keys stay as they were.
            if let Some(profile) = profile {
                enc.field("command.profile", profile);
                enc.field("command.nargs", &args.len().to_string());
                for (name, value) in args {
                    enc.field("command.param", name);
                    enc.field("command.value", value);
                }
            }
            enc.field("command.ext", ext);
        }
    }
    enc.field("inputs", &spec.inputs.to_hex());
    enc.field("scene", spec.scene.as_deref().unwrap_or(""));
    enc.field("chunk", &chunk.to_string());
    enc.field("output", &spec.output);
    enc.finish()
}

/// Length-prefixed `name=value` fields under a versioned domain tag, so no two different field
/// lists can encode to the same bytes.
struct KeyEncoder(blake3::Hasher);

impl KeyEncoder {
    fn new() -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"suanli/task-key/v1\0");
        Self(h)
    }

    fn field(&mut self, name: &str, value: &str) {
        for part in [name.as_bytes(), value.as_bytes()] {
            self.0.update(&(part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    fn finish(self) -> ContentHash {
        ContentHash::from_hasher(&self.0)
    }
}
