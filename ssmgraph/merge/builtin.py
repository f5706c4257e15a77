"""The built-in merge methods, registered through the same hook as any plugin's.

Only declarations live here: each spec names its implementation as ``"module:function"``,
imported when the method runs, so loading the registry (every command does) imports no merge
machinery. Weight-space methods (mergekit's names and parameters) act on state dicts of
models with one blueprint (or at least the same state-dict shapes); `mutual` trains models
of any architectures together; `stitch` and `superpose` join different models through
their hidden states.
"""

from __future__ import annotations

from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.params import Param
from ssmgraph.registry.specs import MergeMethodSpec

_WEIGHTS = "ssmgraph.merge.weight_methods"
_BASE_NOTE = "the task-vector base is `base_model` (default: the first model)"
_DENSITY = Param(
    "density",
    float,
    0.5,
    "fraction of each task vector's entries kept (by magnitude for TIES, at random for DARE)",
    min=1e-6,
    max=1.0,
)
_SCALE = Param("scale", float, 1.0, "λ: how much of the merged task vector is added to the base", min=0.0)

MUTUAL_PARAMS = (
    Param("steps", int, 300, "optimizer steps of joint training", min=1),
    Param("lr", float, 3e-3, "AdamW peak learning rate (cosine decay, 5% warm-up)", min=0.0),
    Param("weight_decay", float, 0.01, "AdamW weight decay (SSM parameters keep their own hints)", min=0.0),
    Param("kl_weight", float, 1.0, "weight of the output-consistency (mutual KL) loss", min=0.0),
    Param("feature_weight", float, 0.1, "weight of the feature-consistency (projected taps MSE) loss", min=0.0),
    Param("temperature", float, 1.0, "softmax temperature τ of the KL terms", min=1e-3),
    Param("d_common", int, 64, "width of the common space the taps are projected into", min=1),
    Param("share_embedding", bool, True, "the models read one token embedding (the first model's)"),
    Param("teacher", str, "", "a saved model or run directory to distill from ('' for none)"),
    Param("distill_weight", float, 1.0, "weight of the distillation loss (with a teacher)", min=0.0),
    Param("baseline", bool, True, "also train each model alone (same steps, data and seed) and report both"),
    Param("grad_clip", float, 1.0, "clip the gradient norm to this (0: off)", min=0.0),
)

STITCH_PARAMS = (
    Param(
        "estimator",
        str,
        "lstsq",
        "how the map is fitted: least squares, orthogonal Procrustes, CCA or optimal transport",
        choices=("lstsq", "procrustes", "cca", "ot"),
    ),
    Param(
        "condition",
        str,
        "pooled",
        "probe conditions: all tokens pooled, or one map per class averaged (classification tasks)",
        choices=("pooled", "per_class"),
    ),
    Param("pairs", str, "matched", "layer pairs scored: matched relative depth, or every pair", choices=("matched", "all")),
    Param("layer_a", int, -1, "stitch after this layer of A (with layer_b; -1: the best scored pair)", min=-1),
    Param("layer_b", int, -1, "continue B after this layer (with layer_a; -1: the best scored pair)", min=-1),
    Param("probe_batches", int, 16, "batches of training inputs the map is fitted on", min=1),
    Param("finetune_steps", int, 0, "then train only the stitch on the task for this many steps (0: closed form only)", min=0),
    Param("lr", float, 3e-3, "learning rate of the stitch fine-tuning", min=0.0),
    Param("ridge", float, 1e-4, "ridge regularisation of least squares (relative to the feature variance)", min=0.0),
    Param(
        "cca_dims",
        int,
        0,
        "canonical directions the cca map keeps (0: half the smaller width; all of them equals least squares)",
        min=0,
    ),
)

SUPERPOSE_PARAMS = (
    Param("options_a", dict, {}, "task options for model A's data (added to data.options), e.g. {corpus: en}"),
    Param("options_b", dict, {}, "task options for model B's data, e.g. {corpus: fr}"),
    Param(
        "alpha", str, "scalar", "one α per layer ('scalar', 1D) or one per feature ('vector', 2D)", choices=("scalar", "vector")
    ),
    Param("control_points", int, 0, "B-spline control points over depth (0: ceil(layers / 2) + 2)", min=0),
    Param(
        "autoencoder",
        str,
        "linear",
        "autoencoder on each blended state: pointwise 'linear' or a left-padded 'causal_conv'",
        choices=("linear", "causal_conv"),
    ),
    Param("bottleneck", float, 1.0, "autoencoder bottleneck width as a fraction of the model width", min=0.05, max=4.0),
    Param("kernel", int, 3, "time-kernel of the causal_conv autoencoder (left padding only)", min=1),
    Param("steps", int, 300, "training steps of the autoencoders and α", min=1),
    Param("lr", float, 3e-3, "Adam learning rate", min=0.0),
    Param("recon_weight", float, 1.0, "weight of the reconstruction loss (against the specialist's state)", min=0.0),
    Param("base", str, "", "the models' common initialisation (a saved model), for the task-arithmetic baseline ('' skips it)"),
)

