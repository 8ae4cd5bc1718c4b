//! The region catalog: what a core-hour costs in each region, how much energy and carbon it
//! takes, and how fast data reaches it. The coordinator places tasks and keeps its ledger with
//! these figures; the TUI and `suanli ledger` show them. Regions missing from the catalog still
//! work, with [`RegionProfile::neutral`] figures.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::names::Region;
use crate::protocol::Policy;

/// One region's figures. Prices are in the catalog's currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionProfile {
    pub name: Region,
    /// Price of one busy core for one hour.
    #[serde(default = "defaults::price_per_core_hour")]
    pub price_per_core_hour: f64,
    /// Power usage effectiveness of the data center (facility energy / IT energy, >= 1).
    #[serde(default = "defaults::pue")]
    pub pue: f64,
    /// Grid carbon intensity, grams of CO2 per kWh.
    #[serde(default = "defaults::carbon_g_per_kwh")]
    pub carbon_g_per_kwh: f64,
    /// IT power drawn by one busy core, in watts (before PUE).
    #[serde(default = "defaults::watts_per_core")]
    pub watts_per_core: f64,
    /// Price of moving one GB from the object store into this region.
    #[serde(default)]
    pub egress_per_gb: f64,
    /// Bandwidth from the object store into this region, megabits per second.
    #[serde(default = "defaults::bandwidth_mbps")]
    pub bandwidth_mbps: f64,
    /// Price of one busy GPU for one hour, on top of the cores its task holds.
    #[serde(default)]
    pub price_per_gpu_hour: f64,
    /// Prices per GPU-hour by model, where they differ from `price_per_gpu_hour`: a key
    /// matches a GPU whose name contains it, ignoring case (`"4090" = 6.0`, `"H100" = 18.0`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_prices: BTreeMap<String, f64>,
    /// IT power drawn by one busy GPU, in watts (before PUE).
    #[serde(default = "defaults::watts_per_gpu")]
    pub watts_per_gpu: f64,
}

mod defaults {
    pub fn price_per_core_hour() -> f64 {
        0.0
    }
    pub fn pue() -> f64 {
        1.0
    }
    pub fn carbon_g_per_kwh() -> f64 {
        0.0
    }
    pub fn watts_per_core() -> f64 {
        10.0
    }
    pub fn bandwidth_mbps() -> f64 {
        1000.0
    }
    pub fn watts_per_gpu() -> f64 {
        300.0
    }
}

impl RegionProfile {
    /// The figures used for a region the catalog does not name: free, PUE 1, no carbon, a
    /// gigabit link. Placement then falls back to speed and free slots.
    pub fn neutral(name: Region) -> Self {
        Self {
            name,
            price_per_core_hour: defaults::price_per_core_hour(),
            pue: defaults::pue(),
            carbon_g_per_kwh: defaults::carbon_g_per_kwh(),
            watts_per_core: defaults::watts_per_core(),
            egress_per_gb: 0.0,
            bandwidth_mbps: defaults::bandwidth_mbps(),
            price_per_gpu_hour: 0.0,
            gpu_prices: BTreeMap::new(),
            watts_per_gpu: defaults::watts_per_gpu(),
        }
    }
}

