"""Resumable state: resumes only its own run, discards what cannot load, survives a torn JSONL line."""

import collections
import json
import os
import random

import numpy as np
import pytest
import torch

from longrope2 import checkpoints as ck
from longrope2.checkpoints import FINGERPRINT_KEY, Checkpoints, GenerationLog, fingerprint

FP = fingerprint({"lr": 1e-3, "steps": 10}, {"corpus": "aa" * 32})
OTHER = fingerprint({"lr": 2e-3, "steps": 10}, {"corpus": "aa" * 32})


def tiny_state(step: int) -> dict:
    """What pretrain/finetune keep: model/optimizer/scheduler state, RNG states, a log of dicts."""
    torch.manual_seed(step)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    rng = random.Random(step)
    rng.gauss(0, 1)  # non-None gauss_next in the state tuple
    return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "builder_rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
            "search_rng": np.random.default_rng(step).bit_generator.state,
            "log": [{"step": step, "loss": 0.5, "wall_s": 1.0, "tokens": 64}]}


def test_fingerprint_is_stable_and_covers_config_and_inputs():
    a = fingerprint({"b": 1, "a": {"y": 2, "x": 3}}, {"m": "h1", "c": "h2"})
    b = fingerprint({"a": {"x": 3, "y": 2}, "b": 1}, {"c": "h2", "m": "h1"})
    assert a == b and len(a) == 16 and int(a, 16) >= 0
    assert fingerprint({"b": 1, "a": {"y": 2, "x": 3}}, {"m": "h1", "c": "CHANGED"}) != a
    assert fingerprint({"b": 2, "a": {"y": 2, "x": 3}}, {"m": "h1", "c": "h2"}) != a


def test_round_trip_restores_tensors_step_and_random_draws(tmp_path):
    state = tiny_state(7)
    Checkpoints(tmp_path / "ck", FP).save(7, state)
    cks = Checkpoints(tmp_path / "ck", FP)
    got = cks.load()
    assert cks.resumed_from == tmp_path / "ck" / "step-00000007.pt"
    assert FINGERPRINT_KEY not in got
    assert got["step"] == 7 and got["log"] == state["log"] and got["search_rng"] == state["search_rng"]
    for k, v in state["model"].items():
        assert torch.equal(got["model"][k], v)
    assert torch.equal(got["torch_rng"], state["torch_rng"])
    # the optimizer / scheduler state loads back into fresh objects
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    opt.load_state_dict(got["optimizer"])
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    # python random state: the same next draws
    a, b = random.Random(), random.Random()
    a.setstate(state["builder_rng"])
    b.setstate(got["builder_rng"])
    assert [a.random() for _ in range(5)] + [a.gauss(0, 1)] == [b.random() for _ in range(5)] + [b.gauss(0, 1)]
    torch.set_rng_state(got["torch_rng"])
    x = torch.rand(4)
    torch.set_rng_state(state["torch_rng"])
    assert torch.equal(x, torch.rand(4))


