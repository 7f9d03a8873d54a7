//! Python's `repr` of JSON values, as Celery shows arguments in `argsrepr`, `kwargsrepr` and
//! events.

use serde_json::{Map, Value};

/// Longest `argsrepr`/`kwargsrepr` (Celery's `argsrepr_maxsize`/`kwargsrepr_maxsize`).
pub const REPR_MAX_CHARS: usize = 1024;

/// Cuts a repr to [`REPR_MAX_CHARS`] characters, ending in `...` when cut, as Celery's
/// `saferepr` does.
fn cut_repr(s: String) -> String {
    if s.chars().count() <= REPR_MAX_CHARS {
        return s;
    }
    let mut out: String = s.chars().take(REPR_MAX_CHARS - 3).collect();
    out.push_str("...");
    out
}

/// Python's `repr` of positional arguments: a tuple, cut at [`REPR_MAX_CHARS`].
pub fn args_repr(args: &[Value]) -> String {
    let items: Vec<String> = args.iter().map(py_repr).collect();
    cut_repr(match items.len() {
        1 => format!("({},)", items[0]),
        _ => format!("({})", items.join(", ")),
    })
}

/// Python's `repr` of a JSON value (what Celery shows in `argsrepr` and in events).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => dict_repr(o),
    }
}

/// Python's `repr` of a dict (Celery's `kwargsrepr`), cut at [`REPR_MAX_CHARS`].
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    cut_repr(dict_repr(kwargs))
}

/// Python's `repr` of a dict, without copying it into a `Value`.
fn dict_repr(kwargs: &Map<String, Value>) -> String {
    format!(
        "{{{}}}",
        kwargs
            .iter()
            .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reprs_are_cut_at_1024_characters_as_celery_does() {
        let long = vec![json!("x".repeat(5000))];
        let r = args_repr(&long);
        assert_eq!(r.chars().count(), REPR_MAX_CHARS);
        assert!(r.ends_with("..."));
        let mut k = Map::new();
        k.insert("k".into(), json!("é".repeat(3000)));
        assert_eq!(kwargs_repr(&k).chars().count(), REPR_MAX_CHARS);
        assert_eq!(args_repr(&[json!(1)]), "(1,)");
    }

    #[test]
    fn reprs_match_python() {
        assert_eq!(args_repr(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(args_repr(&[json!("a")]), "('a',)");
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(
            py_repr(&json!({"k": [true, null, "it's"]})),
            "{'k': [True, None, \"it's\"]}"
        );
    }
}