impl RegionProfile {
    /// Checks the figures: PUE at least 1, no negative price, carbon, power or egress, a
    /// bandwidth above zero, every figure finite.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let bad = |field: &'static str, problem: String| {
            Err(CatalogError::Invalid {
                region: self.name.clone(),
                field,
                problem,
            })
        };
        let figures = [
            ("price_per_core_hour", self.price_per_core_hour),
            ("pue", self.pue),
            ("carbon_g_per_kwh", self.carbon_g_per_kwh),
            ("watts_per_core", self.watts_per_core),
            ("egress_per_gb", self.egress_per_gb),
            ("bandwidth_mbps", self.bandwidth_mbps),
            ("price_per_gpu_hour", self.price_per_gpu_hour),
            ("watts_per_gpu", self.watts_per_gpu),
        ];
        for (field, value) in figures {
            if !value.is_finite() {
                return bad(field, format!("is {value}; give a finite number"));
            }
            if value < 0.0 {
                return bad(field, format!("is {value}; it cannot be negative"));
            }
        }
        for (model, price) in &self.gpu_prices {
            if model.trim().is_empty() || model.len() > 128 {
                return bad(
                    "gpu_prices",
                    "names a model of no or over 128 characters".into(),
                );
            }
            if !(price.is_finite() && *price >= 0.0) {
                return bad(
                    "gpu_prices",
                    format!(
                        "gives '{}' the price {price}; give a finite price of 0 or more",
                        crate::names::shown(model)
                    ),
                );
            }
        }
        if self.pue < 1.0 {
            return bad(
                "pue",
                format!(
                    "is {}; PUE is facility energy over IT energy, so it is at least 1.0",
                    self.pue
                ),
            );
        }
        if self.bandwidth_mbps <= 0.0 {
            return bad(
                "bandwidth_mbps",
                "is 0; give the link's bandwidth in megabits per second".into(),
            );
        }
        Ok(())
    }

    /// What `core_seconds` of busy cores cost here.
    pub fn compute_cost(&self, core_seconds: f64) -> f64 {
        self.price_per_core_hour * core_seconds / 3600.0
    }

    /// Facility energy of `core_seconds` of busy cores, in kWh: IT power times PUE.
    pub fn energy_kwh(&self, core_seconds: f64) -> f64 {
        core_seconds / 3600.0 * self.watts_per_core / 1000.0 * self.pue
    }

    /// Carbon of `core_seconds` of busy cores, in kg of CO2.
    pub fn carbon_kg(&self, core_seconds: f64) -> f64 {
        self.energy_kwh(core_seconds) * self.carbon_g_per_kwh / 1000.0
    }

    /// The price of one GPU-hour of this model here: the first `gpu_prices` key (in name
    /// order) its name contains, else `price_per_gpu_hour`. `None` (a model not reported):
    /// `price_per_gpu_hour`.
    pub fn gpu_price(&self, model: Option<&str>) -> f64 {
        let Some(model) = model.map(str::to_ascii_lowercase) else {
            return self.price_per_gpu_hour;
        };
        self.gpu_prices
            .iter()
            .find(|(key, _)| model.contains(&key.to_ascii_lowercase()))
            .map_or(self.price_per_gpu_hour, |(_, price)| *price)
    }

    /// What `gpu_seconds` of busy GPUs of `model` cost here.
    pub fn gpu_cost(&self, gpu_seconds: f64, model: Option<&str>) -> f64 {
        self.gpu_price(model) * gpu_seconds / 3600.0
    }

    /// Facility energy of `gpu_seconds` of busy GPUs, in kWh: IT power times PUE.
    pub fn gpu_energy_kwh(&self, gpu_seconds: f64) -> f64 {
        gpu_seconds / 3600.0 * self.watts_per_gpu / 1000.0 * self.pue
    }

    /// What moving `bytes` from the store into this region costs.
    pub fn transfer_cost(&self, bytes: u64) -> f64 {
        self.egress_per_gb * bytes as f64 / 1e9
    }

    /// Seconds to move `bytes` from the store into this region over its whole link.
    pub fn transfer_secs(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / (self.bandwidth_mbps * 1e6)
    }
}

/// Why a region catalog was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read region catalog {path}: {message}")]
    Read { path: String, message: String },
    #[error("region catalog {origin} is not valid{at}: {message}", at = line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        origin: String,
        line: Option<usize>,
        message: String,
    },
    #[error("region catalog: region '{region}': {field} {problem}")]
    Invalid {
        region: Region,
        field: &'static str,
        problem: String,
    },
    #[error("region catalog: region '{0}' is listed twice; give each region one [[region]] table")]
    Duplicate(Region),
    #[error("region catalog: currency '{0}' must be 1 to 8 letters, like CNY or USD")]
    Currency(String),
    #[error("region catalog: {0}")]
    Terms(String),
}

