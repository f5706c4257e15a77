"""Plan and run a mergekit-dialect merge on Hugging Face folders (or ssmgraph models: ssm_inputs.py), one tensor at a time.

The plan (:func:`plan_merge`) opens every input lazily and lists every output tensor: its name,
shape and dtype, the input tensors it is merged from, the base among them, its depth t (for
gradients) and the parameter scopes of each input — checking, before anything is written, that
the models agree (architecture, vocabulary, tensor names and shapes) and that every slice lies
inside its model. :func:`merged_tensor` then reads one output tensor's inputs from their
safetensors files (positioned reads into one buffer) and merges them: each Hugging Face tensor is
its own unit, as in mergekit, and no more than one tensor's inputs are held at a time.

Depth, as mergekit's ``plan.py``: the i-th of a slice's n layers is at t = i / (n − 1) (t = 1
when n = 1); the tensors outside the layers (embeddings, final norm, head) at t = 0, with the
first slice's sources for those before the layers and the last slice's for those after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ssmgraph.errors import Collector, Mark, SsmgraphError
from ssmgraph.interop.errors import HFFileError
from ssmgraph.merge.context import MergeError, NonFiniteMergeError
from ssmgraph.merge.mergekit.dialect import DTYPES, MergekitConfig, Slice, Source
from ssmgraph.merge.mergekit.inputs import LAYER, HFInput, is_hf_folder, is_pre
from ssmgraph.merge.mergekit.methods import INPUT, SHARED, resolve
from ssmgraph.merge.mergekit.ssm_inputs import HELP_MIXED, SSMInput, is_ssmgraph_model
from ssmgraph.merge.mergekit.vocab import OutputVocab, is_vocab_tensor, plan_vocab

Scopes = tuple[dict[str, Any] | None, ...]


@dataclass(frozen=True)
class Planned:
    """One output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    inputs: tuple[tuple[HFInput, str, Scopes], ...]
    base: int
    t: float
    shared: Scopes
    parts: tuple[int, ...] = ()
    """Row counts of the tensors this one stacks, each merged on its own (an ssmgraph model's qkv); () = whole."""
    vocab: bool = False
    """Token-indexed, with a ``tokenizer_source``: the inputs' rows are moved onto the output tokenizer's ids first."""


@dataclass
class MergePlan:
    config: MergekitConfig
    tensors: list[Planned]
    reference: HFInput
    layers: int
    layer_sources: list[tuple[HFInput, int]]
    inputs: dict[Path, HFInput]
    vocab: OutputVocab | None = None


def plan_merge(cfg: MergekitConfig) -> MergePlan:
    errors = Collector()
    inputs: dict[Path, HFInput] = {}
    for folder in cfg.models():
        mark = _mark_of(cfg, folder)
        if not is_hf_folder(folder) and not is_ssmgraph_model(folder):
            errors.add(
                "E210",
                f"{folder}: neither a Hugging Face model folder (config.json and model.safetensors or its index) "
                "nor an ssmgraph model (a saved model folder or a training run)",
                mark,
                _where(cfg, folder),
                "mergekit configs merge Hugging Face folders or ssmgraph models; point model: at one",
            )
            continue
        try:
            inputs[folder.resolve()] = HFInput(folder) if is_hf_folder(folder) else SSMInput(folder)
        except HFFileError as err:
            errors.add("E210", err.message, mark, _where(cfg, folder), err.help)
        except SsmgraphError as err:  # a run without checkpoints, a damaged saved model
            errors.add("E210", str(err), mark, _where(cfg, folder))
    kind = lambda model: "an ssmgraph model" if isinstance(model, SSMInput) else "a Hugging Face folder"
    first = next(iter(inputs.values()), None)  # the base, when named
    other = next((m for m in inputs.values() if kind(m) != kind(first)), None)
    if first is not None and other is not None:
        errors.add(
            "E112",
            f"{other.folder} is {kind(other)} but {first.folder} is {kind(first)}: a merge reads models of one kind",
            _mark_of(cfg, other.folder),
            _where(cfg, other.folder),
            HELP_MIXED,
        )
    errors.raise_if_any()
    reference = inputs[(cfg.base_model or cfg.slices[0].sources[0].model).resolve()]
    _check_alike(errors, cfg, inputs, reference)
    vocab = plan_vocab(errors, cfg, inputs, reference) if cfg.aligned else None
    errors.raise_if_any()
    tensors: list[Planned] = []
    layer_sources: list[tuple[HFInput, int]] = []
    slices = [_with_ranges(errors, cfg, s, inputs) for s in cfg.slices]
    errors.raise_if_any()
    first, last = slices[0], slices[-1]
    outside = reference.outside_layers()
    for name in [n for n in outside if is_pre(n)]:
        tensors.append(_planned(errors, cfg, first, inputs, name, [name] * len(first.sources), 0.0))
    out_layer = 0
    for s in slices:
        count = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
        for offset in range(count):
            t = offset / (count - 1) if count > 1 else 1.0
            per_source = [inputs[src.model.resolve()].layer_names(src.layer_range[0] + offset) for src in s.sources]
            rests = per_source[0]
            for src, names in zip(s.sources[1:], per_source[1:]):
                if set(names) != set(rests):
                    _differ(
                        errors,
                        cfg,
                        src,
                        sorted(set(rests) - set(names)),
                        sorted(set(names) - set(rests)),
                        f"layer {src.layer_range[0] + offset}",
                    )
            for rest, name in rests.items():
                m = LAYER.match(name)
                assert m is not None
                out = f"{m['head']}{out_layer}.{rest}"
                tensors.append(_planned(errors, cfg, s, inputs, out, [names.get(rest, "") for names in per_source], t))
            layer_sources.append((inputs[s.sources[0].model.resolve()], s.sources[0].layer_range[0] + offset))
            out_layer += 1
    for name in [n for n in outside if not is_pre(n)]:
        tensors.append(_planned(errors, cfg, last, inputs, name, [name] * len(last.sources), 0.0))
    errors.raise_if_any()
    for item in tensors:  # every parameter resolves (present, of its type) before anything is written
        parameters(cfg, item)
    if vocab is not None:
        tensors = [replace(t, shape=(vocab.size, *t.shape[1:])) if t.vocab else t for t in tensors]
    return MergePlan(cfg, tensors, reference, out_layer, layer_sources, inputs, vocab)


