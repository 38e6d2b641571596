#!/usr/bin/env bash
# Compare two run.sh output folders:  bash compare.sh BEFORE AFTER
# PNG hashes (sha256.txt), info texts (info/*.txt), case status (status.txt, times ignored) and, when both runs
# made their own exports, the export files' hashes (informational: export bytes need not be reproducible).
# Exit status: 0 when every PNG and info text is identical and no case changed status, else 1.
set -u
A=${1:?usage: compare.sh BEFORE AFTER}; B=${2:?usage: compare.sh BEFORE AFTER}
bad=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

hashes() { awk '{print $2, $1}' "$1" | LC_ALL=C sort; }   # "name hash"
hashes "$A/sha256.txt" > "$tmp/a"; hashes "$B/sha256.txt" > "$tmp/b"
LC_ALL=C join -a1 -a2 -e MISSING -o 0,1.2,2.2 "$tmp/a" "$tmp/b" > "$tmp/j"
same=$(awk '$2==$3' "$tmp/j" | wc -l); diff_=$(awk '$2!=$3' "$tmp/j" | wc -l)
echo "== PNGs: $same identical, $diff_ differing / missing (of $(wc -l < "$tmp/j"))"
awk '$2==$3 {print "   identical  " $1}' "$tmp/j"
awk '$2!=$3 {print "   DIFFERS    " $1 "   before " substr($2,1,16) "  after " substr($3,1,16)}' "$tmp/j"
[ "$diff_" -gt 0 ] && bad=1
# pixel-level detail for differing PNGs present on both sides (max abs difference, differing pixels)
awk '$2!=$3 && $2!="MISSING" && $3!="MISSING" {print $1}' "$tmp/j" | while read -r f; do
    ${PYTHON:-python} - "$A/$f" "$B/$f" <<'EOF' 2>&1 | sed 's/^/      /'
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in sys.argv[1:])
if a.shape != b.shape:
    print(f"{sys.argv[1].split('/')[-1]}: sizes differ {a.shape} vs {b.shape}")
else:
    d = np.abs(a - b)
    print(f"{sys.argv[1].split('/')[-1]}: max |diff| {d.max()}, mean {d.mean():.4f}, "
          f"{int((d.max(axis=2) > 0).sum())} of {d.shape[0] * d.shape[1]} pixels differ")
EOF
done

echo "== info texts"
mask() { sed -E 's/(max rel\. error vs torch) [0-9.e+-]+/\1 <x>/'; }
for f in $( (cd "$A/info" 2>/dev/null && ls; cd "$B/info" 2>/dev/null && ls) | sort -u); do
    if [ ! -f "$A/info/$f" ] || [ ! -f "$B/info/$f" ]; then echo "   MISSING    $f"; bad=1
    elif cmp -s "$A/info/$f" "$B/info/$f"; then echo "   identical  $f"
    elif cmp -s <(mask < "$A/info/$f") <(mask < "$B/info/$f"); then
        echo "   NOISE      $f  (differs only in the export's measured 'max rel. error vs torch': fresh exports re-measure it)"
    else echo "   DIFFERS    $f"; diff -u "$A/info/$f" "$B/info/$f" | sed 's/^/      /'; bad=1; fi
done

echo "== case status (OK / FAILED / SKIPPED)"
st() { awk '$2 !~ /^export-/ {print $2, $1}' "$1" | LC_ALL=C sort; }   # export-*: absent where exports were reused
if diff <(st "$A/status.txt") <(st "$B/status.txt") > "$tmp/s"; then echo "   same for every case"
else sed 's/^/   /' "$tmp/s"; bad=1; fi
grep -h '^FAILED' "$A/status.txt" | sed 's/^/   before: /'
grep -h '^FAILED' "$B/status.txt" | sed 's/^/   after:  /'

if [ -s "$A/exports_sha256.txt" ] && [ -s "$B/exports_sha256.txt" ]; then
    echo "== export files (informational)"
    if cmp -s "$A/exports_sha256.txt" "$B/exports_sha256.txt"; then echo "   identical"
    else diff <(awk '{print $2, $1}' "$A/exports_sha256.txt") <(awk '{print $2, $1}' "$B/exports_sha256.txt") \
         | grep '^[<>]' | sed 's/^/   /'; fi
fi

echo
if [ $bad = 0 ]; then echo "RESULT: IDENTICAL"; else echo "RESULT: DIFFERENCES FOUND"; fi
exit $bad
