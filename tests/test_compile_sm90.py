"""Every kernel specialization the ops launch compiles for sm_90 (Hopper), with no GPU present.

The interpreter never runs Triton's compiler; this runs it (through ptxas) in a subprocess, so a
kernel that would fail to compile on an H100/H200 fails here first; it also fails when a config
the tuner keeps or a launcher's heuristic spills registers, or a heuristic conv kernel misses
wgmma. See tests/compile_sm90.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritoncnn import _runtime


@pytest.mark.skipif(not _runtime.INTERPRET, reason="a GPU compiles the kernels in the other tests")
def test_all_kernels_compile_for_sm90(tmp_path):
    # A cache of its own: every kernel is compiled by ptxas (as on a fresh machine), and the
    # ~200 MB of binaries go with pytest's temporary folders instead of piling up in ~/.triton.
    script = Path(__file__).with_name("compile_sm90.py")
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "kernels compiled for sm_90" in done.stdout
    assert "registers (ptxas -v, sm_90a):" in done.stdout and "precompile:" in done.stdout
    assert "Inductor's copies of" in done.stdout  # what torch.compile's graphs launch
