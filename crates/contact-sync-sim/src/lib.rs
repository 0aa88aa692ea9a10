//! Stand-ins of the three remote APIs, faithful to the APIs as docs/apis/ describes them, served
//! over real HTTP on loopback for tests, benches, the `demo` feature and the `contact-sync-sim`
//! binary. They can inject faults.

pub mod dolphins;
pub mod engagelab;
pub mod omi;
pub mod server;
pub mod stack;

use serde_json::{Map, Value};

/// Keys of the contacts a destination wrote since its change watcher last looked; `None`
/// until the watcher (of the `contact-sync-sim` binary) first looks, so the library's other
/// users keep no log. The watcher looks into those contacts only, not into every contact it
/// waits for: at 10,000 waiting, walking them all at every look took 0.6 of a core.
#[derive(Debug, Default)]
struct WriteLog(Option<Vec<String>>);

impl WriteLog {
    fn note(&mut self, key: &str) {
        if let Some(keys) = &mut self.0 {
            keys.push(key.to_owned());
        }
    }

    /// The keys written since the last call; from the first call on, writes are noted.
    fn take(&mut self) -> Vec<String> {
        self.0.replace(Vec::new()).unwrap_or_default()
    }
}

/// The keys in `written` whose destination copy (`copy`) now mentions the text `wanted` gives
/// for them; a copy is looked up only for a key waited for, since most writes (a backfill's)
/// are not.
fn written_mentioning<'c, 'w>(
    written: Vec<String>,
    wanted: impl Fn(&str) -> Option<&'w str>,
    copy: impl Fn(&str) -> Option<&'c Map<String, Value>>,
) -> Vec<String> {
    (written.into_iter())
        .filter(|key| wanted(key).is_some_and(|text| copy(key).is_some_and(|c| mentions(c, text))))
        .collect()
}

/// Whether a string anywhere in `fields` (values, not names) contains `text`: how the change
/// watcher of the `contact-sync-sim` binary asks a destination's copy of a contact, without
/// copying or serializing it.
fn mentions(fields: &Map<String, Value>, text: &str) -> bool {
    fn within(value: &Value, text: &str) -> bool {
        match value {
            Value::String(s) => s.contains(text),
            Value::Array(items) => items.iter().any(|v| within(v, text)),
            Value::Object(fields) => mentions(fields, text),
            _ => false,
        }
    }
    fields.values().any(|v| within(v, text))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn mentions_looks_into_every_value_and_no_name() {
        let fields = json!({"emails": [{"data": "x@new.example"}], "new": 1, "vip": true});
        let fields = fields.as_object().unwrap();
        assert!(super::mentions(fields, "@new.example"));
        assert!(
            !super::mentions(fields, "new\""),
            "names and syntax are not searched"
        );
        assert!(!super::mentions(fields, "true"));
    }

    #[test]
    fn writes_are_logged_once_the_watcher_looks_and_taken_once() {
        let mut log = super::WriteLog::default();
        log.note("before");
        assert!(log.take().is_empty(), "nobody watched yet");
        log.note("a");
        log.note("b");
        assert_eq!(log.take(), ["a", "b"]);
        assert!(log.take().is_empty());
    }
}
