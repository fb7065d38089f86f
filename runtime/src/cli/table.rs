//! Plain-text tables and key: value listings for people.

use serde_json::Value;

/// A value as a table cell.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints `rows` (objects) as a table of `columns` (field, header).
pub(crate) fn print(rows: &[Value], columns: &[(&str, &str)]) {
    let mut lines: Vec<Vec<String>> = vec![columns.iter().map(|(_, h)| (*h).to_string()).collect()];
    for row in rows {
        lines.push(columns.iter().map(|(f, _)| cell(&row[*f])).collect());
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in lines {
        let text: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    }
}

/// Prints an object's fields as `key: value` lines, nested objects
/// indented.
pub(crate) fn print_fields(v: &Value, indent: usize) {
    let Value::Object(map) = v else {
        println!("{}{}", " ".repeat(indent), cell(v));
        return;
    };
    for (k, v) in map {
        match v {
            Value::Object(_) => {
                println!("{}{k}:", " ".repeat(indent));
                print_fields(v, indent + 2);
            }
            _ => println!("{}{k}: {}", " ".repeat(indent), cell(v)),
        }
    }
}
