#!/usr/bin/env bash
# Bit-identity harness for sanaedit.
#   bash run.sh REPO OUTDIR [EXPORTS]
# Runs REPO's code (cwd=REPO, `python -m sanaedit.cli`, PYTHONPATH=REPO so REPO's package beats the editable
# install) and writes into OUTDIR (must be new or empty):
#   exports/{onnx,mnn}   unless EXPORTS (a folder holding onnx/ and mnn/) is given: then those are used
#   edits/*.png          the edits;  info/*.txt  `sanaedit info` stdout (paths normalised)
#   logs/*.log           each command's stderr (stdout in logs/*.out)
#   status.txt           OK / FAILED rc=N / SKIPPED per case, with seconds
#   sha256.txt           sha256 of every PNG (relative names), sorted
#   exports_sha256.txt   sha256 of the export files (only when this run made the exports; informational)
# Overridable: CLI_MODULE (default: sanaedit.cli, else sanaedit.apps.cli), PYTHON (default: the python on PATH, e.g. the active venv), MODEL, SAMPLE, LORA (default: REPO/sanaedit/assets/...)
set -u
REPO=$(cd "${1:?usage: run.sh REPO OUTDIR [EXPORTS]}" && pwd)
OUT=${2:?usage: run.sh REPO OUTDIR [EXPORTS]}
EXPORTS_IN=${3:-}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if [ -n "$(ls -A "$OUT")" ]; then echo "run.sh: $OUT is not empty; use a new folder" >&2; exit 2; fi
PY=${PYTHON:-python}
ASSETS=sanaedit/assets                      # relative to REPO (cwd), so info's printed paths match across repos
MODEL=${MODEL:-$ASSETS/comic-model}
SAMPLE=${SAMPLE:-$ASSETS/sample.jpg}
LORA=${LORA:-$ASSETS/ghibli-lora}
mkdir -p "$OUT/edits" "$OUT/info" "$OUT/logs"
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONHASHSEED=0

