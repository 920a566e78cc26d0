# SPDX-License-Identifier: GPL-3.0-or-later
"""The unCLIP-prior path outside ComfyUI, on tiny random Kandinsky 2.2 models saved and loaded as
real weights are: loading, prior embeddings, clustering in prior space, group conditioning, the
decoder through the engine (exact at tau = 0 against the plain diffusers pipeline), generate/resume."""

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import KandinskyV22PriorPipeline
from scipy.cluster.hierarchy import fcluster

from hierdiff_core.engine import group_seed
from hierdiff_core.run_folder import MANIFEST, RUN_FILE, STATE_FILE
from hierdiff_core.schedule import Budget, plan
from hierdiff_core.tree import build_tree
from hierdiff_diffusers.generate import generate, main
from hierdiff_diffusers.kandinsky import (
    check_prior_matches_decoder,
    decode_latents,
    denoise_hierarchical,
    load_decoder,
    start_latent,
)
from hierdiff_diffusers.prior import (
    PriorFolderError,
    embed_prompts_with_prior,
    load_prior,
    prior_tree,
    text_embeddings,
)
from testkit.tiny_kandinsky import build_tiny_decoder, build_tiny_prior

PROMPTS = ["a cat", "a dog", "a red car", "a blue car", "a cat on a mat", "the sea"]
SIZE = 32  # pixels; 16 x 16 latents
STEPS = 6
PRIOR_STEPS = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("kandinsky")
    build_tiny_prior(root / "prior", seed=0)
    build_tiny_decoder(root / "decoder", seed=0)
    return root


@pytest.fixture(scope="module")
def prior(models):
    return load_prior(models / "prior")


@pytest.fixture(scope="module")
def decoder(models):
    return load_decoder(models / "decoder")


@pytest.fixture(scope="module")
def embeds(prior):
    return embed_prompts_with_prior(prior, PROMPTS, seed=3, steps=PRIOR_STEPS)


def _two_way_partition(X: np.ndarray) -> set[frozenset[int]]:
    labels = fcluster(build_tree(X).linkage, 2, "maxclust")
    return {frozenset(np.flatnonzero(labels == label).tolist()) for label in set(labels)}


def test_saved_prior_loads_with_its_layout_and_width(prior):
    assert prior.layout == "kandinsky-2.2"
    assert prior.embedding_dim == 16


@pytest.mark.parametrize(
    "renames, layout",
    [
        ({"scheduler": "prior_scheduler"}, "karlo"),
        (
            {
                "scheduler": "prior_scheduler",
                "text_encoder": "prior_text_encoder",
                "tokenizer": "prior_tokenizer",
            },
            "stable-unclip",
        ),
    ],
)
def test_karlo_and_stable_unclip_layouts_load_the_same_prior(models, tmp_path, embeds, renames, layout):
    folder = tmp_path / layout
    shutil.copytree(
        models / "prior", folder, ignore=shutil.ignore_patterns("image_encoder", "image_processor")
    )
    for old, new in renames.items():
        (folder / old).rename(folder / new)
    loaded = load_prior(folder)
    assert loaded.layout == layout
    torch.testing.assert_close(
        embed_prompts_with_prior(loaded, PROMPTS, seed=3, steps=PRIOR_STEPS), embeds, rtol=0, atol=1e-5
    )
    with pytest.raises(PriorFolderError, match="no image_encoder/"):
        loaded.negative_embedding()


