"""The built-in merge methods, registered through the same hook as any plugin's.

Only declarations live here: each spec names its implementation as ``"module:function"``,
imported when the method runs, so loading the registry (every command does) imports no merge
machinery. Weight-space methods (mergekit's names and parameters) act on state dicts of
models with one blueprint (or at least the same state-dict shapes); `mutual` trains models
of any architectures together, `distill` teaches one from the others; `stitch` and
`superpose` join different models through their hidden states.
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
    Param(
        "consistency",
        str,
        "both",
        "which consistency terms train: the logits' KL and the features', the KL only, or the features only",
        choices=("both", "logits", "features"),
    ),
    Param("kl_warmup", int, 0, "steps over which the consistency weights ramp up linearly from 0 (0: from the start)", min=0),
    Param(
        "peer_weighting",
        str,
        "uniform",
        "weight of each position's KL towards a peer: equal, the peer's probability of the label, or 1 where the peer is right",
        choices=("uniform", "confidence", "correct"),
    ),
    Param(
        "kl_target",
        str,
        "peers",
        "what each model's KL term follows: each of its peers (deep mutual learning), or the ensemble of all models",
        choices=("peers", "ensemble"),
    ),
    Param("d_common", int, 64, "width of the common space the taps are projected into", min=1),
    Param("share_embedding", bool, True, "the models read one token embedding (the first model's)"),
    Param("teacher", str, "", "a saved model or run directory to distill from ('' for none)"),
    Param("distill_weight", float, 1.0, "weight of the distillation loss (with a teacher)", min=0.0),
    Param("baseline", bool, True, "also train each model alone (same steps, data and seed) and report both"),
    Param("grad_clip", float, 1.0, "clip the gradient norm to this (0: off)", min=0.0),
)

DISTILL_PARAMS = (
    Param("student", str, "", "the recipe model that learns (the others teach; '': the last model)"),
    Param("steps", int, 300, "optimizer steps of the student", min=1),
    Param("lr", float, 3e-3, "AdamW peak learning rate (cosine decay, 5% warm-up)", min=0.0),
    Param("weight_decay", float, 0.01, "AdamW weight decay (SSM parameters keep their own hints)", min=0.0),
    Param("temperature", float, 2.0, "softmax temperature τ of the KL towards the teachers", min=1e-3),
    Param("alpha", float, 0.5, "share of the loss that is the teachers' KL (the rest: the task loss)", min=0.0, max=1.0),
    Param("feature_weight", float, 0.0, "weight of feature matching through the taps' common space (0: off)", min=0.0),
    Param("d_common", int, 64, "width of the common space the taps are projected into", min=1),
    Param("baseline", bool, True, "also train the student alone (same steps, data and seed) and report both"),
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
    Param(
        "at",
        str,
        "residual",
        "the map reads A's residual stream, or its image under A's next norm (a copy of it, before the map)",
        choices=("residual", "normed"),
    ),
    Param(
        "learn",
        str,
        "map",
        "what fine-tuning learns of the map: all of it, a per-feature output scale and the bias, or both",
        choices=("map", "scale", "map+scale"),
    ),
    Param(
        "finetune",
        str,
        "stitch",
        "what fine-tuning trains: the stitch; also the norms of B's next layer; or also that whole layer (after B's last: its final norm)",
        choices=("stitch", "stitch+norm", "stitch+block"),
    ),
    Param("finetune_pairs", int, 1, "fine-tune the best this many pairs (by closed form) and keep the best after", min=1),
    Param(
        "finetune_controls", bool, False, "fine-tune the controls like the stitch (is the fitted map worth more than a start?)"
    ),
    Param(
        "tie",
        str,
        "auto",
        "B's head tied to A's embedding: where the embeddings are equal (auto), always (keep), or never (untie)",
        choices=("auto", "keep", "untie"),
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

_SPARSE = "ssmgraph.merge.sparse_methods"
_SPHERE = "ssmgraph.merge.sphere_methods"


def _gta_params(density_doc: str, extra: Param, normalize: bool, rescale: bool) -> tuple[Param, ...]:
    """mergekit's generalised task-arithmetic parameters, with its per-method defaults."""
    return (
        Param("density", float, 1.0, density_doc, min=0.0, max=1.0),
        extra,
        Param("lambda", float, 1.0, "λ: the merged task vector is multiplied by this before it is added to the base"),
        Param("normalize", bool, normalize, "divide the merged task vector by the sum of the weights that contributed"),
        Param("rescale", bool, rescale, "rescale each sparsified task vector back to its L1 norm"),
    )


