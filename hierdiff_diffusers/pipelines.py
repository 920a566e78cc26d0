# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchical sampling with a diffusers pipeline you already have: :func:`hierarchical`.

::

    from diffusers import StableDiffusionPipeline
    from hierdiff_core.schedule import Budget
    from hierdiff_diffusers import hierarchical

    pipe = StableDiffusionPipeline.from_pretrained("/models/sd15", local_files_only=True)
    out = hierarchical(pipe, prompts, Budget("target_saving", 0.5), seed=0, num_inference_steps=30)
    out.images       # one image per prompt, in prompt order
    out.plan.saving  # 0.5: the share of denoiser evaluations saved

The prompts are encoded once by the pipeline's own text encoders (in batches of ``encode_batch``),
clustered into a tree on the pooled text embeddings (Ward over cosine distances; the caller may pass
a tree or other vectors instead), planned for the budget, and the pipeline is called once on all N
prompts with its denoiser grouped (:func:`~hierdiff_diffusers.denoiser.grouped`).

For a command line: :func:`load_pipeline` loads a pipeline folder offline after
:func:`detect_family` has checked it, and :func:`hierarchical_chunks` runs a large prompt set as
subtrees of at most ``chunk_size`` prompts, one pipeline call (and image decode) each, so memory
stays bounded and finished chunks can be written and skipped on a restart.

Exactness. With ``seed=s`` and tree T, at tau = 0 prompt i's image equals the plain pipeline's for
that prompt alone with ``generator=torch.Generator().manual_seed(group_seed(s, T, i))`` (its own
starting latent drawn from that generator, as the pipeline draws it), the other arguments equal:
:attr:`HierarchicalOutput.seeds` lists these seeds.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierdiff_core.engine import group_seed
from hierdiff_core.schedule import Budget, Plan
from hierdiff_core.schedule import plan as make_plan
from hierdiff_core.tree import PromptTree, build_tree

from .denoiser import grouped
from .families import (
    PER_PROMPT_ARGUMENTS,
    Encoded,
    Family,
    UnsupportedPipelineError,
    check_prompt_lengths,
    family_for_class,
    family_of,
)

_OWNED = ("generator", "latents", "prompt", "num_images_per_prompt", "prompt_2", "prompt_3")
"""Pipeline arguments :func:`hierarchical` sets itself."""

_WEIGHTS = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_CONFIGS = ("config.json", "scheduler_config.json", "tokenizer_config.json", "preprocessor_config.json")


class PipelineFolderError(ValueError):
    """A pipeline folder that is missing, broken or of an unsupported class; one line naming why."""


@dataclass
class HierarchicalOutput:
    """What :func:`hierarchical` returns.

    Attributes
    ----------
    images : the pipeline's output images (N, in prompt order; PIL images, arrays or latents as
        ``output_type`` asks).
    plan : the plan that ran (its tree, tau, steps and evaluation accounting).
    evaluations : group evaluations run (the plan's count, times the scheduler's calls per step).
    denoiser_rows : latent rows through the real denoiser (twice the evaluations with guidance).
    seeds : (N,) each prompt's own generator seed ``group_seed(seed, tree, i)`` (see Exactness).
    generator_states : {node: torch.Generator state} of the groups at the last step.
    """

    images: Any
    plan: Plan
    evaluations: int
    denoiser_rows: int
    seeds: list[int]
    generator_states: dict[int, torch.Tensor]


def default_steps(pipe: Any) -> int:
    """The pipeline's default ``num_inference_steps``."""
    return int(inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default)


