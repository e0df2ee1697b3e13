//! The text parsers: flag values, label selectors, `/proc/<pid>/cgroup` and JSON lines. What
//! they accept means what it says; whatever they refuse is refused with an error, never a panic.

use agent::cli::{parse_duration, parse_interval, FOREVER};
use agent::schema::read_jsonl;
use phase_4_k8s::cgroup::parse_proc_cgroup;
use phase_4_k8s::pods::{LabelSelector, Requirement};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// A label name or value as Kubernetes allows them (and not the selector's keywords).
fn label_part() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?".prop_filter("a keyword", |s| s != "in" && s != "notin")
}

fn label_key() -> impl Strategy<Value = String> {
    (
        prop::option::of("[a-z]{1,6}(\\.[a-z]{1,6}){0,2}"),
        label_part(),
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        })
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let values = || prop::collection::btree_set(label_part(), 1..4);
    prop_oneof![
        (label_key(), label_part()).prop_map(|(k, v)| Requirement::Equals(k, v)),
        (label_key(), label_part()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
        (label_key(), values()).prop_map(|(k, vs)| Requirement::In(k, vs)),
        (label_key(), values()).prop_map(|(k, vs)| Requirement::NotIn(k, vs)),
        label_key().prop_map(Requirement::Exists),
        label_key().prop_map(Requirement::DoesNotExist),
    ]
}

/// Numbers of every magnitude and sign with or without a unit, the spellings of NaN and
/// infinity, and anything else.
fn duration_text() -> impl Strategy<Value = String> {
    let unit = "(ns|us|µs|ms|s|m|h|[a-z]{1,3})?";
    prop_oneof![
        ("-?[0-9]{1,3}(\\.[0-9]{1,3})?", -15i32..15, unit)
            .prop_map(|(m, e, u)| format!("{m}e{e}{u}")),
        "[-+0-9.eE]{0,8}".prop_flat_map(move |n| unit.prop_map(move |u| format!("{n}{u}"))),
        "(nan|inf|-inf|NaN|infinity)[a-z]{0,2}",
        "\\PC{0,12}",
    ]
}

/// As `kubectl -l` takes it, with the spellings and spacing varied where the grammar allows.
fn render(requirements: &[Requirement], double_eq: bool, spaced: bool) -> String {
    let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
    let (eq, sep) = match (double_eq, spaced) {
        (true, _) => ("==", if spaced { ", " } else { "," }),
        (false, true) => ("=", ", "),
        (false, false) => ("=", ","),
    };
    requirements
        .iter()
        .map(|r| match r {
            Requirement::Equals(k, v) => format!("{k}{eq}{v}"),
            Requirement::NotEquals(k, v) => format!("{k}!={v}"),
            Requirement::In(k, vs) => format!("{k} in ({})", set(vs)),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", set(vs)),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        })
        .collect::<Vec<_>>()
        .join(sep)
}

proptest! {
    #[test]
    fn a_rendered_label_selector_parses_back_to_itself(
        requirements in prop::collection::vec(requirement(), 0..5),
        double_eq: bool,
        spaced: bool,
    ) {
        let text = render(&requirements, double_eq, spaced);
        let parsed: LabelSelector = text.parse().map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert_eq!(parsed.requirements, requirements);
    }

    /// Whatever the text, a selector or an error that quotes it.
    #[test]
    fn any_label_selector_text_parses_or_is_refused(text in "[a-z0-9=!(), ./_-]{0,40}|\\PC{0,40}") {
        if let Err(e) = text.parse::<LabelSelector>() {
            let (why, quoted) = (format!("{e:#}"), format!("{text:?}"));
            prop_assert!(why.contains(&quoted), "{} does not quote {}", why, quoted);
        }
    }

    #[test]
    fn a_duration_with_a_unit_means_that_many_of_the_unit(
        n in 1u64..1_000_000,
        unit in prop::sample::select(vec![("ms", 1_000_000u64), ("s", 1_000_000_000), ("m", 60_000_000_000)]),
    ) {
        let d = parse_duration(&format!("{n}{}", unit.0)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(d, Duration::from_nanos(n * unit.1));
    }

    /// Whatever the text: a duration of 1 ms to 100 years (or 0, where 0 is allowed), or a
    /// one-line refusal.
    #[test]
    fn any_duration_text_is_in_range_or_refused(text in duration_text()) {
        match parse_interval(&text) {
            Ok(d) => prop_assert!(d.is_zero() || (Duration::from_millis(1) <= d && d <= FOREVER), "{d:?}"),
            Err(e) => prop_assert!(!e.is_empty() && !e.contains('\n'), "{e:?}"),
        }
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(!d.is_zero());
        }
    }

    /// A v2 host's single line names the process's cgroup, `(deleted)` or not.
    #[test]
    fn a_cgroup_v2_line_names_its_path(
        parts in prop::collection::vec("[a-z0-9._-]{1,12}", 0..5),
        deleted: bool,
    ) {
        let path = parts.join("/");
        let mark = if deleted { " (deleted)" } else { "" };
        prop_assert_eq!(parse_proc_cgroup(&format!("0::/{path}{mark}\n")), Some(PathBuf::from(path)));
    }

    #[test]
    fn any_cgroup_text_names_one_of_its_paths_or_none(
        lines in prop::collection::vec("[0-9]{0,2}:[a-z=,_]{0,16}:[\\PC]{0,30}|\\PC{0,30}", 0..6),
    ) {
        let text = lines.join("\n");
        if let Some(path) = parse_proc_cgroup(&text) {
            let path = path.to_string_lossy().into_owned();
            prop_assert!(text.contains(&path), "{path:?} not in {text:?}");
        }
    }

    /// A results file cut or corrupted anywhere: records up to the damage, or an error naming
    /// the line; never a panic.
    #[test]
    fn any_jsonl_text_reads_or_is_refused(text in "(\\{\"[a-z_]{1,10}\":[0-9\"a-z{}\\[\\],:]{0,30}\\}\n?){0,4}|\\PC{0,60}") {
        if let Err(e) = read_jsonl(text.as_bytes()) {
            prop_assert!(format!("{e:#}").contains("line"), "{e:#}");
        }
    }
}
