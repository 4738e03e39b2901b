"""Make a venv the way ComfyUI-Manager leaves one: ComfyUI's requirements and the node pack's
requirements.txt, and nothing of this package's own (no ``pip install`` of it, no extras).

    python .ci/manager_venv.py SOURCE_VENV COMFYUI_REQUIREMENTS DEST_VENV

ComfyUI's requirements (the torch family included) are the very packages SOURCE_VENV installed
for that ComfyUI: they are linked into DEST's site-packages (several GB, identical), found by
walking their declared dependencies. Then pip installs requirements.txt on top; what it lacks
is what a pod set up by ComfyUI-Manager lacks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

WALK = r"""
import json, re, sys
from importlib import metadata
seen, todo, roots = {}, list(sys.argv[1:]), []
def key(name): return re.sub(r"[-_.]+", "-", name).lower()
while todo:
    name = todo.pop()
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    if key(dist.metadata["Name"]) in seen:
        continue
    files = {str(f).split("/")[0] for f in (dist.files or []) if not str(f).startswith("..")}
    seen[key(dist.metadata["Name"])] = sorted(files)
    for req in dist.requires or []:
        if "extra ==" not in req:
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
site = [p for p in sys.path if p.endswith("site-packages")][0]
print(json.dumps({"site": site, "dists": seen}))
"""


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[\s;<>=!~\[(]", line, maxsplit=1)[0])
    return names


def main(source: Path, requirements: Path, dest: Path, pack: Path) -> None:
    roots = ["torch", "torchvision", "torchaudio", "requests", *requirement_names(requirements)]
    found = json.loads(subprocess.run([str(source / "bin" / "python"), "-c", WALK, *roots], check=True,
                                      capture_output=True, text=True).stdout)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(dest)], check=True)
    site = Path(subprocess.run([str(dest / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for files in found["dists"].values():
        for top in files:
            target = site / top
            if not target.exists() and not top.endswith((".pth", "__pycache__")) and top != "bin":
                os.symlink(Path(found["site"]) / top, target)
    subprocess.run([str(dest / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(pack / "requirements.txt")], check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(__file__).resolve().parent.parent)
