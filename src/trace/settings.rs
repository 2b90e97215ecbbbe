//! Trace settings as Triton's trace extension reads and writes them (level, rate, count;
//! server-wide and per model, values as strings), and the sampling decision they drive.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

/// What is traced: nothing, or each request's spans with their times. Triton's TENSORS
/// level (tensor contents in the trace) has no OpenTelemetry form and is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Off,
    Timestamps,
}

impl Level {
    pub fn parse(value: &str) -> Result<Level, String> {
        match value.to_ascii_uppercase().as_str() {
            "OFF" => Ok(Level::Off),
            "TIMESTAMPS" => Ok(Level::Timestamps),
            "TENSORS" => Err("trace level TENSORS is not supported: wharf's OpenTelemetry traces record timestamps only".into()),
            _ => Err(format!("unknown trace level '{value}'; expected OFF or TIMESTAMPS")),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Off => "OFF",
            Level::Timestamps => "TIMESTAMPS",
        }
    }
}

/// One holder's settings: the server's, or a model's with its overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub level: Level,
    /// One request in `rate` without a caller's context is traced; 0: none of them.
    pub rate: u64,
    /// Traces left to take; -1: no limit.
    pub count: i64,
}

pub fn parse_rate(value: &str) -> Result<u64, String> {
    value.trim().parse().map_err(|_| {
        format!("trace_rate must be a whole number of requests (0 or more), found '{value}'")
    })
}

pub fn parse_count(value: &str) -> Result<i64, String> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|n| *n >= -1)
        .ok_or_else(|| {
            format!("trace_count must be -1 (no limit) or a count of traces, found '{value}'")
        })
}

/// A model's own values, where it has any; the rest follow the server's.
#[derive(Debug, Clone, Copy, Default)]
struct Overrides {
    level: Option<Level>,
    rate: Option<u64>,
    count: Option<i64>,
}

impl Overrides {
    fn over(self, base: Settings) -> Settings {
        Settings {
            level: self.level.unwrap_or(base.level),
            rate: self.rate.unwrap_or(base.rate),
            count: self.count.unwrap_or(base.count),
        }
    }
}

/// A server setting after a change: the value asked for, else the start-up value where
/// it was cleared, else what it was.
fn pick<T: Copy, C>(asked: Option<T>, cleared: Option<C>, old: T, startup: T) -> T {
    asked.or(cleared.map(|_| startup)).unwrap_or(old)
}

/// Settings and the counters they sample with.
#[derive(Debug)]
pub struct Sampler {
    settings: Settings,
    seen: AtomicU64,
    left: AtomicI64,
}

impl Sampler {
    fn new(settings: Settings) -> Sampler {
        Sampler {
            settings,
            seen: AtomicU64::new(0),
            left: AtomicI64::new(settings.count),
        }
    }

    /// Whether to trace a request. `parent_sampled`: the caller's sampled flag, where it
    /// sent a trace context; honoured either way. Without one, every `rate`-th request.
    pub fn sample(&self, parent_sampled: Option<bool>) -> bool {
        let Settings { level, rate, count } = self.settings;
        if level == Level::Off {
            return false;
        }
        let wanted = match parent_sampled {
            Some(flag) => flag,
            None => {
                rate != 0
                    && self
                        .seen
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(rate)
            }
        };
        wanted
            && (count < 0
                || self
                    .left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n > 0).then(|| n - 1)
                    })
                    .is_ok())
    }
}

/// A change asked for: a key and its new value, or None to clear it (a model's key then
/// follows the server's again; a server key returns to its start-up value).
pub type Change = (String, Option<Vec<String>>);

/// The server's settings, each model's overrides, and the samplers built from them.
#[derive(Debug)]
pub struct TraceSettings {
    startup: Settings,
    server: RwLock<Arc<Sampler>>,
    models: RwLock<HashMap<String, (Overrides, Arc<Sampler>)>>,
    /// Whether any model has overrides: the common case skips the map.
    any_model: AtomicBool,
}

