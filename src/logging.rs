//! The process's log subscriber, and Triton's logging extension over it: the level and
//! format read and changed at run time (gRPC `LogSettings`, HTTP `/v2/logging`).

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    sync::{Mutex, OnceLock},
};

use tracing_subscriber::{
    filter::LevelFilter, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer,
    Registry,
};

/// Log lines for people (text) or for log collectors (json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// One setting's value, as both protocols carry it.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Bool(bool),
    Uint(u32),
    Text(String),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Bool(b) => write!(f, "{b}"),
            Setting::Uint(n) => write!(f, "{n}"),
            Setting::Text(t) => write!(f, "{t:?}"),
        }
    }
}

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Writer = Box<dyn Layer<Filtered> + Send + Sync>;

/// The live settings and the handles that change them.
struct Control {
    filter: reload::Handle<EnvFilter, Registry>,
    writer: reload::Handle<Writer, Filtered>,
    /// `WHARF_LOG`'s per-target directives, kept when the level changes.
    targets: Vec<String>,
    state: Mutex<State>,
}

#[derive(Clone, Copy)]
struct State {
    level: LevelFilter,
    format: LogFormat,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the global subscriber: `WHARF_LOG` (an `EnvFilter`, default `info`) on stderr
/// in `format`. Later calls do nothing.
pub fn init(format: LogFormat) {
    let spec = std::env::var("WHARF_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let level = filter.max_level_hint().unwrap_or(LevelFilter::INFO);
    let targets = spec
        .split(',')
        .filter(|d| d.contains('=') || d.contains('['))
        .map(str::to_owned)
        .collect();
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (writer, writer_handle) = reload::Layer::new(writer(format));
    if tracing_subscriber::registry()
        .with(filter)
        .with(writer)
        .try_init()
        .is_err()
    {
        return;
    }
    let _ = CONTROL.set(Control {
        filter: filter_handle,
        writer: writer_handle,
        targets,
        state: Mutex::new(State { level, format }),
    });
}

fn writer(format: LogFormat) -> Writer {
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json()),
    }
}

/// The settings as Triton names them. wharf's levels are thresholds: each flag says
/// whether lines of that level are written, and `log_verbose_level` 1 is DEBUG, 2 TRACE.
pub fn settings() -> BTreeMap<String, Setting> {
    let state = CONTROL.get().map_or(
        State {
            level: LevelFilter::current(),
            format: LogFormat::Text,
        },
        |c| *c.state.lock().expect("never poisoned"),
    );
    render(state)
}

fn render(state: State) -> BTreeMap<String, Setting> {
    let on = |level: LevelFilter| Setting::Bool(state.level >= level);
    let verbose = if state.level >= LevelFilter::TRACE {
        2
    } else {
        u32::from(state.level >= LevelFilter::DEBUG)
    };
    let format = match state.format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    BTreeMap::from([
        ("log_file".into(), Setting::Text(String::new())),
        ("log_error".into(), on(LevelFilter::ERROR)),
        ("log_warning".into(), on(LevelFilter::WARN)),
        ("log_info".into(), on(LevelFilter::INFO)),
        ("log_verbose_level".into(), Setting::Uint(verbose)),
        ("log_format".into(), Setting::Text(format.into())),
    ])
}

/// Applies `changes` together (all or none) and answers the settings after them. Errors
/// name the setting and what it accepts.
pub fn update(changes: &BTreeMap<String, Setting>) -> Result<BTreeMap<String, Setting>, String> {
    let control = CONTROL
        .get()
        .ok_or("logging is not set up by this process; its settings cannot change")?;
    let mut state = control.state.lock().expect("never poisoned");
    let current = render(*state);
    let flag = |key: &str| -> Result<bool, String> {
        match changes.get(key).or_else(|| current.get(key)) {
            Some(Setting::Bool(b)) => Ok(*b),
            Some(other) => Err(format!("{key} must be a boolean, found {other}")),
            None => unreachable!("every flag is rendered"),
        }
    };
    for key in changes.keys() {
        if !current.contains_key(key) {
            return Err(format!(
                "unknown log setting '{key}'; the settings are {}",
                current.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if let Some(file) = changes.get("log_file") {
        if *file != Setting::Text(String::new()) {
            return Err("log_file cannot be set: wharf logs to stderr, for the container runtime to collect".into());
        }
    }
    // Levels are thresholds (error, warning, info, debug, trace: 1 to 5 of them on).
    // Each setting given bounds how many are on; the current count is kept within them,
    // so turning a level off turns off those below it and turning one on, those above.
    let (mut lo, mut hi) = (0u8, 5u8);
    for (at, key) in [(1, "log_error"), (2, "log_warning"), (3, "log_info")] {
        if changes.contains_key(key) {
            if flag(key)? {
                lo = lo.max(at);
            } else {
                hi = hi.min(at - 1);
            }
        }
    }
    match changes.get("log_verbose_level") {
        None => {}
        Some(Setting::Uint(0)) => hi = hi.min(3),
        Some(Setting::Uint(v)) => {
            let at = 3 + (*v).min(2) as u8;
            (lo, hi) = (lo.max(at), hi.min(at));
        }
        Some(other) => {
            return Err(format!(
                "log_verbose_level must be a non-negative integer, found {other}"
            ))
        }
    }
    if lo > hi {
        return Err(format!(
            "these log settings contradict each other: wharf's levels are thresholds, and a level on \
             needs every level above it on ({})",
            changes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    const LEVELS: [LevelFilter; 6] = [
        LevelFilter::OFF,
        LevelFilter::ERROR,
        LevelFilter::WARN,
        LevelFilter::INFO,
        LevelFilter::DEBUG,
        LevelFilter::TRACE,
    ];
    let now_on = LEVELS.iter().position(|l| *l == state.level).unwrap_or(3) as u8;
    let level = LEVELS[usize::from(now_on.clamp(lo, hi))];
    let format = match changes.get("log_format") {
        None => state.format,
        Some(Setting::Text(f)) => match f.as_str() {
            "text" | "default" | "ISO8601" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(format!(
                    "log_format '{other}' is not one of text, json (Triton's default and ISO8601 mean text)"
                ))
            }
        },
        Some(other) => return Err(format!("log_format must be a string, found {other}")),
    };
    if level != state.level {
        let directives = std::iter::once(level.to_string().to_lowercase())
            .chain(control.targets.iter().cloned())
            .collect::<Vec<_>>()
            .join(",");
        let filter = EnvFilter::try_new(&directives).map_err(|e| e.to_string())?;
        control.filter.reload(filter).map_err(|e| e.to_string())?;
    }
    if format != state.format {
        control
            .writer
            .reload(writer(format))
            .map_err(|e| e.to_string())?;
    }
    *state = State { level, format };
    let now = render(*state);
    drop(state);
    tracing::info!(
        level = %level,
        format = ?format,
        "log settings changed"
    );
    Ok(now)
}
