"""Why a model decided: Grad-CAM and integrated gradients, and two sanity checks of them as numbers.

- Grad-CAM (Selvaraju et al. 2017), for the models with convolutional stages (cnn, cnn_deep,
  resnet): the last stage's activations weighted per channel by the mean gradient of the class
  logit, then ReLU. That stage's output is read and perturbed through `nn.intercept_methods`
  (the gradient with respect to an added zero is the gradient with respect to the activations), so
  every model keeps its one signature `__call__(x, *, train)`.
- Integrated gradients (Sundararajan et al. 2017), for every model: the input's difference from a
  black image times the mean gradient of the class logit along the straight path between them
  (midpoint rule); the attributions of an image sum to its logit minus the black image's.
- Sanity checks: the rank correlation between the maps of the trained weights and of freshly
  initialised ones (Adebayo et al. 2018; a map that explains the model must change: low is good),
  and the deletion metric (Petsiuk et al. 2018): the probability of the predicted class as the most
  attributed pixels are blacked out first, against a random order; the area under each curve
  (the attributed order should fall faster: a lower area).

A workdir with several members (seeds) is explained through the first of those a reader chose
(`restore.select`; `Explainer.member` and `Explainer.seed` say which).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import images as images_lib
from fmnist_jax import metrics, plots, restore
from fmnist_jax import train as train_lib
from fmnist_jax.models.layers import ConvBlock
from fmnist_jax.models.resnet import PreActBlock

if TYPE_CHECKING:
    from fmnist_jax.evaluation import Evaluation

STAGES = (ConvBlock, PreActBlock)  # a model's convolutional stages; Grad-CAM reads the last one
IG_STEPS = 32
DELETION_STEPS = 16  # 49 pixels blacked out per step
SANITY_IMAGES = 128  # images of the deletion metric; the randomisation check takes half
METHODS = {"grad_cam": "Grad-CAM", "integrated_gradients": "integrated gradients"}


def _is_stage_call(context: nn.module.InterceptorContext) -> bool:
    return isinstance(context.module, STAGES) and context.method_name == "__call__"


def _target_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The sum over the batch of each example's target logit: its gradient is per example."""
    return jnp.take_along_axis(logits, targets[:, None], axis=1).sum()


def last_stage(model: nn.Module, variables: Any) -> tuple[str, ...] | None:
    """The module path of the last convolutional stage `model` calls; None without one."""
    paths = []

    def record(next_fun, args, kwargs, context):
        if _is_stage_call(context):
            paths.append(context.module.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.apply, train=False), variables,
                       jnp.zeros((1, *train_lib.IMAGE_SHAPE)))
    return paths[-1] if paths else None


