"""Fill ``bench/gpu-carry`` (git-ignored) with what the GPU machine lacks, for ``carry``.

The GPU machine has torch, transformers, peft, typer, rich, pandas, opencv, ... but not
meragent's pydantic stack or PyAV, and it cannot reach a package registry. This writes:

* ``wheels/``: cp312 manylinux wheels of pydantic, pydantic-core, pydantic-settings,
  python-dotenv, typing-inspection, annotated-types (config, schema, the CLI's options) and av
  (``data synth`` and ``features extract`` decode and write video with PyAV), at the versions
  installed here, so the dry run here used the same code;
* ``tokenizer/``: the SmolLM2 tokenizer with its chat template (from the bundled GGUF), for the
  LoRA step's random Qwen-shaped models;
* ``ov332/``: the OV332 descriptions and labels (the LoRA step's training examples).

Run with the project's venv: ``.venv/bin/python bench/gpu_suite_prepare.py``. It prints the size
of the folder, which travels with the working tree (64 MiB in all).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

CARRY = Path(__file__).resolve().parent / "gpu-carry"
SHARED_OV = Path(__file__).resolve().parents[2] / "shared" / "data" / "ov332"
WHEELS = (
    "pydantic", "pydantic-core", "pydantic-settings", "python-dotenv", "typing-inspection",
    "annotated-types", "av",
)  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 60


def download_wheels(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)  # one version of each, or the install stops
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder),
            *pins,
        ],
        check=True,
    )  # fmt: skip


def export_tokenizer(folder: Path) -> None:
    from meragent.tools.causal_lm import load_tokenizer

    tokenizer, has_template = load_tokenizer("bundled:smollm2-135m")
    if not has_template:
        raise SystemExit("the bundled SmolLM2 tokenizer lost its chat template")
    shutil.rmtree(folder, ignore_errors=True)
    tokenizer.save_pretrained(str(folder))


def copy_ov332(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("descriptions.csv", "openset_labels.csv"):
        shutil.copyfile(SHARED_OV / name, folder / name)


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    download_wheels(CARRY / "wheels")
    export_tokenizer(CARRY / "tokenizer")
    copy_ov332(CARRY / "ov332")
    size = folder_mib(CARRY)
    for path in sorted(CARRY.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size / 2**20:7.2f} MiB  {path.relative_to(CARRY)}")
    print(f"{size:.1f} MiB in {CARRY}")
    if size > LIMIT_MIB:
        raise SystemExit(f"{CARRY} is over {LIMIT_MIB} MiB: the run carries 64 MiB in all")


if __name__ == "__main__":
    main()