def encode_prompts(
    pipe: Any, prompts: Sequence[str], pipeline_kwargs: dict[str, Any] | None = None, batch_size: int = 64
) -> Encoded:
    """The prompts' conditioning and tree vectors from the pipeline's own text encoders.

    Encodes ``batch_size`` prompts at a time (bounded text-encoder memory); the result holds N rows
    in prompt order. Refuses over-long prompts on joint-attention families
    (:func:`~hierdiff_diffusers.families.check_prompt_lengths`).
    """
    family = family_of(pipe)
    kwargs = dict(pipeline_kwargs or {})
    prompts = _check_prompts(prompts)
    if family.encode is None:
        raise ValueError(f"{type(pipe).__name__} is not conditioned on prompts: pass {family.given}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_prompt_lengths(pipe, family, prompts, kwargs)
    parts = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            parts.append(family.encode(pipe, prompts[start : start + batch_size], kwargs))
    if len(parts) == 1:
        return parts[0]
    call_kwargs = {key: torch.cat([p.call_kwargs[key] for p in parts]) for key in parts[0].call_kwargs}
    return Encoded(call_kwargs, torch.cat([p.vectors for p in parts]))


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError("prompts must be a list of strings (one image per prompt)")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {index} is a {type(prompt).__name__}, not a string")
    return prompts


def _conditioning(
    pipe: Any, family: Family, prompts: Sequence[str] | None, kwargs: dict[str, Any], encode_batch: int
) -> tuple[dict[str, Any], torch.Tensor, list[str] | None]:
    """(per-prompt call arguments, (N, D) tree vectors, prompts) for either kind of family."""
    if family.encode is not None:
        if prompts is None:
            raise ValueError(f"{type(pipe).__name__} needs prompts")
        encoded = encode_prompts(pipe, prompts, kwargs, encode_batch)
        return encoded.call_kwargs, encoded.vectors, list(prompts)
    given = kwargs.get(family.given)
    if not isinstance(given, torch.Tensor) or given.ndim != 2:
        raise ValueError(f"{type(pipe).__name__} is conditioned on {family.given}: pass an (N, D) tensor")
    labels = None if prompts is None else _check_prompts(prompts)
    if labels is not None and len(labels) != given.shape[0]:
        raise ValueError(f"{len(labels)} prompts but {given.shape[0]} rows of {family.given}")
    return {}, given, labels


def _tree(
    vectors: torch.Tensor, prompts: list[str] | None, tree: PromptTree | None, embeddings: Any
) -> PromptTree:
    n = vectors.shape[0]
    if tree is not None:
        if tree.n_prompts != n:
            raise ValueError(f"the tree has {tree.n_prompts} prompts but {n} were given")
        return tree
    if embeddings is not None:
        rows = np.asarray(embeddings, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] != n:
            raise ValueError(f"embeddings must be ({n}, D), got {rows.shape}")
    else:
        rows = vectors.detach().double().cpu().numpy()
    # The published method: Ward linkage over cosine distances.
    return build_tree(rows, method="ward", metric="cosine", prompts=prompts)


def hierarchical(
    pipe: Any,
    prompts: Sequence[str] | None,
    budget: Budget | tuple[str, float],
    *,
    seed: int = 0,
    max_batch: int = 64,
    tree: PromptTree | None = None,
    embeddings: Any = None,
    encode_batch: int = 64,
    on_step: Callable[[int, int], None] | None = None,
    **pipeline_kwargs: Any,
) -> HierarchicalOutput:
    """Generate one image per prompt with ``pipe``, sharing denoiser evaluations between similar prompts.

    Parameters
    ----------
    pipe : a supported diffusers pipeline (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux,
        PixArtSigma, KandinskyV22); any other raises naming its class.
    prompts : N prompts. Kandinsky's decoder takes ``image_embeds`` (N, D) and
        ``negative_image_embeds`` instead (from its prior); prompts are then optional labels.
    budget : ``Budget("target_saving", 0.5)``, ``Budget("tau", t)`` or
        ``Budget("evaluations_per_image", e)``.
    seed : the run's seed (see the module's Exactness).
    max_batch : most groups per denoiser batch.
    tree : a precomputed prompt tree over the N prompts (else built from the pipeline's embeddings).
    embeddings : (N, D) vectors to build the tree on instead of the pipeline's own.
    encode_batch : prompts per text-encoder batch.
    on_step : ``on_step(step, groups)`` after each denoising step, with the groups active in it.
    pipeline_kwargs : anything else the pipeline takes (``num_inference_steps``, ``guidance_scale``,
        ``height``, ``negative_prompt``, ``output_type``, ...). ``generator``, ``latents``,
        ``prompt`` and ``num_images_per_prompt`` are hierdiff's.
    """
    schedule, kwargs = _prepare(
        "hierarchical", pipe, prompts, budget, tree, embeddings, encode_batch, pipeline_kwargs
    )
    return _run(pipe, schedule, seed, max_batch, kwargs, on_step)


def _prepare(
    caller: str,
    pipe: Any,
    prompts: Sequence[str] | None,
    budget: Budget | tuple[str, float],
    tree: PromptTree | None,
    embeddings: Any,
    encode_batch: int,
    pipeline_kwargs: dict[str, Any],
) -> tuple[Plan, dict[str, Any]]:
    """Encode, build the tree and plan the budget: (the plan over all N prompts, the pipeline's
    keyword arguments with the per-prompt conditioning of N rows)."""
    family = family_of(pipe)
    owned = sorted(set(_OWNED) & set(pipeline_kwargs))
    if owned:
        raise ValueError(f"{caller}() sets {', '.join(owned)} itself; leave them out")
    kwargs = dict(pipeline_kwargs)
    steps = int(kwargs.pop("num_inference_steps", default_steps(pipe)))
    call_kwargs, vectors, labels = _conditioning(pipe, family, prompts, kwargs, encode_batch)
    schedule = make_plan(_tree(vectors, labels, tree, embeddings), steps, Budget(*budget))
    return schedule, {**kwargs, **call_kwargs}


def _run(
    pipe: Any,
    schedule: Plan,
    seed: int,
    max_batch: int,
    kwargs: dict[str, Any],
    on_step: Callable[[int, int], None] | None = None,
) -> HierarchicalOutput:
    with grouped(pipe, schedule, seed=seed, max_batch=max_batch, on_step=on_step) as run:
        result = pipe(**kwargs, num_inference_steps=schedule.steps, generator=run.generator)
        states = run.generator_states()
    images = result[0] if isinstance(result, tuple) else result.images
    tree = schedule.tree
    return HierarchicalOutput(
        images=images,
        plan=schedule,
        evaluations=run.evaluations,
        denoiser_rows=run.denoiser_rows,
        seeds=[group_seed(seed, tree, i) for i in range(tree.n_prompts)],
        generator_states=states,
    )


# ----- large prompt sets, in chunks -----
def split_tree(tree: PromptTree, max_prompts: int) -> list[int]:
    """Node ids of the fewest subtrees of at most ``max_prompts`` prompts that the tree's top-down
    splits give, ordered by their smallest prompt."""
    if max_prompts < 1:
        raise ValueError(f"chunk size must be at least 1, got {max_prompts}")
    chunks, pending = [], [tree.root]
    while pending:
        node = pending.pop()
        if tree.node_sizes[node] <= max_prompts:
            chunks.append(node)
        else:
            pending.extend(tree.children(node))
    return sorted(chunks, key=lambda node: int(tree.node_min_members[node]))


def subtree(tree: PromptTree, node: int) -> tuple[PromptTree, np.ndarray]:
    """The subtree under ``node`` as a tree of its own, and its prompts' indices (ascending) in ``tree``.

    Leaves are renumbered in prompt order and merges keep their heights, so a plan with the same tau
    groups the subtree's prompts exactly as the whole tree's plan does, below the subtree's root.
    """
    members = np.sort(tree.members(int(node)))
    n = tree.n_prompts
    local = {int(m): i for i, m in enumerate(members)}
    rows = []
    # Merge ids grow from children to parents, so ascending ids list the subtree's merges bottom-up.
    for merge in sorted(int(x) for x in _merges_under(tree, int(node))):
        a, b, height, _ = tree.linkage[merge - n]
        ids = [local[int(c)] for c in (a, b)]
        count = int(tree.node_sizes[merge])
        rows.append([*ids, float(height), count])
        local[merge] = len(members) + len(rows) - 1
    prompts = None if tree.prompts is None else [tree.prompts[int(m)] for m in members]
    linkage = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    sub = PromptTree(linkage, len(members), tree.method, tree.metric, prompts, tree.exact)
    return sub, members


def _merges_under(tree: PromptTree, node: int) -> list[int]:
    merges, pending = [], [node]
    while pending:
        current = pending.pop()
        if current >= tree.n_prompts:
            merges.append(current)
            pending.extend(tree.children(current))
    return merges


@dataclass
class Chunk:
    """One chunk of :func:`hierarchical_chunks`: its prompts' indices in the whole set, its output, and
    the seed its run used (``group_seed(seed, tree, node)`` of its subtree's root, or the run's seed
    when one chunk holds every prompt)."""

    indices: np.ndarray
    output: HierarchicalOutput
    seed: int


@dataclass
class ChunkedRun:
    """A prompt set planned as a whole and split into chunks (:func:`plan_chunks`); :meth:`run` runs them.

    Attributes
    ----------
    pipe : the pipeline.
    plan : the plan over all N prompts (its tree, tau and the accounting of an unchunked run).
    nodes : the chunks' subtree roots in ``plan.tree`` (:func:`split_tree`), ordered by smallest prompt.
    seed, max_batch : as :func:`hierarchical` takes them.
    kwargs : the pipeline's keyword arguments, per-prompt ones with N rows.
    """

    pipe: Any
    plan: Plan
    nodes: list[int]
    seed: int
    max_batch: int
    kwargs: dict[str, Any]

    def chunk(self, node: int) -> tuple[Plan, np.ndarray, int]:
        """(the chunk's plan at the whole plan's tau, its prompts' indices (ascending), its seed)."""
        full = self.plan.tree
        sub, members = subtree(full, node)
        seed = int(self.seed) if len(self.nodes) == 1 else group_seed(self.seed, full, node)
        return Plan(sub, self.plan.steps, self.plan.tau, budget=Budget("tau", self.plan.tau)), members, seed

    @property
    def model_evaluations(self) -> int:
        """Group evaluations of all chunks together (at least the whole plan's: sharing above a chunk's
        root is given up)."""
        return sum(self.chunk(node)[0].model_evaluations for node in self.nodes)

    def run(
        self,
        skip: Callable[[np.ndarray], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Iterator[Chunk]:
        """Run the chunks in order, yielding each when its images are decoded; ``skip(indices)``
        returning True skips one, ``on_step(step, groups)`` follows each chunk's steps."""
        n = self.plan.tree.n_prompts
        for node in self.nodes:
            schedule, members, seed = self.chunk(node)
            if skip is not None and skip(members):
                continue
            chunk_kwargs = {k: _rows(k, v, members, n) for k, v in self.kwargs.items()}
            output = _run(self.pipe, schedule, seed, self.max_batch, chunk_kwargs, on_step)
            yield Chunk(members, output, seed)


def plan_chunks(
    pipe: Any,
    prompts: Sequence[str] | None,
    budget: Budget | tuple[str, float],
    *,
    chunk_size: int = 64,
    seed: int = 0,
    max_batch: int = 64,
    tree: PromptTree | None = None,
    embeddings: Any = None,
    encode_batch: int = 64,
    **pipeline_kwargs: Any,
) -> ChunkedRun:
    """Encode the prompts, plan the budget over the whole tree and split it into subtrees of at most
    ``chunk_size`` prompts (:func:`split_tree`), without running anything yet; arguments as
    :func:`hierarchical_chunks`."""
    whole, kwargs = _prepare(
        "hierarchical_chunks", pipe, prompts, budget, tree, embeddings, encode_batch, pipeline_kwargs
    )
    return ChunkedRun(pipe, whole, split_tree(whole.tree, chunk_size), int(seed), max_batch, kwargs)


def hierarchical_chunks(
    pipe: Any,
    prompts: Sequence[str] | None,
    budget: Budget | tuple[str, float],
    *,
    skip: Callable[[np.ndarray], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Iterator[Chunk]:
    """:func:`hierarchical` over a large prompt set, one subtree of at most ``chunk_size`` prompts per
    pipeline call (:func:`split_tree`), yielding each chunk when its images are decoded.

    The budget is planned over the whole tree; every chunk then runs with that plan's tau, so inside a
    chunk the groups are the whole plan's, and only sharing above a chunk's root is given up (each
    chunk's ``output.plan`` has its real count). ``skip(indices)`` returning True skips a chunk (a
    restart skipping chunks already written); chunks depend only on the tree and ``chunk_size``.
    ``on_step(step, groups)`` follows each chunk's denoising steps. ``options`` are
    :func:`plan_chunks`'s (``chunk_size``, ``seed``, ``max_batch``, ``tree``, ``embeddings``,
    ``encode_batch``) and the pipeline's; :func:`plan_chunks` gives the whole plan and the chunks
    before anything runs.
    """
    yield from plan_chunks(pipe, prompts, budget, **options).run(skip, on_step)


def _rows(name: str, value: Any, members: np.ndarray, n: int) -> Any:
    """A chunk's entries of a per-prompt argument (tensors with N rows, lists of N entries)."""
    per_prompt = name in PER_PROMPT_ARGUMENTS or name.startswith("prompt_") or name == "pooled_prompt_embeds"
    if not per_prompt:
        return value
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n:
        return value.index_select(0, torch.as_tensor(members, device=value.device))
    if isinstance(value, list) and len(value) == n:
        return [value[int(i)] for i in members]
    return value


# ----- pipeline folders -----
def detect_family(folder: str | os.PathLike[str]) -> Family:
    """The family of a diffusers pipeline folder from its ``model_index.json``, reading only files.

    Raises :class:`PipelineFolderError` (one line) for a missing folder, no or unreadable
    ``model_index.json``, an unsupported pipeline class, or components missing their folder,
    configuration or weights.
    """
    root = Path(folder)
    if not root.is_dir():
        raise PipelineFolderError(f"pipeline folder {str(root)!r} does not exist")
    index = root / "model_index.json"
    if not index.is_file():
        raise PipelineFolderError(
            f"pipeline folder {str(root)!r} has no model_index.json: not a diffusers pipeline folder"
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PipelineFolderError(f"{str(index)!r} is not readable JSON: {exc}") from None
    class_name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(class_name, str):
        raise PipelineFolderError(f"{str(index)!r} names no pipeline class (_class_name)")
    try:
        family = family_for_class(class_name)
    except UnsupportedPipelineError as exc:
        raise PipelineFolderError(f"pipeline folder {str(root)!r}: {exc}") from None
    missing = _missing_components(root, data)
    if family.denoiser not in data or not _is_component(data[family.denoiser]):
        missing.insert(0, f"{family.denoiser} (not in model_index.json)")
    if missing:
        raise PipelineFolderError(
            f"pipeline folder {str(root)!r} is not a complete {class_name}: missing {', '.join(missing)}"
        )
    return family


def _is_component(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def _missing_components(root: Path, data: dict[str, Any]) -> list[str]:
    missing = []
    for name, entry in data.items():
        if name.startswith("_") or not _is_component(entry):
            continue
        sub = root / name
        if not sub.is_dir():
            missing.append(f"{name}/")
            continue
        configs = [c for c in _CONFIGS if (sub / c).is_file()]
        has_weights = any(p.name.endswith(_WEIGHTS) for p in sub.iterdir())
        if not configs and not (sub / "vocab.json").is_file() and not (sub / "tokenizer.json").is_file():
            missing.append(f"{name}/ configuration")
        elif configs == ["config.json"] and not has_weights:
            missing.append(f"{name}/ weights")
    return missing


def load_pipeline(
    folder: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Any:
    """Load a supported diffusers pipeline folder fully offline (``local_files_only``) after
    :func:`detect_family` has checked it; ``dtype`` None keeps the saved precision.

    Raises :class:`PipelineFolderError` (one line) when the folder is refused or fails to load.
    """
    detect_family(folder)
    # Offline for this process: nothing may reach for a hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from diffusers import DiffusionPipeline

    options: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        options["torch_dtype"] = dtype
    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder), **options)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineFolderError(f"pipeline folder {str(folder)!r} could not be loaded: {first}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