@pytest.mark.parametrize(
    "remove, named",
    [
        ("prior/diffusion_pytorch_model.safetensors", "missing prior/diffusion_pytorch_model.safetensors"),
        ("tokenizer", "missing tokenizer/"),
        ("text_encoder/config.json", "missing text_encoder/config.json"),
        ("scheduler", "missing scheduler/scheduler_config.json"),
    ],
)
def test_incomplete_prior_folder_names_what_is_missing(models, tmp_path, remove, named):
    folder = tmp_path / "prior"
    shutil.copytree(models / "prior", folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(PriorFolderError, match=named) as info:
        load_prior(folder)
    assert "\n" not in str(info.value)


def test_missing_prior_and_decoder_folders(tmp_path, models):
    with pytest.raises(PriorFolderError, match="does not exist"):
        load_prior(tmp_path / "nowhere")
    folder = tmp_path / "decoder"
    shutil.copytree(models / "decoder", folder)
    shutil.rmtree(folder / "movq")
    with pytest.raises(PriorFolderError, match="missing movq/config.json"):
        load_decoder(folder)


def test_embeddings_have_one_row_per_prompt_and_depend_only_on_prompt_and_seed(prior, embeds):
    assert embeds.shape == (len(PROMPTS), 16) and embeds.dtype == torch.float32
    torch.testing.assert_close(
        embed_prompts_with_prior(prior, PROMPTS, seed=3, steps=PRIOR_STEPS), embeds, rtol=0, atol=0
    )
    reordered = embed_prompts_with_prior(prior, PROMPTS[::-1], seed=3, steps=PRIOR_STEPS, batch_size=1)
    torch.testing.assert_close(reordered.flip(0), embeds, rtol=0, atol=1e-5)
    assert not torch.allclose(
        embed_prompts_with_prior(prior, PROMPTS, seed=4, steps=PRIOR_STEPS), embeds, atol=1e-6
    )


def test_embedding_equals_plain_diffusers_prior_for_that_prompt_alone(models, embeds):
    plain = KandinskyV22PriorPipeline.from_pretrained(models / "prior", local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    out = plain(
        PROMPTS[2],
        generator=torch.Generator().manual_seed(3),
        guidance_scale=4.0,
        num_inference_steps=PRIOR_STEPS,
    )
    torch.testing.assert_close(out.image_embeds[0], embeds[2], rtol=0, atol=1e-5)


def test_negative_embedding_is_the_plain_pipelines_zero_image_embedding(models, prior):
    plain = KandinskyV22PriorPipeline.from_pretrained(models / "prior", local_files_only=True)
    torch.testing.assert_close(prior.negative_embedding(), plain.get_zero_embed(1), rtol=0, atol=0)


def test_tree_is_built_in_prior_space_where_text_space_would_group_differently(prior):
    candidates = [
        "a cat",
        "a dog",
        "a red car",
        "a blue car",
        "a cat on a mat",
        "the sea",
        "a tree",
        "two birds",
    ]
    image = embed_prompts_with_prior(prior, candidates, seed=0, steps=PRIOR_STEPS).double().numpy()
    text = text_embeddings(prior, candidates).astype(np.float64)
    # A set of four prompts whose two-way grouping differs between the two spaces.
    subset = next(
        list(q)
        for q in itertools.combinations(range(len(candidates)), 4)
        if _two_way_partition(image[list(q)]) != _two_way_partition(text[list(q)])
    )
    prompts = [candidates[i] for i in subset]
    tree = prior_tree(embed_prompts_with_prior(prior, prompts, seed=0, steps=PRIOR_STEPS), prompts)
    labels = fcluster(tree.linkage, 2, "maxclust")
    grouping = {frozenset(np.flatnonzero(labels == label).tolist()) for label in set(labels)}
    assert grouping == _two_way_partition(image[subset])
    assert grouping != _two_way_partition(text[subset])
    assert tree.method == "ward" and tree.metric == "cosine" and tree.prompts == tuple(prompts)


def test_each_group_is_conditioned_on_the_member_weighted_mean_embedding(decoder, embeds):
    tree = prior_tree(embeds, PROMPTS)
    schedule = plan(tree, STEPS, tau=float(tree.heights.max()) * 2)
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["image_embeds"].clone())

    hook = decoder.pipeline.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        denoise_hierarchical(decoder, schedule, embeds, torch.zeros(1, 16), seed=1, height=SIZE, width=SIZE)
    finally:
        hook.remove()
    assert len(seen) == STEPS  # one UNet batch per step (fewer groups than max_batch)
    for step, cond in enumerate(seen):
        nodes = schedule.active_groups(step)
        groups = cond[len(nodes) :]  # after the negative rows
        for node, row in zip(nodes, groups, strict=True):
            members = tree.members(int(node))
            torch.testing.assert_close(row, embeds[members].mean(0), rtol=0, atol=1e-6)
            if len(members) > 1:  # the member-count-weighted mean of the children's means
                a, b = (tree.members(c) for c in tree.children(int(node)))
                weighted = (len(a) * embeds[a].mean(0) + len(b) * embeds[b].mean(0)) / len(members)
                torch.testing.assert_close(row, weighted, rtol=0, atol=1e-6)


def test_tau_zero_equals_plain_kandinsky_pipeline_latents_and_images(decoder, prior, embeds):
    tree = prior_tree(embeds, PROMPTS)
    negative = prior.negative_embedding()
    latents, evaluator = denoise_hierarchical(
        decoder, plan(tree, STEPS, tau=0.0), embeds, negative, seed=5, height=SIZE, width=SIZE
    )
    n = len(PROMPTS)
    assert evaluator.evaluations == STEPS * n
    plain = decoder.pipeline(
        image_embeds=embeds,
        negative_image_embeds=negative.repeat(n, 1),
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=10.0,
        generator=[torch.Generator().manual_seed(group_seed(5, tree, i)) for i in range(n)],
        latents=start_latent(decoder, 5, SIZE, SIZE).repeat(n, 1, 1, 1),
        output_type="latent",
    ).images
    torch.testing.assert_close(latents, plain, rtol=0, atol=1e-5)
    images = decode_latents(decoder, latents)
    assert images[0].size == (SIZE, SIZE)


def test_shared_trunk_keeps_members_identical_until_split_and_batching_does_not_matter(decoder, embeds):
    tree = prior_tree(embeds, PROMPTS)
    schedule = plan(tree, STEPS, target_saving=0.5)
    trunk_rows = []

    def watch(state):
        nodes = schedule.active_groups(state.step)
        for node in nodes:
            members = tree.members(int(node))
            trunk_rows.append(bool((state.latents[members] == state.latents[members[0]]).all()))

    latents, evaluator = denoise_hierarchical(
        decoder,
        schedule,
        embeds,
        torch.zeros(1, 16),
        seed=2,
        height=SIZE,
        width=SIZE,
        max_batch=len(PROMPTS),
        on_step=watch,
    )
    assert all(trunk_rows)
    assert evaluator.evaluations == schedule.model_evaluations < STEPS * len(PROMPTS)
    one_by_one, _ = denoise_hierarchical(
        decoder, schedule, embeds, torch.zeros(1, 16), seed=2, height=SIZE, width=SIZE, max_batch=1
    )
    torch.testing.assert_close(one_by_one, latents, rtol=1e-5, atol=1e-4)
    # Distinct after the split: rows of prompts in different final groups differ.
    assert not torch.equal(latents[0], latents[1])


def test_prior_and_decoder_of_different_widths_are_refused(tmp_path, prior):
    build_tiny_decoder(tmp_path / "decoder24", embedding_dim=24)
    wide = load_decoder(tmp_path / "decoder24")
    with pytest.raises(ValueError, match="16-wide image embeddings but decoder .* expects 24"):
        check_prior_matches_decoder(prior, wide)


def _generate(models, out, **kwargs):
    return generate(
        PROMPTS,
        models / "prior",
        models / "decoder",
        out,
        seed=7,
        steps=STEPS,
        budget=Budget("target_saving", 0.5),
        prior_steps=5,
        height=SIZE,
        width=SIZE,
        **kwargs,
    )


def test_generate_writes_images_and_manifest_and_resumes_identically(models, tmp_path):
    full = tmp_path / "full"
    summary = _generate(models, full)
    assert summary["written"] == len(PROMPTS) and summary["saving"] >= 0.5
    records = [json.loads(line) for line in (full / MANIFEST).read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(PROMPTS)))
    assert [r["prompt"] for r in records] == PROMPTS
    assert all(r["seed"] == 7 and r["steps"] == STEPS and 0 <= r["steps_shared"] < STEPS for r in records)
    assert max(r["steps_shared"] for r in records) > 0

    class Stop(Exception):
        pass

    def stop_at(limit):
        def hook(value):
            if value == limit:
                raise Stop

        return hook

    # Interrupted during denoising, then resumed from the checkpoint.
    resumed = tmp_path / "resumed"
    with pytest.raises(Stop):
        _generate(models, resumed, on_step=stop_at(2))
    assert not list(resumed.glob("*.png"))
    steps_run = []
    _generate(models, resumed, on_step=steps_run.append)
    assert steps_run == list(range(3, STEPS))
    # Interrupted while writing images: finished ones are kept, not redone.
    partial = tmp_path / "partial"
    with pytest.raises(Stop):
        _generate(models, partial, on_image=stop_at(1))
    first_written = (partial / "00000.png").stat().st_mtime_ns
    rest = _generate(models, partial)
    assert rest["already_done"] == 2 and rest["written"] == len(PROMPTS) - 2
    assert (partial / "00000.png").stat().st_mtime_ns == first_written
    for out in (resumed, partial):
        for i in range(len(PROMPTS)):
            name = f"{i:05d}.png"
            assert (out / name).read_bytes() == (full / name).read_bytes(), (out.name, name)
        assert len((out / MANIFEST).read_text().splitlines()) == len(PROMPTS)
    assert _generate(models, full)["written"] == 0
    with pytest.raises(ValueError, match="other settings \\(seed differ"):
        generate(
            PROMPTS,
            models / "prior",
            models / "decoder",
            full,
            seed=8,
            steps=STEPS,
            budget=Budget("target_saving", 0.5),
            prior_steps=5,
            height=SIZE,
            width=SIZE,
        )


