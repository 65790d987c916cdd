//! Exogenous inputs: sun, clouds, house load and grid noise as pure
//! functions of the seed and the time.

use std::f64::consts::PI;

use super::{DAY_S, HouseProfile, InverterModel, MAX_DEMAND_W, PV_START_FRACTION};

impl InverterModel {
    /// Sun, clouds, house load and grid noise at `t`: a pure function of the
    /// seed, the configuration and `t`.
    pub(super) fn environment(&self, t: f64) -> Env {
        let n = self.noise;
        let local = t + f64::from(self.config.utc_offset_s);
        let hour = local.rem_euclid(DAY_S) / 3600.0;
        let local_day = (local / DAY_S).floor() as i64;

        // Some days are clear, some overcast; within a day clouds drift by.
        let clearness = 0.3 + 0.7 * n.unit(stream::WEATHER, local_day).sqrt();
        let drift =
            0.75 * n.smooth(stream::CLOUD, t, 420.0) + 0.25 * n.smooth(stream::CLOUD_FAST, t, 45.0);
        let cloud = 1.0 - (1.0 - clearness) * (0.3 + 0.7 * drift);

        // String 2 faces a little further west, so it peaks later.
        let windows = [(6.0, 19.5), (6.5, 20.0)];
        let mut pv_avail = [0.0; 2];
        let mut pv_mpp_voc = [(0.0, 0.0); 2];
        for i in 0..2 {
            let (rise, set) = windows[i];
            let frac = sun_fraction(hour, rise, set) * cloud;
            if frac > PV_START_FRACTION {
                pv_avail[i] = self.config.pv_peak_w[i] * frac;
                let base = if i == 0 { 305.0 } else { 295.0 };
                let jitter = 4.0 * (n.smooth(stream::PV_VOLTAGE + i as u64, t, 20.0) - 0.5);
                let vmpp = base + 50.0 * frac.sqrt() + jitter;
                pv_mpp_voc[i] = (vmpp, base + 80.0);
            }
        }

        let flicker = 80.0 * (n.smooth(stream::LOAD_NOISE, t, 15.0) - 0.5);
        let lively = match self.config.house {
            HouseProfile::Lively => {
                let profile = 350.0 * gauss_hour(hour, 7.25, 0.7)
                    + 200.0 * gauss_hour(hour, 12.75, 1.0)
                    + 800.0 * gauss_hour(hour, 19.5, 1.4);
                let appliances: f64 = APPLIANCES.iter().map(|a| a.power_at(n, t, local)).sum();
                let fridge_phase = n.unit(stream::FRIDGE, 0) * FRIDGE_PERIOD_S;
                let fridge =
                    if (t + fridge_phase).rem_euclid(FRIDGE_PERIOD_S) < FRIDGE_PERIOD_S * 0.35 {
                        110.0
                    } else {
                        0.0
                    };
                profile + appliances + fridge
            }
            HouseProfile::Steady => 0.0,
        };
        let demand_w = (self.config.base_load_w + lively + flicker).clamp(0.0, MAX_DEMAND_W);

        Env {
            pv_avail,
            pv_mpp_voc,
            demand_w,
            grid_v: 230.0 + 3.0 * (n.smooth(stream::GRID_VOLTAGE, t, 45.0) - 0.5),
            grid_hz: 50.0 + 0.05 * (n.smooth(stream::GRID_FREQUENCY, t, 10.0) - 0.5),
            island_v: 230.0 + 0.6 * (n.smooth(stream::ISLAND_VOLTAGE, t, 30.0) - 0.5),
            island_hz: 50.0 + 0.01 * (n.smooth(stream::ISLAND_FREQUENCY, t, 30.0) - 0.5),
            // Warmer in the afternoon.
            ambient_c: 22.0 + 3.0 * ((hour - 9.0) / 24.0 * 2.0 * PI).sin(),
        }
    }
}

/// Exogenous conditions at one instant.
pub(super) struct Env {
    pub(super) pv_avail: [f64; 2],
    /// MPP and open-circuit voltage per string; (0, 0) when dark.
    pub(super) pv_mpp_voc: [(f64, f64); 2],
    /// House load without the extra and plug loads.
    pub(super) demand_w: f64,
    pub(super) grid_v: f64,
    pub(super) grid_hz: f64,
    pub(super) island_v: f64,
    pub(super) island_hz: f64,
    pub(super) ambient_c: f64,
}

