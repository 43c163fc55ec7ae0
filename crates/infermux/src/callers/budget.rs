//! Spending budgets by reservation (SPEC §13): before a call its worst-case
//! cost is reserved, after it the reservation is settled to the actual cost.
//! A call that cannot reserve is refused before any upstream call, so under
//! any concurrency settled spend stays within the budget, give or take one
//! call's estimate error.

use std::sync::{Mutex, PoisonError};

/// How often a budget starts again (calendar periods, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Daily,
    /// From Monday 00:00 UTC.
    Weekly,
    /// From the first of the month, 00:00 UTC.
    Monthly,
    /// Never.
    Total,
}

impl Period {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "daily" => Period::Daily,
            "weekly" => Period::Weekly,
            "monthly" => Period::Monthly,
            "total" => Period::Total,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }

    /// The start (Unix milliseconds) of the period that holds `now_ms`.
    pub fn start_of(self, now_ms: i64) -> i64 {
        const DAY_MS: i64 = 86_400_000;
        let day = now_ms.div_euclid(DAY_MS);
        match self {
            Period::Total => 0,
            Period::Daily => day * DAY_MS,
            // 1970-01-01 was a Thursday: Monday is three days later.
            Period::Weekly => (day - (day - 4).rem_euclid(7)) * DAY_MS,
            Period::Monthly => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1) * DAY_MS
            }
        }
    }
}

/// The (year, month, day) of a day number since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, proleptic Gregorian).
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

/// The day number since 1970-01-01 of a civil date (`days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A budget as configured: so many dollars per period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    pub usd: f64,
    pub period: Period,
}

#[derive(Debug, Default)]
struct State {
    /// The start of the period `spent` counts.
    period_start: i64,
    spent: f64,
    reserved: f64,
}

/// One key's or team's budget: settled spend and open reservations in the
/// current period, behind one small lock (held for a few additions).
#[derive(Debug)]
pub struct Budget {
    pub spec: BudgetSpec,
    state: Mutex<State>,
}

impl Budget {
    /// A budget that has already spent `spent` in the period that holds
    /// `now_ms` (read back from the ledger at start).
    pub fn new(spec: BudgetSpec, spent: f64, now_ms: i64) -> Self {
        Budget {
            spec,
            state: Mutex::new(State {
                period_start: spec.period.start_of(now_ms),
                spent,
                reserved: 0.0,
            }),
        }
    }

    fn state(&self, now_ms: i64) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let start = self.spec.period.start_of(now_ms);
        if start > s.period_start {
            // A new period: spend starts again; open reservations stay.
            s.period_start = start;
            s.spent = 0.0;
        }
        s
    }

    /// Reserves `usd` if it fits beside what is spent and reserved (the start
    /// of the period it counts in is returned); else what is left.
    pub fn reserve(&self, usd: f64, now_ms: i64) -> Result<i64, f64> {
        let mut s = self.state(now_ms);
        let left = self.spec.usd - s.spent - s.reserved;
        if usd > left || left <= 0.0 {
            return Err(left.max(0.0));
        }
        s.reserved += usd;
        Ok(s.period_start)
    }

    /// Gives back `reserved`, and adds `actual` to the spend. A call that
    /// began in an earlier period counts in the current one: it ended there.
    pub fn settle(&self, reserved: f64, actual: f64, now_ms: i64) {
        let mut s = self.state(now_ms);
        s.reserved = (s.reserved - reserved).max(0.0);
        s.spent += actual;
    }

    /// What is left: the budget less spend and open reservations.
    pub fn remaining(&self, now_ms: i64) -> f64 {
        let s = self.state(now_ms);
        (self.spec.usd - s.spent - s.reserved).max(0.0)
    }

    /// Settled spend in the current period.
    pub fn spent(&self, now_ms: i64) -> f64 {
        self.state(now_ms).spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T12:00:00Z, a Wednesday.
    const NOON: i64 = 1_796_212_800_000;

    #[test]
    fn periods_start_on_calendar_boundaries() {
        assert_eq!(Period::Daily.start_of(NOON), 1_796_169_600_000); // 12-02 00:00
        assert_eq!(Period::Weekly.start_of(NOON), 1_795_996_800_000); // Mon 11-30
        assert_eq!(Period::Monthly.start_of(NOON), 1_796_083_200_000); // 12-01
        assert_eq!(Period::Total.start_of(NOON), 0);
        // Monday itself starts its week; Sunday belongs to the one before.
        let monday = 1_795_996_800_000;
        assert_eq!(Period::Weekly.start_of(monday), monday);
        assert_eq!(Period::Weekly.start_of(monday - 1), monday - 7 * 86_400_000);
        // Leap day and year ends.
        let mar_2028 = days_from_civil(2028, 3, 1) * 86_400_000;
        assert_eq!(
            Period::Monthly.start_of(mar_2028 - 1),
            days_from_civil(2028, 2, 1) * 86_400_000
        );
        assert_eq!(
            days_from_civil(2028, 3, 1) - days_from_civil(2028, 2, 1),
            29
        );
        assert_eq!(
            civil_from_days(days_from_civil(1999, 12, 31)),
            (1999, 12, 31)
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn civil_dates_round_trip() {
        for day in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn reservations_hold_the_line() {
        let b = Budget::new(
            BudgetSpec {
                usd: 1.0,
                period: Period::Daily,
            },
            0.25,
            NOON,
        );
        b.reserve(0.5, NOON).unwrap();
        assert_eq!(b.reserve(0.5, NOON), Err(0.25), "0.25 spent, 0.5 reserved");
        assert!(b.reserve(0.25, NOON).is_ok());
        assert_eq!(b.remaining(NOON), 0.0);
        b.settle(0.5, 0.1, NOON);
        assert!((b.remaining(NOON) - 0.4).abs() < 1e-12);
        assert!((b.spent(NOON) - 0.35).abs() < 1e-12);
        // The next day starts again.
        let tomorrow = NOON + 86_400_000;
        assert_eq!(b.spent(tomorrow), 0.0);
        assert!(
            (b.remaining(tomorrow) - 0.75).abs() < 1e-12,
            "0.25 still reserved"
        );
    }

    #[test]
    fn an_exhausted_budget_refuses_even_free_calls() {
        let b = Budget::new(
            BudgetSpec {
                usd: 1.0,
                period: Period::Total,
            },
            1.0,
            NOON,
        );
        assert_eq!(b.reserve(0.0, NOON), Err(0.0));
    }
}