def test_keeps_newest_two_and_no_temp_files(tmp_path):
    cks = Checkpoints(tmp_path, FP, keep=2)
    for step in (10, 20, 30, 40):
        cks.save(step, {"step": step, "w": torch.full((2,), float(step))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000030.pt", "step-00000040.pt"]
    assert cks.load()["step"] == 40
    with pytest.raises(ValueError):
        Checkpoints(tmp_path, FP, keep=0)


def test_other_fingerprint_is_set_aside_not_resumed(tmp_path, capsys):
    Checkpoints(tmp_path, OTHER).save(100, {"step": 100, "w": torch.ones(2)})
    assert Checkpoints(tmp_path, FP).load() is None
    assert not (tmp_path / "step-00000100.pt").exists()
    assert (tmp_path / "stale" / "step-00000100.pt").is_file()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "step-00000100.pt" in err[0] and "another config or inputs" in err[0]
    assert OTHER[:8] in err[0] and FP[:8] in err[0] and "stale" in err[0] and "starting fresh" in err[0]
    # a second stale file of the same name does not overwrite the first one set aside
    Checkpoints(tmp_path, OTHER).save(100, {"step": 100, "w": torch.ones(2)})
    assert Checkpoints(tmp_path, FP).load() is None
    assert sorted(p.name for p in (tmp_path / "stale").iterdir()) == ["step-00000100.1.pt", "step-00000100.pt"]


def test_truncated_newest_is_set_aside_and_previous_resumed(tmp_path, capsys):
    cks = Checkpoints(tmp_path, FP)
    cks.save(100, {"step": 100, "w": torch.arange(1000.0)})
    cks.save(200, {"step": 200, "w": torch.arange(1000.0) * 2})
    newest = tmp_path / "step-00000200.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    got = Checkpoints(tmp_path, FP).load()
    assert got["step"] == 100 and torch.equal(got["w"], torch.arange(1000.0))
    assert (tmp_path / "corrupt" / "step-00000200.pt").is_file() and not newest.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step-00000200.pt could not be loaded" in err[0] and "trying step-00000100.pt" in err[0]
    # the retry after that finds a clean folder and resumes without any notice
    assert Checkpoints(tmp_path, FP).load()["step"] == 100
    assert capsys.readouterr().err == ""


def test_garbage_and_non_checkpoint_files_are_corrupt(tmp_path, capsys):
    (tmp_path / "step-00000001.pt").write_bytes(b"not a zip at all")
    torch.save({"step": 2}, tmp_path / "step-00000002.pt")  # a dict, but no fingerprint
    torch.save([1, 2], tmp_path / "step-00000003.pt")
    assert Checkpoints(tmp_path, FP).load() is None
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == [
        "step-00000001.pt", "step-00000002.pt", "step-00000003.pt"]
    assert len(capsys.readouterr().err.strip().splitlines()) == 3


def test_legacy_last_pt_is_set_aside(tmp_path, capsys):
    torch.save({"step": 50, "model": {"w": torch.ones(2)}, "log": []}, tmp_path / "last.pt")
    assert Checkpoints(tmp_path, FP).load() is None
    assert (tmp_path / "stale" / "last.pt").is_file() and not (tmp_path / "last.pt").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0] and "stale" in err[0]


class _Payload:
    """Would create a folder when unpickled by a loader that runs code."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_load_is_weights_only_pickled_code_never_runs(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "executed"
    torch.save({"step": 5, "x": _Payload(str(marker)), FINGERPRINT_KEY: FP}, tmp_path / "step-00000005.pt")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    assert Checkpoints(tmp_path, FP).load() is None
    assert calls and all(k.get("weights_only") is True and k.get("map_location") == "cpu" for k in calls)
    assert not marker.exists()
    assert (tmp_path / "corrupt" / "step-00000005.pt").is_file()
    assert "could not be loaded" in capsys.readouterr().err


def test_save_refuses_state_weights_only_cannot_read_back(tmp_path):
    cks = Checkpoints(tmp_path, FP)
    with pytest.raises(TypeError, match=r"state\['log'\]\[0\]\['acc'\] is a numpy"):
        cks.save(1, {"log": [{"acc": np.float64(0.5)}]})
    with pytest.raises(TypeError, match="defaultdict"):
        cks.save(1, {"d": collections.defaultdict(list)})
    with pytest.raises(ValueError, match="reserved"):
        cks.save(1, {FINGERPRINT_KEY: "x"})
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_everything_the_save_check_accepts_loads_back(tmp_path):
    """Keeps the allow-list in checkpoints.py honest against the installed torch."""
    leaves = [None, True, 3, 2.5, 1j, "s", b"b", bytearray(b"ba"), torch.float16, torch.device("cpu"),
              torch.ones(2, dtype=torch.bfloat16), torch.nn.Parameter(torch.zeros(1))]
    state = {"leaves": leaves, "tuple": tuple(leaves[:7]), "size": torch.Size([2, 3]), "set": {1, 2},
             "odict": collections.OrderedDict(a=1), 5: "int key"}
    for t in ck._TENSORS + ck._LEAVES + ck._CONTAINERS:  # every allowed type is exercised above
        assert any(type(v) is t for v in [state, *state.values(), *leaves]), t
    Checkpoints(tmp_path, FP).save(1, state)
    got = Checkpoints(tmp_path, FP).load()
    assert got["set"] == {1, 2} and got["size"] == torch.Size([2, 3]) and got[5] == "int key"
    assert got["leaves"][:9] == leaves[:9] and torch.equal(got["leaves"][10], leaves[10])


def test_clear_removes_steps_but_keeps_evidence(tmp_path):
    d = tmp_path / "ck"
    Checkpoints(d, OTHER).save(1, {"step": 1})
    cks = Checkpoints(d, FP)
    assert cks.load() is None
    cks.save(2, {"step": 2})
    (d / ".step-00000003-abc.tmp").write_bytes(b"left by a kill")
    cks.clear()
    assert sorted(p.name for p in d.iterdir()) == ["stale"]
    Checkpoints(tmp_path / "ck2", FP).save(1, {"step": 1})
    Checkpoints(tmp_path / "ck2", FP).clear()
    assert not (tmp_path / "ck2").exists()
    assert Checkpoints(tmp_path / "missing", FP).load() is None


# ------------------------------------------------------------------------------------------------
# GenerationLog
# ------------------------------------------------------------------------------------------------


def records(n):
    return [{"generation": g, "population": [[3, [1.0, 1.5]]], "rng_state": {"state": {"state": 2**70 + g}},
             "trace": {"best_nll": 1.0 / (g + 1)}} for g in range(n)]


def test_generation_log_round_trip(tmp_path):
    path = tmp_path / "generations.jsonl"
    log = GenerationLog(path, FP)
    assert log.read() == []
    for rec in records(3):
        log.append(rec)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"fingerprint": FP} and len(lines) == 4
    assert GenerationLog(path, FP).read() == records(3)


def test_torn_last_line_is_cut_off_and_saved(tmp_path, capsys):
    path = tmp_path / "generations.jsonl"
    log = GenerationLog(path, FP)
    for rec in records(2):
        log.append(rec)
    whole = json.dumps(records(3)[2])
    with open(path, "a") as f:
        f.write(whole[: len(whole) // 2])  # killed mid-write
    log = GenerationLog(path, FP)
    assert log.read() == records(2)
    assert (tmp_path / "generations.jsonl.torn").read_text() == whole[: len(whole) // 2] + "\n"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 4" in err[0] and "generations.jsonl.torn" in err[0]
    log.append(records(3)[2])
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"fingerprint": FP}] + records(3)
    assert GenerationLog(path, FP).read() == records(3)
    assert capsys.readouterr().err == ""


def test_bad_line_in_the_middle_cuts_everything_after(tmp_path, capsys):
    path = tmp_path / "g.jsonl"
    good = [json.dumps({"fingerprint": FP})] + [json.dumps(r) for r in records(2)]
    path.write_text("\n".join(good + ['{"generation": 2, "popu', json.dumps(records(4)[3])]) + "\n")
    log = GenerationLog(path, FP)  # append() without read() first still repairs before writing
    log.append(records(3)[2])
    assert GenerationLog(path, FP).read() == records(3)
    assert "1 line(s) after it" in capsys.readouterr().err


def test_whole_last_record_without_newline_is_kept(tmp_path, capsys):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"fingerprint": FP}) + "\n" + json.dumps(records(1)[0]))
    log = GenerationLog(path, FP)
    assert log.read() == records(1)
    log.append(records(2)[1])
    assert GenerationLog(path, FP).read() == records(2)
    assert capsys.readouterr().err == "" and not (tmp_path / "g.jsonl.torn").exists()


@pytest.mark.parametrize("first_line", [{"fingerprint": OTHER}, records(1)[0]], ids=["other-config", "no-header"])
def test_generation_log_from_another_run_is_set_aside(tmp_path, capsys, first_line):
    path = tmp_path / "generations.jsonl"
    path.write_text(json.dumps(first_line) + "\n" + json.dumps(records(1)[0]) + "\n")
    log = GenerationLog(path, FP)
    assert log.read() == []
    assert (tmp_path / "stale" / "generations.jsonl").is_file()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generations.jsonl" in err[0] and "stale" in err[0]
    log.append(records(1)[0])
    assert json.loads(path.read_text().splitlines()[0]) == {"fingerprint": FP}
    assert GenerationLog(path, FP).read() == records(1)


def test_empty_log_gets_a_header(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("\n")
    log = GenerationLog(path, FP)
    assert log.read() == []
    log.append({"generation": 0})
    assert path.read_text().splitlines() == [json.dumps({"fingerprint": FP}), json.dumps({"generation": 0})]