_EPSILON = Param(
    "epsilon", float, 0.15, "ε: keep probabilities run from density − ε (smallest) to density + ε (largest)", min=0.0
)
_GAMMA = Param(
    "gamma", float, 0.01, "γ: fraction of each task vector's largest-magnitude entries dropped as outliers", min=0.0, max=1.0
)
_DELLA_DENSITY = "average fraction of each task vector's entries kept (MagPrune, by magnitude rank within each row)"
_CRUMBS_DENSITY = "fraction of each task vector's entries kept, after the largest gamma and the smallest are dropped"
_SLERP_WEIGHTS = "the two models' `weight`s set t = w₂ / (w₁ + w₂)"
_OPTIONAL_BASE = "with a `base_model`, of the task vectors (added back to it)"

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
        doc=(
            "DARE: drop task-vector entries at random and rescale the rest to the task vector's L1 norm, "
            f"then add (or TIES-merge) them; {_BASE_NOTE}."
        ),
        params=(
            _DENSITY,
            Param("rescale", bool, True, "scale the kept entries so each task vector keeps its L1 norm (as mergekit)"),
            Param("ties", bool, False, "elect signs as TIES does (mergekit `dare_ties`) instead of a plain sum (`dare_linear`)"),
        ),
        run=f"{_WEIGHTS}:run_dare",
        needs="same_shape",
        reference="Yu et al. 2024, Language Models are Super Mario (DARE); mergekit `dare_linear`/`dare_ties`",
    ),
    MergeMethodSpec(
        name="slerp",
        doc="Spherical interpolation of two models, tensor by tensor, from `base_model` (linear when nearly colinear).",
        params=(
            Param(
                "t", float, 0.5, "position from base_model (0; default: the first model) to the other model (1)", min=0.0, max=1.0
            ),
        ),
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
        name="distill",
        doc="Knowledge distillation across architectures: teachers (frozen) into a student, logit KL and feature matching.",
        params=DISTILL_PARAMS,
        run="ssmgraph.merge.distill:run_distill",
        needs="heterogeneous",
        min_models=2,
        data=True,
        reference="Hinton et al. 2015, Distilling the Knowledge in a Neural Network; Romero et al. 2015, FitNets",
    ),
    MergeMethodSpec(
        name="stitch",
        doc="Functional-alignment stitching: model A up to a layer, a fitted linear map, model B from the matching layer on.",
        params=STITCH_PARAMS,
        run="ssmgraph.merge.stitch_search:run_stitch",
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
    MergeMethodSpec(
        name="model_stock",
        doc=f"Model Stock: the average of the fine-tuned models pulled toward the base by the angle between their task vectors; {_BASE_NOTE}.",
        params=(Param("filter_wise", bool, False, "one interpolation ratio per row (last axis) instead of one per tensor"),),
        run=f"{_SPHERE}:run_model_stock",
        needs="same_shape",
        min_models=3,
        reference="Jang et al. 2024, Model Stock (arXiv 2403.19522); mergekit `model_stock`",
    ),
    MergeMethodSpec(
        name="della",
        doc=f"DELLA: drop task-vector entries at random, low magnitudes more often (MagPrune), rescale, TIES-merge; {_BASE_NOTE}.",
        params=_gta_params(_DELLA_DENSITY, _EPSILON, normalize=True, rescale=True),
        run=f"{_SPARSE}:run_della",
        needs="same_shape",
        reference="Deep et al. 2024, DELLA-Merging (arXiv 2406.11617); mergekit `della`",
    ),
    MergeMethodSpec(
        name="della_linear",
        doc=f"DELLA without sign election: MagPrune and rescale the task vectors, then add their weighted sum; {_BASE_NOTE}.",
        params=_gta_params(_DELLA_DENSITY, _EPSILON, normalize=False, rescale=True),
        run=f"{_SPARSE}:run_della_linear",
        needs="same_shape",
        reference="Deep et al. 2024, DELLA-Merging (arXiv 2406.11617); mergekit `della_linear`",
    ),
    MergeMethodSpec(
        name="breadcrumbs",
        doc=f"Model Breadcrumbs: drop each task vector's largest (outliers) and smallest entries, add the weighted sum; {_BASE_NOTE}.",
        params=_gta_params(_CRUMBS_DENSITY, _GAMMA, normalize=False, rescale=False),
        run=f"{_SPARSE}:run_breadcrumbs",
        needs="same_shape",
        reference="Davari & Belilovsky 2024, Model Breadcrumbs (arXiv 2312.06795); mergekit `breadcrumbs`",
    ),
    MergeMethodSpec(
        name="breadcrumbs_ties",
        doc=f"Model Breadcrumbs with TIES sign election over the masked task vectors; {_BASE_NOTE}.",
        params=_gta_params(_CRUMBS_DENSITY, _GAMMA, normalize=False, rescale=False),
        run=f"{_SPARSE}:run_breadcrumbs_ties",
        needs="same_shape",
        reference="Davari & Belilovsky 2024, Model Breadcrumbs (arXiv 2312.06795); mergekit `breadcrumbs_ties`",
    ),
    MergeMethodSpec(
        name="sce",
        doc=f"SCE: select the entries of highest variance across task vectors, weigh each by its energy, erase minority signs; {_BASE_NOTE}.",
        params=(
            Param(
                "select_topk", float, 1.0, "fraction of entries kept, by variance across the models (1: all)", min=0.0, max=1.0
            ),
        ),
        run=f"{_SPARSE}:run_sce",
        needs="same_shape",
        reference="Wan et al. 2024, FuseChat (arXiv 2408.07990); mergekit `sce`",
    ),
    MergeMethodSpec(
        name="nearswap",
        doc=f"NearSwap: the base, with each entry moved to the other model's value where the two are closer than t; {_BASE_NOTE}.",
        params=(
            Param(
                "t",
                float,
                doc="distance below which an entry is swapped; farther ones move that distance toward the other model",
                min=0.0,
            ),
        ),
        run=f"{_SPHERE}:run_nearswap",
        needs="same_shape",
        max_models=2,
        reference="Goddard, NearSwap (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001); mergekit `nearswap`",
    ),
    MergeMethodSpec(
        name="nuslerp",
        doc=f"Spherical interpolation of two models by their weights ({_SLERP_WEIGHTS}); {_OPTIONAL_BASE}.",
        params=(
            Param("nuslerp_flatten", bool, True, "interpolate whole tensors (false: row by row)"),
            Param("nuslerp_row_wise", bool, False, "without flattening, interpolate columns instead of rows (mergekit's name)"),
        ),
        run=f"{_SPHERE}:run_nuslerp",
        needs="same_shape",
        max_models=3,
        reference="Shoemake 1985; mergekit `nuslerp`",
    ),
    MergeMethodSpec(
        name="multislerp",
        doc=f"Weighted spherical barycentre of any number of models (tangent-space average, exponential map); {_OPTIONAL_BASE}.",
        params=(
            Param("normalize_weights", bool, True, "divide the model weights by their sum"),
            Param("eps", float, 1e-8, "small constant keeping the normalisations finite", min=0.0),
        ),
        run=f"{_SPHERE}:run_multislerp",
        needs="same_shape",
        reference="Goddard, Multi-SLERP (goddard.blog/posts/multislerp-wow-what-a-cool-idea); mergekit `multislerp`",
    ),
    MergeMethodSpec(
        name="karcher",
        doc="Karcher (Riemannian) mean of all the models' directions on the unit sphere, scaled by their mean norm.",
        params=(
            Param("max_iter", int, 10, "most iterations of the fixed-point (exponential-map) updates", min=1),
            Param("tol", float, 1e-5, "stop when the mean tangent vector is shorter than this", min=0.0),
        ),
        run=f"{_SPHERE}:run_karcher",
        needs="same_shape",
        reference="Karcher 1977, Riemannian center of mass; mergekit `karcher`",
    ),
)


@hookimpl
def ssmgraph_merge_methods() -> list[MergeMethodSpec]:
    return list(METHODS)
