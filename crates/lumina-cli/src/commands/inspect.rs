//! `lumina inspect DIR|FILE`.

use anyhow::Result;
use lumina_pipelines::inspect::{inspect, Component, Inspection};

use crate::cli::InspectArgs;
use crate::commands::model_dir;
use crate::format;

/// Keys listed per category before "… and N more".
const LIST_LIMIT: usize = 12;

pub fn run(args: &InspectArgs) -> Result<()> {
    let dir = model_dir(args.dir.as_deref())?.dir;
    // every error of `inspect` names the file or folder it is about
    let report = inspect(&dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn render(report: &Inspection) -> String {
    let mut out = match &report.pipeline_class {
        Some(class) => format!("pipeline {} ({class})\n", report.path.display()),
        None => format!("model {}\n", report.path.display()),
    };
    for c in &report.components {
        out += "\n";
        out += &render_component(c);
    }
    out
}

fn render_component(c: &Component) -> String {
    let class = c.class_name.as_deref().unwrap_or("?");
    let mut out = match &c.library {
        Some(lib) => format!("{}  {class} ({lib})\n", c.name),
        None => format!("{}  {class}\n", c.name),
    };
    if let Some(config) = &c.config {
        let fields: Vec<String> = config
            .iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out += &wrap("  config   ", &fields);
    }
    if let Some(w) = &c.weights {
        let dtypes: Vec<String> = w
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} {:.0}%", 100.0 * *n as f64 / w.parameters.max(1) as f64))
            .collect();
        out += &format!(
            "  weights  {} file(s), {} tensors, {} parameters, {} stored as {}\n",
            w.files.len(),
            w.tensors,
            format::count(w.parameters),
            format::bytes(w.bytes),
            dtypes.join(", ")
        );
        if let Some(t) = &w.ternary {
            out += &format!(
                "  ternary  {} layers, {} weights packed at 2 bits in {} ({:.1}× smaller than bf16)\n",
                t.layers,
                format::count(t.weights),
                format::bytes(t.packed_bytes),
                t.bf16_bytes as f64 / t.packed_bytes.max(1) as f64
            );
        }
    }
    if let Some(keys) = &c.keys {
        if keys.is_complete() {
            out += "  keys     complete: every tensor the model needs is present, none unused\n";
        }
        out += &list("missing", keys.missing.iter().cloned());
        out += &list(
            "misshapen",
            keys.misshapen
                .iter()
                .map(|(k, want, got)| format!("{k}: expected {want:?}, got {got:?}")),
        );
        out += &list("unused", keys.unused.iter().cloned());
    }
    for note in &c.notes {
        out += &format!("  note     {note}\n");
    }
    out
}

/// `items` joined by spaces, on lines of at most `WIDTH` characters after `head`.
fn wrap(head: &str, items: &[String]) -> String {
    const WIDTH: usize = 100;
    let indent = " ".repeat(head.chars().count());
    let mut out = String::new();
    let mut line = head.to_string();
    let mut empty = true;
    for item in items {
        if !empty && line.chars().count() + 1 + item.chars().count() > WIDTH {
            out += &line;
            out += "\n";
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line += item;
        empty = false;
    }
    out + &line + "\n"
}

fn list(what: &str, items: impl ExactSizeIterator<Item = String>) -> String {
    let n = items.len();
    if n == 0 {
        return String::new();
    }
    let mut out = format!("  {what:<8} {n} tensor(s)\n");
    for item in items.take(LIST_LIMIT) {
        out += &format!("             {item}\n");
    }
    if n > LIST_LIMIT {
        out += &format!("             … and {} more\n", n - LIST_LIMIT);
    }
    out
}
