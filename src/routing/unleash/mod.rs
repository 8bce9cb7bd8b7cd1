//! Unleash's evaluation model, compiled once per snapshot: features with strategies (built-in
//! ones, with constraints and segments), variants (weights, stickiness, overrides, payloads, per
//! strategy or per feature) and dependencies on other features. The semantics are those of
//! Unleash's client specification (`@unleash/client-specification`), which `tests/unleash_spec.rs`
//! runs in full; `unleash-yggdrasil` is the reference in a differential test.
//!
//! Evaluation is pure: the request's attributes come through [`Context`], time is the context's,
//! and randomness (for `random` stickiness) is asked of the context too. It allocates nothing.

mod constraint;
pub mod model;
pub mod ops;

use constraint::Set;
pub use constraint::{Cond, MAX_REGEX_PATTERN, MAX_REGEX_PROGRAM, MAX_REGEX_TEXT};

use std::collections::HashMap;

use super::bucket;
use model::{ClientFeatures, Constraint, Feature, Payload, SegmentRef, Strategy, Variant};
use ops::Cidr;

/// A context field, resolved from its name when the config is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    UserId,
    SessionId,
    RemoteAddress,
    Environment,
    AppName,
    CurrentTime,
    /// A property: index into [`Schema::names`].
    Prop(u16),
}

/// The property names a snapshot's flags and rules read, numbered so that a request's values
/// are found by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    names: Vec<Box<str>>,
}

impl Schema {
    /// The field `name` denotes, numbering a new property if needed.
    pub fn field(&mut self, name: &str) -> Field {
        if let Some(f) = builtin(name) {
            return f;
        }
        match self.names.iter().position(|n| &**n == name) {
            Some(i) => Field::Prop(i as u16),
            None => {
                self.names.push(name.into());
                Field::Prop((self.names.len() - 1) as u16)
            }
        }
    }

    /// The field `name` denotes, if it is built in or already numbered.
    pub fn lookup(&self, name: &str) -> Option<Field> {
        builtin(name).or_else(|| {
            self.names
                .iter()
                .position(|n| &**n == name)
                .map(|i| Field::Prop(i as u16))
        })
    }

    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    pub fn name(&self, field: Field) -> &str {
        match field {
            Field::UserId => "userId",
            Field::SessionId => "sessionId",
            Field::RemoteAddress => "remoteAddress",
            Field::Environment => "environment",
            Field::AppName => "appName",
            Field::CurrentTime => "currentTime",
            Field::Prop(i) => &self.names[i as usize],
        }
    }
}

fn builtin(name: &str) -> Option<Field> {
    Some(match name {
        "userId" => Field::UserId,
        "sessionId" => Field::SessionId,
        "remoteAddress" => Field::RemoteAddress,
        "environment" => Field::Environment,
        "appName" => Field::AppName,
        "currentTime" => Field::CurrentTime,
        _ => return None,
    })
}

/// What evaluation reads of a request (or of an OFREP body, or of a test case).
pub trait Context {
    fn get(&self, field: Field) -> Option<&str>;
    /// Milliseconds since the Unix epoch, for date constraints when `currentTime` is not given.
    fn now_ms(&self) -> i64;
    /// A uniformly random number, for `random` stickiness and `gradualRolloutRandom`.
    fn random(&self) -> u32;
    /// What stickiness `default` hashes when there is no userId or sessionId (Unleash: a random
    /// number). The proxy always has a user key, even an empty one: it hashes that, so one
    /// request's answer is the next one's.
    fn sticky_fallback(&self) -> Option<&str> {
        None
    }
}

/// Stickiness `default`: userId, else sessionId (empty ones do not count, as in Unleash), else
/// the context's fallback; `None`: random.
fn default_seed<C: Context + ?Sized>(ctx: &C) -> Option<&str> {
    ctx.get(Field::UserId)
        .filter(|s| !s.is_empty())
        .or_else(|| ctx.get(Field::SessionId).filter(|s| !s.is_empty()))
        .or_else(|| ctx.sticky_fallback())
}

/// Where a sticky decision takes its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stick {
    /// userId, else sessionId, else random.
    Default,
    Random,
    Field(Field),
}

