//! Built-in renderer: a small CPU ray tracer with an animated demo film. Its frames leave as PNG
//! (`png`) and are tiled into contact sheets (`sheet`); both are re-exported here.
//!
//! It exists so that a farm can render something with no external renderer installed: for
//! demos, for end-to-end smoke tests of the whole pipeline, and for benchmarks. Task keys assume
//! that the same inputs always give the same pixels (and [`VERSION`] is part of every key), so
//! the tracer is deterministic by construction:
//!
//! - all shading uses `f64` with only the basic IEEE-754 operations (`+ - * /`, `sqrt`, `floor`),
//!   which are correctly rounded everywhere; no `mul_add`, and no libm transcendentals (`sin`,
//!   `cos`, `powf` ...) whose last bits differ between platforms. Trigonometry comes from a Taylor
//!   series and the sRGB curve from `const` tables, so a frame is bit-identical on any mainstream
//!   64-bit target, thread and run;
//! - randomness comes from a hash of (frame, x, y, sample), never from a global RNG or the clock;
//! - no parallelism inside a frame (the farm parallelises across tasks).
//!
//! The film loops every `LOOP_FRAMES` frames (4 s at 24 fps): frame `n` and `n + 96` are
//! identical, and the frames within one loop all differ.

use std::ops::{Add, Mul, Neg, Sub};
use std::sync::atomic::{AtomicBool, Ordering};

mod png;
mod sheet;

pub use self::png::{decode_png, encode_png};
pub use self::sheet::contact_sheet;

/// Renderer version: part of every task key, bump whenever pixels could change.
pub const VERSION: &str = "suanli-builtin-1";

/// Frames in one loop of the film (4 s at 24 fps); the animation repeats after this many frames.
const LOOP_FRAMES: u32 = 96;

/// Pixel-changing settings of the builtin renderer.
#[derive(Clone, Debug, PartialEq)]
pub struct SceneSettings {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Camera rays per pixel: more gives smoother edges and softer, less noisy shadows.
    pub samples: u32,
}

impl Default for SceneSettings {
    /// 320 x 180 at 4 samples per pixel: a quick preview that still looks clean.
    fn default() -> Self {
        SceneSettings {
            width: 320,
            height: 180,
            samples: 4,
        }
    }
}

/// 8-bit sRGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes: R, G, B for each pixel, rows top to bottom.
    pub rgb: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Deterministic maths
// ---------------------------------------------------------------------------------------------

/// A 3-vector of `f64`, used for points, directions and linear RGB colours.
#[derive(Clone, Copy, Debug, PartialEq)]
struct V3 {
    x: f64,
    y: f64,
    z: f64,
}

const fn v3(x: f64, y: f64, z: f64) -> V3 {
    V3 { x, y, z }
}

impl V3 {
    const ZERO: V3 = v3(0.0, 0.0, 0.0);

    fn dot(self, o: V3) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }

    fn cross(self, o: V3) -> V3 {
        v3(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }

    fn norm(self) -> V3 {
        self * (1.0 / self.dot(self).sqrt())
    }

    /// Component-wise product (colour filtering).
    fn mul(self, o: V3) -> V3 {
        v3(self.x * o.x, self.y * o.y, self.z * o.z)
    }
}

