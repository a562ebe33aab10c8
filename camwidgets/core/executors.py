"""Executors for :func:`camwidgets.evaluate`: here (:class:`LocalExecutor`) or on Ray (:class:`RayExecutor`).

:class:`RayExecutor` runs the same evaluation on a Ray cluster (a local one it starts, or an
existing one). It uses Ray's own machinery, not a scheduler of ours: a fixed set of Ray
actors, each holding the model (loaded once per actor, moved to its GPU when asked) and the
dataset; the images still missing rows are cut into shards that the driver hands out as
actors become free; Ray restarts an actor whose process died and re-runs the shards it had
not returned (``max_restarts`` / ``max_task_retries``). Only the driver writes the rows
file, once per returned shard, so a retried shard can neither lose nor duplicate a row,
and an interrupted driver resumes from the rows file like a local run.

Ray is an optional dependency: ``pip install "camwidgets[ray]"``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import operator
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .evaluate import LocalExecutor, _indexable, _iterate, _Task

__all__ = ["LocalExecutor", "RayExecutor"]

_Rows = tuple[int, list[dict[str, Any]], list[dict[str, Any]]]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "executor='ray' needs Ray, which camwidgets does not install by default. Install the extra: "
            'pip install "camwidgets[ray]"  (or pip install ray), or use executor="local".'
        ) from err
    return ray


class _Worker:
    """The body of one Ray actor: it loads the task (model included) and the dataset once, then runs shards."""

    def __init__(self, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = device
        self.task: _Task | None = None
        self.dataset: Any = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, shard: list[tuple[int, list[str], Any]], refs: list[Any]) -> list[_Rows]:
        # ``refs`` (task, dataset) arrive wrapped in a list, so Ray passes them unresolved and
        # they are fetched and deserialised once per actor process (again after a restart),
        # not once per shard. They are not constructor arguments: Ray cannot guarantee those
        # for a restarted actor when they live in the object store (ray-project/ray#53727).
        if self.task is None:
            import ray

            task, self.dataset = ray.get(refs)
            if self.device != "cpu":
                task.model.to(self.device)  # this actor's own copy of the model
            self.task = task
        entries = []
        for index, todo, raw in shard:
            # the item is loaded inside task.run_group, so on_error="skip" covers a dataset that raises
            if self.dataset is not None:
                load = functools.partial(operator.getitem, self.dataset, index)
            else:
                load = functools.partial(_given, raw)
            entries.append((index, load, todo))
        size = max(1, int(self.task.image_batch))  # the shard's items in groups, as the local run batches them
        out: list[_Rows] = []
        for s in range(0, len(entries), size):
            out.extend(self.task.run_group(entries[s:s + size]))
        return out


def _given(raw: Any) -> Any:
    return raw


@dataclass
class RayExecutor:
    """Run :func:`camwidgets.evaluate` on Ray actors; same rows, files and resume rules as a local run.

    Parameters
    ----------
    workers : int, optional
        Number of actors. Default: as many as the cluster's free CPUs (or GPUs, with
        ``num_gpus``) hold, at most one per shard.
    num_cpus : float, default 1
        CPUs reserved per actor; fractions (``0.5``) let several actors share a core, e.g.
        two actors and the driver on a 2-core laptop. Each actor runs torch with
        ``max(1, floor(num_cpus))`` threads.
    num_gpus : float, default 0
        GPUs per actor (fractions share a GPU); with ``> 0`` each actor moves its copy of
        the model to its GPU.
    address : str, optional
        Cluster to connect to (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``).
        Default: the one in ``RAY_ADDRESS`` or started on this machine with ``ray start``,
        else a local Ray instance started for this call and shut down after it. A Ray
        instance the caller already initialised is used as it is and left running.
    shard_size : int, default 4
        Images per shard: rows are saved (and the progress bar moves) shard by shard, and a
        lost actor costs at most the shards it held. An actor runs its shard's images as a
        batch, ``image_batch`` (an :func:`~camwidgets.evaluate` argument) at a time.
    max_retries : int, default 3
        How often Ray restarts a dead actor and re-runs its unfinished shards.
    init_kwargs : mapping, optional
        Extra arguments for ``ray.init`` when this executor starts or joins the cluster
        (e.g. ``{"num_cpus": 2}`` or a ``runtime_env``).

    Notes
    -----
    The model is sent once through Ray's object store and each actor deserialises it once;
    a dataset with ``len`` and indexing (e.g. :class:`camwidgets.datasets.Shapes`, a
    torchvision dataset) is sent the same way and each actor loads its own items, while
    the items of other iterables are read here and travel inside the shards. The model,
    dataset and explainer factory must pickle (Ray uses cloudpickle, so classes defined
    in a notebook work), and on a multi-machine cluster camwidgets must be installed on
    every node.
    """

    workers: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    address: str | None = None
    shard_size: int = 4
    max_retries: int = 3
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _import_ray()  # fail here, before any work, when Ray is missing
        if self.workers is not None and (isinstance(self.workers, bool) or int(self.workers) != self.workers
                                         or self.workers < 1):
            raise ValueError(f"workers must be a positive int or None, got {self.workers!r}.")
        if not (self.num_cpus >= 0 and self.num_gpus >= 0) or self.num_cpus + self.num_gpus == 0:
            raise ValueError(
                f"num_cpus={self.num_cpus!r} and num_gpus={self.num_gpus!r}: both must be >= 0 and one > 0."
            )
        if isinstance(self.shard_size, bool) or int(self.shard_size) != self.shard_size or self.shard_size < 1:
            raise ValueError(f"shard_size must be a positive int, got {self.shard_size!r}.")
        if isinstance(self.max_retries, bool) or int(self.max_retries) != self.max_retries or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}.")

    # -- the work ---------------------------------------------------------------------------
    def _shards(self, task: _Task, dataset: Iterable[Any], done: Mapping[tuple[int, str], Any]
                ) -> tuple[list[int], list[list[tuple[int, list[str], Any]]], bool]:
        """Indices already complete, shards of the rest, and whether items are loaded by the actors."""
        indexed = _indexable(dataset)
        complete: list[int] = []
        pending: list[tuple[int, list[str], Any]] = []
        for index, load in _iterate(dataset):  # an indexable dataset's items are not loaded here
            todo = task.todo(index, done)
            if not todo:
                complete.append(index)
            else:
                pending.append((index, todo, None if indexed else load()))
        size = int(self.shard_size)
        shards = [pending[i:i + size] for i in range(0, len(pending), size)]
        return complete, shards, indexed

    def _n_workers(self, ray: Any, n_shards: int) -> int:
        if self.workers is not None:
            return min(int(self.workers), n_shards)
        free = ray.available_resources()
        fits = []
        if self.num_cpus > 0:
            fits.append(math.floor(free.get("CPU", 0.0) / self.num_cpus + 1e-9))
        if self.num_gpus > 0:
            fits.append(math.floor(free.get("GPU", 0.0) / self.num_gpus + 1e-9))
        n = min(fits)
        if n < 1:
            raise RuntimeError(
                f"The Ray cluster has {free.get('CPU', 0.0)} free CPUs and {free.get('GPU', 0.0)} free GPUs, not "
                f"enough for one actor with num_cpus={self.num_cpus}, num_gpus={self.num_gpus}. Ask for less per "
                "actor (e.g. RayExecutor(num_cpus=0.5)) or add nodes."
            )
        return min(n, n_shards)

    def run(self, task: _Task, dataset: Iterable[Any], done: Mapping[tuple[int, str], Any],
            on_row: Callable[[dict[str, Any]], None], bar: Any) -> Iterator[_Rows]:
        """``(index, new rows, errors)`` per dataset item, as the shards come back.

        Complete items come first; ``on_row`` (the rows file) sees every new row, and only
        here, in the driver.
        """
        ray = _import_ray()
        complete, shards, indexed = self._shards(task, dataset, done)
        for index in complete:
            yield index, [], []
        if not shards:
            return
        started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": True, **dict(self.init_kwargs)}
            ray.init(address=self.address, **kwargs)
            started = True
        actors: list[Any] = []
        try:
            n = self._n_workers(ray, len(shards))
            device = "cuda" if self.num_gpus > 0 else "cpu"
            threads = max(1, math.floor(self.num_cpus))
            refs = [ray.put(_portable(task)), ray.put(dataset if indexed else None)]
            worker_cls = ray.remote(_Worker)
            actors = [worker_cls.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                         max_restarts=self.max_retries, max_task_retries=self.max_retries)
                      .remote(device, threads) for _ in range(n)]
            bar.set_postfix_str(f"{n} Ray workers", refresh=False)
            queue = deque(shards)
            in_flight: dict[Any, Any] = {}

            def submit(actor: Any) -> None:
                if queue:
                    in_flight[actor.run.remote(queue.popleft(), refs)] = actor

            for actor in actors:  # two shards per actor: it never waits for the driver
                submit(actor)
                submit(actor)
            while in_flight:
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                actor = in_flight.pop(ref)
                results = _get(ray, ref)
                submit(actor)
                for index, rows, errors in results:
                    for row in rows:
                        on_row(row)
                    yield index, rows, errors
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if started:
                ray.shutdown()


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get`` that re-raises an error of our own code as itself (not wrapped in RayTaskError)."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except RayActorError as err:
        raise RuntimeError(
            f"A Ray worker died more often than max_retries allows ({err}). The rows finished so far are saved; "
            "run the same call again to resume, with a larger max_retries or fewer images per shard."
        ) from err


def _portable(task: _Task) -> _Task:
    """The task with the model on the CPU (pickles everywhere); the user's model is not touched."""
    params = list(task.model.parameters()) + list(task.model.buffers())
    if all(p.device.type == "cpu" for p in params):
        return task
    model = copy.deepcopy(task.model).cpu()
    return dataclasses.replace(task, model=model)
