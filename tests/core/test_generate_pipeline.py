# SPDX-License-Identifier: GPL-3.0-or-later
"""``hierdiff generate --pipeline DIR`` through the real command line (``hierdiff_core.cli.main``) on tiny
random SD 1.x and Flux pipeline folders saved with ``save_pretrained``: the images are
``hierarchical(...)``'s and, at tau = 0, the plain pipeline's per prompt; the PNG text, manifest and
plan files; resuming after an interruption or a kill gives the same bytes with one record per image;
every bad input is one line that leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hierdiff_core.cli import main
from hierdiff_core.run_folder import MANIFEST
from hierdiff_core.schedule import Budget, Plan
from hierdiff_diffusers import hierarchical, load_pipeline
from hierdiff_diffusers.generate_pipeline import generate_pipeline
from hierdiff_diffusers.output import Progress
from hierdiff_diffusers.pipelines import split_tree
from testkit.tiny_pipelines import BUILDERS, SIZE

PROMPTS = ["a red car", "a cat on a mat", "a blue car", "a cat", "a red bus"]
STEPS = 3
SEED = 5
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {family: BUILDERS[family](root / family) for family in ("sd", "flux")}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def argv(prompts_file, folder, out, *extra):
    return [
        "generate",
        str(prompts_file),
        "--pipeline",
        str(folder),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--height",
        str(SIZE),
        "--width",
        str(SIZE),
        "--seed",
        str(SEED),
        "--device",
        "cpu",
        *extra,
    ]


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def records(out):
    lines = (Path(out) / MANIFEST).read_text(encoding="utf-8").splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["index"])


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_images_are_hierarchicals_with_their_prompt_seed_and_group_path(
    family, folders, prompts_file, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(argv(prompts_file, folders[family], out, "--target-saving", "0.5")) == 0
    assert f"{len(PROMPTS)} images written" in capsys.readouterr().out
    pipe = load_pipeline(folders[family])
    guidance = {"sd": 7.5, "flux": 3.5}[family]  # the pipelines' defaults, which the command takes
    expected = hierarchical(
        pipe,
        PROMPTS,
        Budget("target_saving", 0.5),
        seed=SEED,
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        guidance_scale=guidance,
    )
    assert expected.plan.saving >= 0.5
    tree = expected.plan.tree
    for i, record in enumerate(records(out)):
        assert np.array_equal(pixels(out / f"{i:05d}.png"), np.asarray(expected.images[i])), i
        assert record == {
            "index": i,
            "file": f"{i:05d}.png",
            "prompt": PROMPTS[i],
            "seed": SEED,
            "group_path": tree.path(i),
            "steps_shared": int(expected.plan.first_steps[i]),
            "steps": STEPS,
            "prompt_seed": expected.seeds[i],
        }
        with Image.open(out / f"{i:05d}.png") as image:
            assert image.text["prompt"] == PROMPTS[i] and image.text["seed"] == str(SEED)
            assert image.text["group_path"] == tree.path(i)
            assert json.loads(image.text["hierdiff"])["prompt_seed"] == expected.seeds[i]
    plan = Plan.from_json((out / "plan" / "plan.json").read_text(encoding="utf-8"))
    assert plan.tau == expected.plan.tau and plan.model_evaluations == expected.plan.model_evaluations
    saved = f"{100 * expected.plan.saving:.1f} % saved"
    assert saved in (out / "plan" / "savings.txt").read_text(encoding="utf-8")
    with Image.open(out / "plan" / "dendrogram.png") as picture:
        assert picture.size[0] == 1200
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(len(PROMPTS))]


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_tau_zero_images_are_the_plain_pipelines_per_prompt(family, folders, prompts_file, tmp_path):
    out = tmp_path / "out"
    assert main(argv(prompts_file, folders[family], out, "--tau", "0")) == 0
    pipe = load_pipeline(folders[family])
    for record in records(out):
        generator = torch.Generator().manual_seed(record["prompt_seed"])
        plain = pipe(
            record["prompt"], generator=generator, num_inference_steps=STEPS, height=SIZE, width=SIZE
        )
        difference = np.abs(
            pixels(out / record["file"]).astype(int) - np.asarray(plain.images[0]).astype(int)
        )
        # Batched against single float32 products (see test_diffusers_families): at most a level of 255.
        assert difference.max() <= 1, (record["index"], difference.max())
        assert record["steps_shared"] == 0


class Stop(Exception):
    pass


def run_library(folder, out, **kwargs):
    return generate_pipeline(
        PROMPTS,
        folder,
        out,
        budget=Budget("target_saving", 0.5),
        seed=SEED,
        steps=STEPS,
        height=SIZE,
        width=SIZE,
        chunk_size=2,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(folders, tmp_path_factory):
    """Uninterrupted chunked runs (chunks of at most 2 prompts) of each family."""
    outs = {}
    for family in ("sd", "flux"):
        outs[family] = tmp_path_factory.mktemp(f"reference-{family}")
        summary = run_library(folders[family], outs[family])
        assert summary["written"] == len(PROMPTS) and summary["chunks"] >= 3
    return outs


def assert_same_run(out, reference):
    for i in range(len(PROMPTS)):
        name = f"{i:05d}.png"
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert records(out) == records(reference)  # one record per image, each the uninterrupted run's
    assert len((out / MANIFEST).read_text(encoding="utf-8").splitlines()) == len(PROMPTS)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_interrupted_mid_chunk_resumes_skipping_finished_chunks_bit_identically(
    family, folders, reference, prompts_file, tmp_path, capsys
):
    out = tmp_path / "out"
    written = []

    def stop_after_three(index):
        written.append(index)
        if len(written) == 3:
            raise Stop

    with pytest.raises(Stop):
        run_library(folders[family], out, on_image=stop_after_three)
    first = {i: (out / f"{i:05d}.png").stat().st_mtime_ns for i in written}
    steps_run = []
    summary = run_library(folders[family], out, on_step=steps_run.append)
    assert summary["already_done"] == 3 and summary["written"] == len(PROMPTS) - 3
    # Only the chunks with missing images ran again.
    tree = Plan.from_json((out / "plan" / "plan.json").read_text(encoding="utf-8")).tree
    chunks_left = sum(not set(tree.members(node)) <= set(written) for node in split_tree(tree, 2))
    assert 0 < len(steps_run) <= STEPS * chunks_left < STEPS * summary["chunks"]
    assert {i: (out / f"{i:05d}.png").stat().st_mtime_ns for i in written} == first
    assert_same_run(out, reference[family])
    # The command line sees the same run, finished.
    command = argv(prompts_file, folders[family], out, "--target-saving", "0.5", "--chunk-size", "2")
    assert main(command) == 0
    assert "nothing to do" in capsys.readouterr().out


KILLED = """
import sys, time
import hierdiff_diffusers.output as output
from hierdiff_core.cli import main
write = output.ImageWriter.write
def write_then_hang(self, *args, **kwargs):
    write(self, *args, **kwargs)
    print("written", flush=True)
    time.sleep(120)  # a long run: killed here, after its first image
