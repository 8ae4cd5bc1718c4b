//! The studio catalog: each studio's contract with the farm. Its weight (its fair share of the
//! slots against the other studios with work), slot quotas (in all and per region), the highest
//! priority its jobs may ask for, the regions its data may go to, and a budget per calendar
//! month with what happens at the limit. The coordinator loads it once (`--studios FILE`);
//! studios it does not name get [`StudioTerms::open`] terms: weight 1, no quota, no budget,
//! any region.
//!
//! Money here is in the region catalog's currency and is priced only by the ledger's model
//! (`shared::ledger`, the `shared::regions` formulas): a budget is compared with the same
//! figures `suanli ledger` shows.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::names::{Region, Studio};
use crate::protocol::JobSpec;
use crate::regions::{read_catalog_file, toml_error_line};

/// What happens when a studio's spend for the month reaches its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetAction {
    /// Events at 80 % and 100 %; work goes on.
    #[default]
    Warn,
    /// No new releases of the studio's tasks; running tasks finish.
    Stop,
    /// The studio's unfinished jobs are cancelled.
    Cancel,
}

impl BudgetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Stop => "stop",
            Self::Cancel => "cancel",
        }
    }
}

/// One studio's contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudioTerms {
    pub name: Studio,
    /// Its share of the slots against the other studios with work (weights 3 and 1: three
    /// slots for one).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Most tasks in flight at once over all regions.
    #[serde(default)]
    pub max_slots: Option<u32>,
    /// Most tasks in flight at once in a region.
    #[serde(default)]
    pub region_slots: BTreeMap<Region, u32>,
    /// Highest priority its jobs may ask for; a job above it is refused at submit.
    #[serde(default)]
    pub max_priority: Option<i32>,
    /// Regions its data may go to; empty: any.
    #[serde(default)]
    pub regions: Vec<Region>,
    /// Spend allowed per calendar month (UTC), in the region catalog's currency.
    #[serde(default)]
    pub budget_per_month: Option<f64>,
    /// What happens when the month's spend reaches the budget.
    #[serde(default)]
    pub at_limit: BudgetAction,
}

fn default_weight() -> f64 {
    1.0
}

impl StudioTerms {
    /// A studio the catalog does not name: weight 1, no quota, no ceiling, any region, no
    /// budget.
    pub fn open(name: Studio) -> Self {
        Self {
            name,
            weight: 1.0,
            max_slots: None,
            region_slots: BTreeMap::new(),
            max_priority: None,
            regions: Vec::new(),
            budget_per_month: None,
            at_limit: BudgetAction::Warn,
        }
    }

    /// Whether the studio's data may go to `region`.
    pub fn allows(&self, region: &Region) -> bool {
        self.regions.is_empty() || self.regions.contains(region)
    }

    /// The regions a job of this studio may use: the job's own list narrowed to the studio's
    /// (empty: any).
    pub fn allowed_for(&self, job_regions: &[Region]) -> Vec<Region> {
        if job_regions.is_empty() {
            self.regions.clone()
        } else {
            job_regions
                .iter()
                .filter(|r| self.allows(r))
                .cloned()
                .collect()
        }
    }

