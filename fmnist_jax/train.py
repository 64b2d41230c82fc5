"""The compiled parts of training: state, a pure train step, epochs, evaluation, N seeds at once.

Every function here works on a *stacked* state: each leaf has a leading axis of one entry per seed
(member). With one member the step runs unbatched; with more it is `jax.vmap`-ed, so N members
train in one compiled program on one shared copy of the data, each with its own permutation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from fmnist_jax import augment, optim, sharding

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """A member's parameters, optimizer state and the records early stopping and evaluation need."""

    batch_stats: Any
    ema_params: Any  # the moving average of `params` (`{}` when the run keeps none)
    ema_batch_stats: Any
    plateau: Any  # optax reduce_on_plateau state; its scale multiplies every update
    best_params: Any  # the evaluated weights (the average, if kept) of the best validation accuracy
    best_batch_stats: Any
    best_accuracy: jax.Array
    best_epoch: jax.Array
    stale_epochs: jax.Array  # epochs since the validation accuracy last improved
    active: jax.Array  # False once early stopping ended this member
    hparams: Any  # this member's own `label_smoothing`/`ema_decay` in a sweep (`{}` otherwise)


def member_keys(seed: int) -> dict[str, jax.Array]:
    """The independent keys one seed fixes: initialisation, data order and dropout."""
    init, data, dropout = jax.random.split(jax.random.key(seed), 3)
    return {"init": init, "data": data, "dropout": dropout}


def stacked_keys(seeds) -> dict[str, jax.Array]:
    return jax.vmap(member_keys)(jnp.asarray(seeds))


def create_state(model: nn.Module, tx: optax.GradientTransformation,
                 plateau: optax.GradientTransformation, ema: bool, key: jax.Array,
                 optimizer_hparams: Mapping[str, jax.Array] | None = None,
                 step_hparams: Mapping[str, jax.Array] | None = None) -> TrainState:
    """One member's initial state; with `ema`, the average starts at the initial weights.

    A sweep's member has its own optimizer hyperparameters (`tx` then made per member, see
    `optim.make_optimizer`) and `step_hparams` (keyword arguments of `make_train_step`)."""
    variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *IMAGE_SHAPE)),
                           train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    state = TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats,
        ema_params=params if ema else {}, ema_batch_stats=batch_stats if ema else {},
        plateau=plateau.init(params), best_params=params, best_batch_stats=batch_stats,
        best_accuracy=jnp.float32(-1.0), best_epoch=jnp.int32(0), stale_epochs=jnp.int32(0),
        active=jnp.bool_(True), hparams=dict(step_hparams or {}))
    if optimizer_hparams:
        state = state.replace(opt_state=optim.set_hyperparams(state.opt_state, optimizer_hparams))
    return state.replace(step=jnp.int32(0))  # not weakly typed: as restored


def create_states(model, tx, plateau, init_keys: jax.Array, ema: bool = False,
                  optimizer_hparams: Mapping[str, jax.Array] | None = None,
                  step_hparams: Mapping[str, jax.Array] | None = None) -> TrainState:
    """The stacked initial states of all members, one member after the other; the hparams, when
    given, are `{name: [S]}`, one value per member.

    `lax.map`, not `vmap`: jitted, the vmapped initialisation of the lstm (a scan) with 8 members
    deadlocked XLA:CPU (jaxlib 0.10.2) in about half of the runs; mapped it never did. The values
    are the same either way (each member's draws depend on its key only).
    """
    return jax.lax.map(lambda args: create_state(model, tx, plateau, ema, *args),
                       (init_keys, dict(optimizer_hparams or {}), dict(step_hparams or {})))


def evaluated_weights(state: TrainState) -> tuple[Any, Any]:
    """The params and batch_stats that validation judges: the moving average when kept."""
    if jax.tree.leaves(state.ema_params):
        return state.ema_params, state.ema_batch_stats
    return state.params, state.batch_stats


def update_ema(state: TrainState, decay: float | jax.Array) -> TrainState:
    """Moves the average towards the new weights, with a decay ramped as min(decay, (1+t)/(10+t))
    so that early steps are not dominated by the random initialisation."""
    t = state.step.astype(jnp.float32)
    rate = 1.0 - jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return state.replace(
        ema_params=optax.incremental_update(state.params, state.ema_params, rate),
        ema_batch_stats=optax.incremental_update(state.batch_stats, state.ema_batch_stats, rate))