output.ImageWriter.write = write_then_hang
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd", "flux"])
def test_a_killed_run_resumes_bit_identically(family, folders, reference, prompts_file, tmp_path):
    out = tmp_path / "out"
    command = argv(prompts_file, folders[family], out, "--target-saving", "0.5", "--chunk-size", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", KILLED, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert child.stdout.readline().strip() == "written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert len(records(out)) == 1
    assert main(command) == 0  # the dead holder's lock is gone
    assert_same_run(out, reference[family])


def test_progress_bar_shows_steps_groups_and_images(folders, tmp_path):
    stream = io.StringIO()
    progress = Progress(file=stream)
    summary = run_library(folders["sd"], tmp_path / "out", progress=progress)
    progress.close()
    text = stream.getvalue()
    assert f"{STEPS * summary['chunks']}/{STEPS * summary['chunks']}" in text
    assert "groups 1" in text and f"images {len(PROMPTS)}/{len(PROMPTS)}" in text


def test_tree_from_prompt_builds_the_tree_on_the_sentence_encoder(folders, prompts_file, tmp_path):
    from hierdiff_core.embed import encode_prompts
    from hierdiff_core.tree import build_tree

    out = tmp_path / "out"
    assert main(argv(prompts_file, folders["sd"], out, "--tau", "0.5", "--tree-from", "prompt")) == 0
    plan = Plan.from_json((out / "plan" / "plan.json").read_text(encoding="utf-8"))
    expected = build_tree(encode_prompts(PROMPTS).astype(np.float64), method="ward", metric="cosine")
    assert np.allclose(plan.tree.linkage, expected.linkage)


def test_every_bad_input_is_one_line_naming_it_and_leaves_the_folder_reusable(
    folders, prompts_file, tmp_path, capsys
):
    sd, flux = str(folders["sd"]), str(folders["flux"])
    out = tmp_path / "out"
    not_pipeline = tmp_path / "not-a-pipeline"
    not_pipeline.mkdir()
    img2img = tmp_path / "img2img"
    img2img.mkdir()
    (img2img / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionImg2ImgPipeline"}))
    long_prompts = tmp_path / "long.txt"
    long_prompts.write_text("a cat\n" + "a very long prompt " * 6 + "\n", encoding="utf-8")
    common = argv(prompts_file, sd, out)
    known = "DDIMScheduler, DDPMScheduler"
    bad = [
        (
            ["--pipeline", str(tmp_path / "none")],
            f"pipeline folder {str(tmp_path / 'none')!r} does not exist",
        ),
        (
            ["--pipeline", str(not_pipeline)],
            f"pipeline folder {str(not_pipeline)!r} has no model_index.json: not a diffusers pipeline folder",
        ),
        (
            ["--pipeline", str(img2img)],
            f"pipeline folder {str(img2img)!r}: hierdiff does not know the denoiser "
            "of StableDiffusionImg2ImgPipeline: supported pipelines are ",
        ),
        (["--scheduler", "Bogus"], f"unknown scheduler 'Bogus' for StableDiffusionPipeline; known: {known}"),
        (["--scheduler", "DPMSolverSDEScheduler"], "hierdiff cannot sample with DPMSolverSDEScheduler: "),
        (
            ["--pipeline", flux, "--scheduler", "EulerDiscreteScheduler"],
            "unknown scheduler 'EulerDiscreteScheduler' for FluxPipeline; "
            "known: FlowMatchEulerDiscreteScheduler",
        ),
        (
            ["--height", "36"],
            f"height must be a multiple of 8 for StableDiffusionPipeline {sd!r} (its VAE's "
            "downscale factor 4, and the pipeline's own multiple of 8), got 36; try 32 or 40",
        ),
        (
            ["--pipeline", flux, "--width", "20"],
            f"width must be a multiple of 8 for FluxPipeline {flux!r} (its "
            "VAE's downscale factor 4 x 2 latent cells per token), got 20",
        ),
        (["--width", "0"], "width must be an integer in [1, 2048] (memory grows with height x width), got 0"),
        (["--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--target-saving", "1.5"], "target saving must be in [0, 1), got 1.5"),
        (
            ["--evaluations-per-image", "9"],
            f"evaluations per image must be in [1, {STEPS}] for {STEPS} steps",
        ),
        (
            ["--max-batch", "0"],
            "max batch (groups per denoiser batch) must be an integer in [1, 4096], got 0",
        ),
        (
            ["--chunk-size", "0"],
            "chunk size (prompts per pipeline call) must be an integer in [1, 100000], got 0",
        ),
        (["--guidance", "nan"], "guidance scale must be a finite number >= 0, got nan"),
        (["--seed", "-1"], f"seed must be an integer in [0, {2**64 - 1}], got -1"),
        (["--device", "bogus"], "unknown device 'bogus'; use auto, cpu, cuda, cuda:N or mps"),
        (["--tree-from", "first-step"], "--tree-from first-step is the ComfyUI Prompt Set Cluster node's"),
        (["--tree-from", "prior"], "--tree-from prior needs Kandinsky 2.2's prior"),
        (["--prior-steps", "3"], "--prior-steps go with Kandinsky 2.2 runs, not with --pipeline"),
    ]
    for extra, message in bad:
        assert main([*common, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"hierdiff generate: error: {message}") and err.count("\n") == 1, (extra, err)
        assert not out.exists(), extra
    # A prompt longer than Flux's CLIP window: refused, naming it, before anything is written.
    assert main([*argv(long_prompts, flux, out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hierdiff generate: error: prompt 1 'a very long prompt a very long prompt") and (
        "tokens for FluxPipeline's tokenizer (limit 77)" in err and err.count("\n") == 1
    )
    assert not out.exists()
    # argparse's own refusals are one line too.
    assert main([*common, "--dtype", "float64"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("hierdiff: error: argument --dtype: invalid choice: 'float64'")
        and err.count("\n") == 1
    )
    # The Kandinsky path refuses the pipeline-only options.
    assert (
        main(
            ["generate", str(prompts_file), "--model", sd, "--out", str(out), "--scheduler", "DDIMScheduler"]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("hierdiff generate: error: --scheduler go with --pipeline runs")
    assert not out.exists()
    # The corrected command runs (a compatible scheduler by name), then the folder holds that run.
    assert main([*common, "--scheduler", "DDIMScheduler"]) == 0
    assert len(records(out)) == len(PROMPTS)
    assert main([*common, "--scheduler", "DDIMScheduler", "--seed", str(SEED + 1)]) == 2
    assert capsys.readouterr().err == (
        f"hierdiff generate: error: output folder {str(out)!r} holds a run with other settings "
        "(seed differ); use another --out or the same settings to resume\n"
    )
    assert main([*common, "--scheduler", "DDIMScheduler"]) == 0  # still reusable, and finished
    assert "nothing to do" in capsys.readouterr().out
