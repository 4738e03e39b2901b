"""The distribution: one package, a console command, a ComfyUI registry section, no torch on the bridge side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
from comfyui_lora_bridge.testing.install import comfyui_dir

ROOT = Path(__file__).resolve().parents[1]


def test_bridge_side_imports_without_torch_or_comfyui() -> None:
    code = (
        "import sys\n"
        "import comfyui_lora_bridge\n"
        "import comfyui_lora_bridge.bridge.cli, comfyui_lora_bridge.bridge.pods.client\n"
        "import comfyui_lora_bridge.bridge.graphs.templates, comfyui_lora_bridge.bridge.graphs.lora_insertion\n"
        "import comfyui_lora_bridge.testing.server, comfyui_lora_bridge.testing.weights\n"
        "print(sorted(m for m in ('torch', 'comfy', 'folder_paths', 'nodes') if m in sys.modules))\n"
        "import inspect; print(inspect.iscoroutinefunction(comfyui_lora_bridge.comfy_entrypoint))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True"  # ComfyUI's V3 entry point; it imports the nodes (and ComfyUI's API) when called


def test_console_command_is_installed() -> None:
    exe = Path(sys.executable).with_name("lora-bridge")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    assert "demo" in res.stdout


def test_comfy_registry_section_is_read_by_comfyui() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"PublisherId", "DisplayName"} <= set(meta["tool"]["comfy"])
    assert "example" not in str(meta["project"].get("urls", {}))  # no placeholder repository
    # ComfyUI's own parser of node-pack metadata must understand it.
    code = (
        "from comfy_config import config_parser\n"
        f"cfg = config_parser.extract_node_configuration({str(ROOT)!r})\n"
        "print(cfg.project.name, cfg.tool_comfy.publisher_id, cfg.tool_comfy.display_name)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=comfyui_dir(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["comfyui-lora-bridge", meta["tool"]["comfy"]["PublisherId"], "LoRA", "Bridge"]


def test_every_python_package_is_in_the_distribution() -> None:
    """A wheel (not an editable install) holds only the packages pyproject lists: a new one must be listed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"comfyui_lora_bridge" + "".join(f".{part}" for part in init.parent.relative_to(ROOT).parts)
             for folder in ("bridge", "nodes") for init in (ROOT / folder).rglob("__init__.py")}
    assert found - listed == set()


def test_product_code_never_imports_the_testing_toolkit() -> None:
    """``comfyui_lora_bridge.testing`` is for tests, benchmarks and the demo: no module of the pack or the
    bridge imports it, but the CLI's ``demo`` and ``serve --embedded-pod`` (lazily, inside them)."""
    import ast

    offenders = []
    for path in [*(ROOT / "bridge").rglob("*.py"), *(ROOT / "nodes").rglob("*.py"), ROOT / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module is not None and (module == "testing" or module.startswith("testing.")) and node.level >= 2:
                offenders.append((str(path.relative_to(ROOT)), node.lineno, node.col_offset))
    # the CLI's two lazy imports, indented inside the commands that need them
    assert all(p == "bridge/cli.py" and col > 0 for p, _, col in offenders) and len(offenders) == 3, offenders


def test_the_front_end_names_no_node() -> None:
    """The editor's views get the node ids from the pack (``GET /lora_bridge/nodes``), never from their own text."""
    from comfyui_lora_bridge.bridge.pack_protocol import NODE_ROLES

    for script in (ROOT / "web").glob("*.js"):
        text = script.read_text()
        assert not [node for node in NODE_ROLES.values() if node in text], script.name
