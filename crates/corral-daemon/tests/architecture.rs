//! The dependency rules of ARCHITECTURE.md, checked on the source: crate boundaries make
//! the compiler keep the rules between crates; these tests keep the ones inside the daemon
//! crate, where the compiler cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The engine and storage: they never import the API, a task kind, or the wiring.
const ENGINE: [&str; 12] = [
    "supervisor",
    "sources",
    "logbook",
    "registry",
    "bus",
    "sinks",
    "metrics",
    "clock",
    "util",
    "gpu",
    "hub",
    "ssh",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`supervisor/task.rs` → `supervisor`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(SRC).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file names through `crate::…` (outside comments).
fn imports(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Module → the modules it imports, over the whole crate.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    assert!(files.len() > 10, "found no sources under {SRC}");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        let deps: Vec<String> = imports(&f).into_iter().filter(|d| *d != m).collect();
        g.entry(m).or_default().extend(deps);
    }
    g
}

fn offenders(g: &BTreeMap<String, BTreeSet<String>>, from: &[&str], to: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for m in from {
        for d in g.get(*m).into_iter().flatten() {
            if to.contains(&d.as_str()) {
                bad.push(format!("{m} imports {d}"));
            }
        }
    }
    bad
}

#[test]
fn the_engine_never_imports_the_api_a_kind_or_the_wiring() {
    let g = graph();
    let bad = offenders(&g, &ENGINE, &["api", "kinds", "serve"]);
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn kinds_never_import_the_api_or_the_wiring() {
    let g = graph();
    let bad = offenders(&g, &["kinds"], &["api", "serve"]);
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn metrics_is_a_leaf() {
    let g = graph();
    let deps = g.get("metrics").cloned().unwrap_or_default();
    assert!(deps.is_empty(), "metrics imports {deps:?}");
}

#[test]
fn only_the_api_knows_http_serving_and_grpc() {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    let bad: Vec<String> = files
        .iter()
        .filter(|f| module_of(f) != "api")
        .filter(|f| {
            std::fs::read_to_string(f).unwrap().lines().any(|l| {
                let l = l.trim_start();
                ["axum", "tonic"]
                    .iter()
                    .any(|c| l.starts_with(&format!("use {c}")) || l.contains(&format!(" {c}::")))
            })
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(bad.is_empty(), "axum or tonic outside api/: {bad:?}");
}

#[test]
fn no_import_circle_between_modules() {
    let g = graph();
    // Depth-first search for a back edge; the path of the first circle found is shown.
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(&g, m, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn crates_depend_one_way() {
    let manifest = |krate: &str| {
        let p = format!("{}/../{krate}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {p}: {e}"))
    };
    let deps = |krate: &str| -> Vec<String> {
        let text = manifest(krate);
        let mut in_deps = false;
        let mut out = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_deps = t == "[dependencies]";
            } else if in_deps && t.starts_with("corral") {
                out.push(t.split([' ', '=']).next().unwrap().to_string());
            }
        }
        out
    };
    assert_eq!(deps("corral-core"), Vec::<String>::new());
    assert_eq!(deps("corral-client"), ["corral-core"]);
    assert_eq!(deps("corral-daemon"), ["corral-core", "corral-client"]);
    // The pure core does no I/O: no async runtime, no HTTP, no database.
    let core = manifest("corral-core");
    for forbidden in ["tokio", "reqwest", "rusqlite", "axum", "libc"] {
        assert!(
            !core.contains(forbidden),
            "corral-core depends on {forbidden}"
        );
    }
}
