"""profiles/slurm on a real one-node SLURM (tests/cluster/slurm_local.sh); opt-in: DST_TEST_SLURM=1.

`make test-slurm` is the main entry point; this wrapper lets `DST_TEST_SLURM=1 pytest
tests/test_slurm.py` run the same script. It needs root (it installs and starts munged,
slurmctld and slurmd) and takes a few minutes, so `make test` does not run it.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "tests/cluster/slurm_local.sh"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DST_TEST_SLURM") != "1",
                    reason="set DST_TEST_SLURM=1 to run the real-SLURM test (or: make test-slurm)")
def test_smoke_dag_through_real_slurm_equals_local_run():
    timeout = int(os.environ.get("DST_SLURM_TIMEOUT", "1800"))
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=2 * timeout + 600)
    output = proc.stdout + proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIP:")]
    if proc.returncode == 0 and skipped:
        pytest.skip(skipped[0])
    assert proc.returncode == 0, output[-6000:]
    assert "PASS:" in proc.stdout, output[-6000:]
