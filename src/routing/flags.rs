//! Feature flags, evaluated per request with Unleash's model ([`super::unleash`]) and sent
//! upstream as one RFC 8941 dictionary header (`new_checkout=on, dark_mode=off,
//! search=treatment`), with the payloads of the variants that have one in a second header, so
//! services read flags from the request instead of calling a flag service. The formulas are
//! Unleash's (see [`super::bucket`]), so an app using an Unleash SDK with the same flag and
//! user id gets the same answer.
//!
//! A flag comes from `[[flags]]` (the shorthand `percent`/`users`/`variants`, or Unleash's
//! strategies written in TOML) or from an Unleash feature file (`flags_from`); both compile to
//! the same [`Toggle`].

use std::fmt::Write;
use std::sync::Arc;

use super::unleash::model::{Feature, Payload};
use super::unleash::{Context, Toggle, Toggles, Why};

/// One compiled flag.
#[derive(Debug, Clone)]
pub struct Flag {
    /// The flag's name (Unleash's feature name).
    pub name: Arc<str>,
    /// Its key in the flags header: the name if it is an RFC 8941 key, else [`header_key`]'s.
    pub key: Arc<str>,
    /// The definition in Unleash's form, as compiled (what `diff` compares).
    pub def: Feature,
    pub toggle: Toggle,
    /// False when `environments` is set and does not name this deployment's `[env] name`.
    pub env_enabled: bool,
    /// Route names this flag is limited to; `None`: every route.
    pub routes: Option<Vec<String>>,
    /// Loaded from `flags_from` rather than written in the TOML.
    pub from_file: bool,
    /// The shorthand's percentage, when the flag is written that way (for display).
    pub percent: Option<u32>,
    /// Distinct variant names, in order of first appearance.
    pub variant_names: Vec<String>,
    /// For each of `toggle.outputs`, its index in `variant_names`.
    labels: Vec<u16>,
    /// For each of `toggle.outputs`, its name as the flags header writes it ([`push_item`]).
    items: Vec<Box<str>>,
}

/// What a flag evaluated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    On,
    Off,
    /// Index into the toggle's outputs.
    Variant(u16),
}

/// Why, for `switchyard explain` and OFREP.
pub type Reason = Why;

impl Flag {
    pub fn new(
        def: Feature,
        mut toggle: Toggle,
        env_enabled: bool,
        routes: Option<Vec<String>>,
        from_file: bool,
    ) -> Flag {
        toggle.enabled &= env_enabled;
        let mut variant_names: Vec<String> = Vec::new();
        let labels = toggle
            .outputs
            .iter()
            .map(|o| match variant_names.iter().position(|n| *n == o.name) {
                Some(i) => i as u16,
                None => {
                    variant_names.push(o.name.clone());
                    (variant_names.len() - 1) as u16
                }
            })
            .collect();
        let items = toggle
            .outputs
            .iter()
            .map(|o| {
                let mut s = String::new();
                push_item(&mut s, &o.name);
                s.into()
            })
            .collect();
        Flag {
            items,
            key: header_key(&def.name).into(),
            name: def.name.as_str().into(),
            def,
            toggle,
            env_enabled,
            routes,
            from_file,
            percent: None,
            variant_names,
            labels,
        }
    }

    /// Evaluates the flag for a request (`all`: every flag, for dependencies).
    pub fn evaluate<C: Context + ?Sized>(&self, all: &[Flag], ctx: &C) -> (Value, Reason) {
        if !self.env_enabled {
            return (Value::Off, Why::OtherEnvironment);
        }
        let e = self.toggle.evaluate(all, ctx);
        let value = match (e.enabled, e.variant) {
            (false, _) => Value::Off,
            (true, None) => Value::On,
            (true, Some(v)) => Value::Variant(v),
        };
        (value, e.why)
    }

    /// Whether `other` gives every request the value this flag gives it (the same definition;
    /// the routes a flag is limited to do not change its value).
    pub fn decides_like(&self, other: &Flag) -> bool {
        self.def == other.def
            && self.env_enabled == other.env_enabled
            && self.toggle.window == other.toggle.window
    }

    /// The value's name: `on`, `off`, or the variant's.
    pub fn token(&self, value: Value) -> &str {
        match value {
            Value::On => "on",
            Value::Off => "off",
            Value::Variant(i) => &self.toggle.outputs[i as usize].name,
        }
    }

    /// The value as the flags header writes it: a token, or a (display) string.
    pub fn item(&self, value: Value) -> &str {
        match value {
            Value::On => "on",
            Value::Off => "off",
            Value::Variant(i) => &self.items[i as usize],
        }
    }

    pub fn payload(&self, value: Value) -> Option<&Payload> {
        match value {
            Value::Variant(i) => self.toggle.outputs[i as usize].payload.as_ref(),
            _ => None,
        }
    }

    /// The value's position among `off`, `on` and [`Flag::variant_names`] (metrics' order).
    pub fn label(&self, value: Value) -> usize {
        match value {
            Value::Off => 0,
            Value::On => 1,
            Value::Variant(i) => 2 + self.labels[i as usize] as usize,
        }
    }