def _with_ranges(errors: Collector, cfg: MergekitConfig, s: Slice, inputs: dict[Path, HFInput]) -> Slice:
    """The slice with every source's layer range filled (``models:``: all layers) and checked,
    and, for ``models:``, the base model added when it is not listed (as mergekit does)."""
    sources = list(s.sources)
    if cfg.from_models and cfg.base_model is not None and cfg.base_model.resolve() not in {x.model.resolve() for x in sources}:
        sources.append(Source(cfg.base_model, None, {}, cfg.marks.get("top"), "base_model"))
    out = []
    for src in sources:
        model = inputs[src.model.resolve()]
        layers = model.num_layers
        if layers is None:
            errors.add("E112", f"{src.model}: config.json gives no layer count (num_hidden_layers)", src.mark, src.where)
            continue
        span = src.layer_range or (0, layers)
        if span[1] > layers:
            errors.add(
                "E112",
                f"{src.where}.layer_range {list(span)} lies outside {src.model.name}, which has {layers} layers (0 to {layers})",
                src.mark,
                f"{src.where}.layer_range",
            )
            continue
        out.append(Source(src.model, span, src.parameters, src.mark, src.where))
    return Slice(tuple(out), s.parameters, s.base_model, s.mark)


def _planned(
    errors: Collector, cfg: MergekitConfig, s: Slice, inputs: dict[Path, HFInput], out: str, names: list[str], t: float
) -> Planned:
    base_folder = s.base_model or cfg.base_model
    base = -1
    entries = []
    for i, (src, name) in enumerate(zip(s.sources, names)):
        model = inputs[src.model.resolve()]
        if base_folder is not None and src.model.resolve() == base_folder.resolve() and base < 0:
            base = i
        entries.append((model, name, (src.parameters, s.parameters, cfg.parameters)))
    if cfg.method.base == "required" and base < 0:
        errors.add("E112", f"base_model {base_folder} is not among the sources of a slice", s.mark, "base_model")
    first_model, first_name, _ = entries[0]
    shape, dtype = first_model.shapes.get(first_name, ((), torch.float32))
    vocab = cfg.aligned and all(is_vocab_tensor(model, name) for model, name, _ in entries)
    for (model, name, _), src in zip(entries, s.sources):
        if name not in model.shapes:
            _differ(errors, cfg, src, [name or out], [], "")
        elif model.shapes[name][0][vocab:] != shape[vocab:]:  # tokenizer_source: token rows may differ in number
            errors.add(
                "E112",
                f"{name}: shape {list(model.shapes[name][0])} in {src.model.name} but {list(shape)} in {first_model.folder.name}",
                src.mark,
                src.where,
                "only models of one architecture and size merge tensor by tensor",
            )
    out_dtype = cfg.out_dtype or cfg.dtype
    final = getattr(torch, out_dtype) if out_dtype and dtype.is_floating_point else dtype
    parts = first_model.parts.get(first_name, ())
    return Planned(out, shape, final, tuple(entries), base, t, (s.parameters, cfg.parameters), parts, vocab)


def _differ(errors: Collector, cfg: MergekitConfig, src: Source, missing: list[str], extra: list[str], where: str) -> None:
    few = lambda keys: ", ".join(keys[:3]) + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")
    parts = [f"lacks {few(missing)}" if missing else "", f"has extra {few(extra)}" if extra else ""]
    at = f" in {where}" if where else ""
    errors.add(
        "E112",
        f"{src.model.name} does not have the base model's tensors{at}: it {' and '.join(p for p in parts if p)}",
        src.mark,
        src.where,
        "only models of one architecture merge tensor by tensor",
    )


