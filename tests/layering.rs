//! Dependencies point one way: `server → admin, session → node → channel → cluster → history`, with
//! `protocol`, `stats`, `metrics`, `admission`, `auth` and `config` below them. A lower module never
//! imports a higher one. This reads the sources and fails on any `crate::<higher>` path in code (doc
//! comments may still name higher modules).

use std::path::Path;

/// Each module and the modules it must never import.
const RULES: &[(&str, &[&str])] = &[
    (
        "protocol",
        &[
            "history", "cluster", "channel", "node", "session", "admin", "server",
        ],
    ),
    (
        "history",
        &["cluster", "channel", "node", "session", "admin", "server"],
    ),
    (
        "cluster",
        &["channel", "node", "session", "admin", "server"],
    ),
    ("channel", &["node", "session", "admin", "server"]),
    ("stats", &["channel", "node", "session", "admin", "server"]),
    (
        "metrics",
        &["channel", "node", "session", "admin", "server", "stats"],
    ),
    (
        "admission",
        &["channel", "node", "session", "admin", "server"],
    ),
    ("node", &["session", "admin", "server"]),
    ("session", &["admin", "server"]),
];

fn sources(module: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = root.join(format!("{module}.rs"));
    let dir = root.join(module);
    let mut out = Vec::new();
    if file.is_file() {
        out.push(file);
    }
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn no_lower_module_imports_a_higher_one() {
    let mut violations = Vec::new();
    for (module, forbidden) in RULES {
        let files = sources(module);
        assert!(!files.is_empty(), "no sources found for {module}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for higher in *forbidden {
                    if code.contains(&format!("crate::{higher}::"))
                        || code.contains(&format!("crate::{higher};"))
                        || code.contains(&format!("crate::{higher}::{{"))
                    {
                        violations.push(format!(
                            "{}:{}: {module} uses {higher}: {code}",
                            f.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies point the wrong way:\n{}",
        violations.join("\n")
    );
}
