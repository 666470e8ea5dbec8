"""Fetching BEIR datasets: the official archive, its published md5, unpacked atomically into a data folder.

`download_dataset("scifact")` needs internet (the project's machines have none; the tests use a local
archive). The dataset name becomes a path component, so it is checked to be a plain name first, and
the target folder follows the output-target rule of :func:`densekit.io.atomic_dir`.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from densekit.data import _find_file, data_dirs
from densekit.errors import DensekitError, IntegrityError
from densekit.io import atomic_dir, check_output_target, md5_file, safe_name

#: Official BEIR archives and the md5 that the BEIR README publishes for them.
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_MD5 = {
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
}


def download_dataset(
    name: str,
    dest: str | Path | None = None,
    url: str | None = None,
    md5: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Fetch a BEIR archive, verify its md5, and unpack it to `dest/name` atomically.

    `url` defaults to the official BEIR location and `md5` to the checksum the BEIR README publishes;
    a dataset without a known checksum needs `md5=` or an explicit `verify=False`. `url` may also be a
    local path (used by the tests and for mirrors). `name` must be a plain name (no path separators,
    no ``..``), so the dataset can only land in `dest`; an existing `dest/name` that densekit did not
    download is refused unless `overwrite`. Nothing is left behind when a check fails.
    """
    safe_name(name, "dataset name")
    if dest is None:
        if not data_dirs():
            raise DensekitError("no --dest given and $DENSEKIT_DATA is not set: say where to unpack the dataset")
        dest = data_dirs()[0]
    url = url or BEIR_URL.format(name=name)
    expected = md5 or BEIR_MD5.get(name)
    if verify and expected is None:
        raise DensekitError(f"no published md5 is known for {name!r}; pass --md5 HEX, or --no-verify to skip the check")
    target = Path(dest) / name
    check_output_target(target, "dataset", overwrite)
    with tempfile.TemporaryDirectory(prefix="densekit-dl-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        if Path(url).exists():
            shutil.copyfile(url, archive)
        else:
            try:
                with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as exc:
                raise DensekitError(f"could not download {url}: {exc}") from None
        if verify:
            actual = md5_file(archive)
            if actual != expected:
                raise IntegrityError(f"{url}: md5 {actual} does not match the published {expected}")
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(Path(tmp) / "unpacked")
        except zipfile.BadZipFile:
            raise IntegrityError(f"{url}: not a valid zip archive") from None
        unpacked = Path(tmp) / "unpacked"
        inner = unpacked / name if (unpacked / name).is_dir() else unpacked
        if _find_file(inner, "corpus.jsonl") is None:
            raise IntegrityError(f"{url}: the archive holds no {name}/corpus.jsonl")
        with atomic_dir(target, kind="dataset", overwrite=overwrite) as staging:
            for item in inner.iterdir():
                shutil.move(str(item), staging / item.name)
    return target
