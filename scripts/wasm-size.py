#!/usr/bin/env python3
"""What each crate costs in a .wasm: function bodies grouped by crate, read from the name section.

    python3 scripts/wasm-size.py [WASM] [--top N] [--crate NAME]

WASM defaults to cargo's release output (before wasm-bindgen and wasm-opt, which drop the name
section): $CARGO_TARGET_DIR/wasm32-unknown-unknown/release/edge_llm.wasm. A function counts for
the first non-std crate its demangled name mentions, so `core::ptr::drop_in_place<tract_core::X>`
is tract_core's (generic code is paid for by the crate it is instantiated for). "gz alone" is the
crate's code gzipped by itself (gzip -9); its share is of the sum over crates plus the data
section, an estimate of the crate's part of the shipped .wasm.gz. --crate lists its largest
functions. Standard library only (demangling by llvm-cxxfilt or c++filt when found)."""
import argparse, collections, gzip, os, re, shutil, subprocess

def leb(b, i):
    r = s = 0
    while True:
        x = b[i]; i += 1; r |= (x & 0x7f) << s; s += 7
        if x < 0x80: return r, i

def string(b, i):
    n, i = leb(b, i)
    return b[i:i + n].decode('utf8', 'replace'), i + n

def skip_limits(b, j):
    flags = b[j]; _, j = leb(b, j + 1)
    return leb(b, j)[1] if flags & 1 else j

def parse(b):
    """(function index, body) for each defined function, names by index, data section bytes."""
    i, imported, bodies, names, data = 8, 0, [], {}, b''
    while i < len(b):
        sid = b[i]; size, i = leb(b, i + 1); end = i + size
        if sid == 0:
            name, j = string(b, i)
            while name == 'name' and j < end:
                sub = b[j]; ssize, j = leb(b, j + 1)
                if sub == 1:
                    count, k = leb(b, j)
                    for _ in range(count):
                        idx, k = leb(b, k); names[idx], k = string(b, k)
                j += ssize
        elif sid == 2:  # imports: imported functions come first in the index space
            count, j = leb(b, i)
            for _ in range(count):
                _, j = string(b, j); _, j = string(b, j); kind = b[j]; j += 1
                if kind == 0: _, j = leb(b, j); imported += 1
                elif kind == 1: j = skip_limits(b, j + 1)
                elif kind == 2: j = skip_limits(b, j)
                elif kind == 3: j += 2
                else: _, j = leb(b, j + 1)
        elif sid == 10:
            count, j = leb(b, i)
            for k in range(count):
                n, j = leb(b, j); bodies.append((imported + k, b[j:j + n])); j += n
        elif sid == 11:
            data = b[i:end]
        i = end
    return bodies, names, data

ESCAPES = {'$LT$': '<', '$GT$': '>', '$u20$': ' ', '$RF$': '&', '$BP$': '*', '$C$': ',', '$u7b$': '{',
           '$u7d$': '}', '$u5b$': '[', '$u5d$': ']', '$u27$': "'", '$u3b$': ';', '$u2b$': '+', '$SP$': '@'}
STD = {'core', 'alloc', 'std', 'compiler_builtins', 'hashbrown'}

def demangle(names):
    tool = shutil.which('llvm-cxxfilt') or shutil.which('c++filt')
    out = subprocess.run([tool], input='\n'.join(names), capture_output=True, text=True).stdout.split('\n') if tool else names
    # Rust's legacy mangling keeps its own escapes inside the Itanium form.
    clean = lambda d: re.sub(r'::h[0-9a-f]{16}$', '', re.sub(r'\$[A-Za-z0-9]+\$', lambda m: ESCAPES.get(m.group(0), m.group(0)), d).replace('..', '::'))
    return [clean(d) for d in out[:len(names)]]

def crate_of(name):
    roots = re.findall(r'(?<![A-Za-z0-9_:])([A-Za-z_][A-Za-z0-9_]*)::', name)
    return next((c for c in roots if c not in STD), roots[0] if roots else '(no path)')

def main():
    target = os.environ.get('CARGO_TARGET_DIR', 'target')
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('wasm', nargs='?', default=f'{target}/wasm32-unknown-unknown/release/edge_llm.wasm')
    ap.add_argument('--top', type=int, default=30)
    ap.add_argument('--crate')
    a = ap.parse_args()
    b = open(a.wasm, 'rb').read()
    bodies, names, data = parse(b)
    if not names:
        raise SystemExit(f'{a.wasm} has no name section (wasm-bindgen/wasm-opt output?): pass cargo\'s .wasm')
    demangled = demangle([names.get(i, '') for i, _ in bodies])
    crates = collections.defaultdict(list)
    for (_, body), name in zip(bodies, demangled):
        crates[crate_of(name)].append((len(body), name, body))
    code = sum(len(body) for _, body in bodies)
    data_gz = len(gzip.compress(data, 9))
    rows = sorted(((sum(f[0] for f in fs), c, len(fs), len(gzip.compress(b''.join(f[2] for f in fs), 9))) for c, fs in crates.items()), reverse=True)
    gz_sum = sum(r[3] for r in rows) + data_gz
    print(f'{a.wasm}: {len(b)} bytes, code {code}, data {len(data)} (gz alone {data_gz}, {100 * data_gz / gz_sum:.1f} % of gz)')
    print(f'{"crate":<24}{"funcs":>7}{"code bytes":>12}{"% code":>8}{"gz alone":>10}{"% gz":>7}')
    for raw, c, n, gz in rows[:a.top]:
        print(f'{c:<24}{n:>7}{raw:>12}{100 * raw / code:>7.1f}%{gz:>10}{100 * gz / gz_sum:>6.1f}%')
    if a.crate:
        for size, name, _ in sorted(crates[a.crate], key=lambda f: -f[0])[:a.top]:
            print(f'{size:>8} {name[:200]}')

if __name__ == '__main__':
    main()