/// The catalog file: a currency, the farm's default placement policy and `[[region]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default = "default_currency")]
    currency: String,
    #[serde(default)]
    policy: Policy,
    #[serde(default = "default_patience")]
    patience: f64,
    #[serde(default = "default_value_of_hour")]
    value_of_hour: f64,
    #[serde(default)]
    carbon_price_per_tonne: f64,
    #[serde(default)]
    region: Vec<RegionProfile>,
    /// Farm-wide floating licence pools: seats per pool name (`redshift = 20`).
    #[serde(default)]
    licenses: BTreeMap<String, u32>,
}

/// How much longer than `fastest` a job under `cheapest` or `greenest` may take, when neither
/// the job nor the catalog says.
pub const DEFAULT_PATIENCE: f64 = 1.5;
/// Value of an hour of a job's delay at priority 0, in the catalog's currency, when neither
/// the job nor the catalog says.
pub const DEFAULT_VALUE_OF_HOUR: f64 = 1000.0;

/// Points of priority that double a job's default value of an hour.
pub const PRIORITY_DOUBLING: f64 = 5.0;

/// The prices placement weighs beyond the regions' figures: the farm's (in the catalog, or a
/// simulated scenario) and, resolved with [`PlacementTerms::for_job`], each job's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementTerms {
    /// `cheapest` and `greenest`: a job may finish at most this many times later than it
    /// would under `fastest` (at least 1).
    pub patience: f64,
    /// `balanced`: what an hour of delay is worth, in the catalog's currency (the farm's is
    /// for a priority-0 job).
    pub value_of_hour: f64,
    /// `balanced`: the price of a tonne of CO2, in the catalog's currency (0: carbon is free).
    pub carbon_per_tonne: f64,
}

impl Default for PlacementTerms {
    fn default() -> Self {
        Self {
            patience: DEFAULT_PATIENCE,
            value_of_hour: DEFAULT_VALUE_OF_HOUR,
            carbon_per_tonne: 0.0,
        }
    }
}

impl PlacementTerms {
    /// The default value of an hour for a job of `priority`, given the farm's value at
    /// priority 0: doubled every [`PRIORITY_DOUBLING`] points (halved below 0).
    pub fn value_of_hour_at(base: f64, priority: i32) -> f64 {
        let p = f64::from(priority.clamp(-50, 50));
        base * (p / PRIORITY_DOUBLING).exp2()
    }

    /// A job's terms under these farm terms: its own patience and value of an hour where it
    /// sets them, otherwise the farm's (the value of an hour scaled by its priority).
    pub fn for_job(
        &self,
        patience: Option<f64>,
        value_of_hour: Option<f64>,
        priority: i32,
    ) -> Self {
        Self {
            patience: patience.unwrap_or(self.patience),
            value_of_hour: value_of_hour
                .unwrap_or_else(|| Self::value_of_hour_at(self.value_of_hour, priority)),
            carbon_per_tonne: self.carbon_per_tonne,
        }
    }

    /// The patience actually applied: at least 1, and 1 for anything not a number.
    pub fn applied_patience(&self) -> f64 {
        if self.patience.is_finite() && self.patience >= 1.0 {
            self.patience
        } else {
            1.0
        }
    }

    /// Checks the terms: patience at least 1, no negative price.
    pub fn check(&self) -> Result<(), String> {
        let Self {
            patience,
            value_of_hour,
            carbon_per_tonne,
        } = *self;
        if !(patience >= 1.0 && patience.is_finite()) {
            return Err(format!(
                "patience {patience} must be at least 1 (1.5: up to half as long again as fastest)"
            ));
        }
        if !(value_of_hour >= 0.0 && value_of_hour.is_finite()) {
            return Err(format!("value_of_hour {value_of_hour} cannot be negative"));
        }
        if !(carbon_per_tonne >= 0.0 && carbon_per_tonne.is_finite()) {
            return Err(format!(
                "carbon_price_per_tonne {carbon_per_tonne} cannot be negative"
            ));
        }
        Ok(())
    }
}

fn default_patience() -> f64 {
    DEFAULT_PATIENCE
}
fn default_value_of_hour() -> f64 {
    DEFAULT_VALUE_OF_HOUR
}

fn default_currency() -> String {
    "CNY".to_string()
}

