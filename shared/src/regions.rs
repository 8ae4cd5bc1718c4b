//! The region catalog: what a core-hour costs in each region, how much energy and carbon it
//! takes, and how fast data reaches it. The coordinator places tasks and keeps its ledger with
//! these figures; the TUI and `suanli ledger` show them. Regions missing from the catalog still
//! work, with [`RegionProfile::neutral`] figures.

use serde::{Deserialize, Serialize};

use crate::names::Region;

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
        }
    }
}
