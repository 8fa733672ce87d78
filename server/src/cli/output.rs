//! What commands print on stdout: one line per result or change, either `key=value` text for
//! people (`term=3 leader=alice candidates=alice,bob`) or, with `--json`, one JSON object per
//! line for scripts. Both are built from the same JSON object, so they never disagree.
use serde_json::{json, Map, Value};

use conclave_proto::atomix::runtime::election::v1::Term;

/// The output mode of one command.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    pub json: bool,
}

impl Printer {
    /// Prints `fields` as one line: a JSON object, or `label` (when not empty) followed by
    /// `key=value` pairs in order.
    pub fn line(&self, label: &str, fields: Map<String, Value>) {
        if self.json {
            let mut object = Map::new();
            if !label.is_empty() {
                object.insert("event".into(), Value::String(label.to_owned()));
            }
            object.extend(fields);
            println!("{}", Value::Object(object));
            return;
        }
        let mut parts: Vec<String> = Vec::with_capacity(fields.len() + 1);
        if !label.is_empty() {
            parts.push(label.to_owned());
        }
        parts.extend(fields.iter().map(|(key, value)| format!("{key}={}", human(value))));
        println!("{}", parts.join(" "));
    }
}

/// A value as people read it: strings bare, lists comma-separated, nothing as `(none)`.
fn human(value: &Value) -> String {
    match value {
        Value::String(text) if text.is_empty() => "(none)".into(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "(none)".into(),
        Value::Array(items) => items.iter().map(human).collect::<Vec<_>>().join(","),
        Value::Null => "(none)".into(),
        other => other.to_string(),
    }
}

/// The fields of an election's state: term, leader and candidates (leader first).
pub fn term_fields(term: &Term) -> Map<String, Value> {
    let Value::Object(fields) = json!({ "term": term.term, "leader": term.leader, "candidates": term.candidates }) else {
        unreachable!("json! of an object literal is an object");
    };
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_renders_empty_values_as_none() {
        let fields = term_fields(&Term { term: 0, leader: String::new(), candidates: vec![] });
        let rendered: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", human(v))).collect();
        assert_eq!(rendered, ["term=0", "leader=(none)", "candidates=(none)"]);
        let fields = term_fields(&Term { term: 4, leader: "a".into(), candidates: vec!["a".into(), "b".into()] });
        let rendered: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", human(v))).collect();
        assert_eq!(rendered, ["term=4", "leader=a", "candidates=a,b"]);
    }
}