def test_cli_generate_and_its_one_line_errors(models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = [
        str(prompts),
        "--model",
        str(models),
        "--out",
        str(out),
        "--steps",
        "3",
        "--tau",
        "0.5",
        "--height",
        "32",
        "--width",
        "32",
        "--prior-steps",
        "3",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]
    assert "2 images written" in capsys.readouterr().out
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    bad = [str(prompts), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o2")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hierdiff generate: error: prior folder") and "does not exist" in err
    assert "\n" not in err


def test_generate_meets_an_evaluations_per_image_budget(models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS), encoding="utf-8")
    common = [str(prompts), "--model", str(models), "--steps", str(STEPS), "--height", "32", "--width", "32",
              "--prior-steps", "3", "--device", "cpu"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "out"), "--evaluations-per-image", "4"]) == 0
    written = capsys.readouterr().out
    evaluations = int(written.split(": ")[1].split(" model evaluations")[0])
    assert evaluations <= 4 * len(PROMPTS) and f"instead of {STEPS * len(PROMPTS)}" in written
    # Out of [1, steps]: refused in one line before the output folder is made.
    assert main([*common, "--out", str(tmp_path / "bad"), "--evaluations-per-image", str(STEPS + 1)]) == 2
    assert capsys.readouterr().err == (
        f"hierdiff generate: error: evaluations per image must be in [1, {STEPS}] for {STEPS} steps, "
        f"got {float(STEPS + 1)!r}\n"
    )
    assert not (tmp_path / "bad").exists()


