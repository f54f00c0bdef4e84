//! `edge-llm-pack eval` exits non-zero exactly when a variant is over its acceptable loss, on
//! the tiny model with short windows (seconds). Which loss a real model has is measured by
//! scripts/quality-table.sh, not here.
#![cfg(all(feature = "pack", not(target_arch = "wasm32")))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// An unpacked model folder of the tiny fixture `variant`.
fn model_dir(root: &Path, label: &str, variant: &str) -> PathBuf {
    let (dir, fixtures) = (root.join(label), Path::new(ROOT).join("tests/fixtures/tiny"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures.join(variant), dir.join("model.onnx")).unwrap();
    for f in ["tokenizer.json", "model_config.json"] {
        std::fs::copy(fixtures.join(f), dir.join(f)).unwrap();
    }
    dir
}

fn eval(root: &Path, variants: &[(&str, &str)], accept: &[&str]) -> Output {
    let eval_texts = Path::new(ROOT).join("tests/fixtures/eval");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-llm-pack"));
    cmd.arg("eval").arg("--reference").arg(format!("fp32={}", model_dir(root, "fp32", "model-fp32.onnx").display()));
    for (label, variant) in variants {
        cmd.arg(format!("{label}={}", model_dir(root, label, variant).display()));
    }
    cmd.arg("--text").arg(format!("prose={}", eval_texts.join("prose.txt").display()));
    cmd.arg("--long-text").arg(eval_texts.join("long.txt"));
    cmd.args(["--window", "32", "--max-windows", "2", "--long-tokens", "64"]);
    for a in accept {
        cmd.args(["--accept", a]);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn eval_fails_exactly_when_a_variant_is_over_its_acceptable_loss() {
    let root = std::env::temp_dir().join(format!("edge-llm-eval-cli-{}", std::process::id()));
    // Within every bound: the reference's own weights lose nothing (+0 %, 100 % agreement), and
    // int4 is given room.
    let ok = eval(&root, &[("same", "model-fp32.onnx"), ("int4", "model-int4.onnx")], &["same=0:100", "int4=1000:0"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("- same: accept <= +0 % perplexity, >= 100 % agreement: ok"), "{}", text(&ok));
    // Perplexity can never fall by 100 %, and agreement never exceed 100 %: each bound alone
    // fails the run, naming only the variant over it.
    for (accept, why) in [("int4=-100:0", "perplexity +"), ("int4=1000:100.5", "top-1 agreement")] {
        let over = eval(&root, &[("same", "model-fp32.onnx"), ("int4", "model-int4.onnx")], &["same=0:100", accept]);
        let t = text(&over);
        assert_eq!(over.status.code(), Some(1), "{accept}: {t}");
        assert!(t.contains(&format!("- int4: accept")) && t.contains(why), "{accept}: {t}");
        assert!(t.contains("over the acceptable loss: int4\n") || t.trim_end().ends_with("over the acceptable loss: int4"), "{accept}: {t}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}