/// The 1-based line of `text` a TOML parse error points at, when it points anywhere.
pub fn toml_error_line(text: &str, e: &toml::de::Error) -> Option<usize> {
    e.span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
}

/// Largest region catalog file read, in bytes (1 MiB): a catalog is a few tables per region,
/// so anything larger is a wrong path, not a catalog.
pub const MAX_CATALOG_FILE: u64 = 1024 * 1024;

/// Reads a catalog file (regions or studios) of at most [`MAX_CATALOG_FILE`] bytes; a larger
/// one is refused before it is read whole. The error is the reason, for the caller to name.
pub fn read_catalog_file(path: &Path) -> Result<String, String> {
    let too_large = |size: Option<u64>| {
        let size = size.map(|n| format!(" {n} bytes,")).unwrap_or_default();
        format!("it is{size} over the {MAX_CATALOG_FILE}-byte limit of a catalog file")
    };
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    if let Some(size) = file.metadata().ok().map(|m| m.len()) {
        if size > MAX_CATALOG_FILE {
            return Err(too_large(Some(size)));
        }
    }
    // Reading stops past the limit all the same: a pipe or a growing file has no size.
    let mut text = String::new();
    file.take(MAX_CATALOG_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_CATALOG_FILE {
        return Err(too_large(None));
    }
    Ok(text)
}

/// Every region's figures, loaded once by the coordinator (and by `suanli sim`). Regions it
/// does not name get [`RegionProfile::neutral`] figures from [`RegionCatalog::profile`].
#[derive(Debug, Clone, PartialEq)]
pub struct RegionCatalog {
    /// Currency of every price in the catalog (display only; nothing converts it).
    pub currency: String,
    /// Placement policy of jobs that name none.
    pub policy: Policy,
    /// The farm's placement terms, for jobs that set none: patience, value of an hour of a
    /// priority-0 job, carbon price.
    pub terms: PlacementTerms,
    /// Floating licence pools, seats per pool, farm-wide (a task holds its seats while it is
    /// released or running, in whatever region); set with [`RegionCatalog::set_licenses`].
    pub licenses: BTreeMap<String, u32>,
    regions: BTreeMap<Region, RegionProfile>,
}

impl Default for RegionCatalog {
    fn default() -> Self {
        Self {
            currency: default_currency(),
            policy: Policy::default(),
            terms: PlacementTerms::default(),
            licenses: BTreeMap::new(),
            regions: BTreeMap::new(),
        }
    }
}

impl RegionCatalog {
    /// A checked catalog from profiles built in code.
    pub fn new(
        currency: impl Into<String>,
        policy: Policy,
        profiles: impl IntoIterator<Item = RegionProfile>,
    ) -> Result<Self, CatalogError> {
        let currency = currency.into();
        if currency.is_empty()
            || currency.len() > 8
            || !currency.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return Err(CatalogError::Currency(currency));
        }
        let mut regions = BTreeMap::new();
        for p in profiles {
            p.validate()?;
            if regions.contains_key(&p.name) {
                return Err(CatalogError::Duplicate(p.name));
            }
            regions.insert(p.name.clone(), p);
        }
        Ok(Self {
            currency,
            policy,
            terms: PlacementTerms::default(),
            licenses: BTreeMap::new(),
            regions,
        })
    }

    /// Parses and checks a catalog; `origin` names it in errors (a path, or "inline").
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
            origin: origin.to_string(),
            line: toml_error_line(text, &e),
            message: e.message().trim().to_string(),
        })?;
        let mut catalog = Self::new(file.currency, file.policy, file.region)?;
        catalog.set_terms(PlacementTerms {
            patience: file.patience,
            value_of_hour: file.value_of_hour,
            carbon_per_tonne: file.carbon_price_per_tonne,
        })?;
        catalog.set_licenses(file.licenses)?;
        Ok(catalog)
    }

    /// Sets the farm's placement terms, checked: patience at least 1, no negative price.
    pub fn set_terms(&mut self, terms: PlacementTerms) -> Result<(), CatalogError> {
        terms.check().map_err(CatalogError::Terms)?;
        self.terms = terms;
        Ok(())
    }

    /// Sets the farm's licence pools, checked: names as pool names go, at least one seat each.
    pub fn set_licenses(&mut self, pools: BTreeMap<String, u32>) -> Result<(), CatalogError> {
        for (name, seats) in &pools {
            if !crate::protocol::valid_pool_name(name) {
                return Err(CatalogError::Terms(format!(
                    "licence pool '{}' must be 1-64 letters, digits, '-' or '_'",
                    crate::names::shown(name)
                )));
            }
            if *seats == 0 {
                return Err(CatalogError::Terms(format!(
                    "licence pool '{name}' has 0 seats; give it 1 or more, or leave it out"
                )));
            }
        }
        self.licenses = pools;
        Ok(())
    }

    /// Reads and checks a catalog file of at most [`MAX_CATALOG_FILE`] bytes; a larger one is
    /// refused before it is read whole.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = read_catalog_file(path).map_err(|message| CatalogError::Read {
            path: path.display().to_string(),
            message,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The region's figures, or neutral ones when the catalog does not name it.
    pub fn profile(&self, region: &Region) -> RegionProfile {
        self.regions
            .get(region)
            .cloned()
            .unwrap_or_else(|| RegionProfile::neutral(region.clone()))
    }

    /// The region's figures when the catalog names it.
    pub fn get(&self, region: &Region) -> Option<&RegionProfile> {
        self.regions.get(region)
    }

    /// The named regions, in name order.
    pub fn regions(&self) -> impl Iterator<Item = &RegionProfile> {
        self.regions.values()
    }

    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Region {
        s.parse().unwrap()
    }

    const EXAMPLE: &str = r#"