impl TraceSettings {
    pub fn new(startup: Settings) -> TraceSettings {
        TraceSettings {
            startup,
            server: RwLock::new(Arc::new(Sampler::new(startup))),
            models: RwLock::default(),
            any_model: AtomicBool::new(false),
        }
    }

    /// The sampler that decides for a request to `model`.
    fn sampler(&self, model: &str) -> Arc<Sampler> {
        if self.any_model.load(Ordering::Relaxed) {
            if let Some((_, sampler)) = self.models.read().expect("trace settings").get(model) {
                return Arc::clone(sampler);
            }
        }
        Arc::clone(&self.server.read().expect("trace settings"))
    }

    /// Whether to trace a request to `model` (`Sampler::sample`), with no reference
    /// counted on the way: this runs for every request while an exporter is configured.
    pub fn sample(&self, model: &str, parent_sampled: Option<bool>) -> bool {
        if self.any_model.load(Ordering::Relaxed) {
            if let Some((_, sampler)) = self.models.read().expect("trace settings").get(model) {
                return sampler.sample(parent_sampled);
            }
        }
        self.server
            .read()
            .expect("trace settings")
            .sample(parent_sampled)
    }

    /// The settings in force for `model` (or the server), as Triton answers them.
    pub fn get(&self, model: Option<&str>) -> Vec<(String, Vec<String>)> {
        let settings = match model {
            Some(model) => self.sampler(model).settings,
            None => self.server.read().expect("trace settings").settings,
        };
        vec![
            ("trace_level".into(), vec![settings.level.as_str().into()]),
            ("trace_rate".into(), vec![settings.rate.to_string()]),
            ("trace_count".into(), vec![settings.count.to_string()]),
            ("trace_mode".into(), vec!["opentelemetry".into()]),
        ]
    }

