//! A PromQL lexer, just enough to tell the dashboard's metric names, label names and functions
//! apart, and to say which function each metric is a direct argument of and which aggregation
//! first merges its series. It rejects what it does not know (an unknown function, a malformed
//! matcher or range, a grouping written after its aggregation's argument) rather than guess.

use std::collections::BTreeSet;

/// The PromQL functions and aggregations the dashboard may call.
const FUNCTIONS: [&str; 22] = [
    "histogram_quantile",
    "rate",
    "irate",
    "increase",
    "deriv",
    "delta",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "topk",
    "bottomk",
    "abs",
    "clamp_min",
    "clamp_max",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "last_over_time",
    "sort_desc",
    "vector",
];
/// The aggregations that merge series (topk and bottomk keep theirs).
const AGGREGATIONS: [&str; 5] = ["sum", "avg", "min", "max", "count"];
const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Clauses followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The labels an aggregation keeps: `by (…)` those, `without (…)` all but those.
#[derive(Clone, Debug)]
pub enum Grouping {
    By(BTreeSet<String>),
    Without(BTreeSet<String>),
}

impl Grouping {
    pub fn keeps(&self, label: &str) -> bool {
        match self {
            Grouping::By(kept) => kept.contains(label),
            Grouping::Without(dropped) => !dropped.contains(label),
        }
    }
}

/// An aggregation: its operator (`sum`) and the labels it keeps.
#[derive(Debug)]
pub struct Aggregation {
    pub op: String,
    pub grouping: Grouping,
}

/// An open parenthesis: the function it calls ("" for plain grouping), and for an aggregation
/// the labels it keeps.
struct Frame {
    function: String,
    grouping: Option<Grouping>,
}

/// What one PromQL expression uses.
#[derive(Debug, Default)]
pub struct Uses {
    /// Metric names, each with the function it is a direct argument of ("" for none).
    pub metrics: Vec<(String, String)>,
    /// For each of `metrics`, the innermost aggregation around it: where its series are first
    /// merged (`None`: never, every label is kept).
    pub merged_by: Vec<Option<Aggregation>>,
    pub labels: BTreeSet<String>,
    /// Labels of `by (…)` clauses.
    pub grouping: BTreeSet<String>,
    /// The `sum by (…)` lists of histogram_quantile's argument, one per quantile.
    pub quantile_groupings: Vec<BTreeSet<String>>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Lexes `expr` just enough to tell metric names, label names and functions apart.
pub fn promql(expr: &str) -> Result<Uses, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    // Parentheses open, innermost last.
    let mut stack: Vec<Frame> = Vec::new();
    // A function named, its parenthesis not yet open, and an aggregation's grouping given.
    let mut pending: Option<String> = None;
    let mut pending_grouping: Option<Grouping> = None;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && is_ident(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let string = |i: &mut usize| -> Result<(), String> {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        if *i >= chars.len() {
            return Err(format!("unclosed string in {expr}"));
        }
        *i += 1;
        Ok(())
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            string(&mut i)?;
        } else if c == '[' {
            let end = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .ok_or(format!("unclosed [ in {expr}"))?;
            let range: String = chars[i + 1..i + end].iter().collect();
            let ok = range.starts_with('$')
                || (range.len() > 1
                    && range.chars().all(|c| c.is_ascii_alphanumeric())
                    && range.starts_with(|c: char| c.is_ascii_digit()));
            if !ok {
                return Err(format!("range [{range}] in {expr}"));
            }
            i += end + 1;
        } else if c == '{' {
            i += 1;
            loop {
                skip_ws(&mut i);
                if chars.get(i) == Some(&'}') {
                    i += 1;
                    break;
                }
                if !chars.get(i).is_some_and(|&c| is_ident_start(c)) {
                    return Err(format!("a label name expected at {i} in {expr}"));
                }
                uses.labels.insert(ident(&mut i));
                skip_ws(&mut i);
                let op: String = chars[i..]
                    .iter()
                    .take_while(|c| "=!~".contains(**c))
                    .collect();
                if !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
                    return Err(format!("matcher operator {op:?} in {expr}"));
                }
                i += op.len();
                skip_ws(&mut i);
                if chars.get(i) != Some(&'"') {
                    return Err(format!("a quoted label value expected at {i} in {expr}"));
                }
                string(&mut i)?;
                skip_ws(&mut i);
                match chars.get(i) {
                    Some(',') => i += 1,
                    Some('}') => {}
                    _ => return Err(format!(", or }} expected at {i} in {expr}")),
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let paren = chars.get(j) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if !paren {
                    continue;
                }
                let end = chars[j..].iter().position(|&c| c == ')').unwrap() + j;
                let list: String = chars[j + 1..end].iter().collect();
                let names: BTreeSet<String> = list
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if word == "by" || word == "without" {
                    if !pending
                        .as_deref()
                        .is_some_and(|f| AGGREGATIONS.contains(&f) || f == "topk" || f == "bottomk")
                    {
                        return Err(format!(
                            "{word} (…) not right after its aggregation in {expr}: write sum {word} (…) (…)"
                        ));
                    }
                    pending_grouping = Some(match word.as_str() {
                        "by" => Grouping::By(names.clone()),
                        _ => Grouping::Without(names.clone()),
                    });
                }
                if word == "by" {
                    uses.grouping.extend(names.iter().cloned());
                    if stack.last().map(|f| f.function.as_str()) == Some("histogram_quantile") {
                        uses.quantile_groupings.push(names.clone());
                    }
                }
                uses.labels.extend(names);
                i = end + 1;
            } else if FUNCTIONS.contains(&word.as_str()) {
                pending = Some(word);
            } else if paren {
                return Err(format!("unknown function {word} in {expr}"));
            } else if KEYWORDS.contains(&word.as_str()) {
            } else {
                let inside = stack.last().map(|f| f.function.clone()).unwrap_or_default();
                uses.metrics.push((word, inside));
                let merged = stack
                    .iter()
                    .rev()
                    .find(|f| AGGREGATIONS.contains(&f.function.as_str()));
                uses.merged_by.push(merged.map(|f| Aggregation {
                    op: f.function.clone(),
                    // An aggregation without a grouping merges everything.
                    grouping: f.grouping.clone().unwrap_or(Grouping::By(BTreeSet::new())),
                }));
            }
        } else if c == '(' {
            stack.push(Frame {
                function: pending.take().unwrap_or_default(),
                grouping: pending_grouping.take(),
            });
            i += 1;
        } else if c == ')' {
            stack.pop().ok_or(format!("unbalanced ) in {expr}"))?;
            i += 1;
        } else if "+-*/%^=!<>,".contains(c) {
            i += 1;
        } else {
            return Err(format!("unexpected {c:?} at {i} in {expr}"));
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed ( in {expr}"));
    }
    Ok(uses)
}