START=$(date +%s)
# run NAME CMD...: stdout -> logs/NAME.out, stderr -> logs/NAME.log, a status line; never stops the script
run() {
    local name=$1; shift
    local t0=$(date +%s.%N) rc
    printf '%q ' "$@" > "$OUT/logs/$name.cmd"; echo >> "$OUT/logs/$name.cmd"
    "$@" > "$OUT/logs/$name.out" 2> "$OUT/logs/$name.log"; rc=$?
    local dt=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
    if [ $rc -eq 0 ]; then echo "OK       $name  ${dt}s" >> "$OUT/status.txt"
    else
        echo "FAILED   $name  rc=$rc  ${dt}s  $(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -1)" >> "$OUT/status.txt"
    fi
    echo "[$(( $(date +%s) - START ))s] $(tail -1 "$OUT/status.txt")"
}
skip() { echo "SKIPPED  $1  $2" >> "$OUT/status.txt"; echo "SKIPPED $1: $2"; }
# the CLI package: CLI_MODULE, else the first of these that has a __main__.py (the layout moved it to apps/cli)
if [ -z "${CLI_MODULE:-}" ]; then
    for m in sanaedit/cli sanaedit/apps/cli; do [ -f "$m/__main__.py" ] && { CLI_MODULE=${m//\//.}; break; }; done
fi
[ -n "${CLI_MODULE:-}" ] || { echo "run.sh: no CLI __main__.py found; set CLI_MODULE" >&2; exit 2; }
echo "cli: python -m $CLI_MODULE"; echo "$CLI_MODULE" > "$OUT/cli_module.txt"
cli() { "$PY" -m "$CLI_MODULE" "$@"; }

"$PY" -c "import sanaedit, sys; print(sanaedit.__file__)" > "$OUT/sanaedit_file.txt" 2>&1
case "$(cat "$OUT/sanaedit_file.txt")" in
    "$REPO"/*) echo "sanaedit from: $(cat "$OUT/sanaedit_file.txt")" ;;
    *) echo "run.sh: sanaedit does not resolve under $REPO: $(cat "$OUT/sanaedit_file.txt")" >&2; exit 2 ;;
esac
git -C "$REPO" rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null
git -C "$REPO" status --short >> "$OUT/commit.txt" 2>/dev/null

# ---- exports -------------------------------------------------------------------------------------------------
if [ -n "$EXPORTS_IN" ]; then
    EXP=$(cd "$EXPORTS_IN" && pwd) || exit 2
    echo "using exports in $EXP"
else
    EXP=$OUT/exports; mkdir -p "$EXP"
    run export-onnx cli export "$MODEL" --format onnx -o "$EXP/onnx"
    run export-mnn  cli export "$MODEL" --format mnn  -o "$EXP/mnn"
    (cd "$EXP" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sed 's#  \./#  #') > "$OUT/exports_sha256.txt"
fi

# ---- info ----------------------------------------------------------------------------------------------------
norm() { sed -e "s#$EXP#<EXPORTS>#g" -e "s#$OUT#<OUT>#g" -e "s#$REPO#<REPO>#g"; }
run info-model cli info "$MODEL";     norm < "$OUT/logs/info-model.out" > "$OUT/info/model.txt"
run info-onnx  cli info "$EXP/onnx";  norm < "$OUT/logs/info-onnx.out"  > "$OUT/info/onnx.txt"
run info-mnn   cli info "$EXP/mnn";   norm < "$OUT/logs/info-mnn.out"   > "$OUT/info/mnn.txt"

# ---- edits: backend x upsample -------------------------------------------------------------------------------
E=(edit "$SAMPLE" --seed 0 --threads 2)
for up in plain guided guided-grey refine; do
    run "torch-$up"       cli "${E[@]}" -o "$OUT/edits/torch-$up.png"       --model "$MODEL"     --backend torch       --upsample "$up"
    run "onnxruntime-$up" cli "${E[@]}" -o "$OUT/edits/onnxruntime-$up.png" --model "$EXP/onnx" --backend onnxruntime --upsample "$up"
    run "mnn-$up"         cli "${E[@]}" -o "$OUT/edits/mnn-$up.png"         --model "$EXP/mnn"  --backend mnn         --upsample "$up"
done

# ---- more torch cases ----------------------------------------------------------------------------------------
run torch-dtype-float32     cli "${E[@]}" -o "$OUT/edits/torch-dtype-float32.png"     --model "$MODEL" --dtype float32
run torch-dtype-int8        cli "${E[@]}" -o "$OUT/edits/torch-dtype-int8.png"        --model "$MODEL" --dtype int8
run torch-low-memory        cli "${E[@]}" -o "$OUT/edits/torch-low-memory.png"        --model "$MODEL" --low-memory
run torch-lora-ghibli       cli "${E[@]}" -o "$OUT/edits/torch-lora-ghibli.png"       --model "$MODEL" --lora "$LORA"
run torch-sampler-dpm-steps4 cli "${E[@]}" -o "$OUT/edits/torch-sampler-dpm-steps4.png" --model "$MODEL" --sampler dpm --steps 4
run torch-steps2-guidance1  cli "${E[@]}" -o "$OUT/edits/torch-steps2-guidance1.png"  --model "$MODEL" --steps 2 --guidance 1
# --vae tiny: only where a folder has a tiny autoencoder (model: tiny_vae/, export: tiny_vae_* graphs)
tiny=0
if [ -d "$MODEL/tiny_vae" ]; then tiny=1
    run torch-vae-tiny cli "${E[@]}" -o "$OUT/edits/torch-vae-tiny.png" --model "$MODEL" --vae tiny; fi
for f in onnx mnn; do
    if ls "$EXP/$f"/tiny_vae* >/dev/null 2>&1; then tiny=1
        run "$f-vae-tiny" cli "${E[@]}" -o "$OUT/edits/$f-vae-tiny.png" --model "$EXP/$f" --vae tiny; fi
done
[ $tiny = 0 ] && skip vae-tiny "no tiny autoencoder in $MODEL or the exports (the CLI refuses --vae tiny there)"

# ---- Python API ----------------------------------------------------------------------------------------------
run api-load_pipeline-torch "$PY" - "$MODEL" "$SAMPLE" "$OUT/edits/api-load_pipeline-torch.png" <<'EOF'
import sys
from PIL import Image
from sanaedit import load_pipeline
model, sample, out = sys.argv[1:]
pipe = load_pipeline(model, threads=2)
pipe(Image.open(sample), generator=pipe.flow.arrays.generator(0)).images[0].save(out)
EOF
run api-from_pretrained-onnx "$PY" - "$EXP/onnx" "$SAMPLE" "$OUT/edits/api-from_pretrained-onnx.png" <<'EOF'
import sys
from PIL import Image
from sanaedit import SanaEditPipeline
model, sample, out = sys.argv[1:]
pipe = SanaEditPipeline.from_pretrained(model)
pipe(Image.open(sample), generator=pipe.flow.arrays.generator(0)).images[0].save(out)
EOF

# ---- hashes --------------------------------------------------------------------------------------------------
(cd "$OUT" && find edits -name '*.png' -type f | LC_ALL=C sort | xargs -r sha256sum) > "$OUT/sha256.txt"
echo "done in $(( $(date +%s) - START ))s: $(grep -c '^OK' "$OUT/status.txt") OK, $(grep -c '^FAILED' "$OUT/status.txt") FAILED, $(grep -c '^SKIPPED' "$OUT/status.txt") SKIPPED; $(wc -l < "$OUT/sha256.txt") PNGs"
grep '^FAILED' "$OUT/status.txt"
exit 0
