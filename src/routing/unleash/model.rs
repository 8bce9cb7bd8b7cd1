//! Unleash's client API, as JSON (`GET /api/client/features`, the `state` of the client
//! specification) and as the same fields written in TOML. Only what evaluation reads is kept;
//! unknown fields are ignored, as Unleash's SDKs ignore them. Strategy parameters and constraint
//! values are strings in Unleash's API but numbers in some hand-written files: both are read.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A client API response, or a delta-API stream (`events`) that builds one. A feature or a
/// segment that is not of Unleash's shape does not spoil the rest: a feature is kept, disabled,
/// under its name (or left out without one), a segment is left out (so strategies that name it
/// do not hold, as in Unleash's engine), and each is said in `problems`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(from = "RawClientFeatures")]
pub struct ClientFeatures {
    pub features: Vec<Feature>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    /// Delta API events; applied in order by [`ClientFeatures::resolve_events`].
    #[serde(skip_serializing)]
    pub events: Option<Vec<DeltaEvent>>,
    /// What was not read, one line each.
    #[serde(skip)]
    pub problems: Vec<String>,
    /// How many features were read whole.
    #[serde(skip)]
    pub readable: usize,
}

#[derive(Deserialize)]
struct RawClientFeatures {
    #[serde(default, deserialize_with = "null_as_default")]
    features: Vec<Lenient<Feature>>,
    #[serde(default, deserialize_with = "null_as_default")]
    segments: Vec<Lenient<Segment>>,
    #[serde(default)]
    events: Option<Vec<DeltaEvent>>,
}

impl From<RawClientFeatures> for ClientFeatures {
    fn from(raw: RawClientFeatures) -> ClientFeatures {
        let mut problems = Vec::new();
        let readable = raw.features.iter().filter(|f| f.0.is_ok()).count();
        let features = raw
            .features
            .into_iter()
            .filter_map(|f| match f.0 {
                Ok(f) => Some(f),
                Err((name, e)) if !name.is_empty() => {
                    problems.push(format!(
                        "feature `{name}` is not of Unleash's shape ({e}): it is disabled"
                    ));
                    Some(Feature {
                        name,
                        ..Feature::default()
                    })
                }
                Err((_, e)) => {
                    problems.push(format!("a feature without a name is left out ({e})"));
                    None
                }
            })
            .collect();
        let segments = raw
            .segments
            .into_iter()
            .filter_map(|s| match s.0 {
                Ok(s) => Some(s),
                Err((_, e)) => {
                    problems.push(format!(
                        "a segment is not of Unleash's shape ({e}): it is left out, and strategies that name it do not hold"
                    ));
                    None
                }
            })
            .collect();
        ClientFeatures {
            features,
            segments,
            events: raw.events,
            problems,
            readable,
        }
    }
}

/// One element read on its own: its value, or its `name` and why it is not a `T`.
struct Lenient<T>(Result<T, (String, String)>);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("").to_owned();
        Ok(Lenient(T::deserialize(v).map_err(|e| (name, e.to_string()))))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Feature {
    pub name: String,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub strategies: Vec<Strategy>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub variants: Vec<Variant>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub dependencies: Vec<Dependency>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    pub name: String,
    #[serde(default, deserialize_with = "string_map")]
    pub parameters: HashMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub constraints: Vec<Constraint>,
    /// Segment ids (Unleash) or names (switchyard's TOML).
    #[serde(default, deserialize_with = "null_as_default")]
    pub segments: Vec<SegmentRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SegmentRef {
    Id(i64),
    Name(String),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Constraint {
    pub context_name: String,
    pub operator: String,
    #[serde(default, deserialize_with = "string_list")]
    pub values: Vec<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub value: Option<String>,
    #[serde(default)]
    pub inverted: bool,
    #[serde(default)]
    pub case_insensitive: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Segment {
    #[serde(default)]
    pub id: i64,
    /// switchyard's TOML names segments; Unleash numbers them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    pub name: String,
    #[serde(default)]
    pub weight: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Payload {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(deserialize_with = "any_string")]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub context_name: String,
    #[serde(default, deserialize_with = "string_list")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Dependency {
    pub feature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<String>>,
}

/// One event of Unleash's delta API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeltaEvent {
    Hydration {
        #[serde(default)]
        features: Vec<Feature>,
        #[serde(default)]
        segments: Vec<Segment>,
    },
    FeatureUpdated {
        feature: Feature,
    },
    #[serde(rename_all = "camelCase")]
    FeatureRemoved {
        feature_name: String,
    },
    SegmentUpdated {
        segment: Segment,
    },
    #[serde(rename_all = "camelCase")]
    SegmentRemoved {
        segment_id: i64,
    },
}

impl ClientFeatures {
    /// Applies delta-API events, if the document is a stream of them, into plain state.
    pub fn resolve_events(mut self) -> ClientFeatures {
        let Some(events) = self.events.take() else {
            return self;
        };
        for e in events {
            match e {
                DeltaEvent::Hydration { features, segments } => {
                    self.features = features;
                    self.segments = segments;
                }
                DeltaEvent::FeatureUpdated { feature } => {
                    match self.features.iter_mut().find(|f| f.name == feature.name) {
                        Some(f) => *f = feature,
                        None => self.features.push(feature),
                    }
                }
                DeltaEvent::FeatureRemoved { feature_name } => {
                    self.features.retain(|f| f.name != feature_name)
                }
                DeltaEvent::SegmentUpdated { segment } => {
                    match self.segments.iter_mut().find(|s| s.id == segment.id) {
                        Some(s) => *s = segment,
                        None => self.segments.push(segment),
                    }
                }
                DeltaEvent::SegmentRemoved { segment_id } => self.segments.retain(|s| s.id != segment_id),
            }
        }
        self
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A scalar as Unleash's SDKs see it: strings as they are, numbers and booleans as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

fn any_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    // JSON payloads may be objects in hand-written files: keep their text.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        S(Scalar),
        J(serde_json::Value),
    }
    Ok(match Any::deserialize(d)? {
        Any::S(s) => s.text(),
        Any::J(j) => j.to_string(),
    })
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::text))
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<Scalar>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(Scalar::text)
        .collect())
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    Ok(Option::<HashMap<String, Option<Scalar>>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?.text())))
        .collect())
}