    /// The longest this flag's item can be in the flags header (`key=value`), and in the
    /// payloads header (`key="payload";type=kind`; 0 without payloads).
    pub fn longest_items(&self) -> (usize, usize) {
        let value = self.items.iter().map(|i| i.len()).max().unwrap_or(0).max(3);
        let mut item = String::new();
        let payload = self
            .toggle
            .outputs
            .iter()
            .filter_map(|o| o.payload.as_ref())
            .map(|p| {
                item.clear();
                push_payload(&mut item, &self.key, p);
                item.len()
            })
            .max()
            .unwrap_or(0);
        (self.key.len() + 1 + value, payload)
    }

    /// Whether the flag has variants (its value is a name, not on/off).
    pub fn has_variants(&self) -> bool {
        !self.toggle.outputs.is_empty()
    }

    /// A line about how the flag decides, for `status` and the API.
    pub fn summary(&self) -> String {
        if !self.env_enabled {
            return "off (other environment)".into();
        }
        if !self.toggle.enabled {
            return "disabled".into();
        }
        let mut s = String::new();
        if let Some(p) = self.percent {
            let _ = write!(s, "{p}%");
            let users = self.def.strategies.iter().find(|x| x.name == "userWithId");
            if let Some(ids) = users.and_then(|u| u.parameters.get("userIds")) {
                let _ = write!(s, ", {} users", ids.split(',').count());
            }
        } else if self.def.strategies.is_empty() {
            s.push_str("on for everyone");
        } else {
            for (i, _) in self.def.strategies.iter().enumerate() {
                if i > 0 {
                    s.push_str(" | ");
                }
                s.push_str(self.toggle.strategy_label(i as u16));
            }
        }
        for (d, _) in self.toggle.dependencies() {
            let _ = write!(s, ", needs {d}");
        }
        s
    }
}

impl Toggles for [Flag] {
    fn toggle(&self, index: usize) -> &Toggle {
        &self[index].toggle
    }
}

/// The flags-header key of a flag name: the name itself when it is an RFC 8941 key; else
/// lower-cased, each character outside `a-z 0-9 _ - . *` replaced by `_`, and `f_` put in
/// front unless it then starts with a letter (`Feature.A` → `feature.a`, `2fa` → `f_2fa`,
/// `Nouveau café` → `nouveau_caf_`). Two names that give one key: the later gets `-2`, `-3`...
/// (by [`unique_keys`]).
pub fn header_key(name: &str) -> String {
    if is_key(name) {
        return name.to_owned();
    }
    let mut k: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | '*') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !k.starts_with(|c: char| c.is_ascii_lowercase()) {
        k.insert_str(0, "f_");
    }
    k
}

/// Makes the flags' header keys unique, in order: a key already taken gets `-2`, `-3`...
pub fn unique_keys(flags: &mut [Flag]) {
    let mut seen = std::collections::HashSet::new();
    for f in flags {
        if seen.insert(f.key.clone()) {
            continue;
        }
        for n in 2.. {
            let k: Arc<str> = format!("{}-{n}", f.key).into();
            if seen.insert(k.clone()) {
                f.key = k;
                break;
            }
        }
    }
}

/// Appends `s` as an RFC 8941 bare item: a token when it is one, a string when it is printable
/// ASCII, else an RFC 9651 display string (`%"caf%c3%a9"`).
pub fn push_item(out: &mut String, s: &str) {
    if is_token(s) {
        out.push_str(s);
        return;
    }
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        out.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        return;
    }
    out.push_str("%\"");
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' && b != b'"' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out.push('"');
}

/// Appends `s` as an RFC 8941 string (a display string if it is not printable ASCII), never a
/// token: payloads stay strings whatever their text.
/// One payloads-header item: `key="payload";type=kind`.
pub fn push_payload(out: &mut String, key: &str, p: &Payload) {
    out.push_str(key);
    out.push('=');
    push_item_string(out, &p.value);
    out.push_str(";type=");
    push_item(out, &p.kind);
}

pub fn push_item_string(out: &mut String, s: &str) {
    if is_token(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        push_item(out, s);
    }
}

/// True for an RFC 8941 dictionary key: `[a-z*][a-z0-9_.*-]*`.
pub fn is_key(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase() || c == b'*')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.' | b'*'))
}

/// True for an RFC 8941 token: `[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]*`.
pub fn is_token(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'*')
        && b.all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_keys_and_tokens() {
        assert!(is_key("new_checkout") && is_key("a.b-c*") && !is_key("New") && !is_key("1a") && !is_key(""));
        assert!(is_token("treatment") && is_token("B/2") && !is_token("2b") && !is_token("a b"));
    }

    #[test]
    fn header_keys_follow_the_documented_rule() {
        assert_eq!(header_key("new_checkout"), "new_checkout");
        assert_eq!(header_key("Feature.A"), "feature.a");
        assert_eq!(header_key("2fa"), "f_2fa");
        assert_eq!(header_key("Nouveau café"), "nouveau_caf_");
        assert_eq!(header_key("ünïcode"), "f__n_code");
        assert!(is_key(&header_key("ünïcode")) && is_key(&header_key("_x")) && is_key(&header_key("")));
    }

    #[test]
    fn items_are_tokens_strings_or_display_strings() {
        let item = |s: &str| {
            let mut o = String::new();
            push_item(&mut o, s);
            o
        };
        assert_eq!(item("treatment"), "treatment");
        assert_eq!(item("variant 1"), "\"variant 1\"");
        assert_eq!(item(r#"{"a":"\"}"#), r#""{\"a\":\"\\\"}""#);
        assert_eq!(item("café 100%"), "%\"caf%c3%a9 100%25\"");
    }
}
