//! Prometheus's HTTP query API, as the fleet ([`crate::fleet`]) and canary analysis
//! ([`crate::analysis`]) ask it: an instant query, bounded in time and size, its answer read as
//! samples.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

use crate::egress::{RemoteError, RemoteFailure};

/// One sample of an instant vector (or a scalar, with no labels): its labels and value.
#[derive(Debug)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    /// The scrape target it comes from.
    pub fn target(&self) -> (&str, &str) {
        (self.label("instance"), self.label("job"))
    }
}

/// Parses a Prometheus `/api/v1/query` answer holding an instant vector or a scalar. Samples
/// whose value is not a finite number (`NaN`, as `0/0` gives) are left out.
pub fn samples(answer: &Value) -> Result<Vec<Sample>, String> {
    if answer["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            answer["errorType"].as_str().unwrap_or("an error"),
            answer["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let number = |v: &Value| v[1].as_str()?.parse::<f64>().ok().filter(|v| v.is_finite());
    match answer["data"]["resultType"].as_str() {
        Some("scalar") => Ok(number(&answer["data"]["result"])
            .map(|value| Sample {
                labels: BTreeMap::new(),
                value,
            })
            .into_iter()
            .collect()),
        Some("vector") | None => {
            let result = answer["data"]["result"]
                .as_array()
                .ok_or("Prometheus's answer has no data.result")?;
            Ok(result
                .iter()
                .filter_map(|r| {
                    let labels = r["metric"]
                        .as_object()?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect();
                    Some(Sample {
                        labels,
                        value: number(&r["value"])?,
                    })
                })
                .collect())
        }
        Some(other) => Err(format!(
            "the query gives a {other}, not an instant vector or a scalar: drop the range selector's [..] outside a function, or wrap it in rate() / increase()"
        )),
    }
}

/// Where and how to ask.
pub struct Target<'a> {
    /// Base URL, without a trailing slash.
    pub url: &'a str,
    /// The config key naming the token's variable, and the variable (`("fleet.token_env", "T")`).
    pub token_env: Option<(&'a str, &'a str)>,
    pub timeout: Duration,
    /// The largest answer read.
    pub limit: usize,
}

/// Prometheus's HTTP API, through the process's one outbound client.
pub struct Prometheus {
    client: crate::egress::HttpsClient,
}

impl Default for Prometheus {
    fn default() -> Prometheus {
        Prometheus {
            client: crate::egress::client(),
        }
    }
}

impl Prometheus {
    /// An instant query at the current time.
    pub async fn query(&self, target: &Target<'_>, promql: &str) -> Result<Vec<Sample>, RemoteError> {
        let invalid = |m: String| RemoteError::new(RemoteFailure::Invalid, m);
        let url = format!(
            "{}/api/v1/query?query={}",
            target.url,
            form_urlencoded::byte_serialize(promql.as_bytes()).collect::<String>()
        );
        let mut req = http::Request::get(&url);
        if let Some((key, var)) = target.token_env {
            match std::env::var(var) {
                Ok(t) if !t.is_empty() => {
                    req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"))
                }
                _ => return Err(invalid(format!("{key} names {var}, which is not set"))),
            }
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| invalid(e.to_string()))?;
        let (head, body) =
            crate::egress::exchange(&self.client, req, target.timeout, target.url, target.limit).await?;
        let value: Value = serde_json::from_slice(&body).map_err(|_| {
            invalid(format!(
                "{} from {}: not Prometheus's JSON",
                head.status, target.url
            ))
        })?;
        samples(&value).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_said_and_nan_left_out() {
        let v = serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert_eq!(
            samples(&v).err().unwrap(),
            "Prometheus answered bad_data: parse error"
        );
        let v = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"route": "web"}, "value": [1, "3.5"]},
            {"metric": {"route": "x"}, "value": [1, "NaN"]}
        ]}});
        let s = samples(&v).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].label("route"), s[0].value), ("web", 3.5));
    }

    #[test]
    fn scalars_and_matrices() {
        let v =
            serde_json::json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "0.25"]}});
        let s = samples(&v).unwrap();
        assert_eq!((s.len(), s[0].value), (1, 0.25));
        let v =
            serde_json::json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "NaN"]}});
        assert!(samples(&v).unwrap().is_empty());
        let v = serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(samples(&v).unwrap_err().contains("matrix"));
    }
}
