"""Scale-out helpers: sharded all-pairs scoring and multi-process (``torchrun``) training.

* :func:`sharded_similarity` scores a gallery in image x caption blocks, in this process, a
  local process pool or Ray, and assembles the same ``[Ni, Nc]`` matrix, bit for bit, as one
  :class:`~attnlens.models.scan.ScanSimilarity` call (see :mod:`attnlens.distributed.allpairs`).
* :mod:`attnlens.distributed.ddp`: process-group set-up from the ``torchrun`` environment
  (:func:`backend_for`: gloo on CPU, nccl on CUDA), batch sharding and the
  ``DistributedDataParallel`` wrapper used by :func:`attnlens.train.fit` when launched by
  ``torchrun`` (see that module for where results differ from single-process training).

* :mod:`attnlens.distributed.shards`: resumable jobs in shards of example indices (here, a
  process pool or Ray tasks), shard by shard; the study's dataset-wide capture and metrics
  (:func:`attnlens.study.dataset.capture_dataset`) runs on it.

None imports Ray unless ``executor="ray"`` / ``engine="ray"`` is asked for.
"""
from __future__ import annotations

from .allpairs import block_grid, sharded_similarity
from .ddp import (DistributedError, backend_for, dist_context, init_from_env, is_main_process, shard_batch,
                  state_hash)

__all__ = ["DistributedError", "backend_for", "block_grid", "dist_context", "init_from_env", "is_main_process",
           "shard_batch", "sharded_similarity", "state_hash"]
