"""The small subcommands: ``tritoncnn env`` and ``tritoncnn demo``."""

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
