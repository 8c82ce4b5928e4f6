"""machinery-core builds as a wheel and works alone in a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1]

SCRIPT = """
from machinery import Machinery, Config
app = Machinery(Config(broker="memory://", result_backend="memory://", eager=True))

@app.task
def add(*args):
    return sum(args)

assert app.send_task(add.s(1, 1)).get(timeout=5) == 2
import machinery.plugins as p
assert {r.scheme for r in p.list_schemes()} >= {"memory", "sqlite"}
# a worker with events on (the default) and no metrics extra: nothing of prometheus is imported
import sys, tempfile
url = "sqlite:///" + tempfile.mkdtemp() + "/w.db"
app = Machinery(Config(broker=url, result_backend=url))
app.task(name="add")(lambda a, b: a + b)
worker = app.worker(concurrency=1)
thread = worker.launch_async()
from machinery import Signature
assert app.send_task(Signature("add", [2, 3])).get(timeout=10) == 5
worker.quit(); thread.join(10)
assert "prometheus_client" not in sys.modules
print("wheel ok")
"""


@pytest.mark.slow
def test_wheel_installs_alone_into_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(CORE)],
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob("machinery_core-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheels[0])], check=True)
    out = subprocess.run(
        [str(python), "-c", SCRIPT], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert "wheel ok" in out.stdout
    help_text = subprocess.run(
        [str(env_dir / "bin" / "machinery"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert help_text.returncode == 0, help_text.stderr