currency = "CNY"
policy = "cheapest"

[[region]]
name = "guian"
price_per_core_hour = 0.08
pue = 1.12
carbon_g_per_kwh = 420.0
watts_per_core = 12.0
egress_per_gb = 0.5
bandwidth_mbps = 2000.0

[[region]]
name = "shenzhen"
price_per_core_hour = 0.2
pue = 1.47
"#;

    #[test]
    fn loads_a_catalog_and_fills_defaults() {
        let c = RegionCatalog::from_toml(EXAMPLE, "inline").unwrap();
        assert_eq!(c.currency, "CNY");
        assert_eq!(c.policy, Policy::Cheapest);
        assert_eq!(c.len(), 2);
        let g = c.profile(&r("guian"));
        assert_eq!(g.pue, 1.12);
        assert_eq!(g.bandwidth_mbps, 2000.0);
        let s = c.profile(&r("shenzhen"));
        assert_eq!(s.price_per_core_hour, 0.2);
        assert_eq!(
            s.bandwidth_mbps, 1000.0,
            "omitted figures take their defaults"
        );
        assert_eq!(s.egress_per_gb, 0.0);
        let names: Vec<&str> = c.regions().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["guian", "shenzhen"]);
    }

    #[test]
    fn unknown_regions_get_neutral_figures() {
        let c = RegionCatalog::from_toml(EXAMPLE, "inline").unwrap();
        assert!(c.get(&r("lhasa")).is_none());
        assert_eq!(c.profile(&r("lhasa")), RegionProfile::neutral(r("lhasa")));
        let empty = RegionCatalog::from_toml("", "inline").unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.currency, "CNY");
        assert_eq!(empty.policy, Policy::Balanced);
        assert_eq!(RegionCatalog::default(), empty);
    }

    #[test]
    fn refuses_bad_figures_with_clear_errors() {
        let err = |toml: &str| {
            RegionCatalog::from_toml(toml, "t.toml")
                .unwrap_err()
                .to_string()
        };
        let e = err("[[region]]\nname = \"a\"\npue = 0.9\n");
        assert!(
            e.contains("region 'a': pue") && e.contains("at least 1.0"),
            "{e}"
        );
        let e = err("[[region]]\nname = \"a\"\nprice_per_core_hour = -1.0\n");
        assert!(
            e.contains("price_per_core_hour") && e.contains("negative"),
            "{e}"
        );
        let e = err("[[region]]\nname = \"a\"\negress_per_gb = -0.1\n");
        assert!(e.contains("egress_per_gb"), "{e}");
        let e = err("[[region]]\nname = \"a\"\nbandwidth_mbps = 0.0\n");
        assert!(e.contains("bandwidth_mbps"), "{e}");
        let e = err("[[region]]\nname = \"a\"\ncarbon_g_per_kwh = nan\n");
        assert!(e.contains("finite"), "{e}");
        let e = err("[[region]]\nname = \"a\"\n[[region]]\nname = \"a\"\n");
        assert!(e.contains("'a' is listed twice"), "{e}");
        let e = err("[[region]]\nname = \"Bad Name\"\n");
        assert!(e.contains("t.toml") && e.contains("invalid region"), "{e}");
        let e = err("currency = \"CNY\"\n\n[[region]]\nname = \"a\"\nprise = 1.0\n");
        assert!(e.contains("line 5") && e.contains("prise"), "{e}");
        let e = err("currency = \"\"\n");
        assert!(e.contains("currency"), "{e}");
        let e = err("patience = 0.8\n");
        assert!(e.contains("patience 0.8 must be at least 1"), "{e}");
        let e = err("carbon_price_per_tonne = -50.0\n");
        assert!(
            e.contains("carbon_price_per_tonne -50 cannot be negative"),
            "{e}"
        );
        let e = err("value_of_hour = -1.0\n");
        assert!(e.contains("value_of_hour -1 cannot be negative"), "{e}");
        let c = RegionCatalog::from_toml("patience = 2.0\ncarbon_price_per_tonne = 80.0\n", "t")
            .unwrap();
        assert_eq!((c.terms.patience, c.terms.carbon_per_tonne), (2.0, 80.0));
        assert_eq!(c.terms.value_of_hour, DEFAULT_VALUE_OF_HOUR);
        let e = err("policy = \"cheap\"\n");
        assert!(e.contains("cheap"), "{e}");
    }

    #[test]
    fn the_documented_example_catalog_loads() {
        let text = include_str!("../../deploy/regions.example.toml");
        let c = RegionCatalog::from_toml(text, "deploy/regions.example.toml").unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(c.profile(&r("guian")).pue, 1.12);
        assert!(c.regions().all(|p| p.price_per_core_hour > 0.0));
    }

    #[test]
    fn loads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regions.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(RegionCatalog::load(&path).unwrap().len(), 2);
        let e = RegionCatalog::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read region catalog"), "{e}");
        // An oversized file is refused for its size, before it is parsed.
        let big = dir.path().join("big.toml");
        let mut text = EXAMPLE.to_string();
        text.push_str(&"#".repeat(MAX_CATALOG_FILE as usize));
        std::fs::write(&big, &text).unwrap();
        let e = RegionCatalog::load(&big).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read region catalog {}: it is {} bytes, over the 1048576-byte limit of a catalog file",
                big.display(),
                text.len()
            )
        );
        // A file with no size to ask (a device, a pipe) is read only up to the limit.
        let e = RegionCatalog::load(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read region catalog /dev/zero: it is over the 1048576-byte limit of a catalog file"
        );
    }

    #[test]
    fn cost_energy_and_carbon_follow_the_formula() {
        let mut p = RegionProfile::neutral(r("guian"));
        p.price_per_core_hour = 0.1;
        p.pue = 1.5;
        p.watts_per_core = 10.0;
        p.carbon_g_per_kwh = 500.0;
        p.egress_per_gb = 0.5;
        p.bandwidth_mbps = 800.0;
        let core_s = 7200.0;
        assert!((p.compute_cost(core_s) - 0.2).abs() < 1e-12);
        // 2 core-hours x 10 W = 20 Wh IT, x 1.5 PUE = 0.03 kWh; x 500 g = 15 g.
        assert!((p.energy_kwh(core_s) - 0.03).abs() < 1e-12);
        assert!((p.carbon_kg(core_s) - 0.015).abs() < 1e-12);
        assert!((p.transfer_cost(4_000_000_000) - 2.0).abs() < 1e-12);
        // 1 GB = 8 Gbit at 800 Mbit/s = 10 s.
        assert!((p.transfer_secs(1_000_000_000) - 10.0).abs() < 1e-12);
    }
}
