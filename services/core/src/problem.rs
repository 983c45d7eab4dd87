//! RFC 9457 problem details: the one error body every Péage HTTP surface answers with.

use serde::{Deserialize, Serialize};

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A stable URI naming the kind of problem, e.g. `https://peage.dev/problems/unknown-key`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Problem {
    pub fn new(status: u16, slug: &str, title: &str) -> Self {
        Problem {
            kind: format!("https://peage.dev/problems/{slug}"),
            title: title.to_string(),
            status,
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}