def _check_alike(errors: Collector, cfg: MergekitConfig, inputs: dict[Path, HFInput], reference: HFInput) -> None:
    for folder, model in inputs.items():
        if model is reference:
            continue
        for key in ("architectures", "vocab_size", "hidden_size", "model_type"):
            if model.config.get(key) != reference.config.get(key) and not (key == "vocab_size" and cfg.aligned):
                errors.add(
                    "E112",
                    f"{model.folder.name} has {key} {model.config.get(key)!r} but {reference.folder.name} has {reference.config.get(key)!r}",
                    _mark_of(cfg, model.folder),
                    _where(cfg, model.folder),
                    "models of different vocabularies merge with tokenizer_source: union (one vocabulary from every model's)"
                    if key == "vocab_size"
                    else "only models of one architecture merge tensor by tensor",
                )
        if cfg.from_models:
            names, ref = set(model.shapes), set(reference.shapes)
            if names != ref:
                src = next((s for s in cfg.slices[0].sources if s.model.resolve() == folder), None)
                if src is not None:
                    _differ(errors, cfg, src, sorted(ref - names), sorted(names - ref), "")


def _mark_of(cfg: MergekitConfig, folder: Path) -> Mark | None:
    for s in cfg.slices:
        for src in s.sources:
            if src.model.resolve() == folder.resolve():
                return src.mark
    return cfg.marks.get("top")


def _where(cfg: MergekitConfig, folder: Path) -> str:
    for s in cfg.slices:
        for src in s.sources:
            if src.model.resolve() == folder.resolve():
                return src.where
    return "base_model"


def merged_tensor(plan: MergePlan, item: Planned, generator: torch.Generator) -> torch.Tensor:
    """One output tensor, from its inputs read now (cast to ``dtype`` when the config has one), in
    the working dtype (at least fp32; integer tensors: the base's, as they are).

    The inputs are read straight into one ``[inputs, *shape]`` buffer in the working dtype, which
    the method merges in place: the buffer and a few temporaries are all that is held."""
    cfg = plan.config
    method = cfg.method
    first_model, first_name, _ = item.inputs[0]
    stored = first_model.shapes[first_name][1]
    if not stored.is_floating_point:
        model, name, _ = item.inputs[max(item.base, 0)]
        return model.tensor(name)
    via = getattr(torch, DTYPES[cfg.dtype]) if cfg.dtype else None
    work = torch.promote_types(via or stored, torch.float32)
    if item.vocab:  # tokenizer_source: each input's rows at the output tokenizer's ids
        assert plan.vocab is not None
        tensors = plan.vocab.aligned(item, work, via)
    else:
        tensors = torch.empty((len(item.inputs), *item.shape), dtype=work)
        for row, (model, name, _) in zip(tensors, item.inputs):
            model.read_into(name, row, via)
    shared, per = parameters(cfg, item)
    try:
        if item.parts:  # stacked tensors (q, k, v): each merged on its own, as mergekit merges q_proj, k_proj, v_proj
            pieces = tensors.split(item.parts, dim=1)
            merged = torch.cat([method.merge(p.contiguous(), item.base, shared, per, generator) for p in pieces])
        else:
            merged = method.merge(tensors, item.base, shared, per, generator)
    except ValueError as err:
        raise MergeError(f"{cfg.source}: merge method {method.name!r} on {item.name}: {err}") from None
    del tensors
    if merged.numel() and not all(map(math.isfinite, torch.aminmax(merged))):  # one pass; NaN propagates
        raise NonFiniteMergeError(f"merge method {method.name!r} gives inf or NaN in {item.name}; nothing was written")
    return merged


def parameters(cfg: MergekitConfig, item: Planned) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The method's shared parameters and each input's, for one output tensor (mergekit's precedence:
    the source's, the slice's, the config's; the base takes only parameters of every input)."""
    method = cfg.method
    try:
        shared = {p.name: resolve(p, item.shared, item.name, item.t) for p in method.params if p.scope == SHARED}
        per = [
            {
                p.name: resolve(p, scopes, name, item.t)
                for p in method.params
                if p.scope != SHARED and (i != item.base or p.scope == INPUT)
            }
            for i, (_, name, scopes) in enumerate(item.inputs)
        ]
    except KeyError as missing:
        raise MergeError(
            f"{cfg.source}: merge method {method.name!r} needs parameter {missing.args[0]!r} (for {item.name}); "
            f"set it under parameters, globally or per model"
        ) from None
    except ValueError as err:
        raise MergeError(f"{cfg.source}: {item.name}: {err}") from None
    return shared, per