impl Stick {
    fn parse(s: Option<&str>, schema: &mut Schema) -> Stick {
        match s {
            None | Some("default") | Some("") => Stick::Default,
            Some("random") => Stick::Random,
            Some(other) => Stick::Field(schema.field(other)),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Always,
    Never,
    Users(Set),
    /// flexibleRollout, gradualRolloutUserId, gradualRolloutSessionId.
    Rollout {
        percent: Option<f64>,
        stick: Stick,
        group: Box<str>,
        /// gradualRollout*: the field must be present (never random).
        strict: bool,
    },
    Random(Option<f64>),
    Addresses(Box<[Box<str>]>, Box<[Cidr]>),
}

/// One compiled strategy.
#[derive(Debug, Clone)]
pub struct Strat {
    kind: Kind,
    conds: Box<[Cond]>,
    variants: Option<VariantSet>,
    /// What it was, for `explain`.
    pub label: String,
}

/// Variants with their weights and where their stickiness comes from.
#[derive(Debug, Clone)]
struct VariantSet {
    group: Box<str>,
    stick: Stick,
    total: u32,
    /// `(index into Toggle::outputs, weight)`.
    list: Box<[(u16, u32)]>,
    /// `(field, values, index into Toggle::outputs)`: variants forced by a context value.
    overrides: Box<[(Field, Set, u16)]>,
}

/// A variant as the header and OFREP show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub payload: Option<Payload>,
}

#[derive(Debug, Clone)]
struct Dep {
    parent: String,
    /// Index of the parent among the toggles, once linked.
    index: Option<usize>,
    enabled: bool,
    variants: Option<Set>,
}

/// One compiled feature.
#[derive(Debug, Clone)]
pub struct Toggle {
    pub name: String,
    pub enabled: bool,
    strategies: Box<[Strat]>,
    variants: Option<VariantSet>,
    deps: Box<[Dep]>,
    /// Every variant the toggle can give, feature-level ones first in written order.
    pub outputs: Vec<Output>,
    /// `[start, end)` in Unix ms: outside it the toggle is off (switchyard's time window).
    pub window: (Option<i64>, Option<i64>),
}

/// Why a toggle evaluated as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Disabled,
    /// switchyard's `environments` does not name this deployment.
    OtherEnvironment,
    OutsideWindow,
    /// The dependency at this index (into [`Toggle::dependencies`]) is not satisfied.
    Dependency(u16),
    /// No strategy admitted the context.
    NoStrategy,
    /// The strategy at `index` admitted it; `bucket` is the rollout bucket (1..=100) if it had one.
    Strategy {
        index: u16,
        bucket: Option<u8>,
    },
    /// No strategies: on for everyone.
    NoStrategies,
}

/// What a toggle evaluated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eval {
    pub enabled: bool,
    /// Index into [`Toggle::outputs`], when enabled and a variant was chosen.
    pub variant: Option<u16>,
    pub why: Why,
}

/// Access to the toggles a dependency names.
pub trait Toggles {
    fn toggle(&self, index: usize) -> &Toggle;
}

impl Toggles for [Toggle] {
    fn toggle(&self, index: usize) -> &Toggle {
        &self[index]
    }
}

/// What compiling needs besides the feature.
pub struct Env<'a> {
    /// This machine's host name, for `applicationHostname`.
    pub hostname: &'a str,
}

impl Toggle {
    /// Compiles a feature. `segments` resolves a strategy's segment reference to its
    /// constraints (`None`: no such segment, and the strategy is then off, as in Unleash).
    /// Problems Unleash would silently evaluate as false are pushed to `warn`.
    pub fn compile(
        f: &Feature,
        segments: &dyn Fn(&SegmentRef) -> Option<Vec<Constraint>>,
        schema: &mut Schema,
        env: &Env<'_>,
        warn: &mut Vec<String>,
    ) -> Toggle {
        let mut outputs: Vec<Output> = Vec::new();
        let out_index = |v: &Variant, outputs: &mut Vec<Output>| -> u16 {
            let o = Output {
                name: v.name.clone(),
                payload: v.payload.clone(),
            };
            match outputs.iter().position(|x| *x == o) {
                Some(i) => i as u16,
                None => {
                    outputs.push(o);
                    (outputs.len() - 1) as u16
                }
            }
        };
        let variant_set =
            |list: &[Variant], group: &str, stick: Stick, schema: &mut Schema, outputs: &mut Vec<Output>| {
                if list.is_empty() {
                    return None;
                }
                let mut overrides = Vec::new();
                let entries: Vec<(u16, u32)> = list
                    .iter()
                    .map(|v| {
                        let i = out_index(v, outputs);
                        for o in &v.overrides {
                            overrides.push((
                                schema.field(&o.context_name),
                                Set::new(o.values.iter().cloned()),
                                i,
                            ));
                        }
                        (i, u32::try_from(v.weight.max(0)).unwrap_or(u32::MAX))
                    })
                    .collect();
                let total = entries.iter().fold(0u32, |a, (_, w)| a.saturating_add(*w));
                Some(VariantSet {
                    group: group.into(),
                    stick,
                    total,
                    list: entries.into(),
                    overrides: overrides.into(),
                })
            };
        // Feature-level variants first, so that their outputs keep their written order.
        let variants = variant_set(
            &f.variants,
            &f.name,
            Stick::parse(f.variants.first().and_then(|v| v.stickiness.as_deref()), schema),
            schema,
            &mut outputs,
        );
        let strategies = f
            .strategies
            .iter()
            .map(|s| {
                let mut strat = Strat::compile(s, &f.name, segments, schema, env, warn);
                let stick = Stick::parse(s.parameters.get("stickiness").map(String::as_str), schema);
                let group = s
                    .parameters
                    .get("groupId")
                    .map_or(f.name.as_str(), String::as_str);
                strat.variants = variant_set(&s.variants, group, stick, schema, &mut outputs);
                strat
            })
            .collect();
        let deps = f
            .dependencies
            .iter()
            .map(|d| Dep {
                parent: d.feature.clone(),
                index: None,
                enabled: d.enabled.unwrap_or(true),
                variants: d
                    .variants
                    .as_ref()
                    .filter(|v| !v.is_empty())
                    .map(|v| Set::new(v.iter().cloned())),
            })
            .collect();
        Toggle {
            name: f.name.clone(),
            enabled: f.enabled,
            strategies,
            variants,
            deps,
            outputs,
            window: (None, None),
        }
    }

