"""The small subcommands (``tritoncnn env``, ``tritoncnn demo``), ``tritoncnn --version`` and
the runtime's notice that kernels run interpreted."""

import os
import subprocess
import sys

import pytest
import torch

from tritoncnn import cli


def test_env_names_versions_and_mode(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "triton", "numpy", "gpu", "kernels run"):
        assert key in out


def test_demo_runs_every_op_and_matches_torch(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    for op in ("max_pool2d", "conv2d_relu", "linear", "conv2d_relu_pool"):
        assert op in out
    assert "all kernels match PyTorch" in out


def test_no_subcommand_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_version(capsys):
    import tritoncnn

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tritoncnn {tritoncnn.__version__}"


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITONCNN_MODE", "TRITON_INTERPRET")}
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


NOTICE = "no CUDA device, so tritoncnn's Triton kernels run interpreted"


def test_the_interpreter_notice_is_a_warning_at_the_first_launch_only():
    """No notice on import or --help; one InterpreterWarning at the first kernel launch, which
    warnings filters silence."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: kernels run compiled and there is no notice")
    quiet = _python("import sys; from tritoncnn import cli, kernels, models\n"
                    "for argv in ([], ['--help'], ['train', '--help'], ['tune', '--help']):\n"
                    "    try: cli.main(argv)\n"
                    "    except SystemExit: pass")
    assert quiet.returncode == 0, quiet.stderr
    assert "usage: tritoncnn" in quiet.stdout and NOTICE not in quiet.stderr
    launch = ("import torch, warnings; from tritoncnn import kernels\n"
              "kernels.max_pool2d(torch.randn(1, 1, 4, 4), 2)\n"
              "kernels.max_pool2d(torch.randn(1, 1, 4, 4), 2)\n")
    loud = _python(launch)
    assert loud.returncode == 0 and loud.stderr.count(NOTICE) == 1, loud.stderr
    assert "InterpreterWarning" in loud.stderr
    silenced = _python("import warnings, tritoncnn\n"
                       "warnings.filterwarnings('ignore', category=tritoncnn.InterpreterWarning)\n"
                       + launch)
    assert silenced.returncode == 0 and NOTICE not in silenced.stderr, silenced.stderr
    by_flag = _python(launch, "-W", "ignore:no CUDA device")
    assert by_flag.returncode == 0 and NOTICE not in by_flag.stderr, by_flag.stderr
