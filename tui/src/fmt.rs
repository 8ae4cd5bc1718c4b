//! Number, time and bar formatting shared by every view. Fixed widths and plain characters,
//! so that a table column never jumps and view tests can compare text.

/// "—": a figure the terminal does not know (no catalog, nothing measured yet).
pub const UNKNOWN: &str = "—";

/// A job's name as the job lists show it: `studio/name`, or the bare name for the default
/// studio (a farm of one studio shows no prefix).
pub fn job_name(job: &suanli_shared::protocol::JobStatus) -> String {
    if job.studio == suanli_shared::Studio::default() {
        job.name.clone()
    } else {
        format!("{}/{}", job.studio, job.name)
    }
}

/// Seconds as `45s`, `12m03s`, `3h12m`, `2d04h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return UNKNOWN.to_string();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A short duration with a decimal below ten seconds: `3.2s`, `45s`, `12m03s`.
pub fn duration_fine(secs: f64) -> String {
    if secs.is_finite() && (0.0..9.95).contains(&secs) {
        format!("{secs:.1}s")
    } else {
        duration(secs)
    }
}

/// Bytes in SI units: `0 B`, `812 B`, `12.3 kB`, `4.5 MB`, `1.2 GB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A figure with about three significant digits in at most six characters.
pub fn figure(v: f64) -> String {
    if !v.is_finite() {
        return UNKNOWN.to_string();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if a < 0.001 {
        "<0.001".to_string()
    } else if a < 10.0 {
        format!("{v:.3}")
    } else if a < 100.0 {
        format!("{v:.2}")
    } else if a < 1000.0 {
        format!("{v:.1}")
    } else if a < 1_000_000.0 {
        format!("{v:.0}")
    } else {
        format!("{:.1}M", v / 1e6)
    }
}

/// An optional figure: `—` when unknown.
pub fn opt_figure(v: Option<f64>) -> String {
    v.map(figure).unwrap_or_else(|| UNKNOWN.to_string())
}

/// Money with two decimals, `—` when unknown (no catalog).
pub fn money(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => UNKNOWN.to_string(),
    }
}

/// A window of history as a label: `1m`, `2m`, `45s`.
pub fn window(secs: u64) -> String {
    if secs >= 60 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        duration(secs as f64)
    }
}

/// Time of day (UTC) of a Unix time in milliseconds: `14:02:03`.
pub fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
}

/// Cuts `s` to `n` characters, ending with `…` when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else if n == 0 {
        String::new()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];

/// A horizontal gauge of `width` cells filled to `fraction` (0..=1), in eighths of a cell.
pub fn gauge(fraction: f64, width: usize) -> String {
    let f = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let eighths = (f * width as f64 * 8.0).round() as usize;
    let full = eighths / 8;
    let mut out = String::with_capacity(width * 3);
    for _ in 0..full.min(width) {
        out.push('█');
    }
    if full < width {
        out.push(EIGHTHS[eighths % 8]);
        for _ in full + 1..width {
            out.push(' ');
        }
    }
    out
}

const SPARKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `values` scaled to `max` (values above it are clipped); `None` samples
/// (no data) are blank.
pub fn sparkline(values: &[Option<f64>], max: f64) -> String {
    values
        .iter()
        .map(|v| match v {
            None => ' ',
            Some(v) if *v <= 0.0 || max <= 0.0 => '▁',
            Some(v) => {
                let level = ((v / max).min(1.0) * 8.0).ceil() as usize;
                SPARKS[level.clamp(1, 8)]
            }
        })
        .collect()
}

/// A progress bar of `width` cells with rendered frames (`█`), cached frames (`▒`, apart
/// from the rendered ones), failed frames (`✗`) and the rest (`·`), in that order.
pub fn progress_bar(rendered: u32, cached: u32, failed: u32, total: u32, width: usize) -> String {
    if width == 0 {
        return String::new();
    }
    let total = total.max(1) as f64;
    let cells = |n: u32| ((n as f64 / total) * width as f64).round() as usize;
    // Any non-zero part shows at least one cell, so one failed frame in a thousand is seen.
    let at_least = |n: u32| if n > 0 { cells(n).max(1) } else { 0 };
    let r = at_least(rendered).min(width);
    let c = at_least(cached).min(width - r);
    let f = at_least(failed).min(width - r - c);
    let mut out = String::with_capacity(width * 3);
    out.extend(std::iter::repeat_n('█', r));
    out.extend(std::iter::repeat_n('▒', c));
    out.extend(std::iter::repeat_n('✗', f));
    out.extend(std::iter::repeat_n('·', width - r - c - f));
    out
}

/// Video memory in whole GiB, short: `24G`, `80G` (`512M` below a GiB).
pub fn vram(mib: u64) -> String {
    if mib >= 1024 {
        format!("{}G", (mib + 512) / 1024)
    } else {
        format!("{mib}M")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(723.0), "12m03s");
        assert_eq!(duration(3.0 * 3600.0 + 720.0), "3h12m");
        assert_eq!(duration(2.0 * 86_400.0 + 4.0 * 3600.0), "2d04h");
        assert_eq!(duration(f64::NAN), UNKNOWN);
        assert_eq!(duration_fine(3.24), "3.2s");
        assert_eq!(duration_fine(12.0), "12s");
    }

    #[test]
    fn bytes_and_figures_fit_their_columns() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(12_345), "12.3 kB");
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(bytes(4_500_000_000), "4.5 GB");
        for v in [
            0.0,
            0.0004,
            0.0123,
            9.999,
            12.345,
            123.45,
            98_765.0,
            12_345_678.0,
        ] {
            assert!(figure(v).chars().count() <= 6, "{v} -> {}", figure(v));
        }
        assert_eq!(figure(0.0123), "0.012");
        assert_eq!(opt_figure(None), "—");
    }

    #[test]
    fn bars_have_their_width() {
        assert_eq!(gauge(0.0, 4), "    ");
        assert_eq!(gauge(0.5, 4), "██  ");
        assert_eq!(gauge(1.0, 4), "████");
        assert_eq!(gauge(0.5625, 2), "█▏");
        assert_eq!(progress_bar(2, 1, 0, 4, 8), "████▒▒··");
        assert_eq!(progress_bar(0, 0, 1, 1000, 10), "✗·········");
        assert_eq!(progress_bar(10, 0, 0, 10, 5), "█████");
        assert_eq!(
            sparkline(&[None, Some(0.0), Some(0.5), Some(1.0), Some(3.0)], 1.0),
            " ▁▄██"
        );
        assert_eq!(truncate("suanli-short-film", 8), "suanli-…");
        assert_eq!(clock(86_400_000 + 3_723_000), "01:02:03");
    }
}
