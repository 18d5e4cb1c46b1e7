"""The registry is a leaf: plugin modules register into it, it imports none of them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REGISTRY = Path(__file__).resolve().parent.parent / "recbole_bifair" / "registry.py"


def test_registry_imports_no_plugin_module():
    tree = ast.parse(REGISTRY.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not node.value.startswith("recbole_bifair."), f"registry.py names {node.value!r}"
    plugin = {name for name in imported if name.startswith("recbole_bifair")}
    assert plugin == {"recbole_bifair.errors"}, plugin


def test_importing_the_registry_alone_finds_every_plugin_class():
    # A fresh process: the package's __init__ imports the model and trainer packages.
    code = (
        "from recbole_bifair.registry import get_model, get_trainer\n"
        "print(get_model('alpharec').__name__, get_model('LLMLinear').__name__,"
        " get_trainer(None, 'AlphaRec', 'bifair').__name__, get_trainer(None, 'BPR', 'Trainer').__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["AlphaRec", "LLMLinear", "BiFairTrainer", "Trainer"]


def test_a_plugin_name_that_shadows_recbole_is_refused_at_lookup():
    from recbole_bifair import registry

    class BPR:  # noqa: D401  (a stand-in plugin class named like RecBole's BPR)
        pass

    saved = dict(registry.PLUGIN_MODELS)
    registry.register_model(BPR)
    try:
        with pytest.raises(ValueError, match="would shadow RecBole's model"):
            registry.get_model("AlphaRec")
    finally:
        registry.PLUGIN_MODELS.clear()
        registry.PLUGIN_MODELS.update(saved)
        registry._UNCHECKED.clear()
