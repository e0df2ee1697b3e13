//! Which pods' containers the agent traces, in Kubernetes terms: namespaces, container names
//! and a label selector string as `kubectl -l` takes it (`app=asr,tier!=debug,env in
//! (prod,staging)`), parsed here by hand with the API server's semantics (`!=` and `notin` also
//! hold when the label is absent).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};

use crate::pods::PodMeta;

/// Which pods' containers to trace, in Kubernetes terms. Every field left empty matches all.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// Any of these namespaces.
    pub namespaces: Vec<String>,
    /// A label selector as `kubectl -l` takes it: `app=asr,tier!=debug,env in (prod,staging)`.
    pub labels: Option<String>,
    /// Any of these container names.
    pub containers: Vec<String>,
}

impl Selector {
    /// A selector whose label selector is checked now, so that [`matches`](Self::matches) never
    /// meets a malformed one.
    pub fn new(
        namespaces: &[&str],
        labels: Option<&str>,
        containers: &[&str],
    ) -> anyhow::Result<Self> {
        let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let selector = Selector {
            namespaces: owned(namespaces),
            labels: labels.map(str::to_string),
            containers: owned(containers),
        };
        selector.validate()?;
        Ok(selector)
    }

    /// Errors (naming the problem) if the label selector does not parse.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.label_selector().map(|_| ())
    }

    /// The parsed label selector (matching everything when `labels` is `None`).
    pub fn label_selector(&self) -> anyhow::Result<LabelSelector> {
        match &self.labels {
            Some(s) => s.parse(),
            None => Ok(LabelSelector::default()),
        }
    }

    /// Whether the container `meta` names is selected; a malformed label selector selects
    /// nothing (use [`validate`](Self::validate) or [`new`](Self::new) to reject it up front).
    pub fn matches(&self, meta: &PodMeta) -> bool {
        match self.label_selector() {
            Ok(labels) => self.matches_with(&labels, meta),
            Err(_) => false,
        }
    }

    pub(crate) fn matches_with(&self, labels: &LabelSelector, meta: &PodMeta) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(&meta.namespace))
            && (self.containers.is_empty() || self.containers.contains(&meta.container))
            && labels.matches(&meta.labels)
    }
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`
    Equals(String, String),
    /// `key!=value`: also true when the label is absent
    NotEquals(String, String),
    /// `key in (a,b)`
    In(String, BTreeSet<String>),
    /// `key notin (a,b)`: also true when the label is absent
    NotIn(String, BTreeSet<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector: every requirement must hold (the empty selector matches all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Comma,
    Open,
    Close,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "'{s}'"),
            Token::Eq => f.write_str("'='"),
            Token::DoubleEq => f.write_str("'=='"),
            Token::NotEq => f.write_str("'!='"),
            Token::Bang => f.write_str("'!'"),
            Token::Comma => f.write_str("','"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
        }
    }
}

fn tokenize(s: &str) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' | '(' | ')' => {
                chars.next();
                tokens.push(match c {
                    ',' => Token::Comma,
                    '(' => Token::Open,
                    _ => Token::Close,
                });
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEq);
                } else {
                    tokens.push(Token::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEq);
                } else {
                    tokens.push(Token::Bang);
                }
            }
            '<' | '>' => bail!("operator '{c}' is not supported in a pod label selector"),
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || ",()=!<>".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                tokens.push(Token::Ident(ident));
            }
        }
    }
    Ok(tokens)
}

/// `[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?`, at most 63 characters.
fn is_qualified_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || "-_.".contains(c))
}

/// A DNS subdomain: lower-case alphanumerics, '-' and '.', at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn check_key(key: &str) -> anyhow::Result<String> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(key),
    };
    if !ok {
        bail!("invalid label key '{key}': [prefix/]name, name of at most 63 alphanumerics, '-', '_', '.' starting and ending alphanumeric");
    }
    Ok(key.to_string())
}

fn check_value(value: &str) -> anyhow::Result<String> {
    if !value.is_empty() && !is_qualified_part(value) {
        bail!("invalid label value '{value}': at most 63 alphanumerics, '-', '_', '.' starting and ending alphanumeric");
    }
    Ok(value.to_string())
}

impl FromStr for LabelSelector {
    type Err = anyhow::Error;

    /// The grammar of `kubectl -l`: requirements separated by commas, each `key`, `!key`,
    /// `key=value`, `key==value`, `key!=value`, `key in (v1,v2)` or `key notin (v1,v2)`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        parse_label_selector(s).with_context(|| format!("label selector {s:?}"))
    }
}

fn parse_label_selector(s: &str) -> anyhow::Result<LabelSelector> {
    let tokens = tokenize(s)?;
    let mut requirements = Vec::new();
    if tokens.is_empty() {
        return Ok(LabelSelector { requirements });
    }
    let mut it = tokens.into_iter().peekable();
    loop {
        let requirement = match it.next() {
            Some(Token::Bang) => match it.next() {
                Some(Token::Ident(key)) => Requirement::DoesNotExist(check_key(&key)?),
                other => bail!("expected a label key after '!', found {}", describe(other)),
            },
            Some(Token::Ident(key)) => {
                let key = check_key(&key)?;
                match it.peek() {
                    None | Some(Token::Comma) => Requirement::Exists(key),
                    Some(Token::Eq | Token::DoubleEq | Token::NotEq) => {
                        let op = it.next();
                        let value = match it.peek() {
                            Some(Token::Ident(_)) => match it.next() {
                                Some(Token::Ident(v)) => check_value(&v)?,
                                _ => unreachable!(),
                            },
                            None | Some(Token::Comma) => String::new(),
                            Some(other) => bail!("expected a value after '{key}' and its operator, found {other}"),
                        };
                        if op == Some(Token::NotEq) {
                            Requirement::NotEquals(key, value)
                        } else {
                            Requirement::Equals(key, value)
                        }
                    }
                    Some(Token::Ident(word)) if word == "in" || word == "notin" => {
                        let not = word == "notin";
                        it.next();
                        let values = parse_set(&mut it, &key)?;
                        if not {
                            Requirement::NotIn(key, values)
                        } else {
                            Requirement::In(key, values)
                        }
                    }
                    Some(other) => bail!(
                        "expected '=', '==', '!=', 'in', 'notin', ',' or the end after '{key}', found {other}"
                    ),
                }
            }
            other => bail!("expected a requirement, found {}", describe(other)),
        };
        requirements.push(requirement);
        match it.next() {
            None => break,
            Some(Token::Comma) => {}
            Some(other) => bail!("expected ',' or the end, found {other}"),
        }
    }
    Ok(LabelSelector { requirements })
}

fn describe(token: Option<Token>) -> String {
    token.map_or_else(|| "the end".to_string(), |t| t.to_string())
}

fn parse_set(
    it: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
    key: &str,
) -> anyhow::Result<BTreeSet<String>> {
    match it.next() {
        Some(Token::Open) => {}
        other => bail!(
            "expected '(' after '{key} in/notin', found {}",
            describe(other)
        ),
    }
    let mut values = BTreeSet::new();
    loop {
        match it.next() {
            Some(Token::Ident(v)) => {
                values.insert(check_value(&v)?);
            }
            other => bail!(
                "expected a value in the set of '{key}', found {}",
                describe(other)
            ),
        }
        match it.next() {
            Some(Token::Comma) => {}
            Some(Token::Close) => break,
            other => bail!(
                "expected ',' or ')' in the set of '{key}', found {}",
                describe(other)
            ),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e:#}"))
    }

    fn set(vs: &[&str]) -> BTreeSet<String> {
        vs.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = sel(
            "app=asr, tier!=debug,env in (prod, staging),track notin(canary),owner,!legacy,a==b",
        );
        assert_eq!(
            s.requirements,
            vec![
                Requirement::Equals("app".into(), "asr".into()),
                Requirement::NotEquals("tier".into(), "debug".into()),
                Requirement::In("env".into(), set(&["prod", "staging"])),
                Requirement::NotIn("track".into(), set(&["canary"])),
                Requirement::Exists("owner".into()),
                Requirement::DoesNotExist("legacy".into()),
                Requirement::Equals("a".into(), "b".into()),
            ]
        );
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(sel("").matches(&labels(&[])));
        assert!(sel("   ").matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn semantics_follow_kubernetes() {
        let pod = labels(&[("app", "asr"), ("tier", "backend"), ("env", "prod")]);
        let bare = labels(&[]);
        assert!(sel("app=asr").matches(&pod));
        assert!(sel("app==asr").matches(&pod));
        assert!(!sel("app=tts").matches(&pod));
        assert!(sel("tier!=debug").matches(&pod));
        assert!(!sel("tier!=backend").matches(&pod));
        // != and notin hold when the label is absent; = and in do not.
        assert!(sel("tier!=debug").matches(&bare));
        assert!(sel("env notin (dev)").matches(&bare));
        assert!(!sel("app=asr").matches(&bare));
        assert!(!sel("env in (prod)").matches(&bare));
        assert!(sel("env in (staging,prod)").matches(&pod));
        assert!(!sel("env notin (staging,prod)").matches(&pod));
        assert!(sel("app").matches(&pod));
        assert!(!sel("!app").matches(&pod));
        assert!(sel("!canary").matches(&pod));
        assert!(sel("app=asr,tier!=debug,env in (prod)").matches(&pod));
        assert!(!sel("app=asr,tier=debug").matches(&pod));
    }

    #[test]
    fn empty_value_and_prefixed_keys() {
        let pod = labels(&[("app.kubernetes.io/name", "asr"), ("flag", "")]);
        assert!(sel("app.kubernetes.io/name=asr").matches(&pod));
        assert!(sel("flag=").matches(&pod));
        assert!(!sel("flag!=").matches(&pod));
        assert!(sel("app.kubernetes.io/name in (asr, tts),flag").matches(&pod));
    }

    #[test]
    fn keywords_are_keys_where_a_key_is_expected() {
        assert_eq!(
            sel("in=x").requirements,
            vec![Requirement::Equals("in".into(), "x".into())]
        );
        assert_eq!(
            sel("notin").requirements,
            vec![Requirement::Exists("notin".into())]
        );
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "app=asr,",
            ",app",
            "app asr",
            "app in asr",
            "app in ()",
            "app in (a,)",
            "app in (a b)",
            "app in (a",
            "=asr",
            "!",
            "!app=asr",
            "app=a=b",
            "app>3",
            "-app=x",
            "app=x-",
            "UPPER.example/app=x",
            "app=(x)",
        ] {
            assert!(bad.parse::<LabelSelector>().is_err(), "{bad:?} parsed");
        }
        let err = format!("{:#}", "app in asr".parse::<LabelSelector>().unwrap_err());
        assert!(err.contains("expected '('"), "{err}");
    }

    fn meta() -> PodMeta {
        PodMeta {
            namespace: "voice".into(),
            pod: "asr-7d9c6b5f8d-x2k4q".into(),
            pod_uid: "8f6a0c4e-3b1d-4e8a-9c2f-5d7b1a0e6c3f".into(),
            container: "asr".into(),
            workload: "asr".into(),
            workload_kind: "Deployment".into(),
            labels: labels(&[("app", "asr"), ("tier", "backend")]),
        }
    }

    #[test]
    fn selector_combines_namespace_labels_and_container() {
        let m = meta();
        assert!(Selector::default().matches(&m));
        assert!(Selector::new(&["voice"], Some("app=asr"), &["asr"])
            .unwrap()
            .matches(&m));
        assert!(
            Selector::new(&["default", "voice"], None, &["envoy", "asr"])
                .unwrap()
                .matches(&m)
        );
        assert!(!Selector::new(&["default"], None, &[]).unwrap().matches(&m));
        assert!(!Selector::new(&[], Some("app=tts"), &[])
            .unwrap()
            .matches(&m));
        assert!(!Selector::new(&[], None, &["envoy"]).unwrap().matches(&m));
        assert!(Selector::new(&[], Some("app=asr,("), &[]).is_err());
        let malformed = Selector {
            labels: Some("app in".into()),
            ..Default::default()
        };
        assert!(malformed.validate().is_err());
        assert!(!malformed.matches(&m));
    }
}
