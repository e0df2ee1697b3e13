//! One configuration model for every binary: each setting is a long flag, and can also come
//! from the environment or from a YAML file. Precedence, highest first:
//!
//! 1. the flag (`--window 32`);
//! 2. its environment variable, `AUDIO_TRACER_` and the flag's name in upper snake case
//!    (`AUDIO_TRACER_WINDOW=32`; a repeatable flag takes a comma-separated list);
//! 3. the config file given by `--config FILE` or `AUDIO_TRACER_CONFIG`, whose keys are the
//!    long flags' names (`window: 32`, a list for a repeatable flag: `namespace: [voice, asr]`);
//! 4. the built-in default.
//!
//! It works on clap's `Command`, so every flag a binary has is covered, whoever adds it: the
//! file's values become the flags' defaults, the variables their `env`.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, ArgAction, Command, FromArgMatches, Parser};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable naming the config file (as `--config` does).
pub const CONFIG_ENV: &str = "AUDIO_TRACER_CONFIG";
const ENV_PREFIX: &str = "AUDIO_TRACER_";
const CONFIG_FLAG: &str = "config";

/// A flag's environment variable: `keep-per-256` → `AUDIO_TRACER_KEEP_PER_256`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.replace('-', "_").to_uppercase())
}

/// Parses the process's command line, environment and config file into `T`; a bad one exits
/// with clap's usage error, or one line naming the file or variable and the key (status 2).
pub fn parse<T: Parser>() -> T {
    parse_with_aliases(&[])
}

/// As [`parse`], where some flags also take their value from a variable of another name when
/// theirs is unset (`("node", "NODE_NAME")`: the downward API's name for it).
pub fn parse_with_aliases<T: Parser>(aliases: &[(&str, &str)]) -> T {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cmd = T::command();
    let program = cmd.get_name().to_string();
    match parse_from::<T>(cmd, &argv, aliases) {
        Ok(t) => t,
        Err(Problem::Usage(e)) => e.exit(),
        Err(Problem::Config(line)) => {
            eprintln!("{program}: {line}");
            std::process::exit(2);
        }
    }
}

/// Why a command line was refused.
#[derive(Debug)]
pub enum Problem {
    /// By clap, with its usage text.
    Usage(clap::Error),
    /// A config file or environment variable: one line naming it and the key.
    Config(String),
}

/// [`parse`] on a given command line (its first element is the program's name).
pub fn parse_from<T: FromArgMatches>(
    cmd: Command,
    argv: &[OsString],
    aliases: &[(&str, &str)],
) -> Result<T, Problem> {
    let mut cmd = with_env(cmd, aliases).arg(
        Arg::new(CONFIG_FLAG)
            .long(CONFIG_FLAG)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .env(CONFIG_ENV)
            .global(true)
            .help("Read settings from this YAML file: keys are the long flags (`window: 32`, `namespace: [voice, asr]`); flags and AUDIO_TRACER_* variables override it"),
    );
    // The settings apply to the subcommand being run (the agent's or the collector's).
    let path = subcommand_path(&cmd, argv);
    let target = find(&cmd, &path);
    check_env(target)?;
    if let Some(file) = config_file(argv) {
        let usage = std::iter::once(cmd.get_name().to_string())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let defaults = read_file(target, &usage, &file)?;
        cmd = set_defaults(cmd, &path, &defaults);
    }
    let matches = cmd.try_get_matches_from(argv).map_err(Problem::Usage)?;
    T::from_arg_matches(&matches).map_err(Problem::Usage)
}

/// Whether an argument is a setting (not --help, --version or --config itself).
fn is_setting(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpLong | ArgAction::Version
        )
        && arg.get_id() != CONFIG_FLAG
}

fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// Gives every setting of `cmd` and its subcommands its environment variable.
fn with_env(mut cmd: Command, aliases: &[(&str, &str)]) -> Command {
    cmd = cmd.mut_args(|arg| {
        if !is_setting(&arg) {
            return arg;
        }
        let long = arg
            .get_long()
            .expect("a setting has a long name")
            .to_string();
        let own = env_name(&long);
        let alias = aliases
            .iter()
            .find(|(flag, var)| *flag == long && std::env::var_os(var).is_some())
            .map(|(_, var)| var.to_string());
        let var = match std::env::var_os(&own) {
            None => alias.unwrap_or(own),
            Some(_) => own,
        };
        let list = is_list(&arg);
        let arg = arg.env(var);
        if list {
            arg.value_delimiter(',')
        } else {
            arg
        }
    });
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |sub| with_env(sub, aliases));
    }
    cmd
}

/// The subcommands named on the command line, outermost first (none for a binary without).
fn subcommand_path(cmd: &Command, argv: &[OsString]) -> Vec<String> {
    let mut path = Vec::new();
    let mut current = cmd;
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        let word = word.to_string_lossy();
        if word == format!("--{CONFIG_FLAG}") {
            words.next();
            continue;
        }
        if let Some(sub) = current.find_subcommand(word.as_ref()) {
            path.push(sub.get_name().to_string());
            current = sub;
        }
    }
    path
}

fn find<'a>(cmd: &'a Command, path: &[String]) -> &'a Command {
    path.iter().fold(cmd, |c, name| {
        c.find_subcommand(name).expect("found before")
    })
}

/// `--config FILE`, `--config=FILE`, or else `AUDIO_TRACER_CONFIG` (clap parses them again).
fn config_file(argv: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut words = argv.iter().skip(1).map(|w| w.to_string_lossy());
    while let Some(word) = words.next() {
        if word == flag {
            return words.next().map(|w| PathBuf::from(w.as_ref()));
        }
        if let Some(path) = word.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The file's settings for `cmd`, each checked as its flag would be: flag name → values.
fn read_file(
    cmd: &Command,
    usage: &str,
    file: &Path,
) -> Result<BTreeMap<String, Vec<String>>, Problem> {
    let shown = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|e| Problem::Config(format!("cannot read config file {shown}: {e}")))?;
    let entries: BTreeMap<String, serde_json::Value> = if text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_saphyr::from_str(&text).map_err(|e| {
            let why = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            Problem::Config(format!(
                "config file {shown}: not a mapping of settings to values: {why}"
            ))
        })?
    };
    let mut settings = BTreeMap::new();
    for (key, value) in entries {
        let bad = |why: String| Problem::Config(format!("config file {shown}: {key}: {why}"));
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| is_setting(a) && a.get_long() == Some(key.as_str()))
        else {
            return Err(bad(format!(
                "unknown key (the keys are the long flags `{usage} --help` lists, without --)"
            )));
        };
        let values = match value {
            serde_json::Value::Array(items) if is_list(arg) => items
                .into_iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("a list of values, not of lists or mappings".into()))?,
            serde_json::Value::Array(_) => {
                return Err(bad("takes one value, not a list".into()));
            }
            other => vec![scalar(other).ok_or_else(|| bad("expected a value".into()))?],
        };
        for v in &values {
            check_value(arg, v).map_err(&bad)?;
        }
        settings.insert(arg.get_id().to_string(), values);
    }
    Ok(settings)
}

/// A YAML scalar as the flag's text; `None` for a null, a list or a mapping.
fn scalar(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Checks a setting's variable as its flag would be, so that a bad one is named as such.
fn check_env(cmd: &Command) -> Result<(), Problem> {
    for arg in cmd.get_arguments().filter(|a| is_setting(a)) {
        let Some(var) = arg.get_env() else { continue };
        let Some(value) = std::env::var_os(var) else {
            continue;
        };
        let value = value.to_string_lossy();
        let values: Vec<&str> = match is_list(arg) {
            true => value.split(',').collect(),
            false => vec![&value],
        };
        for v in values {
            check_value(arg, v).map_err(|why| {
                Problem::Config(format!("environment {}: {why}", var.to_string_lossy()))
            })?;
        }
    }
    Ok(())
}

/// Runs `arg`'s value parser on `value`: why it is refused, in a few words.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let flag = !arg.get_action().takes_values();
    let probe = Command::new("value").no_binary_name(true).arg(
        Arg::new("value")
            .value_parser(match flag {
                // A flag's value is whether it is set.
                true => clap::builder::ValueParser::bool(),
                false => arg.get_value_parser().clone(),
            })
            .allow_hyphen_values(true),
    );
    let Err(e) = probe.try_get_matches_from([value]) else {
        return Ok(());
    };
    let why = match (e.kind(), std::error::Error::source(&e)) {
        (_, Some(source)) => source.to_string(),
        (ErrorKind::InvalidValue, _) => match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(ok)) => format!("use one of {}", ok.join(", ")),
            _ => "not one of the possible values".into(),
        },
        _ => e.kind().to_string(),
    };
    Err(format!("{value:?} is refused: {why}"))
}