def _logits_with_stage_offset(model: nn.Module, variables: Any, x: jax.Array,
                              path: tuple[str, ...], offset: jax.Array):
    """The logits with `offset` added to the output of the stage at `path`, and that output."""
    seen = {}

    def add_offset(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _is_stage_call(context) and context.module.path == path:
            seen["activations"] = out
            return out + offset
        return out

    with nn.intercept_methods(add_offset):
        logits = model.apply(variables, x, train=False)
    return logits, seen["activations"]


def grad_cam(model: nn.Module, variables: Any, x: jax.Array, targets: jax.Array,
             path: tuple[str, ...]) -> jax.Array:
    """Grad-CAM maps `[B, h, w]` at the stage `path` for the classes `targets` `[B]`; `x` is
    normalised `[B, 28, 28, 1]`."""
    stage = jax.eval_shape(lambda: _logits_with_stage_offset(model, variables, x, path, 0.0)[1])

    def score(offset):
        logits, activations = _logits_with_stage_offset(model, variables, x, path, offset)
        return _target_logits(logits, targets), activations

    gradients, activations = jax.grad(score, has_aux=True)(jnp.zeros(stage.shape, stage.dtype))
    weights = gradients.mean(axis=(1, 2))  # [B, C]: each channel's importance for the class
    return jax.nn.relu(jnp.einsum("bhwc,bc->bhw", activations, weights))


def integrated_gradients(model: nn.Module, variables: Any, x: jax.Array, baseline: jax.Array,
                         targets: jax.Array, steps: int = IG_STEPS) -> jax.Array:
    """Integrated gradients `[B, 28, 28]` of the classes `targets` from `baseline` to `x`
    (normalised inputs), the path's gradients taken 8 steps at a time (`vmap` inside `lax.map`)."""

    def gradient_at(alpha):
        point = baseline + alpha * (x - baseline)
        return jax.grad(lambda z: _target_logits(model.apply(variables, z, train=False),
                                                 targets))(point)

    alphas = (jnp.arange(steps) + 0.5) / steps
    gradients = jax.lax.map(gradient_at, alphas, batch_size=min(steps, 8))
    return ((x - baseline) * gradients.mean(0))[..., 0]


def to_pixels(maps: jax.Array) -> jax.Array:
    """Maps `[B, h, w]` resized (bilinear) to the image's 28x28."""
    return jax.image.resize(maps, (maps.shape[0], *train_lib.IMAGE_SHAPE[:2]), "bilinear")


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's correlation of each pair of maps `[B, ...]`; 0 where a map is constant."""
    import scipy.stats  # pylint: disable=import-outside-toplevel  # 0.3 s; the server needs none
    out = np.zeros(len(a))
    for i, (x, y) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1))):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = scipy.stats.spearmanr(x, y).statistic
    return out


