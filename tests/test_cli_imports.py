"""The CLI stays fast: `--help` and `validate` import none of the heavy libraries (torch, ray, ...).

Checked by which modules a fresh interpreter holds afterwards, not by wall-clock time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "transformers", "pandas", "optuna")

SCRIPT = """
import json, sys
from orchestrator.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "heavy": sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)}))
"""


def _heavy_after(*argvs: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argvs), json.dumps(HEAVY)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_library():
    assert _heavy_after() == {"codes": [], "heavy": []}


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["submit", "--help"]])
def test_help_imports_no_heavy_library(argv):
    assert _heavy_after(argv) == {"codes": [0], "heavy": []}


def test_validate_imports_no_heavy_library(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: demo\nworkspace: ws\ntask:\n  builtin: rotten_tomatoes\n")
    assert _heavy_after(["validate", str(job)]) == {"codes": [0], "heavy": []}
    assert not (tmp_path / "ws").exists()
