//! `flags_from`: an Unleash feature file, or an Unleash server polled into a cache file.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::super::errors::Errors;
use crate::routing::unleash::model::ClientFeatures;

/// Where `flags_from` reads: a file (relative to the config's directory), or an Unleash
/// server, polled into a cache file beside the config (which is what compiling reads, so a
/// restart while the server is down starts from the last answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagsFrom {
    File(PathBuf),
    Server(ServerSource),
}

/// `flags_from = { url, token_env, interval }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSource {
    /// The client API's URL (`https://unleash.example.com/api/client/features`).
    pub url: String,
    /// The variable that holds the client token (sent as `Authorization`).
    pub token_env: Option<String>,
    pub interval: std::time::Duration,
    /// The last document the server sent.
    pub cache: PathBuf,
}

/// Unleash's SDKs poll every 15 seconds.
pub const DEFAULT_POLL: std::time::Duration = std::time::Duration::from_secs(15);

impl FlagsFrom {
    /// The file compiling reads.
    pub fn file(&self) -> &Path {
        match self {
            FlagsFrom::File(p) => p,
            FlagsFrom::Server(s) => &s.cache,
        }
    }

    /// Reads and parses the document, with the revision of its bytes. A server whose cache
    /// does not exist yet has no flags (until its first answer).
    pub fn load(&self) -> Result<(ClientFeatures, String), String> {
        let p = self.file();
        let text = match std::fs::read(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && matches!(self, FlagsFrom::Server(_)) => {
                return Ok((ClientFeatures::default(), "none".into()))
            }
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
        };
        let rev = super::super::revision(&String::from_utf8_lossy(&text));
        let doc = parse_features(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok((doc, rev))
    }

    /// The revision of the config `text` with this document: what a reload compares.
    pub fn revision_with(&self, text: &str) -> String {
        let file = match std::fs::read(self.file()) {
            Ok(t) => super::super::revision(&String::from_utf8_lossy(&t)),
            Err(_) => "none".into(),
        };
        combined_revision(text, &file)
    }
}

/// The revision of a config text and its feature file's.
pub fn combined_revision(text: &str, file: &str) -> String {
    super::super::revision(&format!("{}+{file}", super::super::revision(text)))
}

/// Parses an Unleash client API document (or delta-API events) into plain state.
pub fn parse_features(text: &[u8]) -> Result<ClientFeatures, String> {
    let doc: ClientFeatures =
        serde_json::from_slice(text).map_err(|e| format!("not an Unleash client API document: {e}"))?;
    // Some features of another shape are disabled one by one; when none could be read, the
    // document itself is broken, and the last good one stays.
    if doc.readable == 0 && !doc.problems.is_empty() && doc.events.is_none() {
        return Err(format!(
            "not an Unleash client API document: no feature in it could be read ({})",
            doc.problems[0]
        ));
    }
    Ok(doc.resolve_events())
}

pub(super) fn flags_from(
    errs: &mut Errors<'_>,
    v: &Spanned<toml::Value>,
    base: &Path,
    config_name: &str,
) -> Option<FlagsFrom> {
    const FIX: &str = "write flags_from = \"features.json\", or { url = \"https://unleash.example.com/api/client/features\", token_env = \"UNLEASH_TOKEN\" }";
    match v.get_ref() {
        toml::Value::String(s) if !s.trim().is_empty() => Some(FlagsFrom::File(base.join(s))),
        toml::Value::Table(t) => {
            let before = errs.list.len();
            for k in t.keys() {
                if !matches!(k.as_str(), "url" | "token_env" | "interval") {
                    errs.at(
                        v,
                        format!("flags_from.{k}"),
                        "is not a setting of flags_from",
                        FIX,
                    );
                }
            }
            let url = t.get("url").and_then(|u| u.as_str()).unwrap_or("");
            let ok_url = url
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
            if !ok_url {
                errs.at(v, "flags_from.url", format!("`{url}` is not an http(s) URL"), FIX);
            }
            let token_env = match t.get("token_env") {
                None => None,
                Some(toml::Value::String(s))
                    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    Some(s.clone())
                }
                Some(_) => {
                    errs.at(
                        v,
                        "flags_from.token_env",
                        "must name an environment variable",
                        "write token_env = \"UNLEASH_TOKEN\"",
                    );
                    None
                }
            };
            let interval = match t.get("interval") {
                None => DEFAULT_POLL,
                Some(toml::Value::String(s)) => match humantime::parse_duration(s) {
                    Ok(d)
                        if d >= std::time::Duration::from_secs(1)
                            && d <= super::super::compile::MAX_DURATION =>
                    {
                        d
                    }
                    _ => {
                        errs.at(
                            v,
                            "flags_from.interval",
                            format!("`{s}` is not a duration of 1s or more"),
                            "write interval = \"15s\"",
                        );
                        DEFAULT_POLL
                    }
                },
                Some(_) => {
                    errs.at(
                        v,
                        "flags_from.interval",
                        "must be a duration",
                        "write interval = \"15s\"",
                    );
                    DEFAULT_POLL
                }
            };
            (errs.list.len() == before).then(|| {
                FlagsFrom::Server(ServerSource {
                    url: url.to_owned(),
                    token_env,
                    interval,
                    cache: base.join(format!("{config_name}.flags.json")),
                })
            })
        }
        _ => {
            errs.at(
                v,
                "flags_from",
                "must be the path of an Unleash feature file, or a table with its server's url",
                FIX,
            );
            None
        }
    }
}