impl Add for V3 {
    type Output = V3;
    fn add(self, o: V3) -> V3 {
        v3(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}

impl Sub for V3 {
    type Output = V3;
    fn sub(self, o: V3) -> V3 {
        v3(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}

impl Neg for V3 {
    type Output = V3;
    fn neg(self) -> V3 {
        v3(-self.x, -self.y, -self.z)
    }
}

impl Mul<f64> for V3 {
    type Output = V3;
    fn mul(self, s: f64) -> V3 {
        v3(self.x * s, self.y * s, self.z * s)
    }
}

/// `(sin, cos)` of an angle given in turns (1.0 = 360 degrees), from a Taylor series: basic
/// operations only, so the animation does not depend on the platform's libm.
fn sin_cos_turns(turns: f64) -> (f64, f64) {
    let t = turns - turns.floor();
    let quarter = (t * 4.0).floor();
    // 0 <= a < pi/2, where 12 terms of each series are accurate to well below 1e-15.
    let a = (t - quarter * 0.25) * std::f64::consts::TAU;
    let a2 = a * a;
    let (mut sin, mut cos) = (0.0, 0.0);
    let (mut sin_term, mut cos_term) = (a, 1.0);
    for k in 0..12u32 {
        sin += sin_term;
        cos += cos_term;
        let k = f64::from(k);
        sin_term = -sin_term * a2 / ((2.0 * k + 2.0) * (2.0 * k + 3.0));
        cos_term = -cos_term * a2 / ((2.0 * k + 1.0) * (2.0 * k + 2.0));
    }
    match quarter as u8 {
        0 => (sin, cos),
        1 => (cos, -sin),
        2 => (-sin, -cos),
        _ => (-cos, sin),
    }
}

/// `x^(1/5)` for `x` in roughly (0.01, 1] by Newton's method, evaluable at compile time.
const fn fifth_root(x: f64) -> f64 {
    let mut y = 1.0;
    let mut i = 0;
    while i < 60 {
        let y2 = y * y;
        y = (4.0 * y + x / (y2 * y2)) / 5.0;
        i += 1;
    }
    y
}

/// The sRGB decoding curve: encoded value in 0..=1 to linear light.
const fn srgb_to_linear(v: f64) -> f64 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        // a^2.4 = a^2 * (a^(1/5))^2
        let a = (v + 0.055) / 1.055;
        let r = fifth_root(a);
        a * a * r * r
    }
}

/// Linear light of each 8-bit sRGB code.
const SRGB_TO_LINEAR: [f64; 256] = {
    let mut table = [0.0; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = srgb_to_linear(i as f64 / 255.0);
        i += 1;
    }
    table
};

/// `SRGB_THRESHOLDS[c]` is the linear value halfway (in sRGB) between codes `c` and `c + 1`:
/// a linear value encodes to the number of thresholds at or below it.
const SRGB_THRESHOLDS: [f64; 255] = {
    let mut table = [0.0; 255];
    let mut i = 0;
    while i < 255 {
        table[i] = srgb_to_linear((i as f64 + 0.5) / 255.0);
        i += 1;
    }
    table
};

/// Encode linear light as an 8-bit sRGB code (clamping; NaN gives 0).
fn linear_to_srgb8(v: f64) -> u8 {
    // At most 255 thresholds can be at or below `v`, so this always fits.
    SRGB_THRESHOLDS.partition_point(|&t| t <= v) as u8
}

/// SplitMix64's finaliser: a strong, cheap 64-bit mixing function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Small counter-based PRNG whose stream depends only on (frame, x, y, sample).
struct Rng(u64);

impl Rng {
    fn new(frame: u32, x: u32, y: u32, sample: u32) -> Rng {
        let a = mix64((u64::from(frame) << 32 | u64::from(sample)) ^ 0x5375_616e_6c69_0001);
        Rng(mix64(a ^ (u64::from(x) << 32 | u64::from(y))))
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (mix64(self.0) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

// ---------------------------------------------------------------------------------------------
// The scene
// ---------------------------------------------------------------------------------------------

/// Offset along the normal for rays leaving a surface, so they do not hit it again.
const SURFACE_OFFSET: f64 = 1e-7;
/// Nearest accepted hit distance.
const MIN_T: f64 = 1e-9;
/// Mirror and glass bounces before a path is cut off (returns black).
const MAX_DEPTH: u32 = 6;
/// Glass paths whose remaining contribution falls below this are not traced.
const MIN_WEIGHT: f64 = 0.01;

/// Sun radiance reaching a surface facing it (linear RGB).
const SUN_LIGHT: V3 = v3(1.2, 1.1, 0.95);
/// Radius of the jittered sun disc, in units of the distance to it: sets shadow softness.
const SUN_SPREAD: f64 = 0.05;
/// Light from the emissive sphere at unit distance (inverse-square falloff).
const GLOW_LIGHT: V3 = v3(2.6, 1.2, 0.35);
/// Colour of the emissive sphere itself.
const GLOW_SURFACE: V3 = v3(2.2, 0.85, 0.2);
/// Ambient light from the sky (surfaces facing up) and bounced off the ground (facing down).
const SKY_AMBIENT: V3 = v3(0.20, 0.26, 0.36);
const GROUND_BOUNCE: V3 = v3(0.16, 0.145, 0.12);
const ZENITH: V3 = v3(0.16, 0.33, 0.70);
const HORIZON: V3 = v3(0.72, 0.80, 0.90);
/// Radiance of the visible sun disc (only seen in reflections).
const SUN_DISC: V3 = v3(30.0, 28.0, 24.0);
/// Distance at which the ground is half faded into the horizon haze.
const FOG_DISTANCE: f64 = 60.0;
const CHECKER_LIGHT: V3 = v3(0.72, 0.69, 0.63);
const CHECKER_DARK: V3 = v3(0.22, 0.24, 0.28);
/// Index of refraction of the glass sphere, its colour, and how much sun passes through it.
const GLASS_IOR: f64 = 1.5;
const GLASS_TINT: V3 = v3(0.94, 0.97, 1.0);
const GLASS_SHADOW: f64 = 0.55;
/// Half-height of the image plane at unit distance: tan(20 degrees), a 40-degree vertical view.
const HALF_FOV_TAN: f64 = 0.363_970_234_266_202_4;

/// Surface response of an object.
#[derive(Clone, Copy, Debug)]
enum Material {
    /// The checkered ground plane.
    Ground,
    /// Matte with a soft highlight, with this albedo.
    Diffuse(V3),
    /// Perfect mirror, tinted.
    Mirror(V3),
    /// Clear glass (reflects and refracts).
    Glass,
    /// Glows with this radiance; also lights the scene as a point light.
    Emissive(V3),
}

#[derive(Clone, Copy, Debug)]
struct Sphere {
    center: V3,
    radius: f64,
    material: Material,
}

impl Sphere {
    /// Distance along the unit direction `d` to the nearest hit beyond [`MIN_T`].
    fn hit(&self, o: V3, d: V3) -> Option<f64> {
        let oc = o - self.center;
        let b = oc.dot(d);
        let c = oc.dot(oc) - self.radius * self.radius;
        let disc = b * b - c;
        if disc < 0.0 {
            return None;
        }
        let sq = disc.sqrt();
        let near = -b - sq;
        if near > MIN_T {
            return Some(near);
        }
        let far = -b + sq;
        (far > MIN_T).then_some(far)
    }
}

/// A ray-surface intersection.
struct Hit {
    t: f64,
    /// Outward unit normal.
    normal: V3,
    material: Material,
    /// Which sphere was hit; `None` for the ground.
    sphere: Option<usize>,
}

/// Everything needed to render one frame: objects, lights and camera at that moment.
struct Scene {
    spheres: [Sphere; 5],
    /// Unit direction towards the sun, and two unit vectors spanning the sun disc.
    sun: V3,
    sun_u: V3,
    sun_v: V3,
    eye: V3,
    forward: V3,
    right: V3,
    up: V3,
}

/// Index of the emissive sphere in [`Scene::spheres`].
const GLOW: usize = 4;

/// Height of a bouncing ball: `bounces` parabolic hops of height `height` per loop.
fn bounce(phase: f64, bounces: f64, height: f64) -> f64 {
    let b = phase * bounces;
    let b = b - b.floor();
    height * 4.0 * b * (1.0 - b)
}

/// A point at angle `turns` on a horizontal circle of `radius`, at `height`.
fn orbit(turns: f64, radius: f64, height: f64) -> V3 {
    let (s, c) = sin_cos_turns(turns);
    v3(radius * s, height, radius * c)
}

impl Scene {
    fn new(frame: u32) -> Scene {
        let phase = f64::from(frame % LOOP_FRAMES) / f64::from(LOOP_FRAMES);
        let (wobble, _) = sin_cos_turns(phase * 2.0);
        let spheres = [
            Sphere {
                center: v3(0.0, 1.0, 0.0),
                radius: 1.0,
                material: Material::Mirror(v3(0.90, 0.91, 0.93)),
            },
            Sphere {
                center: orbit(phase, 2.4, 0.6),
                radius: 0.6,
                material: Material::Glass,
            },
            Sphere {
                center: orbit(phase + 0.5, 2.4, 0.5 + bounce(phase, 3.0, 1.3)),
                radius: 0.5,
                material: Material::Diffuse(v3(0.75, 0.12, 0.08)),
            },
            Sphere {
                center: orbit(0.2 - phase, 3.6, 0.45 + bounce(phase, 4.0, 0.9)),
                radius: 0.45,
                material: Material::Diffuse(v3(0.10, 0.40, 0.75)),
            },
            Sphere {
                center: orbit(phase * 2.0 + 0.1, 1.7, 2.5 + 0.25 * wobble),
                radius: 0.22,
                material: Material::Emissive(GLOW_SURFACE),
            },
        ];

        let sun = v3(-0.55, 0.72, 0.42).norm();
        let sun_u = sun.cross(v3(0.0, 1.0, 0.0)).norm();
        let sun_v = sun_u.cross(sun);

        // The camera sways 30 degrees either side and dollies in and out once per loop.
        let (sway, dolly) = sin_cos_turns(phase);
        let eye = orbit(0.08 * sway, 7.0 - 0.7 * dolly, 3.0 + 0.3 * dolly);
        let target = v3(0.0, 0.7, 0.0);
        let forward = (target - eye).norm();
        let right = forward.cross(v3(0.0, 1.0, 0.0)).norm();
        let up = right.cross(forward);
        Scene {
            spheres,
            sun,
            sun_u,
            sun_v,
            eye,
            forward,
            right,
            up,
        }
    }

    /// Nearest surface along the unit direction `d`.
    fn intersect(&self, o: V3, d: V3) -> Option<Hit> {
        let mut best: Option<Hit> = None;
        for (i, s) in self.spheres.iter().enumerate() {
            if let Some(t) = s.hit(o, d) {
                if best.as_ref().is_none_or(|b| t < b.t) {
                    let normal = (o + d * t - s.center) * (1.0 / s.radius);
                    best = Some(Hit {
                        t,
                        normal,
                        material: s.material,
                        sphere: Some(i),
                    });
                }
            }
        }
        if d.y < 0.0 {
            let t = -o.y / d.y;
            if t > MIN_T && best.as_ref().is_none_or(|b| t < b.t) {
                best = Some(Hit {
                    t,
                    normal: v3(0.0, 1.0, 0.0),
                    material: Material::Ground,
                    sphere: None,
                });
            }
        }
        best
    }

    /// Fraction of light arriving at `o` from direction `d` within distance `max_t`: 0 behind an
    /// opaque sphere, reduced behind glass. Sphere `skip` (the light itself) is ignored.
    fn transmittance(&self, o: V3, d: V3, max_t: f64, skip: usize) -> f64 {
        let mut through = 1.0;
        for (i, s) in self.spheres.iter().enumerate() {
            if i == skip {
                continue;
            }
            if let Some(t) = s.hit(o, d) {
                if t < max_t {
                    match s.material {
                        Material::Glass => through *= GLASS_SHADOW,
                        _ => return 0.0,
                    }
                }
            }
        }
        through
    }

    /// Sky and ground-bounce light at `p` with normal `n`, darkened near the spheres with an
    /// analytic sphere-occlusion term (cheap contact shadows, no extra rays).
    fn ambient(&self, p: V3, n: V3, own: Option<usize>) -> V3 {
        let mut open = 1.0;
        for (i, s) in self.spheres.iter().enumerate() {
            if Some(i) == own {
                continue;
            }
            let to = s.center - p;
            let dist2 = to.dot(to);
            let cos = n.dot(to) / dist2.sqrt();
            if cos > 0.0 {
                open *= (1.0 - cos * s.radius * s.radius / dist2).max(0.0);
            }
        }
        let up = 0.5 + 0.5 * n.y;
        (SKY_AMBIENT * up + GROUND_BOUNCE * (1.0 - up)) * open
    }

    /// Light leaving a matte surface at `p` towards the viewer (looking along `d`).
    fn shade_matte(&self, p: V3, n: V3, d: V3, albedo: V3, sun: V3, own: Option<usize>) -> V3 {
        let o = p + n * SURFACE_OFFSET;
        let mut light = self.ambient(p, n, own);
        let mut highlight = V3::ZERO;

        let n_sun = n.dot(sun);
        if n_sun > 0.0 {
            let through = self.transmittance(o, sun, f64::INFINITY, usize::MAX);
            if through > 0.0 {
                light = light + SUN_LIGHT * (n_sun * through);
                if own.is_some() {
                    // Blinn-Phong highlight, exponent 64 by repeated squaring.
                    let mut s = n.dot((sun - d).norm()).max(0.0);
                    for _ in 0..6 {
                        s *= s;
                    }
                    highlight = SUN_LIGHT * (0.35 * s * through);
                }
            }
        }

        let glow = &self.spheres[GLOW];
        let to = glow.center - p;
        let dist2 = to.dot(to);
        let dist = dist2.sqrt();
        let l = to * (1.0 / dist);
        let n_glow = n.dot(l);
        if n_glow > 0.0 {
            let through = self.transmittance(o, l, dist - glow.radius, GLOW);
            light = light + GLOW_LIGHT * (n_glow * through / dist2);
        }
        albedo.mul(light) + highlight
    }

    /// Radiance arriving along the unit direction `d` from `o`. `weight` is how much the result
    /// still matters to the pixel; `sun` is this sample's jittered sun direction.
    fn trace(&self, o: V3, d: V3, depth: u32, weight: f64, sun: V3) -> V3 {
        let Some(hit) = self.intersect(o, d) else {
            return sky(d, self.sun);
        };
        let p = o + d * hit.t;
        let n = hit.normal;
        match hit.material {
            // Brighter where seen face-on: reads as a glowing ball rather than a flat disc.
            Material::Emissive(radiance) => radiance * (0.55 - 0.45 * d.dot(n)),
            Material::Diffuse(albedo) => self.shade_matte(p, n, d, albedo, sun, hit.sphere),
            Material::Ground => {
                // Fade the checker contrast and then the ground itself with distance: this avoids
                // aliasing near the horizon and blends it into the sky.
                let parity = (p.x.floor() + p.z.floor()) * 0.5;
                let light = parity - parity.floor() < 0.25;
                let contrast = 1.0 / (1.0 + hit.t * hit.t * (1.0 / 400.0));
                let mid = (CHECKER_LIGHT + CHECKER_DARK) * 0.5;
                let half = (CHECKER_LIGHT - CHECKER_DARK) * (0.5 * contrast);
                let albedo = if light { mid + half } else { mid - half };
                let lit = self.shade_matte(p, n, d, albedo, sun, None);
                let t2 = hit.t * hit.t;
                let fog = t2 / (t2 + FOG_DISTANCE * FOG_DISTANCE);
                lit * (1.0 - fog) + HORIZON * fog
            }
            Material::Mirror(tint) => {
                if depth >= MAX_DEPTH {
                    return V3::ZERO;
                }
                let r = d - n * (2.0 * d.dot(n));
                tint.mul(self.trace(p + n * SURFACE_OFFSET, r, depth + 1, weight, sun))
            }
            Material::Glass => {
                if depth >= MAX_DEPTH {
                    return V3::ZERO;
                }
                let entering = d.dot(n) < 0.0;
                let (n, eta) = if entering {
                    (n, 1.0 / GLASS_IOR)
                } else {
                    (-n, GLASS_IOR)
                };
                let cos_i = -d.dot(n);
                let k = 1.0 - eta * eta * (1.0 - cos_i * cos_i);
                // Schlick's Fresnel approximation, using the angle on the less dense side.
                let fresnel = if k < 0.0 {
                    1.0
                } else {
                    let c = if entering { cos_i } else { k.sqrt() };
                    let m = 1.0 - c;
                    let m2 = m * m;
                    0.04 + 0.96 * m2 * m2 * m
                };
                let mut out = V3::ZERO;
                if weight * fresnel > MIN_WEIGHT {
                    let r = d - n * (2.0 * d.dot(n));
                    let w = weight * fresnel;
                    out = self.trace(p + n * SURFACE_OFFSET, r, depth + 1, w, sun) * fresnel;
                }
                if k >= 0.0 && weight * (1.0 - fresnel) > MIN_WEIGHT {
                    let t = d * eta + n * (eta * cos_i - k.sqrt());
                    let w = weight * (1.0 - fresnel);
                    let through = self.trace(p - n * SURFACE_OFFSET, t, depth + 1, w, sun);
                    out = out + GLASS_TINT.mul(through) * (1.0 - fresnel);
                }
                out
            }
        }
    }
}

/// Sky radiance in direction `d`: a horizon-to-zenith gradient with a sun glow and disc.
fn sky(d: V3, sun: V3) -> V3 {
    let up = d.y.max(0.0).sqrt();
    let base = HORIZON * (1.0 - up) + ZENITH * up;
    let s = d.dot(sun).max(0.0);
    let s2 = s * s;
    let s4 = s2 * s2;
    let s8 = s4 * s4;
    let s64 = {
        let s16 = s8 * s8;
        let s32 = s16 * s16;
        s32 * s32
    };
    let glow = v3(1.0, 0.9, 0.7) * (0.12 * s8 + 0.5 * s64);
    if s > 0.9996 {
        SUN_DISC
    } else {
        base + glow
    }
}

/// Render one frame of the built-in animated film. Deterministic: same settings and frame =>
/// identical pixels, on any thread, every time; frame `n` equals frame `n + 96`.
///
/// `progress` is called with the fraction done after each block of rows (at most 16 calls, the
/// last one exactly 1.0). `cancel` is polled before every pixel; once it is true this returns
/// `None` promptly. A width or height of 0 gives an empty image; 0 samples count as 1.
pub fn render_frame(
    settings: &SceneSettings,
    frame: u32,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(f32),
) -> Option<Image> {
    let (width, height) = (settings.width, settings.height);
    let samples = settings.samples.max(1);
    let scene = Scene::new(frame);
    let loop_frame = frame % LOOP_FRAMES;

    // Stratify the first k*k samples of each pixel on a k x k grid; any extra are uniform.
    let strata = samples.isqrt();
    let stratified = strata * strata;
    let inv_strata = 1.0 / f64::from(strata);
    let inv_samples = 1.0 / f64::from(samples);
    let aspect = f64::from(width.max(1)) / f64::from(height.max(1));
    let half_h = HALF_FOV_TAN;
    let half_w = half_h * aspect;
    let rows_per_report = height.div_ceil(16).max(1);

    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let mut sum = V3::ZERO;
            for s in 0..samples {
                let mut rng = Rng::new(loop_frame, x, y, s);
                let (mut jx, mut jy) = (rng.next_f64(), rng.next_f64());
                if s < stratified {
                    jx = (f64::from(s % strata) + jx) * inv_strata;
                    jy = (f64::from(s / strata) + jy) * inv_strata;
                }
                let px = (2.0 * (f64::from(x) + jx) / f64::from(width) - 1.0) * half_w;
                let py = (1.0 - 2.0 * (f64::from(y) + jy) / f64::from(height)) * half_h;
                let dir = (scene.forward + scene.right * px + scene.up * py).norm();

                // A point on the sun's disc, uniform by area, for soft shadows.
                let r = rng.next_f64().sqrt() * SUN_SPREAD;
                let (ds, dc) = sin_cos_turns(rng.next_f64());
                let sun = (scene.sun + scene.sun_u * (r * dc) + scene.sun_v * (r * ds)).norm();

                sum = sum + scene.trace(scene.eye, dir, 0, 1.0, sun);
            }
            let c = sum * inv_samples;
            rgb.extend_from_slice(&[
                linear_to_srgb8(c.x),
                linear_to_srgb8(c.y),
                linear_to_srgb8(c.z),
            ]);
        }
        if (y + 1) % rows_per_report == 0 || y + 1 == height {
            progress((y + 1) as f32 / height as f32);
        }
    }
    if height == 0 {
        progress(1.0);
    }
    Some(Image { width, height, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    pub(super) fn small(width: u32, height: u32, samples: u32) -> SceneSettings {
        SceneSettings {
            width,
            height,
            samples,
        }
    }

    pub(super) fn render(settings: &SceneSettings, frame: u32) -> Image {
        render_frame(settings, frame, &AtomicBool::new(false), &mut |_| {}).expect("not cancelled")
    }

    /// FNV-1a, to pin the pixels of a reference render.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    #[test]
    fn same_frame_renders_identically_on_any_thread() {
        let settings = small(40, 24, 3);
        let a = render(&settings, 17);
        let b = render(&settings, 17);
        let s = settings.clone();
        let c = std::thread::spawn(move || render(&s, 17)).join().unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.rgb.len(), 40 * 24 * 3);
    }

    #[test]
    fn reference_render_is_pinned() {
        // If this fails the pixels changed: bump VERSION, then update the expected hash.
        let img = render(&small(32, 18, 2), 7);
        assert_eq!(fnv1a(&img.rgb), 0x68c8_2212_27b2_d16b, "{VERSION}");
    }

    #[test]
    fn consecutive_frames_differ() {
        let settings = small(48, 27, 1);
        assert_ne!(render(&settings, 1).rgb, render(&settings, 2).rgb);
    }

    #[test]
    fn every_frame_of_the_loop_differs_and_the_loop_repeats() {
        let settings = small(32, 18, 1);
        let frames: Vec<Vec<u8>> = (1..=96).map(|f| render(&settings, f).rgb).collect();
        let distinct: HashSet<&Vec<u8>> = frames.iter().collect();
        assert_eq!(distinct.len(), 96);
        assert_eq!(render(&settings, 97).rgb, frames[0]);
        assert_eq!(render(&settings, 96 * 5 + 10).rgb, frames[9]);
    }

    #[test]
    fn frame_has_detail_and_sensible_exposure() {
        let img = render(&small(64, 36, 2), 30);
        let luma: Vec<f64> = img
            .rgb
            .chunks_exact(3)
            .map(|p| (f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2])) / 3.0)
            .collect();
        let mean = luma.iter().sum::<f64>() / luma.len() as f64;
        let var = luma.iter().map(|l| (l - mean) * (l - mean)).sum::<f64>() / luma.len() as f64;
        assert!(var > 200.0, "variance {var}");
        assert!((60.0..200.0).contains(&mean), "mean {mean}");
        let distinct: HashSet<&[u8]> = img.rgb.chunks_exact(3).collect();
        assert!(distinct.len() > 100, "{} colours", distinct.len());
    }

    #[test]
    fn tiny_and_odd_sizes_render() {
        for (w, h, s) in [(1, 1, 1), (1, 7, 1), (9, 1, 2), (7, 3, 5), (5, 5, 0)] {
            let img = render(&small(w, h, s), 3);
            assert_eq!((img.width, img.height), (w, h));
            assert_eq!(img.rgb.len(), (w * h * 3) as usize);
        }
        let empty = render(&small(0, 4, 1), 3);
        assert!(empty.rgb.is_empty());
    }

    #[test]
    fn cancel_before_start_returns_none() {
        let cancel = AtomicBool::new(true);
        let mut calls = 0;
        let out = render_frame(&small(16, 9, 1), 1, &cancel, &mut |_| calls += 1);
        assert!(out.is_none());
        assert_eq!(calls, 0);
    }

    #[test]
    fn cancel_during_render_stops_promptly() {
        let cancel = AtomicBool::new(false);
        let mut calls = 0;
        let out = render_frame(&small(16, 64, 1), 1, &cancel, &mut |_| {
            calls += 1;
            cancel.store(true, Ordering::Relaxed);
        });
        assert!(out.is_none());
        assert_eq!(calls, 1);
    }

    #[test]
    fn progress_is_bounded_increasing_and_ends_at_one() {
        for height in [1, 2, 15, 16, 17, 180, 1000] {
            let mut seen = Vec::new();
            render_frame(&small(1, height, 1), 2, &AtomicBool::new(false), &mut |f| {
                seen.push(f)
            })
            .unwrap();
            assert!(!seen.is_empty() && seen.len() <= 20, "{height}: {seen:?}");
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "{height}: {seen:?}");
            assert!(seen[0] > 0.0);
            assert_eq!(*seen.last().unwrap(), 1.0);
        }
    }

    #[test]
    fn srgb_tables_match_the_standard_curve() {
        for code in 0..=255u8 {
            let v = f64::from(code) / 255.0;
            let expect = if v <= 0.04045 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            };
            assert!((SRGB_TO_LINEAR[usize::from(code)] - expect).abs() < 1e-12);
            assert_eq!(linear_to_srgb8(SRGB_TO_LINEAR[usize::from(code)]), code);
        }
        assert_eq!(linear_to_srgb8(-1.0), 0);
        assert_eq!(linear_to_srgb8(f64::NAN), 0);
        assert_eq!(linear_to_srgb8(7.0), 255);
        assert_eq!(linear_to_srgb8(0.5), 188);
    }

    #[test]
    fn series_sin_cos_matches_std() {
        for i in -400..=400 {
            let turns = f64::from(i) * 0.013_7;
            let (s, c) = sin_cos_turns(turns);
            let a = turns * std::f64::consts::TAU;
            assert!((s - a.sin()).abs() < 1e-12, "sin {turns}");
            assert!((c - a.cos()).abs() < 1e-12, "cos {turns}");
        }
    }
}