    /// Refuses a job its contract does not allow: a region its data may not go to, a priority
    /// above its ceiling (refused, not clamped: a job silently run at another priority than
    /// asked would surprise its submitter).
    pub fn check_job(&self, spec: &JobSpec) -> Result<(), String> {
        let refused: Vec<&str> = spec
            .regions
            .iter()
            .filter(|r| !self.allows(r))
            .map(|r| r.as_str())
            .collect();
        if !refused.is_empty() {
            return Err(format!(
                "studio '{}' may not send data to region(s) {}: its contract allows {}",
                self.name,
                refused.join(", "),
                self.regions
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(ceiling) = self.max_priority {
            if spec.priority > ceiling {
                return Err(format!(
                    "priority {} is above studio '{}''s ceiling of {ceiling}: submit at {ceiling} or lower",
                    spec.priority, self.name
                ));
            }
        }
        Ok(())
    }

    /// Most tasks the studio may have in flight in `region`, when it has a quota there.
    pub fn region_quota(&self, region: &Region) -> Option<u32> {
        self.region_slots.get(region).copied()
    }

    fn validate(&self) -> Result<(), StudiosError> {
        let invalid = |field: &'static str, problem: String| StudiosError::Invalid {
            studio: self.name.clone(),
            field,
            problem,
        };
        if !self.weight.is_finite() || self.weight <= 0.0 {
            return Err(invalid(
                "weight",
                format!("must be a positive number, not {}", self.weight),
            ));
        }
        if let Some(b) = self.budget_per_month {
            if !b.is_finite() || b < 0.0 {
                return Err(invalid(
                    "budget_per_month",
                    format!("must be 0 or more, not {b}"),
                ));
            }
        }
        if let Some(r) = self.region_slots.keys().find(|r| !self.allows(r)) {
            return Err(invalid(
                "region_slots",
                format!("names region '{r}', which is not among the studio's regions"),
            ));
        }
        Ok(())
    }
}

/// Why a studio catalog was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StudiosError {
    #[error("cannot read studio catalog {path}: {message}")]
    Read { path: String, message: String },
    #[error("studio catalog {origin} is not valid{at}: {message}", at = line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    #[error("studio catalog: studio '{studio}': {field} {problem}")]
    Invalid {
        studio: Studio,
        field: &'static str,
        problem: String,
    },
    #[error("studio catalog: studio '{0}' is listed twice; give each studio one [[studio]] table")]
    Duplicate(Studio),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudiosFile {
    #[serde(default)]
    studio: Vec<StudioTerms>,
}

/// Every studio's terms; loaded once by the coordinator (and by `suanli sim`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StudioCatalog {
    studios: BTreeMap<Studio, StudioTerms>,
}

impl StudioCatalog {
    /// No studio named: every studio gets open terms.
    pub const EMPTY: Self = Self {
        studios: BTreeMap::new(),
    };

    /// A checked catalog from terms built in code.
    pub fn new(terms: impl IntoIterator<Item = StudioTerms>) -> Result<Self, StudiosError> {
        let mut studios = BTreeMap::new();
        for t in terms {
            t.validate()?;
            if studios.contains_key(&t.name) {
                return Err(StudiosError::Duplicate(t.name));
            }
            studios.insert(t.name.clone(), t);
        }
        Ok(Self { studios })
    }

    /// Parses and checks a catalog; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, StudiosError> {
        let file: StudiosFile = toml::from_str(text).map_err(|e| StudiosError::Parse {
            origin: origin.to_string(),
            line: toml_error_line(text, &e),
            message: e.message().trim().to_string(),
        })?;
        Self::new(file.studio)
    }

