#!/usr/bin/env bash
# The GPU suite of issue 15 in one run (see bench/gpu_suite.py for the steps and results).
#
# Before the run, here (the project's venv; fills the git-ignored bench/gpu-carry, ~41 MiB:
# cp312 wheels of pydantic* and av, the SmolLM2 tokenizer, the OV332 CSVs):
#     PYTHON=.venv/bin/python bench/gpu_suite.sh prepare
# Dry run here on the CPU at toy sizes (a few minutes; writes to /tmp/gpu_suite unless $OUT):
#     PYTHON=.venv/bin/python bench/gpu_suite.sh --tiny
# The real run: one call of the device tool's `run` (about 7-9 minutes of its 10):
#     command:   bash bench/gpu_suite.sh
#     carry:     ["bench/gpu-carry"]
#     timeout_s: 600
# The step caps sum to 540 s (six_class 140, features 170, fusion 130, lora 100; time a step
# leaves unused goes to the next; the wheels install takes ~15 s before them). What comes back
# ($OUT: gpu_suite.json, one JSON per step, suite.log: 6 files) is published with
#     .venv/bin/python bench/gpu_suite.py --publish <files_at>/gpu_suite.json
# A rerun of only some steps: bash bench/gpu_suite.sh --steps fusion,lora
#
# On the GPU machine python3 (/opt/torch/.venv) has torch, transformers 5, peft, typer, rich,
# pandas, opencv, ...; the carried wheels are installed into /tmp/site (no registry there) and
# meragent is imported from src/ (no install step).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
# Overridable for a dry run of the install path with other wheels (e.g. cp311 ones here).
CARRY=${GPU_SUITE_CARRY:-bench/gpu-carry}
SITE=${GPU_SUITE_SITE:-/tmp/site}

if [ "${1:-}" = "prepare" ]; then
    exec "$PY" bench/gpu_suite_prepare.py
fi

if ! "$PY" -c "import pydantic, pydantic_settings, av" 2>/dev/null; then
    if [ ! -d "$CARRY/wheels" ]; then
        echo "pydantic/av missing and no $CARRY/wheels: run 'bench/gpu_suite.sh prepare' here" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$CARRY"/wheels/*.whl || exit 2
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" bench/gpu_suite.py "$@"