def normalize(images: jax.Array, mean: float, std: float) -> jax.Array:
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float | jax.Array = 0.0) -> jax.Array:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if isinstance(label_smoothing, jax.Array) or label_smoothing:  # an array: a member's own
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def metric_sums(logits: jax.Array, labels: jax.Array, loss: jax.Array) -> Metrics:
    """Sums and a count, so that means over any number of batches are exact."""
    return {"loss": loss.sum(), "correct": (logits.argmax(-1) == labels).sum(),
            "count": jnp.asarray(labels.shape[0], jnp.int32)}


def make_train_step(mean: float, std: float, label_smoothing: float = 0.0,
                    augmentation: Mapping[str, Any] | None = None, ema_decay: float = 0.0):
    """`train_step(state, batch, rng) -> (state, metrics)` for one member.

    `augmentation` holds the keyword arguments of `augment.augment`; its key is folded from `rng`,
    which itself drives dropout, so enabling augmentation leaves the dropout masks as they were.
    With `ema_decay` > 0 the state's moving average is updated after every step. A member's own
    `label_smoothing` or `ema_decay` in `state.hparams` (a sweep) replaces the argument.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        smoothing = state.hparams.get("label_smoothing", label_smoothing)
        decay = state.hparams.get("ema_decay", ema_decay)
        images = batch["image"]
        if augmentation and any(augmentation.values()):
            images = augment.augment(jax.random.fold_in(rng, 1), images, **augmentation)
        x = normalize(images, mean, std)

        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                rngs={"dropout": rng}, mutable=["batch_stats"])
            logits = logits.astype(jnp.float32)  # the loss in float32 whatever the compute dtype
            loss = cross_entropy(logits, batch["label"], smoothing)
            return loss.mean(), (logits, loss, updates)

        grads, (logits, loss, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
        steps, opt_state = state.tx.update(grads, state.opt_state, state.params)
        steps = jax.tree.map(lambda u: u * state.plateau.scale, steps)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, steps),
                              opt_state=opt_state,
                              batch_stats=updates.get("batch_stats", state.batch_stats))
        if "ema_decay" in state.hparams or ema_decay:
            state = update_ema(state, decay)
        return state, metric_sums(logits, batch["label"], loss)

    return train_step


def init_accumulator(num_members: int) -> Metrics:
    """Per-member epoch sums, and the first global step whose loss was not finite (or -1)."""
    zeros = functools.partial(jnp.zeros, (num_members,), jnp.float32)  # distinct buffers to donate
    return {"loss": zeros(), "correct": zeros(), "count": zeros(),
            "nonfinite_step": jnp.full((num_members,), -1, jnp.int32)}


def _member_update(train_step, state, acc, images, labels, index, dropout_key, global_step):
    """One step of one member; a member stopped early keeps its state and adds nothing."""
    batch = {"image": images[index], "label": labels[index]}
    new_state, m = train_step(state, batch, jax.random.fold_in(dropout_key, global_step))
    new_state = jax.tree.map(lambda n, o: jnp.where(state.active, n, o), new_state, state)
    keep = state.active.astype(jnp.float32)
    bad = state.active & ~jnp.isfinite(m["loss"]) & (acc["nonfinite_step"] < 0)
    acc = {"loss": acc["loss"] + m["loss"] * keep, "correct": acc["correct"] + m["correct"] * keep,
           "count": acc["count"] + m["count"] * keep,
           "nonfinite_step": jnp.where(bad, global_step, acc["nonfinite_step"])}
    return new_state, acc


MEMBER_STRATEGIES = ("auto", "vmap", "map")
# backend -> what 'auto' runs with several members. 'vmap': side by side in one batched program;
# 'map': one after another inside the step (`lax.map`), for a member that fills the device alone.
# CPU: today's choice (with conv_impl 'matmul' vmap trains 4 cnn seeds at full speed; see
# models/layers.py). GPU and TPU: today's choice, awaiting measurement: the accelerator check
# (`scripts/benchmark.py --suite=accelerator`) times every strategy and conv_impl with 1, 4 and 8
# members, and this table takes its winners (docs/performance.md).
AUTO_MEMBER_STRATEGY = {"cpu": "vmap", "gpu": "vmap", "tpu": "vmap"}


def resolve_member_strategy(strategy: str, num_members: int) -> str:
    """How `num_members` members train: 'single' for one, else the strategy ('auto' resolved)."""
    if num_members == 1:
        return "single"
    if strategy == "auto":
        return AUTO_MEMBER_STRATEGY.get(jax.default_backend(), "vmap")
    return strategy


def make_train_span(train_step: Callable, num_members: int, unroll: int = 1,
                    layout: sharding.Layout | None = None, member_strategy: str = "auto"):
    """`span(states, acc, images, labels, perms, first, global_first, dropout_keys, length)`.

    Runs `length` steps from position `first` of the epoch's permutations `perms` `[S, steps, B]`:
    one step when `length` is 1 (the per-batch loop), else a `lax.scan` (one dispatch per epoch).
    Several members step side by side (`vmap`) or one after another (`map`), as
    `resolve_member_strategy` says. With a `layout`, each step's batch is split over its mesh and
    the states and sums come back with the layout's member sharding.
    """
    member = functools.partial(_member_update, train_step)
    strategy = resolve_member_strategy(member_strategy, num_members)
    if strategy == "map":
        def step_all(states, acc, images, labels, index, keys, global_step):
            return jax.lax.map(lambda m: member(m[0], m[1], images, labels, m[2], m[3],
                                                global_step), (states, acc, index, keys))
    elif strategy == "single":
        def step_all(states, acc, images, labels, index, keys, global_step):
            squeeze = functools.partial(jax.tree.map, lambda x: x[0])
            state, a = member(squeeze(states), squeeze(acc), images, labels, index[0],
                              keys[0], global_step)
            expand = functools.partial(jax.tree.map, lambda x: x[None])
            return expand(state), expand(a)
    else:
        step_all = jax.vmap(member, in_axes=(0, 0, None, None, 0, 0, None))

    def span(states, acc, images, labels, perms, first, global_first, dropout_keys, length):
        def body(carry, i):
            index = jax.lax.dynamic_index_in_dim(perms, first + i, axis=1, keepdims=False)
            if layout is not None:
                index = layout.constrain_batch(index)
            return step_all(*carry, images, labels, index, dropout_keys, global_first + i), None

        if length == 1:
            return body((states, acc), 0)[0]
        return jax.lax.scan(body, (states, acc), jnp.arange(length), unroll=unroll)[0]

    placed = {} if layout is None else {"out_shardings": (layout.members, layout.members)}
    return jax.jit(span, static_argnames="length", donate_argnums=(0, 1), **placed)


@functools.partial(jax.jit, static_argnames=("num_train", "batch_size"))
def epoch_permutations(data_keys: jax.Array, epoch: jax.Array, num_train: int,
                       batch_size: int) -> jax.Array:
    """Each member's shuffled batch indices for `epoch`, `[S, steps, B]`; the remainder is dropped."""
    steps = num_train // batch_size

    def member(key):
        order = jax.random.permutation(jax.random.fold_in(key, epoch), num_train)
        return order[:steps * batch_size].reshape(steps, batch_size)

    return jax.vmap(member)(data_keys)


