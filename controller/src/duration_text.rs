//! Durations written as "3s", "500ms", "1m" in the config file, for
//! `#[serde(with = "crate::duration_text")]`. A leaf: every config section uses it and it
//! imports none of them, so that no section has to import another to read a duration.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}