METHODS = (
    MergeMethodSpec(
        name="linear",
        doc="Weighted average of the models' parameters (model soup).",
        params=(Param("normalize", bool, True, "divide by the sum of the model weights"),),
        run=f"{_WEIGHTS}:run_linear",
        needs="same_shape",
        reference="Wortsman et al. 2022, Model soups; mergekit `linear`",
    ),
    MergeMethodSpec(
        name="task_arithmetic",
        doc=f"Base plus the weighted sum of task vectors (model − base); {_BASE_NOTE}.",
        params=(_SCALE,),
        run=f"{_WEIGHTS}:run_task_arithmetic",
        needs="same_shape",
        reference="Ilharco et al. 2023, Editing Models with Task Arithmetic; mergekit `task_arithmetic`",
    ),
    MergeMethodSpec(
        name="ties",
        doc=f"TIES: trim task vectors to their largest entries, elect a sign per entry, average the agreeing ones; {_BASE_NOTE}.",
        params=(
            _DENSITY,
            Param("majority", str, "sum", "sign election by summed mass or by count", choices=("sum", "count")),
            _SCALE,
        ),
        run=f"{_WEIGHTS}:run_ties",
        needs="same_shape",
        reference="Yadav et al. 2023, TIES-Merging; mergekit `ties`",
    ),
    MergeMethodSpec(
        name="dare",
        doc=f"DARE: drop task-vector entries at random and rescale the rest, then add (or TIES-merge) them; {_BASE_NOTE}.",
        params=(
            _DENSITY,
            Param("rescale", bool, True, "divide the kept entries by density (keeps the expectation)"),
            Param("ties", bool, False, "elect signs as TIES does (mergekit `dare_ties`) instead of a plain sum (`dare_linear`)"),
        ),
        run=f"{_WEIGHTS}:run_dare",
        needs="same_shape",
        reference="Yu et al. 2024, Language Models are Super Mario (DARE); mergekit `dare_linear`/`dare_ties`",
    ),
    MergeMethodSpec(
        name="slerp",
        doc="Spherical interpolation of two models, tensor by tensor (linear when nearly colinear).",
        params=(Param("t", float, 0.5, "position between the first (0) and second (1) model", min=0.0, max=1.0),),
        run=f"{_WEIGHTS}:run_slerp",
        needs="same_shape",
        max_models=2,
        reference="Shoemake 1985; mergekit `slerp`",
    ),
    MergeMethodSpec(
        name="mutual",
        doc="Train models of any architectures together: shared embedding, mutual KL, feature consistency, optional teacher.",
        params=MUTUAL_PARAMS,
        run="ssmgraph.merge.mutual:run_mutual",
        needs="heterogeneous",
        min_models=1,
        data=True,
        reference="Zhang et al. 2018, Deep Mutual Learning; seeds 000/001 (consistency losses)",
    ),
    MergeMethodSpec(
        name="stitch",
        doc="Functional-alignment stitching: model A up to a layer, a fitted linear map, model B from the matching layer on.",
        params=STITCH_PARAMS,
        run="ssmgraph.merge.stitch:run_stitch",
        needs="heterogeneous",
        min_models=2,
        max_models=2,
        data=True,
        reference="task-conditioned functional alignment (TCFA); Bansal et al. 2021, Revisiting Model Stitching",
    ),
    MergeMethodSpec(
        name="superpose",
        doc="Two language models in one: both models' layers blended by a B-spline α over depth, autoencoders on the blends (causal).",
        params=SUPERPOSE_PARAMS,
        run="ssmgraph.merge.superpose:run_superpose",
        needs="heterogeneous",
        min_models=2,
        max_models=2,
        data=True,
        reference="Ben Chaliah & Dellagi 2025, Superposition in Transformers (arXiv 2501.00530)",
    ),
)


@hookimpl
def ssmgraph_merge_methods() -> list[MergeMethodSpec]:
    return list(METHODS)