# --- The output folder under hostile use: bad arguments, two processes, kills, damaged files ---

GENERATE_OPTIONS = {"seed": 7, "steps": STEPS, "prior_steps": 5, "height": SIZE, "width": SIZE}


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    """An uninterrupted run: what every resumed run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("reference")
    _generate(models, out)
    return out


def _assert_same_images_recorded_once(out, reference):
    for i in range(len(PROMPTS)):
        name = f"{i:05d}.png"
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    records = sorted((json.loads(line) for line in (out / MANIFEST).read_text().splitlines()), key=_index)
    expected = [json.loads(line) for line in (reference / MANIFEST).read_text().splitlines()]
    assert records == expected  # one record per image, each the uninterrupted run's


def _index(record):
    return record["index"]


def test_every_bad_argument_is_refused_in_one_line_before_anything_is_written(models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = [str(prompts), "--model", str(models), "--out", str(out), "--steps", "3", "--height", "32",
            "--width", "32", "--prior-steps", "3", "--device", "cpu"]  # fmt: skip
    incomplete = tmp_path / "decoder"
    shutil.copytree(models / "decoder", incomplete)
    (incomplete / "movq" / "diffusion_pytorch_model.safetensors").unlink()
    a_file = tmp_path / "a_file"
    a_file.write_text("mine", encoding="utf-8")
    decoder = str(models / "decoder")
    batch = "max batch (groups per UNet batch) must be an integer in [1, 4096]"
    missing = tmp_path / "none"
    bad = [
        (["--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--steps", "10001"], "steps must be at most 10,000, got 10,001"),
        (["--target-saving", "1.5"], "target saving must be in [0, 1), got 1.5"),
        (["--max-batch", "0"], f"{batch}, got 0"),
        (["--max-batch", "4097"], f"{batch}, got 4097"),
        (["--height", "33"], f"height must be a multiple of 2 for decoder {decoder!r} (its movq's downscale "
                             "factor), got 33; try 32 or 34"),
        (["--width", "1"], f"width must be a multiple of 2 for decoder {decoder!r} (its movq's downscale "
                           "factor), got 1; try 2"),
        (["--width", "0"], "width must be an integer in [1, 2048] (memory grows with height x width), got 0"),
        (["--height", "4096"], "height must be an integer in [1, 2048] (memory grows with height x width), "
                               "got 4096"),
        (["--prior-steps", "0"], "prior steps must be an integer in [1, 10000], got 0"),
        (["--guidance", "nan"], "guidance scale must be a finite number >= 0, got nan"),
        (["--prior-guidance", "-1"], "prior guidance scale must be a finite number >= 0, got -1.0"),
        (["--seed", "-1"], f"seed must be an integer in [0, {2**64 - 1}], got -1"),
        (["--device", "bogus"], "unknown device 'bogus'; use auto, cpu, cuda, cuda:N or mps"),
        (["--device", "tpu"], "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
        (["--model", str(missing)], f"prior folder {str(missing / 'prior')!r} does not exist"),
        (["--prior", str(models / "prior"), "--decoder", str(incomplete)],
         f"decoder folder {str(incomplete)!r} is not a complete Kandinsky 2.2 decoder: missing "
         "movq/diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin"),
        (["--out", str(a_file)], f"output folder {str(a_file)!r} is a file, not a folder; "
                                 "choose another one"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        bad.append((["--device", "cuda"], "device 'cuda': no CUDA GPU is available here; use --device cpu"))
    for extra, message in bad:
        assert main([*argv, *extra]) == 2, extra
        assert capsys.readouterr().err == f"hierdiff generate: error: {message}\n", extra
        assert not out.exists(), extra
    assert main([*argv, "--device", "cuda:99"]) == 2
    assert capsys.readouterr().err.startswith("hierdiff generate: error: device 'cuda:99': ")
    assert a_file.read_text(encoding="utf-8") == "mine"
    # The corrected command simply runs: nothing was left behind to refuse it.
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]


RACE = """
import sys, time
from hierdiff_diffusers.generate import main
import hierdiff_diffusers.kandinsky, hierdiff_diffusers.prior  # the slow imports before the start line
print("ready", flush=True)
sys.stdin.readline()
started = time.monotonic()
code = main(sys.argv[1:])
print(f"{time.monotonic() - started:.3f}", flush=True)
sys.exit(code)
"""


@pytest.mark.slow
def test_two_processes_started_together_on_one_folder_one_runs_and_the_other_is_refused_at_once(
    models, tmp_path, capsys
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = [str(prompts), "--model", str(models), "--out", str(out), "--steps", "3", "--height", "32",
            "--width", "32", "--prior-steps", "3", "--device", "cpu"]  # fmt: skip
    other = subprocess.Popen(
        [sys.executable, "-c", RACE, *argv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert other.stdout.readline() == "ready\n"
    other.stdin.write("go\n")
    other.stdin.flush()
    started = time.monotonic()
    code_here = main(argv)
    seconds_here = time.monotonic() - started
    other_out, other_err = other.communicate(timeout=300)
    seconds_other = float(other_out.strip().splitlines()[-1])
    err_here = capsys.readouterr().err
    assert sorted([code_here, other.returncode]) == [0, 2]
    if code_here == 2:
        refused, holder, seconds_refused, seconds_ran = err_here, other.pid, seconds_here, seconds_other
    else:
        refused, holder = other_err.splitlines()[-1] + "\n", os.getpid()
        seconds_refused, seconds_ran = seconds_other, seconds_here
    assert refused.startswith(
        f"hierdiff generate: error: output folder {str(out)!r} is in use by another hierdiff run "
        f"(pid {holder} on {socket.gethostname()}, started "
    )
    assert refused.endswith("); wait for it to finish or choose another output folder\n")
    assert seconds_refused < seconds_ran  # at once, not after waiting for the lock
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "00000.png", "00001.png", MANIFEST
    ]  # fmt: skip


KILLED = """
import json, os, signal, sys
from hierdiff_core.schedule import Budget
from hierdiff_diffusers.generate import generate
args = json.loads(sys.argv[1])

