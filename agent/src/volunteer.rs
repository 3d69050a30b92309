//! The volunteer's own controls, as BOINC's users know them: compute only
//! in time windows (`--schedule`), pause while on battery
//! (`--pause-on-battery`), and `musketeer pause [DURATION]` / `resume`.
//!
//! [`Controls`] decides, once a second and on every command, whether tasks
//! may run, and publishes the answer as a [`Hold`] on a watch channel. The
//! work loop then leases nothing new and gives queued tasks back; the
//! supervisor freezes the running workers with the same `SIGSTOP` it uses
//! for the CPU limits. Running tasks keep their leases (the agent's own
//! process still heartbeats) for [`DEFAULT_HOLD_LEASES`] or
//! `--hold-leases-when-paused`, then are given back, so that a laptop
//! closed for the night does not stall a job until morning.
//!
//! Schedules are read in the host's local time (`TZ`, else
//! `/etc/localtime`; UTC when neither is there, as in the container image).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use chrono::{Datelike, Timelike};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Where Linux lists power supplies.
pub const POWER_SUPPLY_DIR: &str = "/sys/class/power_supply";
/// Hidden: read power supplies from this directory instead of
/// [`POWER_SUPPLY_DIR`], so that a test can fake a battery with files.
pub const POWER_SUPPLY_DIR_ENV: &str = "MUSKETEER_POWER_SUPPLY_DIR";
/// How long a paused agent keeps the leases of its frozen tasks unless told
/// otherwise: a coffee break costs no work, a night away does not stall a job.
pub const DEFAULT_HOLD_LEASES: Duration = Duration::from_secs(10 * 60);
/// How often the schedule and the power supply are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

const MINUTES_PER_DAY: u16 = 24 * 60;

/// Why tasks may not run now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// `musketeer pause`.
    Paused,
    /// The host runs on battery and `--pause-on-battery` is set.
    OnBattery,
    /// Now is outside every `--schedule` window.
    OutsideSchedule,
}

impl Hold {
    /// As `musketeer status` shows it.
    pub fn describe(self) -> &'static str {
        match self {
            Hold::Paused => "paused",
            Hold::OnBattery => "on battery",
            Hold::OutsideSchedule => "outside schedule",
        }
    }
}

/// One window of a schedule: some days (all, if none named), from `start`
/// to `end` minutes after midnight. An end before the start runs past
/// midnight into the next day, the window belonging to the day it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    days: [bool; 7],
    start: u16,
    end: u16,
}

impl Window {
    fn contains(&self, day: usize, minute: u16) -> bool {
        if self.start < self.end {
            self.days[day] && (self.start..self.end).contains(&minute)
        } else {
            (self.days[day] && minute >= self.start)
                || (self.days[(day + 6) % 7] && minute < self.end)
        }
    }
}

/// When the agent may compute: windows like `mon-fri 18:00-08:00,sat-sun`,
/// in the host's local time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    windows: Vec<Window>,
}

impl Schedule {
    /// Parses comma-separated windows, each `DAYS`, `HH:MM-HH:MM` or
    /// `DAYS HH:MM-HH:MM`; days are `mon`..`sun` or a range `mon-fri`
    /// (which may wrap, `fri-mon`).
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let mut windows = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            windows.push(parse_window(part).map_err(|why| format!("in {part:?}: {why}"))?);
        }
        if windows.is_empty() {
            return Err(
                "expected windows separated by commas, e.g. \"mon-fri 18:00-08:00,sat-sun\"".into(),
            );
        }
        Ok(Schedule {
            text: s.trim().to_string(),
            windows,
        })
    }

    /// Whether `day` (0 is Monday) at `minute` after midnight is in a window.
    pub fn contains(&self, day: usize, minute: u16) -> bool {
        self.windows.iter().any(|w| w.contains(day, minute))
    }

    /// Whether the host's local time now is in a window.
    pub fn contains_now(&self) -> bool {
        let (day, minute) = local_now();
        self.contains(day, minute)
    }

    /// Minutes from (`day`, `minute`) until the next window opens; `None`
    /// when one is open now or none ever opens.
    pub fn minutes_until_open(&self, day: usize, minute: u16) -> Option<u32> {
        let start = day as u32 * u32::from(MINUTES_PER_DAY) + u32::from(minute);
        let week = 7 * u32::from(MINUTES_PER_DAY);
        (0..=week)
            .find(|&ahead| {
                let t = (start + ahead) % week;
                self.contains(
                    (t / u32::from(MINUTES_PER_DAY)) as usize,
                    (t % u32::from(MINUTES_PER_DAY)) as u16,
                )
            })
            .filter(|&ahead| ahead > 0)
    }

    /// The schedule as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The day of the week (0 is Monday) and minute of the day, local time.