    /// Reads and checks a catalog file (at most 1 MiB, like the region catalog).
    pub fn load(path: &Path) -> Result<Self, StudiosError> {
        let text = read_catalog_file(path).map_err(|message| StudiosError::Read {
            path: path.display().to_string(),
            message,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The studio's terms, or open ones when the catalog does not name it.
    pub fn terms(&self, studio: &Studio) -> StudioTerms {
        self.studios
            .get(studio)
            .cloned()
            .unwrap_or_else(|| StudioTerms::open(studio.clone()))
    }

    /// The studio's terms when the catalog names it.
    pub fn get(&self, studio: &Studio) -> Option<&StudioTerms> {
        self.studios.get(studio)
    }

    /// The named studios, in name order.
    pub fn studios(&self) -> impl Iterator<Item = &StudioTerms> {
        self.studios.values()
    }

    pub fn is_empty(&self) -> bool {
        self.studios.is_empty()
    }
}

/// A calendar month (UTC) as a number that grows by one a month: `year * 12 + month - 1`.
pub fn month_of(ms: u64) -> u32 {
    let (y, m, _) = civil_from_days((ms / 86_400_000) as i64);
    (y * 12 + m as i64 - 1) as u32
}

/// The month's name, `2026-11`.
pub fn month_name(month: u32) -> String {
    format!("{}-{:02}", month / 12, month % 12 + 1)
}

/// Days since 1970-01-01 to a (year, month, day) of the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Budget thresholds that raise an event, in percent.
pub const BUDGET_THRESHOLDS: [u32; 2] = [80, 100];

/// The thresholds a spend going from `before` to `after` crosses against `budget` (a budget
/// of 0 is crossed by the first spend).
pub fn thresholds_crossed(before: f64, after: f64, budget: f64) -> Vec<u32> {
    BUDGET_THRESHOLDS
        .iter()
        .copied()
        .filter(|pct| {
            let line = budget * f64::from(*pct) / 100.0;
            before < line.max(f64::MIN_POSITIVE) && after >= line.max(f64::MIN_POSITIVE)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[studio]]
name = "acme"
weight = 3.0
max_slots = 40
region_slots = { guian = 30 }
max_priority = 10
regions = ["guian", "ulanqab"]
budget_per_month = 5000.0
at_limit = "stop"

[[studio]]
name = "tiny"
"#;

    fn s(name: &str) -> Studio {
        name.parse().unwrap()
    }

    #[test]
    fn loads_a_catalog_and_fills_defaults() {
        let c = StudioCatalog::from_toml(EXAMPLE, "inline").unwrap();
        let acme = c.terms(&s("acme"));
        assert_eq!(acme.weight, 3.0);
        assert_eq!(acme.max_slots, Some(40));
        assert_eq!(acme.region_quota(&"guian".parse().unwrap()), Some(30));
        assert_eq!(acme.at_limit, BudgetAction::Stop);
        assert!(!acme.allows(&"shenzhen".parse().unwrap()));
        let tiny = c.terms(&s("tiny"));
        assert_eq!(tiny, StudioTerms::open(s("tiny")));
        assert_eq!(c.terms(&s("other")), StudioTerms::open(s("other")));
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_studio_and_field() {
        let cases = [
            ("[[studio]]\nname = \"a\"\nweight = 0.0\n", "weight"),
            (
                "[[studio]]\nname = \"a\"\nbudget_per_month = -1.0\n",
                "budget_per_month",
            ),
            (
                "[[studio]]\nname = \"a\"\nregions = [\"x\"]\nregion_slots = { y = 1 }\n",
                "region_slots",
            ),
            (
                "[[studio]]\nname = \"a\"\n[[studio]]\nname = \"a\"\n",
                "twice",
            ),
            ("[[studio]]\nname = \"a\"\nat_limit = \"panic\"\n", "line 3"),
            ("[[studio]]\nname = \"A B\"\n", "studio"),
            ("[[studio]]\nname = \"a\"\nwieght = 2.0\n", "wieght"),
        ];
        for (text, needle) in cases {
            let e = StudioCatalog::from_toml(text, "inline")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_job_outside_its_contract_is_refused() {
        let c = StudioCatalog::from_toml(EXAMPLE, "inline").unwrap();
        let acme = c.terms(&s("acme"));
        let mut spec = crate::protocol::spec::tests::spec();
        spec.regions = vec!["shenzhen".parse().unwrap()];
        let e = acme.check_job(&spec).unwrap_err();
        assert!(e.contains("may not send data to region(s) shenzhen"), "{e}");
        spec.regions = vec!["guian".parse().unwrap()];
        acme.check_job(&spec).unwrap();
        spec.priority = 11;
        let e = acme.check_job(&spec).unwrap_err();
        assert!(e.contains("above studio 'acme''s ceiling of 10"), "{e}");
        assert_eq!(
            acme.allowed_for(&[]),
            vec!["guian".parse().unwrap(), "ulanqab".parse().unwrap()]
        );
    }

    #[test]
    fn the_example_catalog_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/studios.example.toml");
        let c = StudioCatalog::load(&path).unwrap();
        assert_eq!(c.studios().count(), 2);
        assert_eq!(c.terms(&s("bolt")).regions.len(), 1);
    }

    #[test]
    fn months_and_thresholds() {
        // 2026-11-29T18:00:00Z and 2026-12-01T00:00:00Z; 2024-02-29 (a leap day).
        assert_eq!(month_name(month_of(1_795_975_200_000)), "2026-11");
        assert_eq!(month_name(month_of(1_796_083_200_000 - 1)), "2026-11");
        assert_eq!(month_name(month_of(1_796_083_200_000)), "2026-12");
        assert_eq!(month_name(month_of(1_709_164_800_000)), "2024-02");
        assert_eq!(month_name(month_of(0)), "1970-01");
        assert_eq!(thresholds_crossed(0.0, 79.0, 100.0), Vec::<u32>::new());
        assert_eq!(thresholds_crossed(79.0, 80.0, 100.0), vec![80]);
        assert_eq!(thresholds_crossed(70.0, 120.0, 100.0), vec![80, 100]);
        assert_eq!(thresholds_crossed(100.0, 120.0, 100.0), Vec::<u32>::new());
        assert_eq!(thresholds_crossed(0.0, 0.1, 0.0), vec![80, 100]);
    }
}
