//! The README's module map holds: every top-level module under `src/` is in its table, and
//! uses (through `crate::…` paths outside `#[cfg(test)]` code) only the modules its row allows.
//! The table is the one map; this test reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module → allowed modules` from the README table (rows `| \`a\`, \`b/\` | what | \`c\`, … |`).
/// "everything" allows every module; "everything but `x`" all but those named.
fn readme_map() -> BTreeMap<String, Option<BTreeSet<String>>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme.split("## Module map").nth(1).expect("README has a `## Module map` section");
    let section = section.split("\n## ").next().unwrap();
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split('`').skip(1).step_by(2).map(|n| n.trim_end_matches('/').trim_start_matches("bin/").to_string()).collect()
    };
    let mut map = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let (modules, uses) = (cells[0], cells[cells.len() - 1]);
        let allowed = if uses.contains("everything") { None } else { Some(names(uses)) };
        for m in names(modules) {
            let allowed = match (&allowed, uses.contains("everything but")) {
                (None, true) => Some(BTreeSet::from([String::from("!")]).into_iter().chain(names(uses)).collect()),
                (a, _) => a.clone(),
            };
            assert!(map.insert(m.clone(), allowed).is_none(), "`{m}` is in the module map twice");
        }
    }
    map
}

/// The Rust files of `src/` module `m`, without their `#[cfg(test)]` modules and comments.
fn sources(m: &str) -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.join(format!("{m}.rs")), src.join(m)];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.is_file() && p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            files.push((p.display().to_string(), code));
        }
    }
    files
}

/// Top-level modules `code` reaches through `crate::name` or `use crate::{name, …}`.
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for part in code.split("crate::").skip(1) {
        let names: Vec<&str> = if let Some(group) = part.strip_prefix('{') {
            group.split('}').next().unwrap().split(',').map(|n| n.trim().split("::").next().unwrap()).collect()
        } else {
            vec![part.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap()]
        };
        found.extend(names.into_iter().filter(|n| modules.contains(*n)).map(String::from));
    }
    found
}

#[test]
fn modules_use_only_what_the_readme_map_allows() {
    let map = readme_map();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".rs").to_string())
        .filter(|m| m != "lib" && m != "bin")
        .collect();
    let mut wrong = Vec::new();
    for m in &modules {
        let Some(allowed) = map.get(m) else {
            wrong.push(format!("`{m}` is not in the README's module map"));
            continue;
        };
        for (file, code) in sources(m) {
            for used in uses(&code, &modules) {
                let ok = used == *m
                    || match allowed {
                        None => true,
                        Some(a) if a.contains("!") => !a.contains(&used),
                        Some(a) => a.contains(&used),
                    };
                if !ok {
                    wrong.push(format!("{file} uses `{used}`, which the map does not allow `{m}`"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "module map broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_map_test_sees_uses() {
    let modules = BTreeSet::from(["cpu".to_string(), "store".to_string(), "web".to_string()]);
    let code = "use crate::cpu::CpuModel;\nuse crate::{store::Blob, Error};\nlet x = crate::web::f();";
    assert_eq!(uses(code, &modules), modules);
}