    /// Hashes feature-level variants in `group` instead of the feature's name (switchyard's
    /// shorthand flags keep their `group` for variants too).
    pub fn set_variant_group(&mut self, group: &str) {
        if let Some(v) = &mut self.variants {
            v.group = group.into();
        }
    }

    /// Resolves dependencies by name; unresolved ones leave the toggle off (as in Unleash).
    pub fn link(&mut self, index_of: &dyn Fn(&str) -> Option<usize>) {
        for d in self.deps.iter_mut() {
            d.index = index_of(&d.parent);
        }
    }

    /// The names this toggle depends on, with whether they resolved.
    pub fn dependencies(&self) -> impl Iterator<Item = (&str, bool)> {
        self.deps.iter().map(|d| (d.parent.as_str(), d.index.is_some()))
    }

    pub fn strategy_label(&self, index: u16) -> &str {
        &self.strategies[index as usize].label
    }

    /// Whether the toggle gives everyone the same answer (on for all with one variant at most,
    /// or off): then it needs no user key.
    pub fn is_static(&self) -> bool {
        let one_variant = |v: &Option<VariantSet>| {
            v.as_ref()
                .is_none_or(|v| v.list.iter().filter(|(_, w)| *w > 0).count() <= 1 && v.overrides.is_empty())
        };
        !self.enabled
            || (self.deps.is_empty()
                && self.window == (None, None)
                && one_variant(&self.variants)
                && match self.strategies.first() {
                    None => true,
                    Some(s) => {
                        matches!(s.kind, Kind::Always) && s.conds.is_empty() && one_variant(&s.variants)
                    }
                })
    }

    /// Whether the answer depends on who the user is (a rollout, a user list, or a choice
    /// among variants), so that it needs a user or session id to be sticky.
    pub fn sticky(&self) -> bool {
        let several = |v: &Option<VariantSet>| {
            v.as_ref()
                .is_some_and(|v| v.list.iter().filter(|(_, w)| *w > 0).count() > 1)
        };
        self.enabled
            && (several(&self.variants)
                || self.strategies.iter().any(|s| {
                    several(&s.variants)
                        || matches!(s.kind, Kind::Rollout { .. } | Kind::Users(_) | Kind::Random(_))
                }))
    }

    /// Evaluates the toggle: enabled, and which variant.
    pub fn evaluate<C: Context + ?Sized, T: Toggles + ?Sized>(&self, all: &T, ctx: &C) -> Eval {
        let off = |why| Eval {
            enabled: false,
            variant: None,
            why,
        };
        if !self.enabled {
            return off(Why::Disabled);
        }
        if self.window != (None, None) {
            let now = ctx.now_ms();
            if self.window.0.is_some_and(|s| now < s) || self.window.1.is_some_and(|e| now >= e) {
                return off(Why::OutsideWindow);
            }
        }
        for (i, d) in self.deps.iter().enumerate() {
            if !d.satisfied(all, ctx) {
                return off(Why::Dependency(i as u16));
            }
        }
        let (why, strategy_variants) = if self.strategies.is_empty() {
            (Why::NoStrategies, None)
        } else {
            let mut found = None;
            for (i, s) in self.strategies.iter().enumerate() {
                if let Some(bucket) = s.admits(ctx) {
                    found = Some((
                        Why::Strategy {
                            index: i as u16,
                            bucket,
                        },
                        s.variants.as_ref(),
                    ));
                    break;
                }
            }
            match found {
                Some(f) => f,
                None => return off(Why::NoStrategy),
            }
        };
        let variant = match strategy_variants {
            Some(v) => v.choose(ctx),
            None => self.variants.as_ref().and_then(|v| v.choose(ctx)),
        };
        Eval {
            enabled: true,
            variant,
            why,
        }
    }
}

