"""``hf-llpf verify``: an untouched run verifies with no difference; a tampered point is named."""

import shutil

import pytest
import safetensors.torch
import torch

from hf_llpf.cli import main
from hf_llpf.run import read_metrics

torch.set_num_threads(1)


@pytest.fixture
def verified_run(quick_certified_run):
    return quick_certified_run[1]  # read-only: the tests that change it work on a copy


def test_an_untouched_run_verifies_with_no_difference(verified_run, capsys):
    capsys.readouterr()
    assert main(["verify", str(verified_run)]) == 0
    out = capsys.readouterr().out
    cert = read_metrics(verified_run)["summary"]["run"]["certification"]
    n = len(cert["point_sha256"])
    checked = n + n - 1
    assert f"point hashes: {n} of {n} match the record" in out
    assert f"losses: {checked} of {checked} within 1e-05 of the record (largest difference 0.00e+00 relative)" in out
    assert "recorded on cpu float32 1 thread(s)" in out and "checked here on cpu float32 1 thread(s)" in out
    assert out.rstrip().endswith(
        f"verify: the guarantee holds here: every saved point and every segment midpoint has mean training loss "
        f"<= {cert['ceiling']:.4g} (maximum {cert['final_check']['max']:.4g})"
    )


def test_a_tampered_point_is_named_and_the_guarantee_refused(verified_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(verified_run, copy)
    metrics = read_metrics(copy)
    target = metrics["points"][3]
    weights = next((copy / target["point"]).glob("*.safetensors"))
    state = safetensors.torch.load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name] = state[name] * 3.0  # a point far off the certified path
    safetensors.torch.save_file(state, str(weights))
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"point 3 (tick {target['tick']}): weights differ from the recorded ones" in out
    n = len(metrics["points"])
    assert f"point hashes: {n - 1} of {n} match the record" in out
    assert f"point 3 (tick {target['tick']}): loss " in out  # its loss differs from the record, and is named
    assert "verify: the guarantee does NOT hold" in out


def test_a_run_without_a_certificate_is_refused_with_exit_2(verified_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(verified_run, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    text = (copy / "path_metrics.json").read_text().replace('"point_sha256"', '"was_sha256"')
    (copy / "path_metrics.json").write_text(text)
    before[copy / "path_metrics.json"] = text.encode()
    assert main(["verify", str(copy)]) == 2
    assert "the run records no certificate to verify" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before  # nothing written
