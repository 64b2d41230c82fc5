"""Devices as a mesh of two axes: `data` splits every batch, `seeds` spreads the members of a run.

Everything is JAX's own sharding: arrays carry a `NamedSharding` of the mesh, the compiled step
follows them, and XLA inserts the collectives (the gradient mean over `data`, BatchNorm's batch
statistics) from the shardings. Where things live:

- the stacked states and per-member sums: the member axis split over `seeds`, replicated over `data`;
- the training split (uint8, 47 MB) and the evaluation splits: replicated on every device;
- each step's batch indices `[S, B]`: split over `seeds` and `data`, so every device gathers only
  its own rows of the batch from its copy of the split (with several hosts, each host's devices
  gather that host's share of every batch; no batch crosses the host-device boundary).

The mesh's first axis is `seeds`, so with several hosts the members are spread across hosts (no
traffic between members) and the data-parallel all-reduce stays within a host where possible.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fmnist_jax.errors import ConfigError

DATA, SEEDS = "data", "seeds"
AXES = (SEEDS, DATA)  # the mesh's axis order: seeds across hosts, data within one
PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def parse_mesh(text: str) -> dict[str, int]:
    """`'data:4,seeds:2'` as `{'data': 4, 'seeds': 2}`; empty text is `{}` (the default mesh)."""
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, size = item.partition(":")
        if name not in AXES or name in sizes or not size.isdigit() or int(size) < 1:
            raise ConfigError(f"--mesh={text!r} is not valid; give each of the axes data and seeds "
                              f"at most once with a positive size, e.g. --mesh=data:4,seeds:2")
        sizes[name] = int(size)
    return sizes


def mesh_shape(requested: dict[str, int], num_devices: int, num_seeds: int) -> dict[str, int]:
    """The size of both axes, in mesh order: `requested` completed, or the default.

    The default uses every device: as many members as divide evenly go to separate devices
    (`seeds` = gcd of the seed and device counts) and the batch is split over the rest, so one seed
    is all `data` and N seeds on N devices all `seeds`. An axis left out of `requested` takes the
    devices the other leaves; a mesh of both axes may use fewer devices than there are.
    """
    if not requested:
        seeds = math.gcd(num_seeds, num_devices)
        return {SEEDS: seeds, DATA: num_devices // seeds}
    given = math.prod(requested.values())
    complete = len(requested) == len(AXES)
    if given > num_devices or (not complete and num_devices % given):
        need = f"{given} devices" if complete else f"a multiple of {given} devices"
        raise ConfigError(f"--mesh={format_shape(requested)} needs {need}, but "
                          f"{num_devices} are available")
    return {axis: requested.get(axis, num_devices // given) for axis in AXES}


def format_shape(shape: dict[str, int]) -> str:
    return ",".join(f"{axis}:{shape[axis]}" for axis in AXES if axis in shape)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's arrays live on `mesh`, and the checks that a config fits it."""

    mesh: Mesh

    @property
    def data_size(self) -> int:
        return self.mesh.shape[DATA]

    @property
    def seeds_size(self) -> int:
        return self.mesh.shape[SEEDS]

    def sharding(self, *spec) -> NamedSharding:
        return NamedSharding(self.mesh, P(*spec))

    @property
    def members(self) -> NamedSharding:
        """Leading member axis over `seeds`, everything else replicated."""
        return self.sharding(SEEDS)

    @property
    def replicated(self) -> NamedSharding:
        return self.sharding()

    @property
    def permutations(self) -> NamedSharding:
        """An epoch's batch indices `[S, steps, B]`: members over `seeds`, batch over `data`."""
        return self.sharding(SEEDS, None, DATA)

    def check(self, batch_size: int, num_seeds: int) -> None:
        """Refuses a batch or seed count that the mesh cannot split evenly."""
        if batch_size % self.data_size:
            raise ConfigError(
                f"the batch size {batch_size} does not split over the {self.data_size} devices of "
                f"the mesh's data axis; use a multiple of {self.data_size} (--batch-size) or "
                f"another --mesh (now {self.describe_shape()})")
        if num_seeds % self.seeds_size:
            raise ConfigError(
                f"{num_seeds} seeds do not split over the {self.seeds_size} devices of the mesh's "
                f"seeds axis; use a multiple of {self.seeds_size} (--seeds) or another --mesh "
                f"(now {self.describe_shape()})")

    def per_device_batch(self, batch_size: int) -> int:
        """Images each device trains on per step (per member it holds)."""
        return batch_size // self.data_size

    def describe_shape(self) -> str:
        return format_shape(dict(self.mesh.shape))

    def record(self, batch_size: int) -> dict[str, Any]:
        """The mesh for config.json and the run log."""
        return {"mesh": dict(self.mesh.shape), "per_device_batch": self.per_device_batch(batch_size),
                "devices": [str(d) for d in self.mesh.devices.flat]}

    @staticmethod
    def put(tree: Any, sharding: NamedSharding) -> Any:
        """`tree`'s arrays (the same value on every process) placed with `sharding`."""
        return jax.tree.map(lambda x: _put(x, sharding), tree)

    def put_members(self, tree: Any) -> Any:
        return self.put(tree, self.members)

    def put_host(self, array: np.ndarray) -> jax.Array:
        """A host array every process holds whole (a data split), replicated on every device."""
        return jax.make_array_from_callback(array.shape, self.replicated, lambda index: array[index])

    def constrain_batch(self, index: jax.Array) -> jax.Array:
        """A step's batch indices `[S, B]` split over `seeds` and `data` inside the compiled step."""
        return jax.lax.with_sharding_constraint(index, self.sharding(SEEDS, DATA))


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # moved as its raw data
        data = jax.device_put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)


def make_layout(requested: str, num_seeds: int) -> Layout:
    """The layout of `--mesh` (`requested`, empty for the default) over every device."""
    devices = jax.devices()
    shape = mesh_shape(parse_mesh(requested), len(devices), num_seeds)
    if math.prod(shape.values()) < len(devices) and jax.process_count() > 1:
        raise ConfigError(f"--mesh={format_shape(shape)} leaves devices idle; with several "
                          f"processes the mesh must use all {len(devices)} devices")
    mesh = jax.make_mesh(tuple(shape[axis] for axis in AXES), AXES, devices=devices,
                         axis_types=(AxisType.Auto,) * len(AXES))  # Explicit breaks nn.Dropout
    return Layout(mesh)


def fetch(x: Any) -> np.ndarray:
    """An array's whole value on this host; one spread over several processes is gathered first."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def is_primary() -> bool:
    """Whether this process writes the run's files and log (process 0)."""
    return jax.process_index() == 0


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins the processes of a multi-host run (`jax.distributed.initialize`), before any JAX work.

    Unset values come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; what is
    still unset, JAX detects on Slurm, Open MPI, Kubernetes and Cloud TPU.
    """
    address = coordinator_address or os.environ.get(PROCESS_ENV[0]) or None
    count = _env_int(PROCESS_ENV[1]) if num_processes is None else num_processes
    index = _env_int(PROCESS_ENV[2]) if process_id is None else process_id
    try:
        jax.distributed.initialize(address, count, index)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--distributed could not start ({e}); give --coordinator-address, "
                          f"--num-processes and --process-id (or {', '.join(PROCESS_ENV)})") from None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r} is not a non-negative integer")
    return int(value)