impl Dep {
    fn satisfied<C: Context + ?Sized, T: Toggles + ?Sized>(&self, all: &T, ctx: &C) -> bool {
        let Some(i) = self.index else {
            return false;
        };
        let parent = all.toggle(i);
        // Unleash follows one level of dependencies only.
        if !parent.deps.is_empty() {
            return false;
        }
        let e = parent.evaluate(all, ctx);
        if !self.enabled {
            return !e.enabled;
        }
        match &self.variants {
            // An enabled parent without a variant has the variant "disabled", as Unleash says.
            Some(names) => e.enabled && names.contains(variant_name(parent, &e)),
            None => e.enabled,
        }
    }
}

impl Strat {
    fn compile(
        s: &Strategy,
        toggle: &str,
        segments: &dyn Fn(&SegmentRef) -> Option<Vec<Constraint>>,
        schema: &mut Schema,
        env: &Env<'_>,
        warn: &mut Vec<String>,
    ) -> Strat {
        let p = |k: &str| s.parameters.get(k).map(String::as_str);
        let pct = |k: &str| p(k).and_then(ops::number);
        let list = |k: &str| -> Vec<String> {
            p(k).map(|v| v.split(',').map(|x| x.trim().to_owned()).collect())
                .unwrap_or_default()
        };
        let mut label = s.name.clone();
        let mut kind = match s.name.as_str() {
            "default" => Kind::Always,
            "userWithId" => match p("userIds") {
                Some(_) => Kind::Users(Set::new(list("userIds"))),
                None => Kind::Never,
            },
            "flexibleRollout" => {
                let percent = pct("rollout");
                label = format!("flexibleRollout {}%", p("rollout").unwrap_or("?"));
                Kind::Rollout {
                    percent,
                    stick: Stick::parse(p("stickiness"), schema),
                    group: p("groupId").filter(|g| !g.is_empty()).unwrap_or(toggle).into(),
                    strict: false,
                }
            }
            "gradualRolloutUserId" | "gradualRolloutSessionId" => Kind::Rollout {
                percent: pct("percentage"),
                stick: Stick::Field(if s.name == "gradualRolloutUserId" {
                    Field::UserId
                } else {
                    Field::SessionId
                }),
                group: p("groupId").unwrap_or("").into(),
                strict: true,
            },
            "gradualRolloutRandom" => Kind::Random(pct("percentage")),
            "remoteAddress" => match p("IPs") {
                Some(_) => {
                    let l = list("IPs");
                    let cidrs: Vec<Cidr> = l
                        .iter()
                        .filter(|x| x.contains('/'))
                        .filter_map(|x| Cidr::parse(x))
                        .collect();
                    Kind::Addresses(l.into_iter().map(Into::into).collect(), cidrs.into())
                }
                None => Kind::Never,
            },
            "applicationHostname" => {
                let host = env.hostname.to_lowercase();
                if list("hostNames").iter().any(|h| h.to_lowercase() == host) {
                    Kind::Always
                } else {
                    Kind::Never
                }
            }
            other => {
                warn.push(format!(
                    "`{other}` is not a built-in strategy (custom strategies are off)"
                ));
                Kind::Never
            }
        };
        let mut conds: Vec<Cond> = s
            .constraints
            .iter()
            .map(|c| Cond::compile(c, schema, warn))
            .collect();
        for r in &s.segments {
            match segments(r) {
                Some(cs) => conds.extend(cs.iter().map(|c| Cond::compile(c, schema, warn))),
                None => {
                    warn.push(format!(
                        "segment {} does not exist (the strategy is off)",
                        match r {
                            SegmentRef::Id(i) => i.to_string(),
                            SegmentRef::Name(n) => format!("`{n}`"),
                        }
                    ));
                    kind = Kind::Never;
                }
            }
        }
        if !conds.is_empty() {
            label.push_str(&format!(
                " with {} constraint{}",
                conds.len(),
                if conds.len() == 1 { "" } else { "s" }
            ));
        }
        Strat {
            kind,
            conds: conds.into(),
            variants: None,
            label,
        }
    }