/// Makes the file's settings the defaults of the subcommand at `path`.
fn set_defaults(
    cmd: Command,
    path: &[String],
    settings: &BTreeMap<String, Vec<String>>,
) -> Command {
    match path.split_first() {
        Some((name, rest)) => cmd.mut_subcommand(name, |sub| set_defaults(sub, rest, settings)),
        None => settings.iter().fold(cmd, |cmd, (id, values)| {
            cmd.mut_arg(id, |arg| {
                // A default satisfies a required flag: the file gave it.
                arg.default_values(values.clone()).required(false)
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, CommandFactory, Subcommand};

    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Agent(AgentArgs),
    }

    #[derive(Args, Debug)]
    struct AgentArgs {
        #[arg(long)]
        node: String,
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[arg(long)]
        namespace: Vec<String>,
        #[arg(long)]
        quiet: bool,
    }

    fn agent(argv: &[&str]) -> Result<AgentArgs, Problem> {
        let argv: Vec<OsString> = std::iter::once("demo")
            .chain(argv.iter().copied())
            .map(OsString::from)
            .collect();
        parse_from::<Cli>(Cli::command(), &argv, &[]).map(|c| match c.command {
            Sub::Agent(a) => a,
        })
    }

    fn file(name: &str, text: &str) -> String {
        let path = std::env::temp_dir().join(format!(
            "audio-tracer-config-{}-{name}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn config_line(r: Result<AgentArgs, Problem>) -> String {
        match r {
            Err(Problem::Config(line)) => line,
            other => panic!("not a config problem: {other:?}"),
        }
    }

    // The environment variables these tests use are their own (the FILE_ ones only).
    #[test]
    fn the_file_gives_defaults_that_flags_override() {
        let f = file(
            "ok",
            "node: n1\nwindow: 32\nnamespace: [voice, asr]\nquiet: true\n",
        );
        let a = agent(&["agent", "--config", &f]).unwrap();
        assert_eq!((a.node.as_str(), a.window, a.quiet), ("n1", 32, true));
        assert_eq!(a.namespace, ["voice", "asr"]);
        let a = agent(&[
            "agent",
            "--config",
            &f,
            "--window",
            "64",
            "--namespace",
            "x",
        ])
        .unwrap();
        assert_eq!((a.window, a.namespace), (64, vec!["x".to_string()]));
    }

    #[test]
    fn bad_keys_and_values_are_one_line_naming_file_and_key() {
        for (name, text, want) in [
            ("unknown", "node: n\nwindw: 3\n", "windw: unknown key"),
            (
                "type",
                "node: n\nwindow: big\n",
                "window: \"big\" is refused: invalid digit",
            ),
            (
                "list",
                "node: [a, b]\n",
                "node: takes one value, not a list",
            ),
            (
                "nested",
                "node: n\nnamespace: [[a]]\n",
                "namespace: a list of values",
            ),
            (
                "flag",
                "node: n\nquiet: sometimes\n",
                "quiet: \"sometimes\" is refused",
            ),
            (
                "mapping",
                "- a\n- b\n",
                "not a mapping of settings to values",
            ),
        ] {
            let f = file(name, text);
            let line = config_line(agent(&["agent", "--config", &f]));
            assert!(line.starts_with(&format!("config file {f}: ")), "{line}");
            assert!(line.contains(want), "{name}: {line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
        let line = config_line(agent(&["agent", "--config", "/no/such.yaml"]));
        assert!(
            line.starts_with("cannot read config file /no/such.yaml: "),
            "{line}"
        );
    }
}