    /// Applies `changes` to `model`'s overrides (or the server's settings): all of them,
    /// or none where one is invalid. Counters restart where the count or rate changed.
    pub fn update(&self, model: Option<&str>, changes: Vec<Change>) -> Result<(), String> {
        let mut asked = Overrides::default();
        let mut cleared = Overrides::default();
        for (key, value) in changes {
            let single = |values: &[String]| match values {
                [one] => Ok(one.clone()),
                _ => Err(format!("'{key}' takes one value, found {}", values.len())),
            };
            match (key.as_str(), value) {
                ("trace_level", None) => cleared.level = Some(Level::Off),
                ("trace_rate", None) => cleared.rate = Some(0),
                ("trace_count", None) => cleared.count = Some(0),
                ("trace_level", Some(values)) => {
                    let levels = values
                        .iter()
                        .map(|v| Level::parse(v))
                        .collect::<Result<Vec<_>, _>>()?;
                    asked.level = Some(match levels.as_slice() {
                        [] => Level::Off,
                        [one] => *one,
                        _ => Level::Timestamps,
                    });
                }
                ("trace_rate", Some(values)) => asked.rate = Some(parse_rate(&single(&values)?)?),
                ("trace_count", Some(values)) => asked.count = Some(parse_count(&single(&values)?)?),
                ("trace_mode", None) => {}
                ("trace_mode", Some(values)) => {
                    let mode = single(&values)?;
                    if mode != "opentelemetry" {
                        return Err(format!("trace_mode '{mode}' is not supported: wharf traces in opentelemetry mode only"));
                    }
                }
                ("trace_file" | "log_frequency", _) => {
                    return Err(format!("'{key}' applies to Triton's file trace mode, which wharf does not implement; its traces go over OTLP"));
                }
                (other, _) => return Err(format!("unknown trace setting '{other}'; expected trace_level, trace_rate, trace_count or trace_mode")),
            }
        }
        match model {
            None => {
                let mut server = self.server.write().expect("trace settings");
                let old = server.settings;
                let settings = Settings {
                    level: pick(asked.level, cleared.level, old.level, self.startup.level),
                    rate: pick(asked.rate, cleared.rate, old.rate, self.startup.rate),
                    count: pick(asked.count, cleared.count, old.count, self.startup.count),
                };
                *server = Arc::new(Sampler::new(settings));
                // Models follow the server where they have no value of their own.
                let mut models = self.models.write().expect("trace settings");
                for (overrides, sampler) in models.values_mut() {
                    *sampler = Arc::new(Sampler::new(overrides.over(settings)));
                }
            }
            Some(model) => {
                let server = self.server.read().expect("trace settings").settings;
                let mut models = self.models.write().expect("trace settings");
                let mut overrides = models.remove(model).map(|(o, _)| o).unwrap_or_default();
                overrides.level = asked
                    .level
                    .or(overrides.level.filter(|_| cleared.level.is_none()));
                overrides.rate = asked
                    .rate
                    .or(overrides.rate.filter(|_| cleared.rate.is_none()));
                overrides.count = asked
                    .count
                    .or(overrides.count.filter(|_| cleared.count.is_none()));
                if overrides.level.is_some()
                    || overrides.rate.is_some()
                    || overrides.count.is_some()
                {
                    let sampler = Arc::new(Sampler::new(overrides.over(server)));
                    models.insert(model.to_owned(), (overrides, sampler));
                }
                self.any_model.store(!models.is_empty(), Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u64, count: i64) -> TraceSettings {
        TraceSettings::new(Settings {
            level: Level::Timestamps,
            rate,
            count,
        })
    }

    fn change(key: &str, value: &str) -> Change {
        (key.into(), Some(vec![value.into()]))
    }

    #[test]
    fn without_context_every_rate_th_request_is_traced_and_the_count_caps_them() {
        let s = settings(3, -1);
        let picked: Vec<bool> = (0..7).map(|_| s.sample("m", None)).collect();
        assert_eq!(picked, [true, false, false, true, false, false, true]);
        let s = settings(1, 2);
        let picked: Vec<bool> = (0..4).map(|_| s.sample("m", None)).collect();
        assert_eq!(picked, [true, true, false, false]);
    }

    #[test]
    fn a_callers_flag_is_honoured_and_rate_zero_traces_only_callers_with_context() {
        let s = settings(0, -1);
        assert!(!s.sample("m", None));
        assert!(s.sample("m", Some(true)));
        assert!(!s.sample("m", Some(false)));
        s.update(None, vec![change("trace_level", "OFF")]).unwrap();
        assert!(!s.sample("m", Some(true)));
    }

    #[test]
    fn a_models_overrides_apply_to_it_alone_and_clear_back_to_the_servers() {
        let s = settings(1000, -1);
        s.update(Some("a"), vec![change("trace_rate", "1")])
            .unwrap();
        assert_eq!(s.get(Some("a"))[1].1, ["1"]);
        assert_eq!(s.get(Some("b"))[1].1, ["1000"]);
        s.update(None, vec![change("trace_count", "5")]).unwrap();
        assert_eq!(
            s.get(Some("a"))[2].1,
            ["5"],
            "the model follows the server's count"
        );
        s.update(Some("a"), vec![("trace_rate".into(), None)])
            .unwrap();
        assert_eq!(s.get(Some("a"))[1].1, ["1000"]);
        s.update(None, vec![("trace_count".into(), None)]).unwrap();
        assert_eq!(
            s.get(None)[2].1,
            ["-1"],
            "cleared back to the start-up value"
        );
    }

    #[test]
    fn bad_values_are_refused_by_name_and_change_nothing() {
        let s = settings(1000, -1);
        for (key, value, needle) in [
            ("trace_rate", "fast", "trace_rate"),
            ("trace_count", "-2", "trace_count"),
            ("trace_level", "TENSORS", "TENSORS"),
            ("trace_level", "LOUD", "LOUD"),
            ("trace_mode", "triton", "triton"),
            ("trace_file", "/tmp/t", "trace_file"),
            ("colour", "red", "colour"),
        ] {
            let error = s
                .update(None, vec![change("trace_rate", "7"), change(key, value)])
                .unwrap_err();
            assert!(error.contains(needle), "{error}");
        }
        assert_eq!(s.get(None)[1].1, ["1000"]);
    }
}