    /// `None` if the strategy does not admit the context; else the rollout bucket, if any.
    fn admits<C: Context + ?Sized>(&self, ctx: &C) -> Option<Option<u8>> {
        let r = match &self.kind {
            Kind::Always => Some(None),
            Kind::Never => None,
            Kind::Users(set) => ctx
                .get(Field::UserId)
                .is_some_and(|u| set.contains(u))
                .then_some(None),
            Kind::Rollout {
                percent,
                stick,
                group,
                strict,
            } => {
                if !percent.is_some_and(|p| p > 0.0) {
                    return None;
                }
                let seed = match stick {
                    Stick::Default => default_seed(ctx),
                    Stick::Random => None,
                    Stick::Field(f) => match ctx.get(*f).filter(|s| !s.is_empty()) {
                        Some(s) => Some(s),
                        None => return None,
                    },
                };
                if *strict && seed.is_none() {
                    return None;
                }
                let b = match seed {
                    Some(s) => bucket::flag_bucket(group, s),
                    None => ctx.random() % 100 + 1,
                };
                percent
                    .is_some_and(|p| p > 0.0 && f64::from(b) <= p)
                    .then_some(Some(b as u8))
            }
            Kind::Random(percent) => {
                let r = ctx.random() % 100 + 1;
                percent.is_some_and(|p| f64::from(r) <= p).then_some(None)
            }
            Kind::Addresses(exact, cidrs) => {
                let a = ctx.get(Field::RemoteAddress)?;
                let ip = a.parse().ok();
                (exact.iter().any(|e| &**e == a)
                    || ip.is_some_and(|ip| cidrs.iter().any(|c| c.contains_exact(ip))))
                .then_some(None)
            }
        };
        r.filter(|_| self.conds.iter().all(|c| c.holds(ctx)))
    }
}

impl VariantSet {
    fn choose<C: Context + ?Sized>(&self, ctx: &C) -> Option<u16> {
        if self.total == 0 {
            return None;
        }
        for (field, values, out) in self.overrides.iter() {
            if ctx.get(*field).is_some_and(|v| values.contains(v)) {
                return Some(*out);
            }
        }
        let seed = match self.stick {
            Stick::Default => default_seed(ctx),
            Stick::Random => None,
            Stick::Field(f) => ctx.get(f).filter(|s| !s.is_empty()),
        };
        let target = match seed {
            Some(s) => bucket::variant_target(&self.group, s, self.total),
            None => ctx.random() % self.total + 1,
        };
        let mut sum = 0u32;
        for &(out, w) in self.list.iter() {
            sum = sum.saturating_add(w);
            if sum >= target {
                return Some(out);
            }
        }
        None
    }
}

/// A compiled feature file: toggles by name, in file order.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub toggles: Vec<Toggle>,
    pub warnings: Vec<String>,
}

/// Compiles a client-API document (after its delta events, if any), linking dependencies among
/// its own toggles.
pub fn compile(doc: &ClientFeatures, schema: &mut Schema, env: &Env<'_>) -> Compiled {
    let by_id: HashMap<i64, &model::Segment> = doc.segments.iter().map(|s| (s.id, s)).collect();
    let by_name: HashMap<&str, &model::Segment> = doc
        .segments
        .iter()
        .filter_map(|s| Some((s.name.as_deref()?, s)))
        .collect();
    let lookup = |r: &SegmentRef| -> Option<Vec<Constraint>> {
        match r {
            SegmentRef::Id(i) => by_id.get(i),
            SegmentRef::Name(n) => by_name.get(n.as_str()),
        }
        .map(|s| s.constraints.clone())
    };
    let mut warnings = Vec::new();
    let mut toggles: Vec<Toggle> = doc
        .features
        .iter()
        .map(|f| {
            let mut w = Vec::new();
            let t = Toggle::compile(f, &lookup, schema, env, &mut w);
            warnings.extend(w.into_iter().map(|m| format!("{}: {m}", f.name)));
            t
        })
        .collect();
    let index: HashMap<String, usize> = toggles
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    for t in &mut toggles {
        t.link(&|n| index.get(n).copied());
    }
    Compiled { toggles, warnings }
}

/// The variant shape of Unleash's SDKs (`getVariant`), for OFREP and the specification tests.
pub fn variant_name<'t>(t: &'t Toggle, e: &Eval) -> &'t str {
    match e.variant {
        Some(v) => &t.outputs[v as usize].name,
        None => "disabled",
    }
}

#[cfg(test)]
mod tests;