pub fn local_now() -> (usize, u16) {
    let now = chrono::Local::now();
    (
        now.weekday().num_days_from_monday() as usize,
        (now.hour() * 60 + now.minute()) as u16,
    )
}

fn parse_window(part: &str) -> Result<Window, String> {
    let mut words = part.split_whitespace();
    let (first, second) = (words.next(), words.next());
    if words.next().is_some() {
        return Err("expected DAYS, HH:MM-HH:MM or DAYS HH:MM-HH:MM".into());
    }
    let (days, times) = match (first, second) {
        (Some(d), Some(t)) => (Some(d), Some(t)),
        (Some(x), None) if x.contains(':') => (None, Some(x)),
        (Some(d), None) => (Some(d), None),
        _ => unreachable!("a non-empty part has a word"),
    };
    let days = match days {
        Some(d) => parse_days(d)?,
        None => [true; 7],
    };
    let (start, end) = match times {
        Some(t) => {
            let (a, b) = t
                .split_once('-')
                .ok_or_else(|| format!("{t:?} is not a time range HH:MM-HH:MM"))?;
            let (start, end) = (parse_time(a)?, parse_time(b)?);
            if start == end {
                return Err(format!(
                    "{t:?} is empty: for whole days name the days alone, e.g. sat-sun"
                ));
            }
            if start == MINUTES_PER_DAY {
                return Err("a window cannot start at 24:00".into());
            }
            (start, end % MINUTES_PER_DAY)
        }
        None => (0, MINUTES_PER_DAY),
    };
    Ok(Window { days, start, end })
}

/// `mon`, `Monday`, `tues`: at least three letters of a day's English name.
fn parse_day(s: &str) -> Result<usize, String> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = s.to_ascii_lowercase();
    FULL.iter()
        .position(|f| lower.len() >= 3 && f.starts_with(&lower))
        .ok_or_else(|| format!("unknown day {s:?}: use mon, tue, wed, thu, fri, sat or sun"))
}

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_day(a)?, parse_day(b)?);
            let mut d = a;
            loop {
                days[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        None => days[parse_day(s)?] = true,
    }
    Ok(days)
}

/// `HH:MM` (or `H:MM`, or `24:00` as an end) in minutes after midnight.
fn parse_time(s: &str) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time: use HH:MM, 00:00 to 24:00");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) || s.len() > 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Whether the host runs on battery, from the power supplies under `dir`
/// (Linux's `/sys/class/power_supply` layout): an AC adapter (`Mains`,
/// `USB`) online means mains power; otherwise a `Battery` reporting
/// `Discharging`, or adapters that are all offline, mean battery. No
/// supplies at all (a server, a container without `/sys`) is mains power.
pub fn on_battery(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let (mut adapters, mut online, mut discharging) = (0, 0, false);
    for entry in entries.flatten() {
        let path = entry.path();
        match read(path.join("type")).as_str() {
            "Mains" | "USB" => {
                adapters += 1;
                if read(path.join("online")) == "1" {
                    online += 1;
                }
            }
            "Battery" => {
                discharging |= read(path.join("status")) == "Discharging";
            }
            _ => {}
        }
    }
    online == 0 && (discharging || adapters > 0)
}

/// A `musketeer pause`: until when, if it was given a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pause {
    until: Option<SystemTime>,
}