/// Noise streams, one per quantity, so adding a new noisy quantity does not
/// reshuffle the existing ones.
mod stream {
    pub const WEATHER: u64 = 1;
    pub const CLOUD: u64 = 2;
    pub const CLOUD_FAST: u64 = 3;
    pub const PV_VOLTAGE: u64 = 4; // and 5
    pub const LOAD_NOISE: u64 = 6;
    pub const FRIDGE: u64 = 7;
    pub const GRID_VOLTAGE: u64 = 8;
    pub const GRID_FREQUENCY: u64 = 9;
    pub const ISLAND_VOLTAGE: u64 = 10;
    pub const ISLAND_FREQUENCY: u64 = 11;
    pub const KETTLE: u64 = 20; // each appliance uses two streams
    pub const MICROWAVE: u64 = 22;
    pub const OVEN: u64 = 24;
    pub const WASHER: u64 = 26;
}

/// Counter-based PRNG: every draw is a hash of (seed, stream, index), so a
/// value at a given time is the same however the caller slices time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Noise {
    pub(super) seed: u64,
}

impl Noise {
    fn bits(self, stream: u64, index: i64) -> u64 {
        let keyed = splitmix64(self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Reinterpreting the index bits is the intent; negative indices stay distinct.
        splitmix64(keyed ^ u64::from_ne_bytes(index.to_ne_bytes()))
    }

    /// Uniform in `[0, 1)`.
    fn unit(self, stream: u64, index: i64) -> f64 {
        (self.bits(stream, index) >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Value noise in `[0, 1)`: random knots every `period_s`, eased between.
    fn smooth(self, stream: u64, t: f64, period_s: f64) -> f64 {
        let x = t / period_s;
        let knot = x.floor();
        let frac = x - knot;
        let k = knot as i64;
        let a = self.unit(stream, k);
        let b = self.unit(stream, k.saturating_add(1));
        let ease = (1.0 - (PI * frac).cos()) / 2.0;
        a + (b - a) * ease
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const FRIDGE_PERIOD_S: f64 = 2700.0;

/// A household appliance switched on at random within time-of-day windows.
struct Appliance {
    stream: u64,
    power_w: f64,
    duration_s: f64,
    /// At most one run starts per slot.
    slot_s: f64,
    /// (from hour, to hour, probability of a run per slot) in local time.
    windows: &'static [(f64, f64, f64)],
}

const APPLIANCES: [Appliance; 4] = [
    Appliance {
        stream: stream::KETTLE,
        power_w: 2000.0,
        duration_s: 180.0,
        slot_s: 1800.0,
        windows: &[
            (6.0, 9.0, 0.45),
            (9.0, 12.0, 0.12),
            (12.0, 14.0, 0.25),
            (14.0, 16.0, 0.12),
            (16.0, 21.0, 0.25),
            (21.0, 23.0, 0.10),
        ],
    },
    Appliance {
        stream: stream::MICROWAVE,
        power_w: 1150.0,
        duration_s: 240.0,
        slot_s: 3600.0,
        windows: &[(7.0, 9.0, 0.15), (11.5, 13.5, 0.35), (17.0, 20.0, 0.35)],
    },
    Appliance {
        stream: stream::OVEN,
        power_w: 2300.0,
        duration_s: 2700.0,
        slot_s: 3600.0,
        windows: &[(11.0, 12.0, 0.12), (17.0, 19.0, 0.30)],
    },
    Appliance {
        stream: stream::WASHER,
        power_w: 1900.0,
        duration_s: 1200.0,
        slot_s: 3600.0,
        windows: &[(8.0, 18.0, 0.07)],
    },
];

impl Appliance {
    /// Power drawn at `t` (UTC seconds); `local` is the same instant in local time.
    fn power_at(&self, noise: Noise, t: f64, local: f64) -> f64 {
        let offset = local - t;
        let current = (local / self.slot_s).floor() as i64;
        let lookback = (self.duration_s / self.slot_s).ceil() as i64;
        let mut power = 0.0;
        for slot in current.saturating_sub(lookback)..=current {
            let slot_start = slot as f64 * self.slot_s;
            let hour = slot_start.rem_euclid(DAY_S) / 3600.0;
            let p = self
                .windows
                .iter()
                .find(|(from, to, _)| hour >= *from && hour < *to)
                .map_or(0.0, |w| w.2);
            if noise.unit(self.stream, slot) < p {
                let start = slot_start + noise.unit(self.stream + 1, slot) * self.slot_s - offset;
                if t >= start && t < start + self.duration_s {
                    power += self.power_w;
                }
            }
        }
        power
    }
}

/// Clear-sky output as a fraction of peak: sin² between sunrise and sunset.
fn sun_fraction(hour: f64, rise: f64, set: f64) -> f64 {
    if hour <= rise || hour >= set {
        return 0.0;
    }
    let s = (PI * (hour - rise) / (set - rise)).sin();
    s * s
}

/// Gaussian bump over the hour of day, wrapping at midnight.
fn gauss_hour(hour: f64, mean: f64, sigma: f64) -> f64 {
    let d = (hour - mean + 12.0).rem_euclid(24.0) - 12.0;
    (-0.5 * (d / sigma).powi(2)).exp()
}
