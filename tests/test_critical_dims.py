"""Stage 1 on real geometries: numbers, artifacts, manifest and determinism."""

import json
import math

import pytest

from conftest import REPO, run_cli


def stage1(tmp_path, experiment=None, name="out"):
    files = [REPO / "config/config.yaml"] + ([REPO / f"config/experiments/{experiment}.yaml"] if experiment else [])
    out = tmp_path / name
    run_cli("critical-dims", "--config", *files, "--out", out)
    return out, json.loads((out / "critical_dims.json").read_text())


@pytest.mark.parametrize(
    "experiment, d_tcd, d10, rotary_dim, s",
    [("llama3-8b-128k", 35, 24, 128, 16), ("phi3-mini-128k", 31, 19, 96, 64), ("smollm2-32k", 20, 14, 64, 4)],
)
def test_real_model_geometries(tmp_path, experiment, d_tcd, d10, rotary_dim, s):
    _, res = stage1(tmp_path, experiment)
    assert (res["d_tcd"], res["d10_tcd"], res["rotary_dim"], res["scale"]) == (d_tcd, d10, rotary_dim, s)
    pairs = res["pairs"]
    assert len(pairs) == rotary_dim // 2
    # the critical pair is the first with less than one rotation inside L0
    assert pairs[d_tcd]["rotations_L0"] < 1 <= pairs[d_tcd - 1]["rotations_L0"]
    assert pairs[d10]["rotations_L0"] < 10 <= pairs[d10 - 1]["rotations_L0"]
    for p in pairs:
        assert p["rotations_target"] == pytest.approx(p["rotations_L0"] * s)
        assert p["period"] == pytest.approx(2 * math.pi * res["rope_base"] ** (2 * p["pair"] / rotary_dim))
        assert p["factors"]["pi"] == pytest.approx(s)
    assert pairs[0]["factors"]["yarn"] == pytest.approx(1.0) and pairs[-1]["factors"]["yarn"] == pytest.approx(s)
    assert res["attention_factor"]["longrope2_init"] == pytest.approx(math.sqrt(1 + math.log(s) / math.log(res["original_length"])))


def test_manifest_and_determinism(tmp_path):
    out1, res = stage1(tmp_path, name="a")
    out2, _ = stage1(tmp_path, name="b")
    for f in ("critical_dims.json", "critical_dims.png"):
        assert (out1 / f).read_bytes() == (out2 / f).read_bytes(), f
    man = json.loads((out1 / "manifest.json").read_text())
    assert man["stage"] == "critical_dims"
    assert set(man) >= {"config", "config_hash", "package", "inputs", "outputs", "seed", "wall_time_s", "libraries", "device"}
    assert man["config"]["extension"]["target_length"] == res["target_length"]
    assert set(man["outputs"]) == {"critical_dims.json", "critical_dims.png"}
    assert man["libraries"]["torch"].startswith("2.") and man["package"]["version"]
    assert not [p for p in out1.iterdir() if p.name.startswith(".")]  # no staging leftovers
    assert (out1 / "critical_dims.png").read_bytes()[:4] == b"\x89PNG"


def test_default_geometry_is_within_10_points_of_a_real_model(tmp_path):
    """The scale model's pairs split like a real model's: below d10_tcd / search band / from d_tcd."""
    from longrope2.stages.critical_dims import REAL_MODELS, closest_real_model, pair_split

    assert pair_split(REAL_MODELS["Llama-3-8B"]) == {"below_d10_tcd": 37.5, "search_band": 17.2, "from_d_tcd": 45.3}
    assert pair_split(REAL_MODELS["Phi-3-mini"]) == {"below_d10_tcd": 39.6, "search_band": 25.0, "from_d_tcd": 35.4}
    out = tmp_path / "cd"
    run_cli("critical-dims", "--config", str(REPO / "config" / "config.yaml"), "--out", str(out), "--no-figure")
    result = json.loads((out / "critical_dims.json").read_text())
    assert result["rotary_dim"] >= 64
    assert result["pair_split"] == {"below_d10_tcd": 31.2, "search_band": 34.4, "from_d_tcd": 34.4}
    assert result["closest_real_model"]["model"] == "Phi-3-mini"
    assert result["closest_real_model"]["max_gap_points"] <= 10
    assert closest_real_model(pair_split(REAL_MODELS["SmolLM2-135M"]))["max_gap_points"] == 0