def die(step):
    if step == args["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)

generate(args["prompts"], args["prior"], args["decoder"], args["out"], budget=Budget("target_saving", 0.5),
         on_step=die, **args["options"])
"""


@pytest.mark.slow
def test_a_run_killed_mid_denoising_resumes_bit_identically(models, tmp_path, reference):
    out = tmp_path / "out"
    args = {"prompts": PROMPTS, "prior": str(models / "prior"), "decoder": str(models / "decoder"),
            "out": str(out), "kill_at": 2, "options": GENERATE_OPTIONS}  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, json.dumps(args)], capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL
    assert not list(out.glob("*.png")) and not (out / MANIFEST).exists()
    steps_run = []
    summary = _generate(models, out, on_step=steps_run.append)  # the dead holder's lock is gone
    assert steps_run == list(range(3, STEPS))
    assert (summary["already_done"], summary["written"]) == (0, len(PROMPTS))
    _assert_same_images_recorded_once(out, reference)


def test_damaged_deleted_and_wrongly_recorded_images_are_remade_and_recorded_once(
    models, tmp_path, reference
):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    cut = (out / "00001.png").read_bytes()
    (out / "00001.png").write_bytes(cut[: len(cut) // 2])
    (out / "00003.png").unlink()
    lines = (out / MANIFEST).read_text().splitlines()
    lines[4] = lines[4].replace('"a cat on a mat"', '"a dig"')  # record 4 names another prompt
    (out / MANIFEST).write_text("\n".join(lines)[:-20], encoding="utf-8")  # record 5 cut mid-line
    steps_run = []
    summary = _generate(models, out, on_step=steps_run.append)
    assert (summary["already_done"], summary["written"]) == (2, 4)
    assert steps_run == []  # the final latents came from the checkpoint
    _assert_same_images_recorded_once(out, reference)
    assert _generate(models, out)["written"] == 0


def _cut(state_file):
    whole = state_file.read_bytes()
    state_file.write_bytes(whole[: len(whole) // 3])


def _edit(change):
    def edit(state_file):
        state = torch.load(state_file, weights_only=True)
        change(state)
        torch.save(state, state_file)

    return edit


def _zero_generator_states(state):
    generators = state["denoise"]["generators"]
    generators.update({node: torch.zeros(3, dtype=torch.uint8) for node in generators})


@pytest.mark.parametrize(
    "damage",
    [
        _cut,
        _edit(lambda s: s["settings"].update(seed=8)),  # another run's checkpoint
        _edit(lambda s: s["denoise"].update(latents=s["denoise"]["latents"][..., :8])),
        _edit(_zero_generator_states),
    ],
    ids=["cut", "other-run", "latents-shape", "generator-state"],
)
def test_a_checkpoint_that_is_damaged_or_not_this_runs_is_discarded_and_the_images_are_the_same(
    models, tmp_path, reference, damage
):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for p in [*out.glob("*.png"), out / MANIFEST]:
        p.unlink()
    damage(out / STATE_FILE)
    steps_run = []
    _generate(models, out, on_step=steps_run.append)
    assert steps_run == list(range(STEPS))  # denoised again from the first step
    _assert_same_images_recorded_once(out, reference)


def test_a_folder_whose_settings_file_is_gone_is_refused_and_left_alone(models, tmp_path, reference):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / RUN_FILE).unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".hierdiff-lock"}
    with pytest.raises(ValueError) as refused:
        generate(PROMPTS, models / "prior", models / "decoder", out, budget=Budget("target_saving", 0.5),
                 **{**GENERATE_OPTIONS, "seed": 8})  # fmt: skip
    assert str(refused.value) == (
        f"output folder {str(out)!r} holds a run's files (manifest.jsonl, .hierdiff-state.pt, "
        f"6 images named like 00000.png) but no settings file {RUN_FILE}, so its images cannot be paired "
        "with their settings; choose another output folder, or delete those files to start over"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".hierdiff-lock"} == before
