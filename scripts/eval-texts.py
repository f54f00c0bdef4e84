#!/usr/bin/env python3
"""Regenerate edge-llm-pack eval's texts (tests/fixtures/eval/) and, with --calibration OUT,
the calibration text, from files every Debian/Python install has. Evaluation and calibration
take disjoint parts of each source (alternate entries), so calibration never sees eval text.

Sources (all offline, licences allow redistribution):
- prose: CPython 3.11's `pydoc_data/topics.py` (the language reference as plain text; PSF
  licence), topics in sorted order: even ones -> eval, odd ones -> calibration.
- code: CPython 3.11 stdlib sources (PSF licence): textwrap.py, fractions.py -> eval;
  statistics.py, shlex.py, difflib.py -> calibration.
- multilingual: Vim 9.0's message translations (/usr/share/vim/vim90/lang/*/vim.mo, Vim
  licence) in de, fr, es, it, pt_BR, ru, pl, zh_CN.UTF-8, ja: even messages -> eval, odd ->
  calibration.
- long: Vim 9.0's user manual chapter usr_03.txt (Vim licence) -> eval (one long window);
  usr_04..usr_08.txt -> calibration.

Usage: python3 scripts/eval-texts.py [--calibration OUT.txt]
"""
import pathlib
import re
import struct
import sys

PY = pathlib.Path("/usr/lib/python3.11")
VIM = pathlib.Path("/usr/share/vim/vim90")
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/eval"
LANGS = ["de", "fr", "es", "it", "pt_BR", "ru", "pl", "zh_CN.UTF-8", "ja"]
# Bytes per eval text: a few thousand tokens each keeps `eval` to minutes on a laptop core.
BUDGET = {"prose": 9000, "code": 9000, "multilingual": 7000, "long": 11000}


def topics():
    sys.path.insert(0, str(PY))
    from pydoc_data import topics as t
    return [t.topics[k].strip() for k in sorted(t.topics)]


def messages(lang):
    data = (VIM / "lang" / lang / "LC_MESSAGES/vim.mo").read_bytes()
    # GNU .mo: little-endian header, then (length, offset) tables of ids and translations.
    n, ids_at, strs_at = struct.unpack_from("<3I", data, 8)
    entry = lambda table, i: data[struct.unpack_from("<2I", data, table + 8 * i)[1] :][: struct.unpack_from("<2I", data, table + 8 * i)[0]]
    header = entry(strs_at, 0).decode("ascii", "replace")
    charset = re.search(r"charset=([\w.-]+)", header).group(1)
    cat = {entry(ids_at, i).decode(charset): entry(strs_at, i).decode(charset) for i in range(1, n)}
    # Translated messages of some length, in msgid order; formats and keys are noise.
    out = []
    for k in sorted(k for k in cat if isinstance(k, str) and k):
        v = cat[k].strip()
        if len(v) >= 25 and "%" not in v:
            out.append(v)
    return out


def take(parts, budget, sep="\n\n"):
    text = ""
    for p in parts:
        if len(text) + len(p) > budget:
            break
        text += p + sep
    return text


def main():
    t = topics()
    code_eval = [(PY / f).read_text() for f in ["textwrap.py", "fractions.py"]]
    code_cal = [(PY / f).read_text() for f in ["statistics.py", "shlex.py", "difflib.py"]]
    msgs = {l: messages(l) for l in LANGS}
    ml_eval = [m for i in range(200) for l in LANGS for m in msgs[l][2 * i : 2 * i + 1]]
    ml_cal = [m for i in range(400) for l in LANGS for m in msgs[l][2 * i + 1 : 2 * i + 2]]
    texts = {
        "prose": take(t[0::2], BUDGET["prose"]),
        "code": "\n\n".join(c[: BUDGET["code"] // 2].rsplit("\n", 1)[0] for c in code_eval),
        "multilingual": take(ml_eval, BUDGET["multilingual"], "\n"),
        "long": (VIM / "doc/usr_03.txt").read_text()[: BUDGET["long"]],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (OUT / f"{name}.txt").write_text(text)
        print(f"{len(text):>7} chars  {OUT / (name + '.txt')}")
    if "--calibration" in sys.argv:
        dst = pathlib.Path(sys.argv[sys.argv.index("--calibration") + 1])
        vim_cal = [(VIM / f"doc/usr_0{i}.txt").read_text() for i in range(4, 9)]
        cal = "\n\n".join(t[1::2] + code_cal + ["\n".join(ml_cal)] + vim_cal)
        dst.write_text(cal)
        print(f"{len(cal):>7} chars  {dst} (calibration)")


if __name__ == "__main__":
    main()
