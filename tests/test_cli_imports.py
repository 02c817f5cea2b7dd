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


def test_predict_on_a_student_folder_imports_only_torch(tmp_path):
    """`adaray predict DIR` needs torch for the model and the `tokenizers` library for the ids:
    not transformers (about 1 s), ray, mlflow or optuna. (pyarrow's padding path pulls in pandas.)"""
    import torch

    from orchestrator.teacher_source import MINILM, resolve_teacher_source
    from search_space import Genotype, SearchSpaceConfig
    from search_space.student import Student
    from workers.student import save_student

    genotype = Genotype(depth=1, nodes=((("conv_3", 0), ("identity", 1)),))
    student = Student(genotype, space=SearchSpaceConfig(embed_dim=8, k_max=1, num_nodes=1), vocab_size=30522,
                      num_labels=2, pad_id=0)
    torch.manual_seed(0)
    save_student(student, tmp_path / "student", tokenizer_dir=resolve_teacher_source(MINILM),
                 extra={"label_names": ["neg", "pos"], "pair": False, "max_length": 16})
    after = _heavy_after(["predict", str(tmp_path / "student"), "--text", "a fine film", "--json"])
    assert after == {"codes": [0], "heavy": ["pandas", "torch"]}
