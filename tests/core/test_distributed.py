# SPDX-License-Identifier: GPL-3.0-or-later
"""The Ray runner (hierdiff_diffusers.distributed) on this machine: a local Ray instance and a simulated
3-node cluster (ray.cluster_utils.Cluster), loopback addresses only, shut down after their tests.

The pipeline is the testkit's tiny Stable Diffusion 1.x folder with a DDPM scheduler (stochastic: the
noise generators' states cross the cut too), loaded by the workers from the folder as real weights
load. The reference is one process running ``hierarchical`` with the same settings (each group alone
through the UNet, each image decoded alone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

# Before Ray is imported: Ray then takes the loopback address as this machine's, so a driver joining the
# simulated cluster at 127.0.0.1 is not redirected to the machine's outward address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
pytest.importorskip("diffusers")
ray = pytest.importorskip("ray")

from PIL import Image  # noqa: E402

from hierdiff_core.schedule import Budget  # noqa: E402
from hierdiff_diffusers.distributed import DistributedError, run_distributed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [f"a {c} {a}" for c in ("red", "blue", "green", "black") for a in ("cat", "dog", "car", "tree")]
BUDGET = Budget("target_saving", 0.5)
SEED = 3
STEPS = 6


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """The tiny SD folder with DDPM as its scheduler."""
    from diffusers import DDPMScheduler, DiffusionPipeline

    from testkit.tiny_pipelines import build_tiny_sd

    folder = build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.save_pretrained(folder)
    return folder


def single_process(folder: Path, prompts: list[str], steps: int) -> tuple[list[np.ndarray], object]:
    """The images of one process running ``hierarchical`` (max_batch 1, each image decoded alone)."""
    from hierdiff_diffusers import hierarchical, load_pipeline
    from hierdiff_diffusers.distributed import decode_each_alone
    from testkit.tiny_pipelines import one_torch_thread

    # One thread, as the workers run; restored after, since later tests compare against subprocesses.
    with one_torch_thread():
        pipe = load_pipeline(folder)
        decode_each_alone(pipe)
        out = hierarchical(pipe, prompts, BUDGET, seed=SEED, num_inference_steps=steps, max_batch=1,
                           guidance_scale=7.5)  # fmt: skip
    return [np.asarray(image) for image in out.images], out


@pytest.fixture(scope="module")
def reference(pipeline_dir):
    return single_process(pipeline_dir, PROMPTS, STEPS)


def folder_images(out: Path, n: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(out / f"{i:05d}.png")) for i in range(n)]


def manifest_indices(out: Path) -> list[int]:
    return [json.loads(line)["index"] for line in (out / "manifest.jsonl").read_text().splitlines()]


def assert_same_images(out: Path, images: list[np.ndarray]) -> None:
    found = folder_images(out, len(images))
    differing = [i for i, (a, b) in enumerate(zip(found, images, strict=True)) if not np.array_equal(a, b)]
    assert differing == []


def leftover_ray_processes(session: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:] if line.split()[1] == str(session)]


# ----- bad input, no cluster needed -----
def test_zero_workers_is_refused(pipeline_dir, tmp_path):
    with pytest.raises(DistributedError, match="workers must be an integer >= 1, got 0"):
        run_distributed(pipeline_dir, PROMPTS, BUDGET, out=tmp_path / "o", workers=0)
    assert not (tmp_path / "o").exists()


def test_unreachable_address_fails_within_seconds(pipeline_dir, tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DistributedError, match=rf"cannot reach a Ray cluster at '127.0.0.1:{port}'"):
        run_distributed(pipeline_dir, PROMPTS, BUDGET, out=tmp_path / "o", address=f"127.0.0.1:{port}")
    assert time.monotonic() - start < 6
    assert not ray.is_initialized()


def test_without_ray_says_which_extra_to_install(pipeline_dir, tmp_path):
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "ray":
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Missing())
        from hierdiff_diffusers.distributed import DistributedError, run_distributed
        try:
            run_distributed({str(pipeline_dir)!r}, ["a", "b"], ("tau", 0.0), out={str(tmp_path / "o")!r},
                            workers=1)
        except DistributedError as exc:
            print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "the distributed runner needs Ray: pip install 'hierdiff[ray]'", out.stderr


# ----- a local Ray instance -----
@pytest.fixture(scope="class")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="class")
def first_run(local_ray, pipeline_dir, tmp_path_factory):
    """One run with 2 workers, cut at step 3, into a folder the class's tests share."""
    out = tmp_path_factory.mktemp("local") / "o"
    seen = []
    result = run_distributed(pipeline_dir, PROMPTS, BUDGET, out=out, workers=2, seed=SEED, steps=STEPS,
                             cut_step=3, progress=seen.append)  # fmt: skip
    return out, result, seen


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
class TestLocal:
    def test_images_and_evaluations_equal_the_single_process_run(self, first_run, reference):
        images, single = reference
        out, result, seen = first_run
        assert_same_images(out, images)
        plan = result.plan
        assert plan.to_dict() == single.plan.to_dict()
        # Cut after step 0 (8 groups at step 3), so the trunk latents and noise states cross the object store.
        assert result.partition.cut_step == 3 and result.partition.tasks == 8
        assert result.partition.added_evaluations == 0
        # The hook on each worker's real UNet: two rows (guidance) per planned group evaluation.
        assert result.denoiser_rows == 2 * plan.model_evaluations == 96
        assert result.evaluations == plan.model_evaluations
        assert (result.written, result.already_done, result.retried) == (16, 0, 0)
        assert sorted(manifest_indices(out)) == list(range(16))
        last = seen[-1]
        assert (last.images_done, last.images_total, last.phase) == (16, 16, "done")
        assert (last.evaluations_done, last.evaluations_planned) == (48, 48)
        assert [p.phase for p in seen[:2]] == ["encode", "top"]
        assert all(a.images_done <= b.images_done for a, b in zip(seen, seen[1:], strict=False))

    def test_a_finished_folder_is_not_redone(self, pipeline_dir, first_run):
        out, _, _ = first_run
        again = run_distributed(pipeline_dir, PROMPTS, BUDGET, out=out, workers=2, seed=SEED, steps=STEPS)
        assert (again.written, again.already_done, again.denoiser_rows, again.plan) == (0, 16, 0, None)
        assert sorted(manifest_indices(out)) == list(range(16))

    def test_a_folder_a_worker_cannot_load_names_the_node(self, pipeline_dir, tmp_path):
        import shutil

        broken = tmp_path / "broken"
        shutil.copytree(pipeline_dir, broken)
        weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])  # passes the driver's file check, cannot load
        with pytest.raises(DistributedError) as error:
            run_distributed(broken, PROMPTS, BUDGET, out=tmp_path / "o", workers=1, seed=SEED, steps=STEPS)
        message = str(error.value)
        node = ray.get_runtime_context().get_node_id()[:12]
        assert f"cannot be loaded on worker node {node}" in message and str(broken) in message

    def test_killing_the_driver_and_rerunning_resumes(self, pipeline_dir, reference, tmp_path):
        images, _ = reference
        out = tmp_path / "o"
        script = textwrap.dedent(
            f"""
            import time
            from hierdiff_diffusers.distributed import run_distributed

            def slow(progress):  # gives the test time to kill this driver between two tasks
                if progress.phase == "tasks":
                    time.sleep(1.0)

            run_distributed({str(pipeline_dir)!r}, {PROMPTS!r}, ("target_saving", 0.5), out={str(out)!r},
                            workers=1, seed={SEED}, steps={STEPS}, progress=slow)
            """
        )
        driver = subprocess.Popen([sys.executable, "-P", "-c", script], cwd=ROOT, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        manifest = out / "manifest.jsonl"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and driver.poll() is None:
            if manifest.is_file() and manifest.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and every process it started (its Ray)
        driver.wait()
        driver.stderr.close()
        deadline = time.monotonic() + 10
        while leftover_ray_processes(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftover_ray_processes(driver.pid) == []
        done_before = manifest_indices(out)
        assert 1 <= len(done_before) < 16
        result = run_distributed(pipeline_dir, PROMPTS, BUDGET, out=out, workers=2, seed=SEED, steps=STEPS)
        assert result.already_done == len(done_before) and result.written == 16 - len(done_before)
        assert_same_images(out, images)
        rows = manifest_indices(out)
        assert sorted(rows) == list(range(16)) and rows[: len(done_before)] == done_before


# ----- a simulated 3-node cluster -----
CLUSTER_PROMPTS = [f"a {s} {c} {a}" for s in ("small", "large") for c in ("red", "blue", "green")
                   for a in ("cat", "dog", "car", "tree")]  # fmt: skip
CLUSTER_STEPS = 10


@pytest.fixture(scope="class")
def cluster():
    from ray.cluster_utils import Cluster

    loopback = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    simulated = Cluster(initialize_head=True, head_node_args=loopback)
    workers = [simulated.add_node(**{k: v for k, v in loopback.items() if k != "include_dashboard"})
               for _ in range(2)]  # fmt: skip
    ray.init(address=simulated.address, log_to_driver=False)
    yield simulated, workers
    ray.shutdown()
    simulated.shutdown()


@pytest.mark.slow
class TestCluster:
    def test_a_node_killed_mid_run_loses_only_its_subtrees(self, cluster, pipeline_dir, tmp_path):
        simulated, workers = cluster
        images, single = single_process(pipeline_dir, CLUSTER_PROMPTS, CLUSTER_STEPS)
        killed = []

        def kill_a_busy_node(progress):
            if killed or progress.phase != "tasks":
                return
            for node in workers:
                if any(f"node {node.node_id[:12]} " in busy for busy in progress.busy_nodes):
                    simulated.remove_node(node)
                    killed.append(node.node_id)
                    return

        result = run_distributed(pipeline_dir, CLUSTER_PROMPTS, BUDGET, out=tmp_path / "o", workers=3,
                                 seed=SEED, steps=CLUSTER_STEPS, cut_step=4,
                                 progress=kill_a_busy_node)  # fmt: skip
        assert killed, "no worker node was busy when the first task finished"
        assert result.retried >= 1
        assert result.partition.cut_step == 4  # the trunk latents went through the object store
        assert_same_images(tmp_path / "o", images)
        rows = manifest_indices(tmp_path / "o")
        assert sorted(rows) == list(range(len(CLUSTER_PROMPTS)))  # each image once
        assert result.plan.to_dict() == single.plan.to_dict()
        assert len(result.nodes) >= 2  # the work was spread over nodes
        # Work lost with the node is not counted; what finished is exactly the plan, once.
        assert result.denoiser_rows == 2 * result.plan.model_evaluations


# ----- the command line -----
@pytest.mark.slow
def test_hierdiff_generate_with_ray_writes_the_single_process_images(pipeline_dir, reference, tmp_path):
    """``hierdiff generate --pipeline DIR --ray --workers 2`` starts a local Ray instance, writes the
    images of the single-process run with one manifest record each, and leaves no Ray behind."""
    images, _ = reference
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "o"
    command = [sys.executable, "-P", "-m", "hierdiff_core.cli", "generate", str(prompts), "--pipeline",
               str(pipeline_dir), "--ray", "--workers", "2", "--out", str(out), "--seed", str(SEED),
               "--steps", str(STEPS), "--guidance", "7.5", "--target-saving", "0.5"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"16 images written to {out} (0 already there); tau ")
    assert_same_images(out, images)
    assert sorted(manifest_indices(out)) == list(range(16))


def test_hierdiff_generate_refuses_ray_options_it_cannot_honour(pipeline_dir, tmp_path, capsys):
    from hierdiff_core.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\n")
    for extra, message in (
        (["--pipeline", str(pipeline_dir), "--ray", "--chunk-size", "8"],
         "--chunk-size go with single-process --pipeline runs, not with --ray"),
        (["--model", str(tmp_path), "--ray"], "--ray go with --pipeline runs"),
    ):  # fmt: skip
        assert main(["generate", str(prompts), *extra, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
