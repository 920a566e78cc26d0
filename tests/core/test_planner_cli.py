"""`hierdiff plan`: in-process through main([...]) and once through the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hierdiff_core.cli import main
from hierdiff_core.schedule import Plan, plan
from hierdiff_core.tree import build_tree


@pytest.fixture
def demo_files(tmp_path, embedded):
    """(prompt file, embeddings .npy, prompts, embeddings) of the real demo set in tmp_path."""
    prompts, E = embedded("demo")
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    npy = tmp_path / "E.npy"
    np.save(npy, E)
    return prompt_file, npy, prompts, E


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_json_matches_the_library(capsys, demo_files):
    prompt_file, npy, prompts, E = demo_files
    code, out, err = run_cli(capsys, "plan", str(prompt_file), "--steps", "40", "--target-saving", "0.5",
                             "--embeddings", str(npy), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    expected = plan(build_tree(E, prompts=prompts), 40, target_saving=0.5)
    assert data == expected.to_dict()
    assert data["prompts"] == prompts and data["steps"] == 40
    assert data["independent_evaluations"] == 240 and data["saving"] >= 0.5
    assert data["model_evaluations"] == sum(data["evaluations_per_step"])
    assert Plan.from_dict(data).tau == data["tau"]


def test_plan_runs_the_packaged_encoder_without_embeddings(capsys, demo_files):
    prompt_file, _, prompts, E = demo_files
    code, out, _ = run_cli(capsys, "plan", str(prompt_file), "--tau", "0.5", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["model_evaluations"] == plan(build_tree(E), 40, tau=0.5).model_evaluations


def test_human_summary_and_dendrogram(capsys, demo_files, tmp_path):
    prompt_file, npy, _, _ = demo_files
    png = tmp_path / "out" / "tree.png"
    png.parent.mkdir()
    code, out, _ = run_cli(capsys, "plan", str(prompt_file), "--steps", "20", "--evaluations-per-image", "10",
                           "--embeddings", str(npy), "--linkage", "average", "--dendrogram", str(png))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "6 images, 60 model evaluations instead of 20 x 6 = 120, 50.0 % saved"
    assert "average linkage over cosine distances" in lines[1]
    assert "with classifier-free guidance: 120 instead of 240 rows" in out
    assert sorted(p.name for p in png.parent.iterdir()) == ["tree.png"]
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] == 1200


def test_duplicate_prompts_are_reported_and_share(capsys, tmp_path):
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("a cat\na dog\na cat\n", encoding="utf-8")
    np.save(tmp_path / "E.npy", np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    code, out, _ = run_cli(capsys, "plan", str(prompt_file), "--steps", "10", "--tau", "0",
                           "--embeddings", str(tmp_path / "E.npy"))
    assert code == 0
    assert out.splitlines()[0] == "3 images, 20 model evaluations instead of 10 x 3 = 30, 33.3 % saved"
    assert "1 duplicate prompt(s) share every step" in out


BAD_INPUTS = [
    # (prompt file bytes, embeddings or None, extra arguments, error message)
    (b"", None, ["--tau", "1"], "holds no prompts"),
    (b"caf\xe9\n", None, ["--tau", "1"], "is not UTF-8"),
    (b"a\nb\n", np.ones((3, 2)), ["--tau", "1"], "embeddings have 3 rows but there are 2 prompts"),
    (b"a\nb\n", np.array([[1.0, np.nan], [1.0, 2.0]]), ["--tau", "1"], "NaN or inf in row 0 ('a')"),
    (b"a\nb\n", np.array([[1.0, 1.0], [0.0, 0.0]]), ["--tau", "1"], "zero norm in row 1 ('b')"),
    (b"a\nb\n", np.eye(2), ["--tau", "-1"], "tau must be a finite number >= 0, got -1.0"),
    (b"a\nb\n", np.eye(2), ["--tau", "1", "--steps", "0"], "steps must be an integer >= 1, got 0"),
    (b"a\nb\n", None, ["--tau", "1", "--steps", "1000000000"],
     "steps must be at most 10,000, got 1,000,000,000"),
    (b"a\nb\n", np.eye(2), ["--target-saving", "1"], "target saving must be in [0, 1), got 1.0"),
    (b"a\nb\n", np.eye(2), ["--target-saving", "-0.5"], "target saving must be in [0, 1), got -0.5"),
    (b"a\nb\n", np.eye(2), ["--target-saving", "0.9"], "the maximum attainable saving is 0.487500"),
    (b"a\nb\n", np.eye(2), ["--tau", "1", "--target-saving", "0.5"],
     "argument --target-saving: not allowed with argument --tau"),
    (b"a\nb\n", np.eye(2), [],
     "one of the arguments --tau --target-saving --evaluations-per-image is required"),
    (b"a\nb\n", np.eye(2), ["--tau", "x"], "argument --tau: expected a number, got 'x'"),
    (b"a\nb\n", np.eye(2), ["--tau", "1", "--metric", "nope"], "unknown distance metric 'nope'"),
]


@pytest.mark.parametrize(("content", "embeddings", "extra", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_nothing_written(capsys, tmp_path, content, embeddings, extra, message):
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_bytes(content)
    argv = ["plan", str(prompt_file), "--dendrogram", str(tmp_path / "out" / "tree.png"), *extra]
    (tmp_path / "out").mkdir()
    if embeddings is not None:
        np.save(tmp_path / "E.npy", embeddings)
        argv += ["--embeddings", str(tmp_path / "E.npy")]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hierdiff: error: ")
    assert message in err
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_files_and_folders(capsys, tmp_path):
    code, _, err = run_cli(capsys, "plan", str(tmp_path / "nope.txt"), "--tau", "1")
    assert code == 2 and "does not exist" in err
    (tmp_path / "p.txt").write_text("a\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "plan", str(tmp_path / "p.txt"), "--tau", "1",
                           "--embeddings", str(tmp_path / "nope.npy"))
    assert code == 2 and "embeddings file" in err and "does not exist" in err
    code, _, err = run_cli(capsys, "plan", str(tmp_path / "p.txt"), "--tau", "1",
                           "--dendrogram", str(tmp_path / "no" / "t.png"))
    assert code == 2 and "dendrogram folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


def test_unusable_dendrogram_paths_are_refused_before_encoding(capsys, tmp_path, monkeypatch):
    import hierdiff_core.embed

    def no_encoding(*args, **kwargs):
        raise AssertionError("the prompts were encoded before the dendrogram path was checked")

    monkeypatch.setattr(hierdiff_core.embed, "encode_prompts", no_encoding)
    (tmp_path / "p.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "plan.png").mkdir()
    for target, message in [
        (tmp_path / "plan.png", f"dendrogram path {str(tmp_path / 'plan.png')!r} is a folder"),
        ("/proc/plan.png", "dendrogram file '/proc/plan.png' cannot be written there: "),
    ]:
        argv = ["plan", str(tmp_path / "p.txt"), "--tau", "1", "--dendrogram", str(target)]
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == ""
        assert err.startswith(f"hierdiff: error: {message}") and err.count("\n") == 1


def test_an_npy_whose_header_promises_more_than_it_holds_is_refused_without_allocating(capsys, tmp_path):
    (tmp_path / "p.txt").write_text("a\nb\n", encoding="utf-8")
    lying = tmp_path / "E.npy"
    with lying.open("wb") as f:
        header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 10**6)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.ones(4).tobytes())
    code, _, err = run_cli(capsys, "plan", str(tmp_path / "p.txt"), "--tau", "1", "--embeddings", str(lying))
    assert code == 2
    assert err == (
        f"hierdiff: error: embeddings file {str(lying)!r} is cut short: its header declares shape "
        "(1000000000, 1000000) (8,000,000,000,000,000 bytes) but it holds 32\n"
    )


def test_one_prompt_plans_ordinary_sampling(capsys, tmp_path):
    (tmp_path / "p.txt").write_text("alone\n", encoding="utf-8")
    np.save(tmp_path / "E.npy", np.ones((1, 4)))
    code, out, _ = run_cli(capsys, "plan", str(tmp_path / "p.txt"), "--tau", "1", "--json",
                           "--embeddings", str(tmp_path / "E.npy"))
    assert code == 0
    data = json.loads(out)
    assert (data["model_evaluations"], data["independent_evaluations"], data["saving"]) == (40, 40, 0.0)


def test_installed_console_script(tmp_path, demo_files):
    script = shutil.which("hierdiff", path=os.path.dirname(sys.executable))
    assert script is not None, "the hierdiff console script is not installed beside this python"
    prompt_file, npy, _, _ = demo_files
    argv = [script, "plan", str(prompt_file), "--tau", "0.5", "--embeddings", str(npy), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["independent_evaluations"] == 240
    bad = subprocess.run([script, "plan", str(prompt_file), "--tau", "-1"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == "hierdiff: error: tau must be a finite number >= 0, got -1.0\n"