/// The volunteer's controls over a running agent.
#[derive(Debug)]
pub struct Controls {
    schedule: Option<Schedule>,
    /// Where to look for a battery; `None` when `--pause-on-battery` is off.
    battery: Option<PathBuf>,
    pause: Mutex<Option<Pause>>,
    hold: watch::Sender<Option<Hold>>,
}

impl Controls {
    /// Controls for `schedule` and, if `pause_on_battery`, the power
    /// supplies under `power_supply_dir`; evaluated once at once.
    pub fn new(
        schedule: Option<Schedule>,
        pause_on_battery: bool,
        power_supply_dir: PathBuf,
    ) -> Controls {
        let controls = Controls {
            schedule,
            battery: pause_on_battery.then_some(power_supply_dir),
            pause: Mutex::new(None),
            hold: watch::channel(None).0,
        };
        controls.refresh();
        controls
    }

    /// Controls that never hold the agent.
    pub fn none() -> Controls {
        Controls::new(None, false, PathBuf::new())
    }

    /// The hold as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Hold>> {
        self.hold.subscribe()
    }

    /// The hold now.
    pub fn hold(&self) -> Option<Hold> {
        *self.hold.borrow()
    }

    /// The schedule, if any.
    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }

    /// Whether `--pause-on-battery` is on.
    pub fn pauses_on_battery(&self) -> bool {
        self.battery.is_some()
    }

    /// Until when a `musketeer pause` lasts: `Some(None)` until resumed.
    pub fn paused_until(&self) -> Option<Option<SystemTime>> {
        self.pause.lock().ok().and_then(|p| p.map(|p| p.until))
    }

    /// `musketeer pause`: for `duration`, or until [`Controls::resume`].
    pub fn pause(&self, duration: Option<Duration>) {
        if let Ok(mut p) = self.pause.lock() {
            *p = Some(Pause {
                until: duration.map(|d| SystemTime::now() + d),
            });
        }
        self.refresh();
    }

    /// `musketeer resume`: lifts a pause (not the schedule nor the battery).
    pub fn resume(&self) {
        if let Ok(mut p) = self.pause.lock() {
            *p = None;
        }
        self.refresh();
    }

    /// Looks at the pause, the power supply and the clock, and publishes
    /// the hold (subscribers wake only when it changes).
    pub fn refresh(&self) {
        let now = SystemTime::now();
        let paused = match self.pause.lock() {
            Ok(mut p) => {
                if p.is_some_and(|p| p.until.is_some_and(|u| u <= now)) {
                    *p = None;
                    tracing::info!("the pause is over");
                }
                p.is_some()
            }
            Err(_) => false,
        };
        let hold = if paused {
            Some(Hold::Paused)
        } else if self.battery.as_deref().is_some_and(on_battery) {
            Some(Hold::OnBattery)
        } else if self.schedule.as_ref().is_some_and(|s| !s.contains_now()) {
            Some(Hold::OutsideSchedule)
        } else {
            None
        };
        self.hold.send_if_modified(|h| {
            let changed = *h != hold;
            *h = hold;
            changed
        });
    }

    /// Refreshes every [`CHECK_EVERY`], forever.
    pub async fn watch(&self) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            self.refresh();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MON: usize = 0;
    const FRI: usize = 4;
    const SAT: usize = 5;
    const SUN: usize = 6;

    fn at(h: u16, m: u16) -> u16 {
        h * 60 + m
    }

    #[test]
    fn evenings_and_weekends() {
        let s = Schedule::parse("mon-fri 18:00-08:00,sat-sun").unwrap();
        assert!(!s.contains(MON, at(12, 0)));
        assert!(s.contains(MON, at(18, 0)));
        assert!(s.contains(MON, at(23, 59)));
        assert!(
            s.contains(1, at(7, 59)),
            "Monday's evening runs into Tuesday"
        );
        assert!(!s.contains(1, at(8, 0)));
        assert!(s.contains(SAT, at(7, 0)), "Friday's evening and Saturday");
        assert!(s.contains(SUN, at(23, 0)));
        assert!(
            !s.contains(MON, at(3, 0)),
            "a window runs past midnight only from the days it names"
        );
        assert!(!s.contains(FRI, at(9, 0)));
    }

    #[test]
    fn nights_only_windows_belong_to_their_start_day() {
        let s = Schedule::parse("fri 22:00-06:00").unwrap();
        assert!(s.contains(FRI, at(22, 0)));
        assert!(s.contains(SAT, at(5, 59)));
        assert!(!s.contains(SAT, at(22, 0)));
        assert!(!s.contains(FRI, at(5, 0)), "Thursday night is not in it");
        let every_day = Schedule::parse("09:30-17:00").unwrap();
        for d in 0..7 {
            assert!(every_day.contains(d, at(9, 30)));
            assert!(!every_day.contains(d, at(17, 0)));
        }
        let to_midnight = Schedule::parse("sun 20:00-24:00").unwrap();
        assert!(to_midnight.contains(SUN, at(23, 59)));
        assert!(!to_midnight.contains(MON, at(0, 0)));
        let wrap = Schedule::parse("Saturday-Monday").unwrap();
        assert!(wrap.contains(SUN, 0) && wrap.contains(MON, 0) && !wrap.contains(1, 0));
    }

    #[test]
    fn the_next_window() {
        let s = Schedule::parse("mon-fri 18:00-08:00").unwrap();
        assert_eq!(s.minutes_until_open(MON, at(12, 0)), Some(6 * 60));
        assert_eq!(s.minutes_until_open(MON, at(19, 0)), None);
        assert_eq!(
            s.minutes_until_open(SAT, at(12, 0)),
            Some(24 * 60 + 12 * 60 + 18 * 60)
        );
    }

    #[test]
    fn bad_schedules_say_what_to_type() {
        for (text, needle) in [
            ("", "separated by commas"),
            ("mon-fri 18:00-08:00 extra", "expected DAYS"),
            ("someday", "unknown day"),
            ("mo", "unknown day"),
            ("mon 25:00-26:00", "not a time"),
            ("mon 18:61-19:00", "not a time"),
            ("mon 18:00", "not a time range"),
            ("mon 08:00-08:00", "is empty"),
            ("mon 24:00-01:00", "cannot start at 24:00"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    fn supply(dir: &Path, name: &str, kind: &str, files: &[(&str, &str)]) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
        for (f, v) in files {
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn battery_from_sysfs_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!on_battery(dir.path()), "no supplies: a server on mains");
        assert!(!on_battery(&dir.path().join("missing")));
        supply(dir.path(), "BAT0", "Battery", &[("status", "Discharging")]);
        assert!(on_battery(dir.path()));
        supply(dir.path(), "AC", "Mains", &[("online", "1")]);
        assert!(!on_battery(dir.path()), "the adapter is plugged in");
        supply(dir.path(), "AC", "Mains", &[("online", "0")]);
        supply(dir.path(), "BAT0", "Battery", &[("status", "Full")]);
        assert!(on_battery(dir.path()), "every adapter is offline");
    }

    #[test]
    fn a_pause_outranks_the_battery_and_ends_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        supply(dir.path(), "BAT0", "Battery", &[("status", "Discharging")]);
        let c = Controls::new(None, true, dir.path().to_path_buf());
        assert_eq!(c.hold(), Some(Hold::OnBattery));
        c.pause(Some(Duration::from_millis(50)));
        assert_eq!(c.hold(), Some(Hold::Paused));
        std::thread::sleep(Duration::from_millis(60));
        c.refresh();
        assert_eq!(c.hold(), Some(Hold::OnBattery));
        assert_eq!(c.paused_until(), None);
        supply(dir.path(), "BAT0", "Battery", &[("status", "Charging")]);
        c.refresh();
        assert_eq!(c.hold(), None);
        c.pause(None);
        assert_eq!(c.paused_until(), Some(None));
        c.resume();
        assert_eq!(c.hold(), None);
        let never = Controls::new(None, false, dir.path().to_path_buf());
        supply(dir.path(), "BAT0", "Battery", &[("status", "Discharging")]);
        never.refresh();
        assert_eq!(
            never.hold(),
            None,
            "battery ignored without --pause-on-battery"
        );
    }
}