@dataclasses.dataclass(frozen=True)
class Explainer:
    """One member's weights with the attribution methods its model supports."""

    model: nn.Module
    variables: Any  # {'params': ..., 'batch_stats': ...} of one member
    mean: float
    std: float
    batch_size: int
    member: int = 0  # its index in the workdir's stack of members
    seed: int | None = None

    @classmethod
    def from_restored(cls, restored: restore.Restored) -> Explainer:
        """The first member of `restored` (choose another with `restore.select` first)."""
        first = restore.select(restored, member=0)
        stats = first.meta["data"]
        return cls(first.model, first.variables, stats["mean"], stats["std"],
                   first.config.eval_batch_size, first.members[0], first.seeds[0])

    def random_variables(self, seed: int = 0) -> Any:
        """Freshly initialised weights of the same model (the model-randomisation check)."""
        # Jitted: an eager init dispatches (and compiles) each initializer's ops one by one.
        init = jax.jit(functools.partial(self.model.init, train=False))
        variables = init(jax.random.key(seed), jnp.zeros((1, *train_lib.IMAGE_SHAPE)))
        return {"batch_stats": {}, **variables}

    @functools.cached_property
    def stage(self) -> tuple[str, ...] | None:
        return last_stage(self.model, self.variables)

    @property
    def methods(self) -> list[str]:
        """Grad-CAM where the model has convolutional stages, then integrated gradients."""
        return (["grad_cam"] if self.stage else []) + ["integrated_gradients"]

    @functools.cached_property
    def _compiled(self) -> dict[str, Callable]:
        """Per method, the jitted `(variables, images uint8, targets) -> maps [B, 28, 28]`."""
        mean, std, model = self.mean, self.std, self.model
        black = train_lib.normalize(jnp.zeros(train_lib.IMAGE_SHAPE, jnp.uint8), mean, std)
        out = {"integrated_gradients": jax.jit(
            lambda variables, images, targets: integrated_gradients(
                model, variables, train_lib.normalize(images, mean, std), black, targets))}
        if self.stage:
            out["grad_cam"] = jax.jit(lambda variables, images, targets: to_pixels(grad_cam(
                model, variables, train_lib.normalize(images, mean, std), targets, self.stage)))
        return out

    def attributions(self, method: str, images: np.ndarray, targets: np.ndarray,
                     variables: Any = None) -> np.ndarray:
        """`method`'s maps `[N, 28, 28]` for uint8 images `[N, 28, 28, 1]` and classes `[N]`,
        one compiled call per batch of `batch_size`; `variables` replace the member's weights."""
        fn = self._compiled[method]
        targets = np.asarray(targets, np.int32)
        variables = self.variables if variables is None else variables
        return np.concatenate([np.asarray(fn(variables, images[i:i + self.batch_size],
                                             targets[i:i + self.batch_size]))
                               for i in range(0, len(images), self.batch_size)])

    @functools.cached_property
    def _predict(self) -> Callable:
        return train_lib.make_predict(self.model, self.mean, self.std, self.batch_size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """This member's class probabilities `[N, C]` for uint8 images `[N, 28, 28, 1]`."""
        stacked = jax.tree.map(lambda x: x[None], self.variables)
        logits = self._predict(stacked["params"], stacked["batch_stats"], images)[0]
        return metrics.softmax(np.asarray(logits, np.float64))


def deletion_curve(explainer: Explainer, images: np.ndarray, classes: np.ndarray,
                   order: np.ndarray, steps: int = DELETION_STEPS) -> np.ndarray:
    """The mean probability of `classes` `[steps + 1]` as the pixels are blacked out in `order`
    (`[N, 784]`, pixel indices, first deleted first), `784 / steps` more at each step."""
    n, pixels = len(images), order.shape[1]
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(pixels)[None].repeat(n, 0), axis=1)
    deleted = rank[None] < (np.arange(steps + 1) * pixels // steps)[:, None, None]
    masked = np.where(deleted.reshape(steps + 1, *images.shape), 0, images[None])
    probs = explainer.probabilities(masked.reshape(-1, *images.shape[1:]))
    return probs.reshape(steps + 1, n, -1)[:, np.arange(n), classes].mean(1)


def area_under(curve: np.ndarray) -> float:
    """The area under a curve sampled evenly on [0, 1] (trapezoids)."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def sanity_checks(explainer: Explainer, images: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Per method: the deletion curve and its area (attributed and random order) for the
    predicted class, and the rank correlation with the maps of random weights (on the first half
    of the images)."""
    classes = explainer.probabilities(images).argmax(-1)
    rng = np.random.default_rng(seed)
    random_order = np.argsort(rng.random((len(images), images[0].size)), axis=1)
    random_curve = deletion_curve(explainer, images, classes, random_order)
    random_weights = explainer.random_variables(seed)
    half = max(1, len(images) // 2)
    out: dict[str, Any] = {"images": len(images), "member": explainer.member,
                           "random_order": {"auc": area_under(random_curve),
                                            "curve": random_curve.tolist()}}
    for method in explainer.methods:
        maps = explainer.attributions(method, images, classes)
        curve = deletion_curve(explainer, images, classes,
                               np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable"))
        correlation = rank_correlation(maps[:half], explainer.attributions(
            method, images[:half], classes[:half], random_weights))
        out[method] = {"deletion_auc": area_under(curve), "deletion_curve": curve.tolist(),
                       "random_weights_rank_correlation": float(correlation.mean())}
    return out


def example_indices(labels: np.ndarray, probabilities: np.ndarray, mistakes: int = 8) -> np.ndarray:
    """The `mistakes` most confident mistakes, then the most confident correct image of each class."""
    predicted = probabilities.argmax(-1)
    confidence = probabilities.max(-1)
    wrong = np.flatnonzero(predicted != labels)
    picked = list(wrong[np.argsort(-confidence[wrong], kind="stable")][:mistakes])
    for c in range(probabilities.shape[1]):
        right = np.flatnonzero((predicted == labels) & (labels == c))
        if right.size:
            picked.append(right[np.argmax(confidence[right])])
    return np.asarray(picked, np.int64)


def explain_examples(explainer: Explainer, images: np.ndarray, labels: np.ndarray | None,
                     probabilities: np.ndarray) -> dict[str, Any]:
    """Maps for the predicted class and a second class: the true one for a mistake, otherwise
    (a correct or unlabelled image) the runner-up; per method `[N, 2, 28, 28]`."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    predicted, second = order[:, 0], order[:, 1]
    if labels is not None:
        second = np.where(labels != predicted, labels, second)
    targets = np.stack([predicted, second], 1)
    maps = {method: np.stack([explainer.attributions(method, images, targets[:, k])
                              for k in range(2)], 1) for method in explainer.methods}
    return {"predicted": predicted, "second": second, "maps": maps}


def write_figures(explainer: Explainer, images: np.ndarray, labels: np.ndarray | None,
                  probabilities: np.ndarray, titles: Sequence[str], class_names: Sequence[str],
                  out: Path) -> list[Path]:
    """One figure per method, `out/explain_<method>.png`: image, map of the predicted class, map
    of the true class (mistakes) or of the runner-up; the paths."""
    examples = explain_examples(explainer, images, labels, probabilities)
    targets = np.stack([examples["predicted"], examples["second"]], 1)
    mistakes = [] if labels is None else list(labels != examples["predicted"])
    second = ["true" if m else "2nd" for m in mistakes] or ["2nd"] * len(images)
    out.mkdir(parents=True, exist_ok=True)
    return [plots.save(plots.explanation_figure(
        images, titles, maps, targets, probabilities, class_names, second, METHODS[method],
        signed=method == "integrated_gradients", mistakes=mistakes), out / f"explain_{method}.png")
        for method, maps in examples["maps"].items()]


def explain_evaluation(evaluation: Evaluation, out: Path, seed: int = 0,
                       ) -> tuple[dict[str, Any], list[Path]]:
    """The sanity numbers on `SANITY_IMAGES` random images of the split, and the figures of its
    most confident mistakes and of one correct image per class."""
    explainer = Explainer.from_restored(evaluation.restored)
    n = len(evaluation.labels)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(SANITY_IMAGES, n), replace=False))
    numbers = sanity_checks(explainer, evaluation.images[sample], seed)
    numbers["seed"] = explainer.seed
    names = evaluation.restored.class_names
    picked = example_indices(evaluation.labels, evaluation.probabilities)
    titles = [f"#{i} true: {names[evaluation.labels[i]]}" for i in picked]
    figures = write_figures(explainer, evaluation.images[picked], evaluation.labels[picked],
                            evaluation.probabilities[picked], titles, names, out)
    return numbers, figures


def explain_files(restored: restore.Restored, paths: Sequence[str | Path], out: Path,
                  ) -> list[Path]:
    """The figures of `write_figures` for image files (those that can be read); the paths."""
    results, inputs = images_lib.load_images(paths)  # classify() reports the unreadable ones
    if not inputs:
        return []
    readable = [Path(r["file"]).name for r in results if "error" not in r]
    stacked = np.stack(inputs)
    return write_figures(Explainer.from_restored(restored), stacked, None,
                         restored.probabilities(stacked).mean(0), readable,
                         restored.class_names, out)


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = 8) -> np.ndarray:
    """An RGB picture `[28 * scale, 28 * scale, 3]` uint8 of a heat map `[28, 28]` (its positive
    part, 'inferno' as in the figures) over the grayscale image `[28, 28, 1]`, pixels enlarged."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    positive = np.clip(np.asarray(heat, np.float64), 0, None)
    colours = matplotlib.colormaps["inferno"](positive / (positive.max() or 1.0))[..., :3]
    gray = np.repeat(image.astype(np.float64) / 255.0, 3, axis=-1)
    blended = 0.4 * gray + 0.6 * colours
    return np.kron((blended * 255).round().astype(np.uint8), np.ones((scale, scale, 1), np.uint8))
