# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampling of one prompt set on a Ray cluster, sharing kept: :func:`run_distributed`.

Splitting the prompts by index, seed or tile would destroy the sharing. Here the unit of work is a
subtree of the plan (:mod:`hierdiff_core.partition`):

1. **Encode** (one worker): the pipeline's own text encoders encode every prompt, in batches of
   ``encode_batch`` exactly as :func:`~hierdiff_diffusers.pipelines.hierarchical` does. The driver
   builds the tree on the returned vectors (Ward over cosine distances), plans the budget and cuts
   the plan (:func:`~hierdiff_core.partition.partition` at :func:`~hierdiff_core.partition.best_cut`).
2. **Top part** (one worker, skipped when the cut is step 0): the pipeline runs steps 0..c-1 for all
   N prompts with its denoiser grouped (:func:`~hierdiff_diffusers.denoiser.grouped`) and stops at the
   cut (``callback_on_step_end`` sets the pipeline's interrupt flag); it returns one latent row per
   subtree task and the task root's noise-generator state.
3. **Subtree tasks** (every worker, largest first): each runs the pipeline for its subtree's prompts
   from step c to the end (the scheduler continues at the cut; the grouped denoiser continues its
   plan, :func:`~hierdiff_core.partition.task_plan`, at step c with the passed generator state) and
   returns its images as PNG bytes.

Workers are Ray actors, one per GPU (or per CPU slot when the cluster has none), each holding the
pipeline loaded from the folder. Everything the tasks need (each task's conditioning rows and latent
row; all rows once for the top part) is put into the object store by the driver, so it is owned by
the driver and survives the death of any worker node. The driver writes every image into the run folder
(:class:`~hierdiff_core.run_folder.RunFolder`: image first, manifest record after), so the manifest
never lists an image that is not completely written, and a rerun after the driver was killed skips
the finished images (and the subtrees all of whose images are finished).

Faults. Ray detects a dead worker (its process or its node gone) and fails the calls in flight on it
to the driver, which hands that work to the next idle worker and asks Ray for a replacement actor
(placed wherever a slot is free; it joins when it has loaded the pipeline). Only the unfinished
subtrees of a dead worker are redone; the tasks' inputs, owned by the driver, are never lost with it.

Exactness. The images are bit-identical to one process running :func:`~hierdiff_diffusers.hierarchical`
with the same seed and settings when the scheduler continues from a step exactly (DDIM, DDPM:
:data:`RESUMABLE_SCHEDULERS`) and each group's denoiser rows do not depend on which other rows share
their batch (true on the CPU for the tested pipelines with ``max_batch=1``; see docs/distributed.md).

Ray is imported only when a run starts (``pip install 'hierdiff[ray]'``).
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierdiff_core.partition import Partition, best_cut, partition, task_plan
from hierdiff_core.run_folder import RunFolder
from hierdiff_core.schedule import Budget, Plan
from hierdiff_core.schedule import plan as make_plan
from hierdiff_core.tree import build_tree

RESUMABLE_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")
"""Schedulers whose step depends only on its timestep (no history of earlier model outputs, initial
noise scale 1), so a subtree can continue from the cut exactly."""

INSTALL_HINT = "the distributed runner needs Ray: pip install 'hierdiff[ray]'"
CONNECT_TIMEOUT_S = 5.0
"""How long to try to reach a cluster address before giving up."""
START_TIMEOUT_S = 300.0
"""How long the workers may take to find a slot and load the pipeline."""


class DistributedError(ValueError):
    """A distributed run that cannot start or finish; one line naming why."""


# ----- what a run is asked for -----
@dataclass(frozen=True)
class DistributedRun:
    """The settings of a distributed run (all of them go into the run folder's settings)."""

    pipeline_dir: str
    prompts: tuple[str, ...]
    budget: Budget
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    max_batch: int = 1
    encode_batch: int = 64
    negative_prompt: str | None = None

    def pipeline_options(self) -> dict[str, Any]:
        """The keyword arguments every pipeline call of the run gets (besides conditioning)."""
        options: dict[str, Any] = {"guidance_scale": float(self.guidance_scale)}
        if self.height is not None:
            options["height"] = int(self.height)
        if self.width is not None:
            options["width"] = int(self.width)
        if self.negative_prompt is not None:
            options["negative_prompt"] = self.negative_prompt
        return options

    def settings(self) -> dict[str, Any]:
        """The run folder's settings: what the images depend on (not the workers or the address)."""
        return {
            "runner": "diffusers",
            "pipeline": str(Path(self.pipeline_dir).resolve()),
            "prompts": list(self.prompts),
            "seed": int(self.seed),
            "steps": int(self.steps),
            **{mode: (self.budget.value if mode == self.budget.mode else None)
               for mode in ("tau", "target_saving", "evaluations_per_image")},  # fmt: skip
            "guidance_scale": float(self.guidance_scale),
            "height": self.height,
            "width": self.width,
            "max_batch": int(self.max_batch),
            "encode_batch": int(self.encode_batch),
            "negative_prompt": self.negative_prompt,
        }


@dataclass
class Progress:
    """The whole run's progress, passed to the ``progress`` callback after every finished piece."""

    images_done: int
    images_total: int
    evaluations_done: int
    evaluations_planned: int
    phase: str  # "encode", "top", "tasks", "done"
    busy_nodes: tuple[str, ...] = ()  # the nodes with work in flight, one entry per busy worker


@dataclass
class DistributedResult:
    """What :func:`run_distributed` returns.

    plan, partition : what ran (None when every image was already in the folder).
    written : images written by this call; already_done : images found finished in the folder.
    evaluations : group evaluations the workers ran (top part + finished tasks, counted by the adapter).
    denoiser_rows : rows through the real denoisers, counted by a hook on each worker's real module
        (twice the evaluations with guidance); work lost with a dead worker is not in either count.
    retried : pieces of work handed out again after their worker died.
    nodes : {node: tasks it finished}. wall_s : seconds from opening the folder to the last image.
    timings : seconds per phase: "start" (Ray and the workers loading the pipeline), "encode" (with
        tree and plan), "top", "tasks".
    """

    plan: Plan | None
    partition: Partition | None
    written: int
    already_done: int
    evaluations: int
    denoiser_rows: int
    retried: int
    nodes: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


# ----- the worker: plain Python, wrapped as a Ray actor by the driver -----
class PipelineWorker:
    """Holds one loaded pipeline and runs the pieces of a distributed run on it.

    ``load_error`` is set (one line) instead of raising when the folder cannot be loaded here, so the
    driver can say which node could not read it. A forward pre-hook on the real denoiser counts the rows
    it is given (``rows``), independently of the adapter's own counters.
    """

    def __init__(self, pipeline_dir: str, device: str = "cpu", threads: int = 1):
        if threads > 0:
            torch.set_num_threads(int(threads))
        self.node = _node_name()
        self.load_error: str | None = None
        self.rows = 0
        self.pipe = None
        try:
            from .pipelines import load_pipeline

            self.pipe = load_pipeline(pipeline_dir, device=device)
        except Exception as exc:  # any failure to load is reported to the driver, naming this node
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.load_error = text
            return
        from .families import family_of

        decode_each_alone(self.pipe)
        family = family_of(self.pipe)
        self._sample = family.sample
        getattr(self.pipe, family.denoiser).register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs[self._sample]
        self.rows += int(sample.shape[0])

    def ping(self) -> dict[str, Any]:
        """{"node", "pid", "error"}: where this worker runs and why it could not load, if it could not."""
        return {"node": self.node, "pid": os.getpid(), "error": self.load_error}

    def _pipe(self) -> Any:
        if self.pipe is None:
            raise DistributedError(f"the pipeline could not be loaded on {self.node}: {self.load_error}")
        return self.pipe

    def encode(self, prompts: list[str], options: dict[str, Any], batch: int) -> tuple[np.ndarray, dict]:
        """(vectors (N, D) float64, conditioning {name: (N, ...) array}) of the prompts."""
        from .pipelines import encode_prompts

        encoded = encode_prompts(self._pipe(), prompts, options, batch)
        conditioning = {k: v.detach().cpu().numpy() for k, v in encoded.call_kwargs.items()}
        return encoded.vectors.detach().double().cpu().numpy(), conditioning

    def top(self, plan: Plan, cut: int, seed: int, max_batch: int, options: dict[str, Any],
            conditioning: dict[str, np.ndarray]) -> dict[str, Any]:  # fmt: skip
        """Steps 0..cut-1 for all N prompts. Returns {"latents": {root: (1, ...) array}, "states":
        {root: generator state array or None}, "evaluations", "rows"} for the groups active at ``cut``."""
        from .denoiser import grouped

        pipe = self._pipe()
        check_resumable(pipe)
        rows_before = self.rows
        kwargs = {**options, **{k: torch.from_numpy(v) for k, v in conditioning.items()}}

        def stop_at_cut(pipeline: Any, index: int, timestep: Any, tensors: dict) -> dict:
            if run.step >= cut - 1:
                pipeline._interrupt = True
            return {}

        with grouped(pipe, plan, seed=seed, max_batch=max_batch) as run, torch.no_grad():
            latents = pipe(**kwargs, num_inference_steps=plan.steps, generator=run.generator,
                           output_type="latent", callback_on_step_end=stop_at_cut).images  # fmt: skip
            states = run.generator_states()
        if run.step != cut - 1:
            raise DistributedError(f"the top part stopped at step {run.step}, not at the cut {cut - 1}")
        roots = plan.groups(cut).nodes.tolist()
        first = plan.first_steps
        out_latents, out_states = {}, {}
        for root in roots:
            row = int(plan.tree.node_min_members[root])
            out_latents[root] = latents[row : row + 1].detach().cpu().numpy()
            # A root active before the cut continues its generator; one created at the cut starts fresh.
            kept = states.get(root) if int(first[root]) < cut else None
            out_states[root] = None if kept is None else kept.numpy()
        return {"latents": out_latents, "states": out_states, "evaluations": run.evaluations,
                "rows": self.rows - rows_before}  # fmt: skip

    def task(self, plan: Plan, members: np.ndarray, cut: int, seed: int, max_batch: int,
             options: dict[str, Any], conditioning: dict[str, np.ndarray],
             trunk: tuple[np.ndarray, np.ndarray | None] | None) -> dict[str, Any]:  # fmt: skip
        """One subtree task: ``plan`` is the task's own (:func:`~hierdiff_core.partition.task_plan`),
        ``members`` its (M,) prompt indices in the whole set, ``conditioning`` their (M, ...) rows,
        ``trunk`` its latent row and generator state at the cut (None when the cut is step 0). Returns
        {"indices": [M], "pngs": [M bytes], "evaluations", "rows", "node"}."""
        from .denoiser import grouped, timesteps_from

        pipe = self._pipe()
        rows_before = self.rows
        kwargs = {**options, **{k: torch.from_numpy(v) for k, v in conditioning.items()}}
        states = None
        if trunk is not None:
            check_resumable(pipe)
            latent, state = trunk
            kwargs["latents"] = torch.from_numpy(latent).repeat(len(members), *([1] * (latent.ndim - 1)))
            root = plan.tree.root
            states = None if state is None else {root: torch.from_numpy(state)}
        block = grouped(pipe, plan, seed=seed, max_batch=max_batch, generator_states=states, first_step=cut)
        with block as run, timesteps_from(pipe.scheduler, cut), torch.no_grad():
            images = pipe(**kwargs, num_inference_steps=plan.steps, generator=run.generator,
                          output_type="pil").images  # fmt: skip
        pngs = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return {"indices": [int(i) for i in members], "pngs": pngs, "evaluations": run.evaluations,
                "rows": self.rows - rows_before, "node": self.node}  # fmt: skip


def decode_each_alone(pipe: Any) -> None:
    """Make the pipeline's VAE decode its latents one image at a time (diffusers' VAE slicing), so an
    image never depends on which others are decoded in the same call (on the CPU a batched decode
    differs in the last bits from a single one)."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()


def _node_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            return f"node {context.get_node_id()[:12]} ({socket.gethostname()})"
    except ImportError:
        pass
    return f"host {socket.gethostname()}"


def check_resumable(pipe: Any) -> None:
    """DistributedError naming the scheduler when a run cannot continue exactly from a cut step."""
    name = type(pipe.scheduler).__name__
    if name not in RESUMABLE_SCHEDULERS:
        raise DistributedError(
            f"a distributed run that cuts the plan after step 0 continues the scheduler from that step, "
            f"which {name} cannot do exactly (it keeps earlier steps' outputs or scales its start); "
            f"use {' or '.join(RESUMABLE_SCHEDULERS)}, or a budget whose plan has enough groups at step 0"
        )


# ----- the driver -----
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DistributedError(INSTALL_HINT) from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """DistributedError within ``timeout`` seconds when nothing listens at a cluster address
    ("host:port" or "ray://host:port"; "auto" is left to Ray)."""
    if address == "auto":
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise DistributedError(
            f"cannot reach a Ray cluster at {address!r} ({reason}); start one with `ray start --head` "
            "or leave out the address to start a local Ray instance"
        ) from None


def image_size(
    pipeline_dir: str | os.PathLike[str], height: int | None, width: int | None
) -> tuple[int, int]:
    """(width, height) of the run's images: the given ones, else the denoiser's sample size times the
    VAE's downscale factor, read from the folder's configs."""
    import json

    if height is not None and width is not None:
        return int(width), int(height)
    root = Path(pipeline_dir)
    try:
        denoiser = next(root / d / "config.json" for d in ("unet", "transformer") if (root / d).is_dir())
        sample = json.loads(denoiser.read_text(encoding="utf-8"))["sample_size"]
        blocks = json.loads((root / "vae" / "config.json").read_text(encoding="utf-8"))["block_out_channels"]
    except (StopIteration, OSError, ValueError, KeyError) as exc:
        raise DistributedError(
            f"cannot read the default image size from {str(root)!r} ({exc}); pass height and width"
        ) from None
    side = int(sample) * 2 ** (len(blocks) - 1)
    return (int(width) if width is not None else side), (int(height) if height is not None else side)


@contextmanager
def _ray_session(ray: Any, address: str | None, workers: int, gpus: int):
    """Connect to ``address`` or start a local instance (loopback only) for the block."""
    if ray.is_initialized():  # the caller's own session (tests, notebooks): leave it running after
        yield
        return
    if address is None:
        ray.init(address="local", num_cpus=workers, num_gpus=gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)  # fmt: skip
    else:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(f"cannot join the Ray cluster at {address!r}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()


class _Pool:
    """The workers and the one loop that hands work to idle ones and a dead one's work to the others.

    A call whose actor died (its process or node is gone) fails to the driver; the piece of work goes
    back to the front of the queue for the next idle worker, and a replacement actor is started, which
    Ray places wherever a slot is free (it joins the pool when it answers; it never blocks the run).
    """

    def __init__(self, ray: Any, make_actor: Callable[[], Any], count: int, max_retries: int,
                 stall_timeout: float):  # fmt: skip
        self.ray = ray
        self.make_actor = make_actor
        self.actors = [make_actor() for _ in range(count)]
        self.idle: deque[Any] = deque()
        self.probes: dict[Any, Any] = {actor.ping.remote(): actor for actor in self.actors}
        self.where: dict[Any, str] = {}
        self.max_retries = max_retries
        self.stall_timeout = stall_timeout
        self.retried = 0
        self.replaced = 0
        self.busy: dict[Any, Any] = {}  # call ref -> actor

    def busy_nodes(self) -> list[str]:
        """Nodes (as workers name them) with a call in flight."""
        return sorted(self.where.get(actor, "?") for actor in self.busy.values())

    def _answer(self, actor: Any, answer: dict[str, Any], pipeline_dir: str) -> None:
        if answer["error"]:
            raise DistributedError(
                f"the pipeline folder {pipeline_dir!r} cannot be loaded on worker {answer['node']}: "
                f"{answer['error']}"
            )
        self.where[actor] = answer["node"]
        self.idle.append(actor)

    def start(self, pipeline_dir: str) -> None:
        """Wait for every worker to load the pipeline; DistributedError naming a node that cannot, or
        saying how many found no free slot on the cluster within ``START_TIMEOUT_S``."""
        refs = list(self.probes)
        _, waiting = self.ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT_S)
        if waiting:
            raise DistributedError(
                f"{len(waiting)} of {len(refs)} workers did not start within {START_TIMEOUT_S:.0f} s: the "
                f"cluster has {self.ray.cluster_resources()} in all; ask for fewer workers"
            )
        answers = self.ray.get(refs)
        for ref, answer in zip(refs, answers, strict=True):
            self._answer(self.probes.pop(ref), answer, pipeline_dir)
        self.pipeline_dir = pipeline_dir

    def run(self, jobs: list[tuple[Any, str, tuple]], done: Callable[[Any, Any], None]) -> None:
        """Run every (key, method, args) job on some worker; ``done(key, result)`` as each finishes."""
        ray = self.ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError

        lost = (RayActorError, ActorDiedError, ActorUnavailableError, ObjectLostError)
        pending = deque(jobs)
        tries: dict[Any, int] = {}
        jobs_of: dict[Any, tuple[Any, str, tuple]] = {}
        last = time.monotonic()
        while pending or self.busy:
            while pending and self.idle:
                key, method, args = pending.popleft()
                actor = self.idle.popleft()
                ref = getattr(actor, method).remote(*args)
                self.busy[ref] = actor
                jobs_of[ref] = (key, method, args)
            if not self.busy and not self.probes:
                raise DistributedError("every worker has died and none could be started again")
            ready, _ = ray.wait([*self.busy, *self.probes], num_returns=1, timeout=5.0)
            if not ready:
                if not self.busy and time.monotonic() - last > self.stall_timeout:
                    raise DistributedError(
                        f"no worker has been free for {self.stall_timeout:.0f} s (workers died and their "
                        "replacements found no free slot)"
                    )
                continue
            last = time.monotonic()
            ref = ready[0]
            if ref in self.probes:
                actor = self.probes.pop(ref)
                try:
                    self._answer(actor, ray.get(ref), self.pipeline_dir)
                except lost:
                    pass  # the replacement died too; the next death starts another
                continue
            actor = self.busy.pop(ref)
            key, method, args = jobs_of.pop(ref)
            try:
                result = ray.get(ref)
            except lost as exc:
                tries[key] = tries.get(key, 0) + 1
                if tries[key] > self.max_retries:
                    first = str(exc).strip().splitlines()[0]
                    raise DistributedError(
                        f"{method} {key!r} was lost on {tries[key]} workers: {first}"
                    ) from None
                self.retried += 1
                pending.appendleft((key, method, args))
                ray.kill(actor)
                replacement = self.make_actor()
                self.actors.append(replacement)
                self.replaced += 1
                self.probes[replacement.ping.remote()] = replacement
                continue
            except Exception as exc:  # the work itself raised: a bad setting, not a lost worker
                cause = getattr(exc, "cause", None) or exc
                text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                where = self.where.get(actor, "?")
                raise DistributedError(f"{method} failed on worker {where}: {text}") from None
            self.idle.append(actor)
            done(key, result)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


def run_distributed(
    pipeline_dir: str | os.PathLike[str],
    prompts: Sequence[str],
    budget: Budget | tuple[str, float],
    *,
    out: str | os.PathLike[str],
    workers: int | None = None,
    address: str | None = None,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    max_batch: int = 1,
    encode_batch: int = 64,
    negative_prompt: str | None = None,
    balance: int = 4,
    cut_step: int | None = None,
    device: str = "auto",
    threads: int = 1,
    max_retries: int = 3,
    progress: Callable[[Progress], None] | None = None,
) -> DistributedResult:
    """Generate (or finish generating) one image per prompt into ``out`` on a Ray cluster.

    Parameters
    ----------
    pipeline_dir : a diffusers pipeline folder readable at the same path on every worker node.
    prompts, budget, seed, steps, guidance_scale, height, width, negative_prompt : as for
        :func:`~hierdiff_diffusers.hierarchical` (``num_inference_steps`` = ``steps``).
    out : the run folder (created, or reopened to resume).
    workers : W actors; None with an ``address``: one per GPU of the cluster, or per CPU when it has
        none. Without an address a local Ray instance with W CPU slots (and W GPUs when this machine has
        them) is started on the loopback address and shut down at the end.
    address : a running cluster ("HOST:PORT", "ray://HOST:PORT" or "auto"); unreachable -> error within
        seconds.
    max_batch : groups per denoiser batch (1 keeps every image independent of how the plan is cut).
    encode_batch : prompts per text-encoder batch.
    balance : k: the plan is cut no later than the first step with at least k x W groups, at the step
        with the shortest critical path (:func:`~hierdiff_core.partition.best_cut`).
    cut_step : cut the plan at this step instead (0..steps-1).
    device : "auto" (cuda when the worker has a GPU), "cpu" or "cuda".
    threads : torch threads per CPU worker.
    max_retries : how often one piece of work is handed out again after its worker died.
    progress : called with a :class:`Progress` after the encoding, the top part and every task.

    Raises :class:`DistributedError` (one line) for bad settings, Ray missing, an unreachable address,
    a folder a worker cannot read (naming the node) or a run that cannot finish.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise DistributedError(f"workers must be an integer >= 1, got {workers!r}")
    if workers is None and address is None:
        raise DistributedError("give the number of workers for a local Ray instance")
    run = DistributedRun(
        str(pipeline_dir), tuple(prompts), Budget(*budget).check(steps), int(seed), int(steps),
        float(guidance_scale), height, width, int(max_batch), int(encode_batch), negative_prompt,
    )  # fmt: skip
    if not run.prompts:
        raise DistributedError("no prompts")
    if max_batch < 1 or encode_batch < 1:
        raise DistributedError("max_batch and encode_batch must be at least 1")
    from .pipelines import detect_family

    detect_family(pipeline_dir)  # the driver's own check of the folder, before Ray starts
    size = image_size(pipeline_dir, height, width)
    ray = _import_ray()
    started = time.perf_counter()
    with RunFolder.open(out, run.settings(), run.prompts, size) as folder:
        pending = set(folder.pending())
        already = len(run.prompts) - len(pending)
        if not pending:  # nothing to do: no cluster, no encoding
            return DistributedResult(None, None, 0, already, 0, 0, 0, {}, time.perf_counter() - started)
        gpus_here = torch.cuda.device_count() if address is None and device != "cpu" else 0
        with _ray_session(ray, address, workers or 1, min(gpus_here, workers or 1)):
            return _drive(ray, run, folder, pending, already, workers, (balance, cut_step), device, threads,
                          max_retries, progress, started)  # fmt: skip


def _drive(ray: Any, run: DistributedRun, folder: RunFolder, pending: set[int], already: int,
           workers: int | None, balance: tuple[int, int | None], device: str, threads: int, max_retries: int,
           progress: Callable[[Progress], None] | None, started: float) -> DistributedResult:  # fmt: skip
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    count = workers or (gpus if gpus else max(int(resources.get("CPU", 1)), 1))
    use_gpu = gpus >= 1
    # No restarts by Ray: a dead worker's calls fail at once and the pool hands their work on (a
    # restart waiting for a free slot would hold its queued calls indefinitely).
    worker_class = ray.remote(PipelineWorker).options(
        num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0, max_restarts=0, max_task_retries=0
    )
    worker_device = "cuda" if use_gpu else "cpu"

    def make_actor() -> Any:
        return worker_class.remote(run.pipeline_dir, worker_device, threads)

    pool = _Pool(ray, make_actor, count, max_retries, stall_timeout=600.0)
    try:
        pool.start(run.pipeline_dir)
        return _drive_with(ray, pool, run, folder, pending, already, balance, progress, started,
                           time.perf_counter())  # fmt: skip
    finally:
        pool.close()


def _drive_with(ray: Any, pool: _Pool, run: DistributedRun, folder: RunFolder, pending: set[int],
                already: int, balance: tuple[int, int | None], progress: Callable[[Progress], None] | None,
                started: float, ready: float) -> DistributedResult:  # fmt: skip
    timings = {"start": ready - started}
    mark = [ready]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = now - mark[0]
        mark[0] = now

    total = len(run.prompts)
    options = run.pipeline_options()
    counts = {"evaluations": 0, "rows": 0, "images": already, "planned": 0}
    nodes: dict[str, int] = {}

    def report(phase: str) -> None:
        if progress is not None:
            progress(Progress(counts["images"], total, counts["evaluations"], counts["planned"], phase,
                              tuple(pool.busy_nodes())))  # fmt: skip

    # 1. encode, once
    encoded: dict[str, Any] = {}
    pool.run([("prompts", "encode", (list(run.prompts), options, run.encode_batch))],
             lambda key, result: encoded.update(result=result))  # fmt: skip
    vectors, conditioning = encoded["result"]
    tree = build_tree(vectors, method="ward", metric="cosine", prompts=list(run.prompts))
    plan = make_plan(tree, run.steps, run.budget)
    count = len(pool.where) or 1
    k, given = balance
    cut = partition(plan, count, k, cut_step=best_cut(plan, count, k) if given is None else given)
    counts["planned"] = plan.model_evaluations
    lap("encode")
    report("encode")
    todo = [int(t) for t in cut.order if any(int(m) in pending for m in cut.members(int(t)))]
    written = 0
    if todo:
        # 2. the top part, once
        trunk: dict[str, Any] = {}
        if cut.cut_step > 0:
            conditioning_ref = ray.put(conditioning)  # every row: the top part mixes all groups
            # Without its Budget (a tuple subclass that does not pickle); the worker needs only the groups.
            bare = Plan(plan.tree, plan.steps, plan.tau, probe_evaluations=plan.probe_evaluations)
            args = (bare, cut.cut_step, run.seed, run.max_batch, options, conditioning_ref)
            pool.run([("top", "top", args)], lambda key, result: trunk.update(result))
            counts["evaluations"] += trunk["evaluations"]
            counts["rows"] += trunk["rows"]
            lap("top")
            report("top")

        # 3. the subtree tasks, largest first
        jobs = []
        for t in todo:
            root = int(cut.roots[t])
            sub, members = task_plan(plan, root)
            start = (trunk["latents"][root], trunk["states"][root]) if cut.cut_step > 0 else None
            # Only the task's rows, put by the driver: owned by it, they outlive any worker node.
            rows = ray.put({k: np.ascontiguousarray(v[members]) for k, v in conditioning.items()})
            args = (sub, members, cut.cut_step, run.seed, run.max_batch, options, rows, start)
            jobs.append((t, "task", args))
        first_steps = plan.first_steps

        def finished(task: int, result: dict[str, Any]) -> None:
            nonlocal written
            from PIL import Image

            for index, png in zip(result["indices"], result["pngs"], strict=True):
                if index not in pending:
                    continue
                record = {"seed": run.seed, "group_path": tree.path(index),
                          "steps_shared": int(first_steps[index]), "steps": run.steps}  # fmt: skip
                with Image.open(io.BytesIO(png)) as image:
                    image.load()
                    folder.add_image(index, image, record)
                pending.discard(index)
                written += 1
                counts["images"] += 1
            counts["evaluations"] += result["evaluations"]
            counts["rows"] += result["rows"]
            nodes[result["node"]] = nodes.get(result["node"], 0) + 1
            report("tasks")

        pool.run(jobs, finished)
        lap("tasks")
    report("done")
    return DistributedResult(plan, cut, written, already, counts["evaluations"], counts["rows"], pool.retried,
                             nodes, time.perf_counter() - started, timings)  # fmt: skip