def members_one_at_a_time(model: nn.Module) -> bool:
    """Whether evaluation runs the members one after another: a model with convolutions (those
    have a `conv_impl`) on CPU; see `make_predict`."""
    return jax.default_backend() == "cpu" and hasattr(model, "conv_impl")


def flip_tta(forward: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """Test-time augmentation by horizontal flip: `forward` (images `[B, H, W, C]` -> logits)
    made to return the log of the mean of its class probabilities on the images and on their
    mirrors. Log-probabilities are logits that softmax maps back to exactly those probabilities,
    so losses and accuracies of the result need nothing else. Both halves run as one batch."""

    def averaged(images: jax.Array) -> jax.Array:
        logits = forward(jnp.concatenate([images, images[:, :, ::-1]]))
        # every size spelled out: jax2onnx mis-converts a -1 beside a symbolic batch size
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(
            2, images.shape[0], logits.shape[-1])
        return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(2.0)

    return averaged


def member_forward(model: nn.Module, params: Any, batch_stats: Any, mean: float, std: float,
                   tta: bool = False) -> Callable[[jax.Array], jax.Array]:
    """One member's `forward(images uint8 [B, 28, 28, 1]) -> logits [B, 10]`: normalised, the
    model applied for inference, with `tta` the log-probabilities of `flip_tta`."""

    def forward(x: jax.Array) -> jax.Array:
        return model.apply({"params": params, "batch_stats": batch_stats},
                           normalize(x, mean, std), train=False)

    return flip_tta(forward) if tta else forward


def make_predict(model: nn.Module, mean: float, std: float, batch_size: int,
                 one_member_at_a_time: bool | None = None, tta: bool = False):
    """`predict(params, batch_stats, images) -> logits [S, N, 10]` for stacked members; with
    `tta`, the log-probabilities of `flip_tta` (each image and its mirror).

    The images are padded to whole batches, run through one compiled `lax.map`, and the padding's
    logits dropped, so every image counts exactly once. The members run one after another
    (`lax.map`; the default for a model with convolutions on CPU) or side by side (`vmap`;
    otherwise): vmapped convolutions of several members' kernels become one grouped convolution,
    which XLA:CPU ran about 3x slower than the members' convolutions one at a time (cnn_deep, 3
    members); without convolutions vmap is the faster (2 lstm members: 17.2k against 14.8k
    images/s on one device, 19.3k against 10.3k on two).
    """

    def member(params, batch_stats, images):
        forward = member_forward(model, params, batch_stats, mean, std, tta)
        n = images.shape[0]
        padded = jnp.pad(images, ((0, -n % batch_size), (0, 0), (0, 0), (0, 0)))
        logits = jax.lax.map(forward, padded.reshape(-1, batch_size, *IMAGE_SHAPE))
        return logits.reshape(-1, logits.shape[-1])[:n].astype(jnp.float32)

    if one_member_at_a_time is None:
        one_member_at_a_time = members_one_at_a_time(model)
    if one_member_at_a_time:
        return jax.jit(lambda params, batch_stats, images: jax.lax.map(
            lambda weights: member(*weights, images), (params, batch_stats)))
    return jax.jit(jax.vmap(member, in_axes=(0, 0, None)))


@jax.jit
def evaluation_sums(logits: jax.Array, labels: jax.Array) -> Metrics:
    """Loss and correct-count sums per member for logits `[S, N, 10]`."""
    return jax.vmap(lambda lg: metric_sums(lg, labels, cross_entropy(lg, labels)))(logits)


def make_end_of_epoch(plateau: optax.GradientTransformationExtraArgs, use_plateau: bool,
                      plateau_on_loss: bool, patience: int):
    """`end(states, val_accuracy [S], val_loss [S], epoch) -> states`, per member.

    Keeps the best evaluated weights (`evaluated_weights`: those the validation metrics are of),
    counts stale epochs for early stopping, and feeds the validation metric to reduce-on-plateau.
    A member already stopped is left as it is.
    """

    def member(state: TrainState, accuracy, loss, epoch):
        improved = accuracy > state.best_accuracy
        pick = functools.partial(jax.tree.map, lambda new, old: jnp.where(improved, new, old))
        params, batch_stats = evaluated_weights(state)
        stale = jnp.where(improved, 0, state.stale_epochs + 1)
        plateau_state = state.plateau
        if use_plateau:
            value = loss if plateau_on_loss else 1.0 - accuracy
            _, plateau_state = plateau.update(updates=state.params, state=state.plateau, value=value)
        new = state.replace(
            best_params=pick(params, state.best_params),
            best_batch_stats=pick(batch_stats, state.best_batch_stats),
            best_accuracy=jnp.maximum(accuracy, state.best_accuracy),
            best_epoch=jnp.where(improved, epoch, state.best_epoch), stale_epochs=stale,
            plateau=plateau_state, active=(patience <= 0) | (stale < patience))
        return jax.tree.map(lambda n, o: jnp.where(state.active, n, o), new, state)

    return jax.jit(jax.vmap(member, in_axes=(0, 0, 0, None)), donate_argnums=0)


def to_host(tree: Any) -> Any:
    """`tree` as numpy arrays; arrays spread over several processes are gathered first."""
    return jax.tree.map(sharding.fetch, tree)
