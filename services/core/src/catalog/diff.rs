//! What changes between two catalogs: APIs, meters and plans added, removed or changed, each
//! change down to the field (`plan[growth].charges[0].tiers[1].unit_price: 0.01 → 0.008`).
//! What `peage catalog diff` prints and a reload logs.

use serde::Serialize;
use serde_json::Value;

use super::Catalog;

/// One catalog section's items, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Api,
    Meter,
    Plan,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Api => "api",
            Section::Meter => "meter",
            Section::Plan => "plan",
        }
    }
}

/// One field that differs: its path inside the item, and its values (JSON; `None` when absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum ItemChange {
    Added,
    Removed,
    Changed { fields: Vec<FieldChange> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub section: Section,
    pub name: String,
    #[serde(flatten)]
    pub change: ItemChange,
}

/// Every difference from `old` to `new`, section by section, in the new catalog's order (the
/// removed items last).
pub fn diff(old: &Catalog, new: &Catalog) -> Vec<Difference> {
    let mut out = Vec::new();
    section(
        &mut out,
        Section::Api,
        items(&old.apis, |a| a.name.clone()),
        items(&new.apis, |a| a.name.clone()),
    );
    section(
        &mut out,
        Section::Meter,
        items(&old.meters, |m| m.name.clone()),
        items(&new.meters, |m| m.name.clone()),
    );
    // A plan's `version` is the hash of the rest of it: a change shows in its fields.
    let plan = |p: &crate::pricing::Plan| {
        let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut v {
            o.remove("version");
        }
        v
    };
    section(
        &mut out,
        Section::Plan,
        old.plans.iter().map(|p| (p.id.clone(), plan(p))).collect(),
        new.plans.iter().map(|p| (p.id.clone(), plan(p))).collect(),
    );
    out
}

fn items<T: Serialize>(list: &[T], name: impl Fn(&T) -> String) -> Vec<(String, Value)> {
    list.iter()
        .map(|t| (name(t), serde_json::to_value(t).unwrap_or(Value::Null)))
        .collect()
}

fn section(
    out: &mut Vec<Difference>,
    section: Section,
    old: Vec<(String, Value)>,
    new: Vec<(String, Value)>,
) {
    for (name, value) in &new {
        let change = match old.iter().find(|(n, _)| n == name) {
            None => ItemChange::Added,
            Some((_, before)) if before == value => continue,
            Some((_, before)) => {
                let mut fields = Vec::new();
                fields_of(&mut fields, String::new(), Some(before), Some(value));
                ItemChange::Changed { fields }
            }
        };
        out.push(Difference {
            section,
            name: name.clone(),
            change,
        });
    }
    for (name, _) in old.iter().filter(|(n, _)| !new.iter().any(|(m, _)| m == n)) {
        out.push(Difference {
            section,
            name: name.clone(),
            change: ItemChange::Removed,
        });
    }
}

/// The leaves that differ between `old` and `new` under `path`.
fn fields_of(out: &mut Vec<FieldChange>, path: String, old: Option<&Value>, new: Option<&Value>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                fields_of(out, join(k), a.get(k), b.get(k));
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                fields_of(out, format!("{path}[{i}]"), a.get(i), b.get(i));
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            path,
            old: a.cloned(),
            new: b.cloned(),
        }),
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let item = format!("{}[{}]", self.section.as_str(), self.name);
        match &self.change {
            ItemChange::Added => write!(f, "+ {item} added"),
            ItemChange::Removed => write!(f, "- {item} removed"),
            ItemChange::Changed { fields } => {
                write!(f, "~ {item} changed")?;
                let show =
                    |v: &Option<Value>| v.as_ref().map_or("(none)".to_string(), Value::to_string);
                for c in fields {
                    write!(f, "\n    {}: {} → {}", c.path, show(&c.old), show(&c.new))?;
                }
                Ok(())
            }
        }
    }
}
