"""Fetch the book's third-party front-end files from the npm registry, at pinned versions.

The built HTML book must work offline, so nothing may be loaded from a CDN at reading time.
Before each build this script puts the pinned packages' files under ``book/_static/vendor/``
(ignored by git: third-party files are not committed), from where Sphinx copies them into the
book. Downloaded tarballs are cached in ``.cache/vendor/``, so only the first build needs the
registry.

Usage: ``python tools/fetch_vendor.py`` (``make book`` and ``make test`` run it).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "vendor"
VENDOR = ROOT / "book" / "_static" / "vendor"


@dataclass(frozen=True)
class Package:
    """One npm package: which files of its tarball to copy where (relative to ``VENDOR``)."""

    name: str
    version: str
    sha256: str  # of the tarball, so that a changed download cannot slip in
    copy: tuple[tuple[str, str], ...]  # (path inside the package, destination) pairs
    exclude: tuple[str, ...] = ()  # file-name endings not to copy (source maps, unused bundles)

    @property
    def tarball(self) -> Path:
        return CACHE / f"{self.name.replace('/', '-').lstrip('@')}-{self.version}.tgz"


PACKAGES = (
    # Maths, rendered offline.
    Package(
        "mathjax",
        "3.2.2",
        "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09",
        (
            ("es5/tex-mml-chtml.js", "mathjax/tex-mml-chtml.js"),
            ("es5/output/chtml/fonts/woff-v2", "mathjax/output/chtml/fonts/woff-v2"),
        ),
    ),
    # The widget runtime of the static book: require.js loads the widget manager, which renders
    # the widget state saved in the notebooks (ipywidgets 8 needs html-manager 1.x).
    Package(
        "requirejs",
        "2.3.7",
        "31f3330c978fb28684622fe71165dc946432cf0210b2ea8a1ca0233e70f2737d",
        (("require.js", "require.js"),),
    ),
    Package(
        "@jupyter-widgets/html-manager",
        "1.0.15",
        "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
        (("dist", "html-manager"),),
        exclude=(".map", "embed.js", "libembed-amd.js", ".txt"),
    ),
)


@dataclass(frozen=True)
class PythonPackageFile:
    """A front-end file shipped inside an installed Python package (pinned in requirements.txt)."""

    module: str
    version: str
    path: str
    destination: str


PYTHON_FILES = (
    # anywidget's front end as an AMD module, which require.js can load: the book's widget
    # manager finds it here instead of on a CDN (see book/_static/widgets-config.js).
    PythonPackageFile("anywidget", "0.11.0", "nbextension/index.js", "anywidget/index.js"),
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(package: Package) -> Path:
    """The package's tarball, from the cache or from the npm registry (``npm pack``)."""
    if package.tarball.exists():
        return package.tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    spec = f"{package.name}@{package.version}"
    print(f"fetching {spec} from the npm registry")
    try:
        result = subprocess.run(
            ["npm", "pack", spec, "--silent", "--pack-destination", str(CACHE)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise SystemExit(
            f"fetch_vendor: could not fetch {spec} with npm (is npm installed and the registry reachable?)\n{detail}"
        ) from error
    produced = CACHE / result.stdout.strip().splitlines()[-1]
    produced.rename(package.tarball)
    return package.tarball


def install(package: Package) -> None:
    tarball = download(package)
    digest = _sha256(tarball)
    if digest != package.sha256:
        tarball.unlink()
        raise SystemExit(
            f"fetch_vendor: {tarball.name} has sha256 {digest}, expected {package.sha256}"
        )
    with tarfile.open(tarball) as archive:
        for source, destination in package.copy:
            target = VENDOR / destination
            if target.exists():
                continue
            prefix = f"package/{source}"
            members = [
                m
                for m in archive.getmembers()
                if m.name == prefix or m.name.startswith(prefix + "/")
            ]
            if not members:
                raise SystemExit(f"fetch_vendor: {source} is not in {tarball.name}")
            for member in members:
                if not member.isfile() or member.name.endswith(package.exclude):
                    continue
                out = (
                    target / Path(member.name).relative_to(prefix)
                    if member.name != prefix
                    else target
                )
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as data, open(out, "wb") as handle:
                    shutil.copyfileobj(data, handle)
    print(f"vendor: {package.name}@{package.version} ready in {VENDOR.relative_to(ROOT)}")


def install_python_file(item: PythonPackageFile) -> None:
    from importlib.metadata import version
    from importlib.util import find_spec

    installed = version(item.module)
    if installed != item.version:
        raise SystemExit(
            f"fetch_vendor: {item.module} {installed} is installed, expected {item.version} (make setup)"
        )
    source = Path(find_spec(item.module).origin).parent / item.path
    target = VENDOR / item.destination
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"vendor: {item.module}@{item.version} {item.path} ready in {VENDOR.relative_to(ROOT)}")


def main() -> int:
    for package in PACKAGES:
        install(package)
    for item in PYTHON_FILES:
        install_python_file(item)
    return 0


if __name__ == "__main__":
    sys.exit(main())
